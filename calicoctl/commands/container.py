"""Give a container a Calico interface (Docker's default networking, without the plugin).

Usage:
  calicoctl container add <CONTAINER> <IP> [--interface=<INTERFACE>]
  calicoctl container remove <CONTAINER>
  calicoctl container <CONTAINER> ip (add|remove) <IP> [--interface=<INTERFACE>]
  calicoctl container <CONTAINER> endpoint show
  calicoctl container <CONTAINER> profile (append|remove|set) [<PROFILES>...]

Description:
  Add or remove a Calico interface in a running container (wired exactly as the libnetwork
  plugin wires its endpoints), add or remove its addresses, show its endpoints, and change the
  profiles applied to them.  <IP> is an address, a pool's CIDR, ipv4 or ipv6 (the last three
  assign a free address from Calico IPAM).  A container without a default route gets one via
  the Calico interface; otherwise only the Calico pools are routed through it.

Options:
  --interface=<INTERFACE>  The interface's name inside the container (add: default eth1; ip:
                           needed only when the container has several Calico interfaces).
"""

import re

from calicoctl.errors import ValidationError
from calicoctl.output import msg

_IFNAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,14}$")   # IFNAMSIZ - 1


def _interface(arguments):
    name = arguments["--interface"]
    if name and not _IFNAME.match(name):
        raise ValidationError("Invalid interface name %r: up to 15 letters, digits, '.', '-' or "
                              "'_', starting with a letter." % name)
    return name


def _manager():
    from calicoctl.container import ContainerNetworking, docker_api
    from calicoctl.datastore import open_store
    from calicoctl.ipam.allocator import IPAMClient
    from calicoctl.nodename import node_name
    store = open_store()
    host = node_name()
    return store, ContainerNetworking(store, host, IPAMClient(store, host), docker_api())


def run(arguments):
    container = arguments["<CONTAINER>"]
    interface = _interface(arguments)
    if arguments["add"] and not arguments["ip"]:
        _, manager = _manager()
        _, ip = manager.add(container, arguments["<IP>"], interface or "eth1")
        msg("IP %s added to %s" % (ip, container))
        return None
    if arguments["remove"] and not arguments["ip"] and not arguments["profile"]:
        _, manager = _manager()
        manager.remove(container)
        msg("Removed Calico interface from %s" % container)
        return None
    if arguments["ip"]:
        _, manager = _manager()
        if arguments["add"]:
            ip = manager.ip_add(container, arguments["<IP>"], interface)
            msg("IP %s added to %s" % (ip, container))
        else:
            ip = manager.ip_remove(container, arguments["<IP>"], interface)
            msg("IP %s removed from %s" % (ip, container))
        return None
    from calicoctl.commands import endpoint as endpoint_command
    store, manager = _manager()
    cid, _, _ = manager.inspect(container)
    eps = manager.endpoints(cid)
    if arguments["endpoint"]:
        filters = {"host": manager.host, "orchestrator": "docker", "workload": cid}
        return endpoint_command.endpoint_show(store, filters, None, True)
    if not eps:
        raise ValidationError("Container %s has no Calico interface; add one with 'calicoctl "
                              "container add'." % container)
    action = next(a for a in ("append", "remove", "set") if arguments[a])
    filters = {"host": manager.host, "orchestrator": "docker", "workload": cid}
    for ep in eps:
        endpoint_command.endpoint_profile_change(store, ep.endpoint_id, filters, action,
                                                 list(arguments["<PROFILES>"]))
    return None

"""Start, stop or remove the Calico node on this host; configure its own BGP peers.

Usage:
  calicoctl node [--ip=<IP>] [--ip6=<IP6>] [--node-image=<IMAGE>] [--as=<AS_NUM>]
                 [--log-dir=<LOG_DIR>] [--detach=<DETACH>] [--runtime=<RUNTIME>]
                 [(--libnetwork [--libnetwork-image=<IMAGE>] [--managed-plugin])]
                 [--kubernetes] [--rkt]
  calicoctl node stop [--force]
  calicoctl node remove [--remove-endpoints] [--hostname=<HOSTNAME>]
  calicoctl node show
  calicoctl node bgp peer add <PEER_IP> as <AS_NUM>
  calicoctl node bgp peer remove <PEER_IP>
  calicoctl node bgp peer show [--ipv4 | --ipv6]

Description:
  'calicoctl node' checks the host, registers it in etcd (address, BGP AS, agent settings),
  turns on forwarding and starts the calico-node container (the agent and BIRD) and, when asked
  (with the libnetwork option), the calico-libnetwork container (Docker's network and IPAM
  driver "calico") and the calico-dns container (names of workloads on other hosts, resolved
  inside each workload; 'calicoctl dns --help').
  Running it again is safe: a healthy node with the same configuration is left alone, a changed
  one is restarted.  It refuses to start, with nothing written, on Docker older than 20.10 or
  while anything but calico-node holds TCP port 179 (BGP) on this host.  With --runtime=none it
  registers the node and starts nothing (run 'calicoctl felix serve', 'calicoctl plugin serve'
  and 'calicoctl dns serve' yourself, e.g. under systemd); the host then needs BIRD 1.6 or
  later of its own.

Options:
  --ip=<IP>                 This host's IPv4 address for BGP; found automatically if not
                            given (the first address not on lo, docker*, cali*, tunl* or a
                            Docker bridge).
  --ip6=<IP6>               This host's IPv6 address for BGP.
  --as=<AS_NUM>             This node's AS number (default: the global one, 'calicoctl bgp
                            default-node-as').
  --node-image=<IMAGE>      The agent's image (default: calico/node:v<version>).
  --libnetwork              Also start the libnetwork plugin and DNS containers.
  --libnetwork-image=<IMAGE>  Their image (default: calico/node-libnetwork:v<version>).
  --managed-plugin          Install the driver as a Docker managed plugin, calico:latest
                            (built from that image, no registry), instead of the
                            calico-libnetwork container: dockerd starts it itself, before it
                            restores networks.  Docker names its drivers calico:latest
                            (--driver calico:latest --ipam-driver calico:latest).
  --log-dir=<LOG_DIR>       Host folder for Calico's logs [default: /var/log/calico].
  --detach=<DETACH>         "false" to stay in the foreground showing the agent's output;
                            Ctrl-C then stops the node; not with --libnetwork
                            [default: true].
  --runtime=<RUNTIME>       "docker" starts the containers, "none" only registers the node
                            [default: docker].
  --kubernetes              Not supported (the Kubernetes plugin is not part of this project).
  --rkt                     Not supported (the rkt plugin is not part of this project).
  --force                   Stop the node even though workloads still have endpoints here
                            (or networks still use the managed plugin).
  --remove-endpoints        Also delete the node's endpoints (and release their addresses).
  --hostname=<HOSTNAME>     Remove this node instead of this host's (e.g. a dead host).
  --ipv4                    Show only IPv4 peers.
  --ipv6                    Show only IPv6 peers.
"""

from calicoctl.errors import ValidationError
from calicoctl.output import msg, out, table
from calicoctl.validation import parse_as, parse_ip


def run(arguments):
    from calicoctl.datastore import open_store
    from calicoctl.nodename import node_name
    if arguments["bgp"]:
        return bgp_peer(open_store(), node_name(), arguments)
    if arguments["show"]:
        return node_show(open_store())
    if arguments["stop"]:
        return node_stop(open_store(), node_name(), arguments["--force"])
    if arguments["remove"]:
        return node_remove(open_store(), arguments["--hostname"] or node_name(),
                           arguments["--remove-endpoints"], own=not arguments["--hostname"])
    return node_start(arguments)


def _flag_value(text, name, choices):
    value = (text or "").strip().lower()
    if value not in choices:
        raise ValidationError("%s must be %s, not %r." % (name, " or ".join(choices), text))
    return value


def node_start(arguments):
    if arguments["--kubernetes"] or arguments["--rkt"]:
        raise ValidationError(
            "--%s is not supported: this calicoctl ships only the Docker (libnetwork) "
            "integration." % ("kubernetes" if arguments["--kubernetes"] else "rkt"))
    runtime = (arguments["--runtime"] or "docker").strip().lower()
    if runtime == "rkt":
        raise ValidationError("--runtime=rkt is not supported: use docker or none.")
    runtime = _flag_value(runtime, "--runtime", ("docker", "none"))
    detach = _flag_value(arguments["--detach"] or "true", "--detach", ("true", "false")) == "true"
    if not detach and arguments["--libnetwork"]:
        # Refused as the original refused it (its node command's argument checks): with the
        # libnetwork plugin only a detached node is supported.  Checked before any write.
        raise ValidationError("The only valid value for --detach is 'true' when using "
                              "--libnetwork.")
    ip = parse_ip(arguments["--ip"], version=4, what="address (--ip)") \
        if arguments["--ip"] else None
    ip6 = parse_ip(arguments["--ip6"], version=6, what="address (--ip6)") \
        if arguments["--ip6"] else None
    as_num = parse_as(arguments["--as"]) if arguments["--as"] else None

    from calicoctl.datastore import migrate, open_store
    from calicoctl.node import starter
    from calicoctl.nodename import node_name
    store = open_store()
    migrate.warn_if_unmigrated(store, msg)
    return starter.start(starter.StartRequest(
        node_name=node_name(), ip=ip, ip6=ip6, as_num=as_num, runtime=runtime, detach=detach,
        log_dir=arguments["--log-dir"] or "/var/log/calico",
        node_image=arguments["--node-image"],
        libnetwork=arguments["--libnetwork"], libnetwork_image=arguments["--libnetwork-image"],
        managed_plugin=bool(arguments.get("--managed-plugin"))),
        store, say=msg, report_check=lambda c: msg(c.line()))


def node_stop(store, name, force):
    from calicoctl.datastore.endpoints import list_endpoints
    from calicoctl.node import containers
    eps = list_endpoints(store, host=name)
    if eps and not force:
        raise ValidationError(
            "Node %s still has %d endpoint%s; remove the workloads first or use --force "
            "(their traffic stops with the node)." % (name, len(eps), "" if len(eps) == 1 else "s"))
    stopped = containers.stop_node(containers.docker_client(), msg, force=force)
    if containers.NODE_CONTAINER in stopped:
        # The agent is gone with calico-node; its liveness report would otherwise outlive it
        # by its TTL, and `calicoctl node remove` would refuse until then.
        from calicoctl.felix.status import clear_alive
        clear_alive(store, name)
    msg("Node stopped." if stopped else "No Calico node containers (or managed plugin) were "
        "running.")


def node_remove(store, name, remove_endpoints, own):
    from calicoctl.felix.status import agent_alive
    from calicoctl.node import containers, registration
    if own:
        from calicoctl.errors import CalicoError
        try:
            client = containers.docker_client()
        except CalicoError:
            client = None      # no Docker: nothing of ours can be running in it
        node = containers.find_container(client, containers.NODE_CONTAINER) if client else None
        if node is not None and containers.container_running(node):
            raise ValidationError("The node is running; stop it first with 'calicoctl node "
                                  "stop'.")
    if agent_alive(store, name):
        raise ValidationError(
            "The agent of node %s reported itself alive; stop it first ('calicoctl node stop' "
            "on %s) or wait for its liveness report to expire." % (name, name))
    removed = registration.remove(store, name, remove_endpoints)
    msg("Node %s removed%s." % (name, (" with %d endpoint%s" % (
        removed, "" if removed == 1 else "s")) if removed else ""))


def node_show(store):
    from calicoctl.node.registration import node_rows
    out(table(["Node", "IPv4", "IPv6", "AS", "Agent alive"], node_rows(store)))


def bgp_peer(store, name, arguments):
    from calicoctl.datastore import bgp
    from calicoctl.datastore.models import BGPPeer
    if arguments["add"]:
        ip = parse_ip(arguments["<PEER_IP>"], what="peer address")
        bgp.add_peer(store, BGPPeer(ip=ip, as_num=parse_as(arguments["<AS_NUM>"])), host=name)
    elif arguments["remove"]:
        bgp.remove_peer(store, parse_ip(arguments["<PEER_IP>"], what="peer address"), host=name)
    else:
        versions = (4,) if arguments["--ipv4"] else (6,) if arguments["--ipv6"] else (4, 6)
        for v in versions:
            peers = bgp.list_peers(store, v, host=name)
            if not peers:
                # The original's words, blank line included (as for the global peers).
                out("No IPv%d BGP Peers defined for this node.\n" % v)
                continue
            out(table(["Node specific IPv%d BGP Peer" % v, "AS Num"],
                      [[str(p.ip), p.as_num] for p in peers]))

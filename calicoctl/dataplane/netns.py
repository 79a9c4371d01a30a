"""The container side of a workload veth, for `calicoctl container` (Docker does this part
itself for the plugin): move the peer into the container's namespace, name it, give it its
addresses and routes via the link-local gateway.
"""

import errno
import ipaddress
import socket

from calicoctl.dataplane import sysctl
from calicoctl.dataplane.netlink import Executor, run_in_netns
from calicoctl.dataplane.veth import IPV6_GATEWAY, RT_SCOPE_LINK
from calicoctl.datastore.models import IPV4_GATEWAY
from calicoctl.errors import DataplaneError


def netns_path(pid):
    return "/proc/%d/ns/net" % int(pid)


def _family(version):
    return socket.AF_INET if version == 4 else socket.AF_INET6


def has_default_route(path, version=4):
    with Executor(path) as ex:
        return ex.default_route_link(version) is not None


def interface_exists(path, ifname):
    with Executor(path) as ex:
        return ex.link_index(ifname) is not None


def move_into_container(peer_ifname, path, ifname, nets, routes_via_gateway):
    """Move peer_ifname into the namespace at `path` as `ifname`, up, with `nets` (networks of
    the workload's addresses, /32 or /128) and, per family present, a connected route to the
    gateway plus routes via it to each destination in routes_via_gateway (e.g. 0.0.0.0/0)."""
    with Executor() as host:
        index = host.link_index(peer_ifname)
        if index is None:
            raise DataplaneError(["ip", "link", "show", peer_ifname], 1,
                                 stderr="Device does not exist")
        import os
        fd = os.open(path, os.O_RDONLY)
        try:
            host.call(["link", "set", peer_ifname, "netns", path], host.ipr.link, "set",
                      index=index, net_ns_fd=fd)
        finally:
            os.close(fd)
    with Executor(path) as ex:
        index = ex.link_index(peer_ifname)
        if ex.link_index(ifname) is not None:
            raise DataplaneError(["ip", "link", "set", peer_ifname, "name", ifname], errno.EEXIST,
                                 stderr="the container already has an interface %s" % ifname)
        ex.call(["link", "set", peer_ifname, "name", ifname, "up"], ex.ipr.link, "set",
                index=index, ifname=ifname, state="up")
        for net in nets:
            _add_address(ex, ifname, index, ipaddress.ip_network(net))
        versions = {ipaddress.ip_network(n).version for n in nets}
        for version in sorted(versions):
            _add_gateway_routes(ex, ifname, index, version,
                                [d for d in routes_via_gateway
                                 if ipaddress.ip_network(d).version == version])


def _add_address(ex, ifname, index, net):
    if net.version == 6:
        # Inside the container's namespace: /proc/sys/net shows the namespace of the thread
        # that opens it.
        run_in_netns(ex.netns, sysctl.enable_ipv6, ifname)
    ex.call(["addr", "add", str(net), "dev", ifname], ex.ipr.addr, "add", index=index,
            address=str(net.network_address), prefixlen=net.prefixlen,
            family=_family(net.version), ignore=(errno.EEXIST,))


def _add_gateway_routes(ex, ifname, index, version, destinations):
    if version == 4:
        # The gateway is not in any subnet of the workload's, so it needs its own on-link route.
        ex.call(["route", "replace", IPV4_GATEWAY, "dev", ifname], ex.ipr.route, "replace",
                dst=IPV4_GATEWAY + "/32", oif=index, scope=RT_SCOPE_LINK)
        gateway = IPV4_GATEWAY
    else:
        gateway = IPV6_GATEWAY     # link-local: on-link by fe80::/64 on every interface
    for dest in destinations:
        ex.call(["route", "replace", str(dest), "via", gateway, "dev", ifname],
                ex.ipr.route, "replace", dst=str(dest), gateway=gateway, oif=index,
                family=_family(version))


def add_address(path, ifname, net, routes_via_gateway=()):
    net = ipaddress.ip_network(net)
    with Executor(path) as ex:
        index = ex.link_index(ifname)
        if index is None:
            raise DataplaneError(["ip", "addr", "add", str(net), "dev", ifname], errno.ENODEV,
                                 stderr="the container has no interface %s" % ifname)
        _add_address(ex, ifname, index, net)
        _add_gateway_routes(ex, ifname, index, net.version, routes_via_gateway)


def remove_address(path, ifname, net):
    net = ipaddress.ip_network(net)
    with Executor(path) as ex:
        index = ex.link_index(ifname)
        if index is None:
            return
        ex.call(["addr", "del", str(net), "dev", ifname], ex.ipr.addr, "del", index=index,
                address=str(net.network_address), prefixlen=net.prefixlen,
                family=_family(net.version), ignore=(errno.EADDRNOTAVAIL,))

"""Workload veths: the host side (`cali<11 of the endpoint id>`) routes to the workload; the
container side carries its addresses and a default route via a link-local gateway the host
answers for by proxy ARP (IPv4) or owns outright (IPv6).
"""

import errno
import ipaddress
import logging
import socket

from calicoctl.dataplane import sysctl
from calicoctl.dataplane.netlink import Executor, if_index
from calicoctl.datastore.models import WORKLOAD_MAC
from calicoctl.errors import DataplaneError

log = logging.getLogger(__name__)

# The IPv6 gateway of every workload: a fixed link-local address we put on each host-side veth.
# A fixed address (rather than the veth's random EUI-64 one) lets the plugin answer Join before
# the kernel has even made up a link-local address, and lets the record name the gateway.
IPV6_GATEWAY = "fe80::1"
DEFAULT_MTU = 1500
# IP-in-IP adds a 20-byte outer IPv4 header.
IPIP_OVERHEAD = 20
RT_SCOPE_LINK = 253
# An IPv4 route is "link" scope when it points straight at the veth (no next hop).
_HOST_ROUTE_PROTO = 3   # RTPROT_BOOT, what `ip route add` uses


def temp_peer_name(endpoint_id):
    """The container side's name while it is still on the host (Docker renames it to eth<n>)."""
    return ("tmp" + endpoint_id)[:15]


def uplink_mtu(executor=None):
    """The MTU of the interface holding this host's default route (1500 if there is none)."""
    def find(ex):
        for family in (4, 6):
            index = ex.default_route_link(family)
            if index:
                return ex.link_mtu(index) or DEFAULT_MTU
        return DEFAULT_MTU
    if executor is not None:
        return find(executor)
    with Executor() as ex:
        return find(ex)


def workload_mtu(override=None, ipip=False):
    if override:
        return int(override)
    return uplink_mtu() - (IPIP_OVERHEAD if ipip else 0)


def veth_exists(host_ifname):
    return if_index(host_ifname) is not None


def list_veths(prefix):
    """Names of the veth links whose name starts with prefix."""
    with Executor() as ex:
        names = []
        for link in ex.ipr.get_links():
            info = dict(link.get("attrs", [])).get("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            name = link.get_attr("IFLA_IFNAME")
            if kind == "veth" and name and name.startswith(prefix):
                names.append(name)
        return names


def create_veth(host_ifname, peer_ifname, mtu, mac=WORKLOAD_MAC, executor=None):
    """Create the pair (host side up), or find it already there.  The container side gets the
    workload MAC here: Docker may not apply the MAC we answer, so we set it ourselves."""
    if executor is None:
        with Executor() as ex:
            return create_veth(host_ifname, peer_ifname, mtu, mac, ex)
    ex = executor
    if ex.link_index(host_ifname) is not None:
        return False
    # Created up (IFF_UP in the same request): one netlink round trip fewer per container.
    ex.call(["link", "add", host_ifname, "mtu", str(mtu), "up", "type", "veth", "peer", "name",
             peer_ifname, "address", mac, "mtu", str(mtu)],
            ex.ipr.link, "add", ifname=host_ifname, kind="veth", mtu=mtu, state="up",
            peer={"ifname": peer_ifname, "address": mac, "mtu": mtu})
    return True


def configure_host_side(host_ifname, ipv4_nets=(), ipv6_nets=(), executor=None):
    """proxy ARP (and NDP), the IPv6 gateway address, and one host route per workload address."""
    ipv6 = bool(ipv6_nets)
    sysctl.enable_proxy_arp(host_ifname)
    if ipv6:
        sysctl.enable_ipv6(host_ifname)
        sysctl.enable_proxy_ndp(host_ifname)
        sysctl.write("net/ipv6/conf/%s/forwarding" % host_ifname, 1)
    sysctl.enable_forwarding(ipv6)
    if executor is None:
        with Executor() as ex:
            return _configure_links(ex, host_ifname, ipv4_nets, ipv6_nets)
    return _configure_links(executor, host_ifname, ipv4_nets, ipv6_nets)


def _configure_links(ex, host_ifname, ipv4_nets, ipv6_nets):
    index = ex.link_index(host_ifname)
    if index is None:
        raise DataplaneError(["ip", "link", "show", host_ifname], 1,
                             stderr="Device does not exist")
    if ipv6_nets:
        ex.call(["addr", "add", IPV6_GATEWAY + "/64", "dev", host_ifname, "nodad"],
                ex.ipr.addr, "add", index=index, address=IPV6_GATEWAY, prefixlen=64,
                family=socket.AF_INET6, flags=0x02, ignore=(errno.EEXIST,))  # IFA_F_NODAD
    for net in list(ipv4_nets) + list(ipv6_nets):
        add_host_route(ex, host_ifname, index, net)


def add_host_route(ex, host_ifname, index, net):
    net = ipaddress.ip_network(net)
    fam = socket.AF_INET if net.version == 4 else socket.AF_INET6
    ex.call(["route", "replace", str(net), "dev", host_ifname],
            ex.ipr.route, "replace", dst=str(net), oif=index, family=fam,
            scope=RT_SCOPE_LINK if net.version == 4 else 0, proto=_HOST_ROUTE_PROTO)


def remove_host_route(host_ifname, net):
    net = ipaddress.ip_network(net)
    fam = socket.AF_INET if net.version == 4 else socket.AF_INET6
    with Executor() as ex:
        index = ex.link_index(host_ifname)
        if index is None:
            return   # the kernel removed the route with the link
        # The same attributes as the add: the kernel only deletes a route that matches them.
        ex.call(["route", "del", str(net), "dev", host_ifname], ex.ipr.route, "del",
                dst=str(net), oif=index, family=fam, proto=_HOST_ROUTE_PROTO,
                scope=RT_SCOPE_LINK if net.version == 4 else 0,
                ignore=(errno.ESRCH, errno.ENOENT))


def remove_veth(host_ifname):
    """Delete the pair (the kernel drops its routes with it).  True if it existed."""
    with Executor() as ex:
        return ex.link_del(host_ifname)


def set_up_workload(host_ifname, peer_ifname, mtu, ipv4_nets=(), ipv6_nets=(),
                    mac=WORKLOAD_MAC):
    """Everything the host side needs; on failure, undo whatever was created here."""
    with Executor() as ex:      # one netlink socket for the whole set-up
        created = create_veth(host_ifname, peer_ifname, mtu, mac, ex)
        try:
            configure_host_side(host_ifname, ipv4_nets, ipv6_nets, ex)
        except Exception:
            if created:
                ex.link_del(host_ifname)
            raise
    return created

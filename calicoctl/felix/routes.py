"""Desired routes, computed by pure functions.

Each local endpoint gets a /32 (/128) route to its host-side veth (with proxy ARP / proxy NDP so
the workload's link-local gateway answers).  For pools with IPIP, other hosts' blocks go through
the tunnel device (Debian's BIRD has no krt_tunnel, so the agent installs these itself).
"""

import ipaddress
from typing import NamedTuple

from calicoctl.datastore.models import canonical_net


class Route(NamedTuple):
    """A named tuple, not a frozen dataclass: a cold start makes one per local endpoint, and a
    tuple is made without the dataclass's four attribute writes (a third less time for the
    routes of 10,000 endpoints)."""
    dst: str            # "192.168.0.2/32"
    dev: str            # output interface
    gateway: str = None  # next hop (tunnel routes: the other host's underlay address)
    onlink: bool = False


def endpoint_routes(endpoint):
    """The routes of one local endpoint (regardless of whether its interface exists yet)."""
    if endpoint.state != "active" or not endpoint.name:
        return set()
    return {Route(canonical_net(n), endpoint.name)
            for n in list(endpoint.ipv4_nets) + list(endpoint.ipv6_nets)}


def local_routes(endpoints, present_ifaces):
    """Routes for every local endpoint whose interface exists now."""
    routes = set()
    for ep in endpoints:
        if ep.name in present_ifaces:
            routes |= endpoint_routes(ep)
    return routes


def ipip_pools(pools):
    return [p for p in pools if p.ipip and p.version == 4]


def tunnel_routes(pools, affinities, host_ips, me):
    """Routes through the pool's tunnel device to every other host's blocks in IPIP pools.

    affinities: {host: set(block cidr strings)}; host_ips: {host: underlay IPv4 address}."""
    routes = set()
    tunnelled = ipip_pools(pools)
    for host, blocks in affinities.items():
        if host == me or not host_ips.get(host):
            continue
        for block in blocks:
            net = ipaddress.ip_network(block, strict=False)
            for pool in tunnelled:
                if net.version == 4 and net.subnet_of(pool.cidr):
                    routes.add(Route(str(net), pool.ipip, str(host_ips[host]), onlink=True))
    return routes

"""Tags and pools as ipsets, computed by pure functions.

One set per tag per family (hash:ip) holding the addresses of every endpoint, on any host, whose
profiles carry the tag; a membership change is then one set update and no chain is rewritten.
Pools become hash:net sets the NAT and IPIP rules match on.
"""

import functools
import ipaddress

from calicoctl.datastore.models import is_canonical_v4_host
from calicoctl.felix.policy import short_name

SET_PREFIX = "felix-"
# ipset names hold at most 31 characters.
MAX_SET = 31
ALL_POOLS = "felix-pools-v%d"         # every pool: NAT leaves traffic to them alone
MASQ_POOLS = "felix-masq-v%d"         # pools with nat-outgoing
CALICO_HOSTS = "felix-hosts-v4"       # the hosts' underlay addresses: the only IPIP senders


def tag_set(tag, version):
    head = "%sv%d-" % (SET_PREFIX, version)
    return head + short_name(tag, MAX_SET - len(head) - 2)


def temp_name(name):
    """The name a set is filled under before being swapped in (same length rules)."""
    return SET_PREFIX + "t" + name[len(SET_PREFIX):][:MAX_SET - len(SET_PREFIX) - 1]


def endpoint_addresses(endpoint, version):
    """The host addresses of an endpoint in one family, as strings without a prefix length for
    single addresses (hash:ip wants plain addresses)."""
    nets = endpoint.ipv4_nets if version == 4 else endpoint.ipv6_nets
    out = set()
    for n in nets:
        out.update(net_addresses(n))
    return out


@functools.lru_cache(maxsize=1 << 16)
def net_addresses(text):
    """One endpoint net's addresses (each address of a small net: hash:ip and nft address sets
    take addresses).  Cached: a cold start asks for every endpoint's several times, and
    parsing was half its desired-state time at 10,000 endpoints (bench/felix.py)."""
    if is_canonical_v4_host(text):
        return frozenset((text[:-3],))
    addr, _, length = text.partition("/")
    if length in ("32", "128"):
        # The usual case, one address: parsing it alone is a third of the cost of a network.
        ip = ipaddress.ip_address(addr)
        if ip.max_prefixlen == int(length):
            return frozenset((str(ip),))
    net = ipaddress.ip_network(text, strict=False)
    if net.num_addresses == 1:
        return frozenset((str(net.network_address),))
    return frozenset(str(a) for a in net)


def tag_members(endpoints, profile_tags, version):
    """{tag: set(addresses)} for every tag any profile carries.

    endpoints: every endpoint of every host; profile_tags: {profile: [tags]}."""
    members = {tag: set() for tags in profile_tags.values() for tag in tags}
    for ep in endpoints:
        if ep.state != "active":
            continue
        addrs = endpoint_addresses(ep, version)
        if not addrs:
            continue
        for profile in ep.profile_ids:
            for tag in profile_tags.get(profile, ()):
                members[tag].update(addrs)
    return members


def tag_sets(members, version):
    """{set name: ("hash:ip", family, members)} from tag_members()."""
    family = "inet" if version == 4 else "inet6"
    return {tag_set(tag, version): ("hash:ip", family, frozenset(addrs))
            for tag, addrs in members.items()}


def pool_sets(pools, version):
    """The all-pools and masquerade-pools sets of one family."""
    family = "inet" if version == 4 else "inet6"
    mine = [p for p in pools if p.version == version]
    return {ALL_POOLS % version: ("hash:net", family, frozenset(str(p.cidr) for p in mine)),
            MASQ_POOLS % version: ("hash:net", family,
                                   frozenset(str(p.cidr) for p in mine if p.masquerade))}


def hosts_set(host_ips):
    return {CALICO_HOSTS: ("hash:ip", "inet", frozenset(str(ip) for ip in host_ips))}

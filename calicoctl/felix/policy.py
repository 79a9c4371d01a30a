"""Policy as iptables chains (filter table), computed by pure functions.

Every function returns {chain name: [rule, ...]} where a rule is the text after `-A <chain>`.
The layout (all chains start with CHAIN_PREFIX, so the agent never touches anything else):

    INPUT   -> felix-INPUT   (one jump, at the top)
    FORWARD -> felix-FORWARD (one jump, at the top: above Docker's chains and its policy DROP)
    felix-FORWARD / felix-INPUT: invalid dropped, established accepted, then
        -i cali+ -> felix-FROM-ENDPOINT -> felix-FROM-EP-<bucket> -> felix-from-<iface>
        -o cali+ -> felix-TO-ENDPOINT   -> felix-TO-EP-<bucket>   -> felix-to-<iface>
    felix-from-<iface>: anti-spoofing, then each profile's outbound chain in profile_ids order,
        RETURN once one allowed the packet, DROP at the end.
    felix-p-<profile>-i / -o: the profile's rules; allow = goto felix-ALLOW (sets a mark bit and
        returns to the endpoint chain), deny = DROP.

Dispatch is bucketed by the two characters after the interface prefix (Docker endpoint ids are
hex, so up to 256 buckets): adding one endpoint rewrites one bucket of ~n/256 rules instead of an
n-rule chain, which keeps an incremental change independent of the number of endpoints (bench).
"""

import functools
import hashlib
import ipaddress
import re

from calicoctl.datastore.rules import normalise_rule, rule_versions
from calicoctl.errors import ValidationError

CHAIN_PREFIX = "felix-"
INPUT_CHAIN = "felix-INPUT"
FORWARD_CHAIN = "felix-FORWARD"
FROM_ENDPOINT = "felix-FROM-ENDPOINT"
TO_ENDPOINT = "felix-TO-ENDPOINT"
ALLOW_CHAIN = "felix-ALLOW"
# The mark bit a profile sets when it allows a packet.  Felix 1.x used the same bit; Docker and
# kube-proxy use other bits (0x4000, 0x8000), so nothing else reads or clears it.
ALLOW_MARK = "0x1000000/0x1000000"
CLEAR_ALLOW_MARK = "-j MARK --set-xmark 0x0/0x1000000"
# Same idea for anti-spoofing with several addresses: set = "source not yet seen as ours".
SPOOF_MARK = "0x2000000/0x2000000"
# iptables chain names hold at most 28 characters (XT_EXTENSION_MAXNAMELEN - 1).
MAX_CHAIN = 28
# multiport takes at most 15 ports, a range counting as two.
MULTIPORT_MAX = 15
BUCKET_CHARS = 2
TOP_JUMPS = {"INPUT": INPUT_CHAIN, "FORWARD": FORWARD_CHAIN}
ENDPOINT_TO_HOST_ACTIONS = ("DROP", "RETURN", "ACCEPT")
_SAFE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def short_name(name, room):
    """name if it fits in room characters, else a readable prefix plus a hash (never clashes
    with a real name: '~' is not allowed in Calico names).  The prefix keeps only characters
    iptables and ipset take in a name: a tag may be any string, "odd tag!" included."""
    if len(name) <= room and _SAFE.match(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return "%s~%s" % (re.sub(r"[^A-Za-z0-9_.\-]", "_", name[:room - 9]), digest)


@functools.lru_cache(maxsize=4096)     # asked once per endpoint using the profile
def profile_chain(profile, direction):
    """direction 'inbound' | 'outbound' -> felix-p-<profile>-i / -o."""
    suffix = "-i" if direction == "inbound" else "-o"
    room = MAX_CHAIN - len(CHAIN_PREFIX + "p-") - len(suffix)
    return "%sp-%s%s" % (CHAIN_PREFIX, short_name(profile, room), suffix)


def endpoint_chain(iface, direction):
    """direction 'to' (traffic to the workload) | 'from' (traffic it sends)."""
    head = "%s%s-" % (CHAIN_PREFIX, direction)
    return head + short_name(iface, MAX_CHAIN - len(head))


def bucket_of(iface, prefix):
    return iface[len(prefix):len(prefix) + BUCKET_CHARS] if iface.startswith(prefix) \
        else iface[:BUCKET_CHARS]


def bucket_chain(direction, bucket):
    head = "%s%s-EP-" % (CHAIN_PREFIX, "FROM" if direction == "from" else "TO")
    return head + short_name(bucket, MAX_CHAIN - len(head))


# --- one rule ---------------------------------------------------------------------------------

def _ports_chunks(ports):
    """Split a port list into multiport-sized comma lists (a range counts twice)."""
    chunks, current, used = [], [], 0
    for p in ports:
        weight = 2 if isinstance(p, str) and ":" in p else 1
        if used + weight > MULTIPORT_MAX:
            chunks.append(current)
            current, used = [], 0
        current.append(str(p))
        used += weight
    if current:
        chunks.append(current)
    return [",".join(c) for c in chunks]


def _protocol(rule, version):
    proto = rule.get("protocol")
    if proto is None:
        return None
    if proto == "icmpv6":
        return "ipv6-icmp"     # the name ip6tables-save prints
    if isinstance(proto, int):
        # By number: iptables-save prints /etc/protocols names up to 1.8.9 but numbers from
        # 1.8.10 on (Debian 13); executor.parse_save turns either into the number, so an
        # unchanged chain compares equal on both and is never rewritten.
        return canonical_protocol(str(proto))
    return str(proto)


# Names iptables knows by itself and always prints as names, whatever its version.
IPTABLES_PROTOCOL_NAMES = {"tcp", "udp", "udplite", "icmp", "ipv6-icmp", "icmpv6", "esp", "ah",
                           "sctp", "mh", "all"}
_PROTOCOL_NUMBERS = {}


def canonical_protocol(text):
    """`-p` as we write and compare it: a built-in name as it is, anything else by number
    ("gre" and "47" are both "47")."""
    if text in ("icmpv6", "58"):
        return "ipv6-icmp"        # what we write; ip6tables-save prints any of the three
    if text in IPTABLES_PROTOCOL_NAMES or text.isdigit():
        return text
    if not _PROTOCOL_NUMBERS:
        _PROTOCOL_NUMBERS[""] = None          # read at most once, even if the file is missing
        try:
            with open("/etc/protocols") as f:
                for line in f:
                    words = line.split("#", 1)[0].split()
                    if len(words) >= 2 and words[1].isdigit():
                        for name in [words[0], *words[2:]]:
                            _PROTOCOL_NUMBERS.setdefault(name, words[1])
        except OSError:
            pass
    return _PROTOCOL_NUMBERS.get(text) or text


def rule_to_iptables(rule, version, ipset_name):
    """One Calico rule -> the match texts (several when ports need splitting), or [] when the
    rule does not apply to this IP family.  ipset_name(tag, version) names a tag's set.

    The action is left to the caller.  A rule that does not validate raises ValidationError:
    callers skip it (never widen it)."""
    rule = normalise_rule(rule)
    if version not in rule_versions(rule):
        return []
    for side in ("src_net", "dst_net"):
        if side in rule and ipaddress.ip_network(rule[side]).version != version:
            return []
    parts = []
    if "src_net" in rule:
        parts.append("-s %s" % rule["src_net"])
    if "dst_net" in rule:
        parts.append("-d %s" % rule["dst_net"])
    proto = _protocol(rule, version)
    if proto:
        parts.append("-p %s" % proto)
    if "src_tag" in rule:
        parts.append("-m set --match-set %s src" % ipset_name(rule["src_tag"], version))
    if "dst_tag" in rule:
        parts.append("-m set --match-set %s dst" % ipset_name(rule["dst_tag"], version))
    if "icmp_type" in rule:
        icmp = str(rule["icmp_type"])
        if "icmp_code" in rule:
            icmp += "/%d" % rule["icmp_code"]
        parts.append("-m icmp --icmp-type %s" % icmp if version == 4
                     else "-m icmp6 --icmpv6-type %s" % icmp)
    base = " ".join(parts)
    variants = [base]
    for side, flag in (("src_ports", "--sports"), ("dst_ports", "--dports")):
        if side in rule:
            variants = [("%s -m multiport %s %s" % (v, flag, chunk)).strip()
                        for v in variants for chunk in _ports_chunks(rule[side])]
    return variants


def rule_lines(rule, version, ipset_name):
    target = "-g %s" % ALLOW_CHAIN if rule.get("action", "allow") == "allow" else "-j DROP"
    return [("%s %s" % (m, target)).strip() for m in rule_to_iptables(rule, version, ipset_name)]


# --- chains -----------------------------------------------------------------------------------

def profile_chains(profile, rules, version, ipset_name, on_bad_rule=None):
    """The two chains of one profile.  rules: a datastore.rules.Rules (or None: no rules)."""
    chains = {}
    for direction in ("inbound", "outbound"):
        lines = []
        for rule in (rules.direction(direction) if rules is not None else []):
            try:
                lines.extend(rule_lines(rule, version, ipset_name))
            except ValidationError as exc:
                if on_bad_rule:
                    on_bad_rule(profile, direction, rule, exc)
        chains[profile_chain(profile, direction)] = lines
    return chains


def _anti_spoof(endpoint, version):
    nets = endpoint.ipv4_nets if version == 4 else endpoint.ipv6_nets
    lines = []
    if endpoint.mac:
        lines.append("-m mac ! --mac-source %s -j DROP" % endpoint.mac.lower())
    if len(nets) == 1:
        lines.append("! -s %s -j DROP" % nets[0])
    else:
        lines.append("-j MARK --set-xmark %s" % SPOOF_MARK)
        lines.extend("-s %s -j MARK --set-xmark 0x0/%s" % (n, SPOOF_MARK.split("/")[1])
                     for n in nets)
        lines.append("-m mark --mark %s -j DROP" % SPOOF_MARK)
    return lines


def endpoint_chains(endpoint, version):
    """felix-to-<iface> and felix-from-<iface> of one local endpoint; none in a family the
    endpoint has no address of (its traffic of that family is dropped by the dispatch chain,
    which also halves the rules of single-stack hosts)."""
    chains = {}
    if not (endpoint.ipv4_nets if version == 4 else endpoint.ipv6_nets):
        return chains
    for direction, profile_dir in (("to", "inbound"), ("from", "outbound")):
        lines = _anti_spoof(endpoint, version) if direction == "from" else []
        if endpoint.state == "active":
            for profile in endpoint.profile_ids:
                lines.append(CLEAR_ALLOW_MARK)
                lines.append("-j %s" % profile_chain(profile, profile_dir))
                lines.append("-m mark --mark %s -j RETURN" % ALLOW_MARK)
        lines.append("-j DROP")          # nothing allowed it: the default is closed
        chains[endpoint_chain(endpoint.name, direction)] = lines
    return chains


def dispatch_bucket(direction, ifaces):
    """One bucket chain: exact interface -> endpoint chain; anything else dropped."""
    flag = "-i" if direction == "from" else "-o"
    lines = ["%s %s -g %s" % (flag, i, endpoint_chain(i, direction)) for i in sorted(ifaces)]
    lines.append("-j DROP")
    return lines


def dispatch_root(direction, buckets, prefix):
    flag = "-i" if direction == "from" else "-o"
    lines = ["%s %s%s+ -g %s" % (flag, prefix, b, bucket_chain(direction, b))
             for b in sorted(buckets)]
    lines.append("-j DROP")           # a workload interface we know nothing about
    return lines


def dispatch_chains(ifaces, prefix):
    """Every dispatch chain for a set of local interface names."""
    buckets = {}
    for i in ifaces:
        buckets.setdefault(bucket_of(i, prefix), set()).add(i)
    chains = {}
    for direction, root in (("from", FROM_ENDPOINT), ("to", TO_ENDPOINT)):
        chains[root] = dispatch_root(direction, buckets, prefix)
        for b, members in buckets.items():
            chains[bucket_chain(direction, b)] = dispatch_bucket(direction, members)
    return chains


def top_chains(version, prefix, endpoint_to_host="DROP", ipip_hosts_set=None):
    """felix-INPUT, felix-FORWARD and felix-ALLOW.

    endpoint_to_host: what happens to workload -> host traffic its endpoint allowed (DROP,
    RETURN = carry on into the host's own INPUT rules, ACCEPT).  ipip_hosts_set: name of the
    ipset of Calico hosts when IPIP pools exist (IPv4 only): IPIP from anyone else is dropped."""
    if endpoint_to_host not in ENDPOINT_TO_HOST_ACTIONS:
        endpoint_to_host = "DROP"
    wl = prefix + "+"
    forward = [
        "-i %s -m conntrack --ctstate INVALID -j DROP" % wl,
        "-o %s -m conntrack --ctstate INVALID -j DROP" % wl,
        "-i %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" % wl,
        "-o %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" % wl,
        "-i %s -j %s" % (wl, FROM_ENDPOINT),
        "-o %s -j %s" % (wl, TO_ENDPOINT),
        # Both endpoints' policies allowed it: accept here, before Docker's FORWARD chains and
        # its policy DROP see it.
        "-i %s -j ACCEPT" % wl,
        "-o %s -j ACCEPT" % wl,
    ]
    inp = []
    if ipip_hosts_set and version == 4:
        inp.append("-p ipencap -m set ! --match-set %s src -j DROP" % ipip_hosts_set)
    inp += [
        "-i %s -m conntrack --ctstate INVALID -j DROP" % wl,
        "-i %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" % wl,
    ]
    if version == 6:
        # Neighbour discovery (router/neighbour solicitation and advertisement) must reach the
        # host whatever the policy, or the workload cannot find its gateway.
        inp += ["-i %s -p ipv6-icmp -m icmp6 --icmpv6-type %d -j ACCEPT" % (wl, t)
                for t in (133, 135, 136)]
    inp.append("-i %s -j %s" % (wl, FROM_ENDPOINT))
    if endpoint_to_host != "RETURN":
        inp.append("-i %s -j %s" % (wl, endpoint_to_host))
    return {FORWARD_CHAIN: forward, INPUT_CHAIN: inp,
            ALLOW_CHAIN: ["-j MARK --set-xmark %s" % ALLOW_MARK]}


def chain_rank(chain):
    """Order in which chains are filled when a change is split over several restores: a chain
    is filled before any chain that jumps to it, so nothing reachable is ever half-written."""
    if chain == ALLOW_CHAIN:
        return 0
    if chain.startswith(CHAIN_PREFIX + "p-"):
        return 1
    if chain.startswith((CHAIN_PREFIX + "to-", CHAIN_PREFIX + "from-")):
        return 2
    if chain.startswith((CHAIN_PREFIX + "TO-EP-", CHAIN_PREFIX + "FROM-EP-")):
        return 3
    if chain in (FROM_ENDPOINT, TO_ENDPOINT):
        return 4
    return 5

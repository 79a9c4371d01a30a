"""Policy as one native nftables table (`inet calico`), computed by pure functions.

The iptables layout (felix/policy.py) gives every endpoint two chains and a dispatch rule, and
every change to the filter table makes iptables-nft read the whole table back: one new endpoint
costs 3x more at 10,000 endpoints than at 1,000 (bench/felix.py).  Here an endpoint is only
set elements, so its cost stays flat (docs/architecture.md, "The two policy dataplanes"):

    forward / input (base chains, priority filter - 10: before iptables' FORWARD and INPUT)
        invalid dropped, established accepted, then
        iifname cali* -> from-ep:  anti-spoofing by lookups in the src4/src6/mac sets, then
                                   a rule per profile list in use: iifname in its interface
                                   set (e4-<hash> / e6-<hash>) -> goto its list chain
        oifname cali* -> to-ep:    the same with oifname
    list chains (ol-<hash> / il-<hash>): one per ordered profile list and direction, shared by
        every endpoint with that list.  Each profile's chain in order, RETURN once one allowed
        the packet, drop at the end (the same semantics as felix-to-/felix-from-<iface>).
    e4-<hash> / e6-<hash>: the interfaces of the endpoints with that profile list (and an
        address of that family).  Not a verdict map keyed by interface: after a transaction
        that adds a verdict the kernel checks every jump and goto of the table again, every
        map element included, so an endpoint as two verdict elements cost twice as much at
        10,000 endpoints as at 1,000; as set elements it costs the same.  What that costs
        instead: a new flow tries the lists' rules in turn, one hash lookup per profile list
        on the host (a Docker host has one per network it runs containers in).
    p-<profile>-i / -o: the profile's rules; allow sets ALLOW_MARK and returns, deny drops.
    t4-<tag> / t6-<tag>: the addresses carrying a tag (the ipsets' job in the iptables layout).

A drop in any base chain is final, so this table decides.  What it lets through still passes
iptables' FORWARD, where Docker's policy is DROP: the iptables filter table then holds only the
constant rules of `iptables_chains` (no per-endpoint rule), which accept what our table marked
as passed and drop other workload traffic, so without our table nothing gets through.  nat, raw
and the pool ipsets stay as they are.

Every function returns plain data: chains as {name: [rule text]}, sets as
{name: (type, frozenset(element text))}.
"""

import functools
import hashlib
import ipaddress
import re

from calicoctl.datastore.rules import normalise_rule, rule_versions
from calicoctl.errors import ValidationError
from calicoctl.felix.ipsets import endpoint_addresses
from calicoctl.felix.policy import (ENDPOINT_TO_HOST_ACTIONS, FORWARD_CHAIN, INPUT_CHAIN,
                                    canonical_protocol)

FAMILY = "inet"
TABLE = "calico"
# Before iptables' filter chains (priority 0), so our drop comes first whatever Docker has there.
PRIORITY = -10
FORWARD = "forward"
INPUT = "input"
FROM_EP = "from-ep"
TO_EP = "to-ep"
# Anti-spoofing: (interface, address) and (interface, MAC) pairs a workload may send from.
SRC_SETS = {4: "src4", 6: "src6"}
MAC_SET = "mac"
HAS_MAC_SET = "hasmac"
ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
# The bit a profile sets when it allows a packet; the same bit as the iptables layout (Docker and
# kube-proxy use 0x4000 and 0x8000), and nothing but our list chains reads or clears it.
ALLOW_BIT = 0x1000000
# The bit our base chains set on what they let through to or from a workload; iptables then
# accepts only packets that carry it, so without our table (deleted by hand, not yet loaded)
# workload traffic is dropped, never let through unchecked.
PASSED_BIT = 0x4000000
MARK_PASSED = "meta mark set meta mark | 0x%08x" % PASSED_BIT
IPTABLES_PASSED = "0x%x/0x%x" % (PASSED_BIT, PASSED_BIT)
SET_ALLOW = "meta mark set meta mark | 0x%08x return" % ALLOW_BIT
CLEAR_ALLOW = "meta mark set meta mark & 0x%08x" % (0xffffffff ^ ALLOW_BIT)
ALLOWED = "meta mark & 0x%08x == 0x%08x return" % (ALLOW_BIT, ALLOW_BIT)
# Neighbour discovery (router and neighbour solicitation, neighbour advertisement) reaches the
# host whatever the policy, or a workload cannot find its gateway.
ND_TYPES = "nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert"
# nft names: a letter first, then letters, digits, _ . - (up to 255 characters; we stay short).
_PLAIN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
ICMP_WORDS = {4: "icmp", 6: "icmpv6"}


def _name(head, name):
    """head + name when name is plain and short, else head + 'x' + a hash of it.  (nft names
    cannot hold '~', which keeps the iptables layout's hashed names apart; a plain name of the
    form x<20 hex digits> is the one that could meet a hashed one.)"""
    if _PLAIN.match(name):
        return head + name
    return head + "x" + hashlib.sha256(name.encode()).hexdigest()[:20]


@functools.lru_cache(maxsize=4096)     # asked once per endpoint using the profile
def profile_chain(profile, direction):
    """direction 'inbound' | 'outbound' -> p-<profile>-i / -o (p-x<hash>-i for odd names)."""
    return _name("p-", profile) + ("-i" if direction == "inbound" else "-o")


def tag_set(tag, version):
    return _name("t%d-" % version, tag)


@functools.lru_cache(maxsize=4096)
def _list_digest(profile_ids):
    return hashlib.sha256("\n".join(profile_ids).encode()).hexdigest()[:16]


def list_chain(profile_ids, direction):
    """The chain shared by every endpoint whose ordered profile list is profile_ids."""
    return ("il-" if direction == "inbound" else "ol-") + _list_digest(profile_ids)


def list_set(profile_ids, version):
    """The interfaces of the endpoints whose ordered profile list is profile_ids and that have
    an address of this family."""
    return "e%d-%s" % (version, _list_digest(profile_ids))


def _quote(text):
    return '"%s"' % text


# --- one rule ---------------------------------------------------------------------------------

def _ports(ports):
    items = [str(p).replace(":", "-") for p in ports]
    return items[0] if len(items) == 1 else "{ %s }" % ", ".join(items)


def _protocol_word(proto):
    """`meta l4proto` operand: the names nft and iptables both know, else the number."""
    if proto == "icmpv6":
        return "ipv6-icmp"
    if isinstance(proto, int):
        return str(proto)
    text = canonical_protocol(proto)
    return "ipv6-icmp" if text == "ipv6-icmp" else text


def rule_matches(rule, version, tag_set_name=tag_set):
    """One Calico rule -> its nft match text for one family, or None when the rule does not
    apply to that family.  Raises ValidationError for a rule that does not validate: callers
    skip it (never widen it)."""
    rule = normalise_rule(rule)
    if version not in rule_versions(rule):
        return None
    ip = "ip" if version == 4 else "ip6"
    parts = []
    for side, word in (("src_net", "saddr"), ("dst_net", "daddr")):
        if side in rule:
            net = ipaddress.ip_network(rule[side])
            if net.version != version:
                return None
            parts.append("%s %s %s" % (ip, word, net))
    for side, word in (("src_tag", "saddr"), ("dst_tag", "daddr")):
        if side in rule:
            parts.append("%s %s @%s" % (ip, word, tag_set_name(rule[side], version)))
    proto = rule.get("protocol")
    if proto is not None:
        parts.append("meta l4proto %s" % _protocol_word(proto))
    for side, word in (("src_ports", "sport"), ("dst_ports", "dport")):
        if side in rule:
            head = proto if proto in ("tcp", "udp") else "th"
            parts.append("%s %s %s" % (head, word, _ports(rule[side])))
    if "icmp_type" in rule:
        icmp = ICMP_WORDS[version]
        parts.append("%s type %d" % (icmp, rule["icmp_type"]))
        if "icmp_code" in rule:
            parts.append("%s code %d" % (icmp, rule["icmp_code"]))
    return " ".join(parts)


def rule_lines(rule, tag_set_name=tag_set):
    """A rule's lines in an inet chain: one line when both families read it the same way (no
    address, tag or ICMP word), else one line per family it applies to, each saying its family."""
    verdict = SET_ALLOW if rule.get("action", "allow") == "allow" else "drop"
    per_family = {v: rule_matches(rule, v, tag_set_name) for v in (4, 6)}
    if per_family[4] is not None and per_family[4] == per_family[6]:
        return [("%s %s" % (per_family[4], verdict)).strip()]
    return [("meta nfproto ipv%d %s %s" % (v, m, verdict)).replace("  ", " ")
            for v, m in per_family.items() if m is not None]


def tags_of(rules_lines):
    """The tag sets a chain's lines look up."""
    return {w[1:] for line in rules_lines for w in line.split() if w.startswith(("@t4-", "@t6-"))}


# --- chains -----------------------------------------------------------------------------------

def profile_chains(profile, rules, on_bad_rule=None):
    """The two chains of one profile (both families).  rules: a datastore.rules.Rules or None."""
    chains = {}
    for direction in ("inbound", "outbound"):
        lines = []
        for rule in (rules.direction(direction) if rules is not None else []):
            try:
                lines.extend(rule_lines(rule))
            except ValidationError as exc:
                if on_bad_rule:
                    on_bad_rule(profile, direction, rule, exc)
        chains[profile_chain(profile, direction)] = lines
    return chains


def list_chain_rules(profile_ids, direction):
    lines = []
    for profile in profile_ids:
        lines += [CLEAR_ALLOW, "jump %s" % profile_chain(profile, direction), ALLOWED]
    lines.append("drop")             # nothing allowed it: the default is closed
    return lines


def endpoint_list(endpoint):
    """The ordered profile list whose chains an endpoint's traffic goes through, or None when
    it is dropped whatever the profiles say (inactive, no profile, no address)."""
    if endpoint.state != "active" or not endpoint.profile_ids:
        return None
    if not (endpoint.ipv4_nets or endpoint.ipv6_nets):
        return None
    return tuple(endpoint.profile_ids)


def endpoint_elements(endpoint):
    """{set name: element texts} for one local endpoint; nothing in a family it has no address
    of (its traffic of that family then finds no interface set and is dropped)."""
    out = {}
    iface = _quote(endpoint.name)
    ids = endpoint_list(endpoint)
    for v in (4, 6):
        addrs = endpoint_addresses(endpoint, v)
        if not addrs:
            continue
        out[SRC_SETS[v]] = {"%s . %s" % (iface, a) for a in addrs}
        if ids is not None:
            out[list_set(ids, v)] = {iface}
    if endpoint.mac and out:
        out[MAC_SET] = {"%s . %s" % (iface, endpoint.mac.lower())}
        out[HAS_MAC_SET] = {iface}
    return out


def list_parts(profile_ids):
    """What one profile list in use needs: ({list chain: rules}, {interface set: kind})."""
    return ({list_chain(profile_ids, d): list_chain_rules(profile_ids, d)
             for d in ("inbound", "outbound")},
            {list_set(profile_ids, v): "ifname" for v in (4, 6)})


def fixed_sets():
    """The anti-spoofing sets, which always exist (filled per endpoint)."""
    return {
        SRC_SETS[4]: "ifname . ipv4_addr", SRC_SETS[6]: "ifname . ipv6_addr",
        MAC_SET: "ifname . ether_addr", HAS_MAC_SET: "ifname",
    }


def base_chains(prefix, endpoint_to_host="DROP", lists=()):
    """forward, input, from-ep and to-ep: {chain: rules}, for the profile lists in use (lists:
    profile id tuples).  The two base chains' hooks are in BASE_HOOKS."""
    if endpoint_to_host not in ENDPOINT_TO_HOST_ACTIONS:
        endpoint_to_host = "DROP"
    wl = _quote(prefix + "*")
    forward = [
        "iifname %s ct state invalid drop" % wl,
        "oifname %s ct state invalid drop" % wl,
        "iifname %s ct state established,related %s accept" % (wl, MARK_PASSED),
        "oifname %s ct state established,related %s accept" % (wl, MARK_PASSED),
        "iifname %s jump %s" % (wl, FROM_EP),
        "oifname %s jump %s" % (wl, TO_EP),
        # Both endpoints' policies let it through (each jump drops or returns).
        "iifname %s %s" % (wl, MARK_PASSED),
        "oifname %s %s" % (wl, MARK_PASSED),
    ]
    inp = [
        "iifname %s ct state invalid drop" % wl,
        "iifname %s ct state established,related %s accept" % (wl, MARK_PASSED),
        "iifname %s icmpv6 type { %s } %s accept" % (wl, ND_TYPES, MARK_PASSED),
        "iifname %s jump %s" % (wl, FROM_EP),
        "iifname %s drop" % wl if endpoint_to_host == "DROP" else
        "iifname %s %s" % (wl, MARK_PASSED),
    ]
    return dict({FORWARD: forward, INPUT: inp}, **dispatch_chains(lists))


def dispatch_chains(lists):
    """from-ep and to-ep for the profile lists in use: {chain: rules}.  A rule per list and
    family, in a fixed order (the lists are disjoint: an interface is in one list's set)."""
    from_ep = [
        "iifname @%s iifname . ether saddr != @%s drop" % (HAS_MAC_SET, MAC_SET),
        "meta nfproto ipv4 iifname . ip saddr != @%s drop" % SRC_SETS[4],
        "meta nfproto ipv6 iifname . ip6 saddr != @%s drop" % SRC_SETS[6],
    ]
    to_ep = []
    for ids in sorted(lists, key=_list_digest):
        for v in (4, 6):
            match = "meta nfproto ipv%d %%s @%s goto %%s" % (v, list_set(ids, v))
            from_ep.append(match % ("iifname", list_chain(ids, "outbound")))
            to_ep.append(match % ("oifname", list_chain(ids, "inbound")))
    from_ep.append("drop")               # a workload interface we know nothing about
    to_ep.append("drop")
    return {FROM_EP: from_ep, TO_EP: to_ep}


BASE_HOOKS = {FORWARD: "forward", INPUT: "input"}


def iptables_chains(version, prefix, endpoint_to_host="DROP", ipip_hosts_set=None):
    """What the iptables filter table keeps when the nft table decides policy: accept what the
    nft table passed (Docker's FORWARD policy is DROP; ACCEPT to the host skips the host's own
    INPUT rules, as in the iptables layout), drop workload traffic it did not pass (fail
    closed), and the IPIP check on the hosts' ipset.  None of it grows with endpoints."""
    wl = prefix + "+"
    passed = "-m mark --mark %s" % IPTABLES_PASSED
    forward = ["-i %s %s -j ACCEPT" % (wl, passed), "-o %s %s -j ACCEPT" % (wl, passed),
               "-i %s -j DROP" % wl, "-o %s -j DROP" % wl]
    inp = []
    if ipip_hosts_set and version == 4:
        inp.append("-p ipencap -m set ! --match-set %s src -j DROP" % ipip_hosts_set)
    inp.append("-i %s -m mark ! --mark %s -j DROP" % (wl, IPTABLES_PASSED))
    if endpoint_to_host == "ACCEPT":
        inp.append("-i %s -j ACCEPT" % wl)
    return {FORWARD_CHAIN: forward, INPUT_CHAIN: inp}


# --- whole scripts ----------------------------------------------------------------------------

def chain_declaration(name):
    hook = BASE_HOOKS.get(name)
    if hook is None:
        return "add chain %s %s %s" % (FAMILY, TABLE, name)
    return ("add chain %s %s %s { type filter hook %s priority %d; policy accept; }"
            % (FAMILY, TABLE, name, hook, PRIORITY))


def set_declaration(name, kind):
    return "add set %s %s %s { type %s; }" % (FAMILY, TABLE, name, kind)


def element_lines(verb, name, elements, chunk=2000):
    """`add element` / `delete element` lines, a few thousand elements a line."""
    items = sorted(elements)
    return ["%s element %s %s %s { %s }" % (verb, FAMILY, TABLE, name,
                                             ", ".join(items[i:i + chunk]))
            for i in range(0, len(items), chunk)]


def chain_lines(name, rules):
    return ["add rule %s %s %s %s" % (FAMILY, TABLE, name, r) for r in rules]


def full_script(chains, sets, elements):
    """One transaction that replaces the whole table: declared (so the delete cannot fail),
    deleted and built again; the kernel swaps it in at once, so no packet sees it half-built.

    chains: {name: rules}; sets: {name: kind}; elements: {set name: element texts}."""
    lines = ["add table %s %s" % (FAMILY, TABLE), "delete table %s %s" % (FAMILY, TABLE),
             "add table %s %s" % (FAMILY, TABLE)]
    lines += [set_declaration(name, kind) for name, kind in sorted(sets.items())]
    lines += [chain_declaration(name) for name in sorted(chains)]
    for name in sorted(sets):
        lines += element_lines("add", name, elements.get(name, ()))
    for name, rules in sorted(chains.items()):
        lines += chain_lines(name, rules)
    return "\n".join(lines) + "\n"


def delta_script(programmed_chains, programmed_sets, chains, sets, added, removed):
    """One transaction taking the table from what was programmed through these changes.

    chains: {name: rules or None}; sets: {name: kind or None}; added / removed: {set name:
    element texts}.  Order: new sets and chains declared, changed chains rewritten, elements
    removed then added, and last the chains and sets nothing refers to any more deleted."""
    lines = []
    for name, kind in sorted(sets.items()):
        if kind is not None and name not in programmed_sets:
            lines.append(set_declaration(name, kind))
    for name, rules in sorted(chains.items()):
        if rules is not None and name not in programmed_chains:
            lines.append(chain_declaration(name))
    for name, rules in sorted(chains.items()):
        if rules is not None:
            if name in programmed_chains:
                lines.append("flush chain %s %s %s" % (FAMILY, TABLE, name))
            lines += chain_lines(name, rules)
    for name, items in sorted(removed.items()):
        if items and sets.get(name, True) is not None:
            lines += element_lines("delete", name, items)
    for name, items in sorted(added.items()):
        if items:
            lines += element_lines("add", name, items)
    dropped = sorted(n for n, rules in chains.items() if rules is None and n in programmed_chains)
    lines += ["flush chain %s %s %s" % (FAMILY, TABLE, n) for n in dropped]
    lines += ["delete chain %s %s %s" % (FAMILY, TABLE, n) for n in dropped]
    for name, kind in sorted(sets.items()):
        if kind is None and name in programmed_sets:
            lines.append("delete set %s %s %s" % (FAMILY, TABLE, name))
    return "\n".join(lines) + "\n" if lines else ""


# --- reading the table back -------------------------------------------------------------------

def parse_listing(text, terse=False):
    """`nft -j list table` output -> {"chains": {name: rule count}, "sets": {name: element
    count, or None for a terse (-t) listing, which leaves elements out}}: enough to notice a
    chain, rule, set or element someone removed or added."""
    content = table_content(text)
    return {"chains": {name: len(c["rules"]) for name, c in content["chains"].items()},
            "sets": {name: None if terse else len(elements)
                     for name, (_, elements) in content["sets"].items()}}


def table_content(text):
    """`nft -j list table` output -> every chain's hook and rules and every set's type and
    elements, in a form that compares equal for equal tables: handles dropped, elements sorted
    (a hash set lists them in an order of its own).  Used to compare the kernel's table with
    our desired one loaded into a scratch namespace: both printed by the same nft, so a rule
    nft rewrites in its own words (`icmp type 8` as `echo-request`) reads the same on both."""
    import json

    def canonical(value):
        return json.dumps(value, sort_keys=True)
    chains, sets = {}, {}
    for item in json.loads(text).get("nftables", []):
        if "chain" in item:
            body = {k: v for k, v in item["chain"].items() if k != "handle"}
            chains.setdefault(body["name"], {"rules": []})["chain"] = canonical(body)
        elif "rule" in item:
            chains.setdefault(item["rule"]["chain"], {"rules": []})["rules"].append(
                canonical(item["rule"]["expr"]))
        else:
            # "map": our table has none, but one left by someone else must show as a change.
            for word in ("set", "map"):
                if word in item:
                    body = {k: v for k, v in item[word].items() if k not in ("handle", "elem")}
                    sets[body["name"]] = (canonical(body), sorted(
                        canonical(e) for e in item[word].get("elem", ())))
    return {"chains": chains, "sets": sets}


def expected_listing(chains, sets, elements):
    """What parse_listing should read for this desired table (elements None: a terse read)."""
    return {"chains": {name: len(rules) for name, rules in chains.items()},
            "sets": {name: (len(elements.get(name, ())) if elements is not None else None)
                     for name in sets}}


def probe_script():
    """A small table of our layout (one endpoint, one profile) as one full_script: checking it
    with `nft -c` tells whether this nft and kernel can run the nftables dataplane."""
    chains = base_chains("cali", lists=[("probe",)])
    chains[profile_chain("probe", "inbound")] = [
        "ip saddr @%s meta l4proto tcp tcp dport { 80, 1000-2000 } %s" % (tag_set("probe", 4),
                                                                            SET_ALLOW)]
    chains[profile_chain("probe", "outbound")] = ["icmpv6 type 128 drop"]
    list_chains, list_sets = list_parts(("probe",))
    chains.update(list_chains)
    sets = dict(fixed_sets(), **list_sets, **{tag_set("probe", 4): ADDR_TYPE[4]})
    elements = {SRC_SETS[4]: {'"calitest" . 10.0.0.1'}, MAC_SET: {'"calitest" . 02:00:00:00:00:01'},
                HAS_MAC_SET: {'"calitest"'}, list_set(("probe",), 4): {'"calitest"'}}
    return full_script(chains, sets, elements)

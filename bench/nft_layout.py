"""Would an nftables-native dataplane make the agent's per-change cost flat in the number of
endpoints?  Raw `nft -f` loads of the agent's layout expressed natively (needs root).

    python3 bench/nft_layout.py [--sizes 1000,10000] [--samples 40] [--phrasings]

Today (iptables-nft) one new endpoint costs ~3x more at 10,000 endpoints than at 1,000,
because iptables-nft-restore reads the whole ruleset back on every --noflush restore.  The
goal for a native backend: one new endpoint, one rule change and one tag-membership change
each cost at most 1.5x at 10,000 endpoints what they cost at 1,000.

For each size N, every kernel measurement runs in a throwaway network namespace (this script
re-executes itself under `unshare -n`; nothing touches the machine's own namespace and no
packet is sent):
  - full load from empty: the whole native ruleset in one `nft -f`, in 3 fresh namespaces;
  - p50/p99 and p10-p90 over --samples (wall time around `nft -f -`, plus nft's own CPU time
    split user/system, which roughly separates nft's user-space work from the kernel's):
      a. one new endpoint: its two chains with their rules and its two verdict-map elements;
      b. one rule change: flush one profile chain and re-add its rules, one rule changed;
      c. one tag-membership change: one element added to one tag set;
      d. one endpoint removed: its map elements, then its chains;
  - the iptables-nft comparison, in another fresh namespace: the agent's own rendering
    (calicoctl.felix.policy, imported read-only) of the same N endpoints loaded in batches of
    200 chains, then `iptables-restore --noflush` of one endpoint's two chains (and, as the
    agent really does it, with its two dispatch bucket chains), and its removal;
  - diagnostics that split the nft cost into its parts (see inside_nft): a and b in a table
    without base chains (no kernel validation walk), c into a set of another table (nft's
    cache fill alone), c as one netlink batch written here (the kernel alone);
  - the same a-d with an alternative native layout in which an endpoint is set elements, not
    chains (see element_ruleset), in another fresh namespace;
  - a third layout, shared profile-list chains (see list_ruleset), which keeps the agent's
    semantics exactly: a, a' (a new endpoint whose profile list has no chain yet), b, c, d;
    (a) and (d) through one long-lived `nft -i` as well (NftShell); and two diagnostic
    variants, without base chains and with one interval set for all anti-spoof addresses.
    Its namespaces (one per size) run at the same time, rounds alternating between them
    (in_namespaces), so load from elsewhere on the machine falls on every size alike.
--phrasings also compares ways of writing (a) for nft (see PHRASINGS).

What it showed (nft 1.0.6, kernel 6.18, 2 vCPUs; ratio of p50s, 10,000 / 1,000 endpoints):
the agent's layout in native nft is no flatter than iptables-nft (a 9.0x, b 4.4x, c 5.8x;
(a) 87 ms at 10,000 against iptables-nft's 35 ms), for two reasons that grow with the number of
chains: nft dumps every chain into its cache before any `add rule`/`add element`, and the
kernel revalidates every chain reachable from the base chains whenever a rule or verdict-map
element with a verdict is added.  The element layout is flat (a 0.97x, b 1.01x, c 0.98x).

The profile-list layout (same semantics, ~500 chains whatever N) removes the first reason but
not the second: p50 at 1,000 / 10,000 endpoints a 4.97 / 7.27 ms (1.46x), a' 4.95 / 7.57 (1.53x),
b 16.0 / 19.5 (1.22x), c 3.99 / 4.18 (1.05x), d 16.0 / 16.0 (1.00x); 9.84 ms for (a) at 20,000
(2.0x).  Every endpoint is two verdict-map elements (goto its list chains), and any transaction
that adds a jump/goto element or rule makes the kernel walk every element of every verdict map
(perf: nft_rhash_walk, nft_setelem_validate, nft_chain_validate ~65% of a long-lived nft's
time at 20,000): ~0.27 ms more per 1,000 endpoints.  Without base chains (nothing to validate)
(a) is flat, 4.00 / 4.11 ms.  So (a) is at the 1.5x goal at 10,000 and past it beyond.  A
long-lived `nft -i` does not keep nft's cache (1.0.6 refetches after every commit, the
generation having changed) but saves the process start and exit: (a) 1.92 / 4.45 ms, (d)
1.10 / 1.15 ms instead of 16 (no exit-time wait for the deferred free of what was deleted).
"""

import argparse
import hashlib
import ipaddress
import json
import os
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PROFILES = 100
# The agent's ALLOW mark bit (policy.ALLOW_MARK): a profile that allows a packet sets it and
# returns to the endpoint chain, which returns once it is set.
ALLOW = "0x01000000"
KEEP_OTHER_BITS = "0xfeffffff"
MAC = "ee:ee:ee:ee:ee:ee"
# Same as the agent's executor: one huge iptables-nft --noflush restore grows much faster than
# linearly with its size, so the iptables ruleset is loaded in batches of this many chains.
IPT_BATCH = 200

# One `inet` table rather than separate `ip` and `ip6` tables: the agent writes the same chains
# for both families (iptables and ip6tables), and in an inet table one set of profile and
# endpoint chains and one pair of dispatch maps serves both, so a change is one transaction
# instead of two.  Family-specific matches (`ip saddr`, sets of type ipv4_addr) only match their
# family; an endpoint without an address in a family has that family dropped explicitly
# (`meta nfproto != ipv4 drop`), as the agent's per-family dispatch drops it today.
T = "inet calico"


# --- the native layout ------------------------------------------------------------------------

class Endpoint:
    """A local workload: a Docker-like interface name, one IPv4 address, one profile."""

    def __init__(self, i):
        self.iface = "cali" + hashlib.sha256(str(i).encode()).hexdigest()[:11]
        self.ip = "10.%d.%d.%d" % ((i >> 16) & 255, (i >> 8) & 255, i & 255)
        self.profile = "prof%02d" % (i % PROFILES)


def endpoint_index(i):
    """Endpoints 1..N are the ruleset (0 would give 10.0.0.0); the samples use indices above
    N, so their interfaces and addresses are new."""
    return i + 1


def profile_rules(p, port=None):
    """Inbound rules of profile p as the agent renders its bench profiles: allow from its own
    tag, and tcp 80/443 from the next profile's tag (port: one extra port, the rule change).
    Allow = set the mark bit and return, like the agent's `-g felix-ALLOW`."""
    ports = "80, 443" + (", %d" % port if port else "")
    allow = "meta mark set meta mark | %s return" % ALLOW
    return ["ip saddr @tag-prof%02d %s" % (p, allow),
            "ip saddr @tag-prof%02d tcp dport { %s } %s" % ((p + 1) % PROFILES, ports, allow)]


def endpoint_rules(ep):
    """{chain: rules} of one endpoint, like policy.endpoint_chains: anti-spoofing in from-,
    then its profile (clear the mark, jump, return if allowed), then drop."""
    def profile_part(direction):
        return ["meta mark set meta mark & %s" % KEEP_OTHER_BITS,
                "jump p-%s-%s" % (ep.profile, direction),
                "meta mark & %s != 0 return" % ALLOW,
                "drop"]
    return {
        "to-" + ep.iface: ["meta nfproto != ipv4 drop"] + profile_part("i"),
        "from-" + ep.iface: ["ether saddr != %s drop" % MAC,
                             "meta nfproto != ipv4 drop",
                             "ip saddr != %s drop" % ep.ip] + profile_part("o"),
    }


def map_elements(eps):
    """The two dispatch verdict maps' elements.  goto (not jump), as the agent's dispatch
    chains use -g: the endpoint chain's `return` then goes back to the base chain, past the
    dispatch chain's final drop, exactly like FROM_ENDPOINT -> felix-from-<iface> today."""
    return {"from_endpoints": ['"%s" : goto from-%s' % (e.iface, e.iface) for e in eps],
            "to_endpoints": ['"%s" : goto to-%s' % (e.iface, e.iface) for e in eps]}


def block(name, lines, head=None):
    """One declaration inside a table block, one statement per line: name is a chain's name,
    or "set <name>" / "map <name>"; head is its first line (type, hook)."""
    body = ([head + ";"] if head else []) + list(lines)
    if not name.startswith(("set ", "map ")):
        name = "chain " + name
    return "\t%s {\n%s\t}\n" % (name, "".join("\t\t%s\n" % r for r in body))


def full_ruleset(n, hooked=True):
    """The whole table for n endpoints, as one `nft -f` file (one transaction).  Callees come
    before callers (nft resolves `jump`/`goto` against what it has already read) and the base
    chains last.  hooked=False leaves the two base chains out (a diagnostic: see inside_nft)."""
    eps = [Endpoint(endpoint_index(i)) for i in range(n)]
    members = {}
    for e in eps:
        members.setdefault(e.profile, []).append(e.ip)
    out = ["table %s {\n" % T]
    for p in range(PROFILES):
        name = "prof%02d" % p
        elements = ("elements = { %s }" % ", ".join(members[name])) if members.get(name) else ""
        out.append(block("set tag-" + name, [elements] if elements else [], "type ipv4_addr"))
    for p in range(PROFILES):
        out.append(block("p-prof%02d-i" % p, profile_rules(p)))
        out.append(block("p-prof%02d-o" % p, ["meta mark set meta mark | %s return" % ALLOW]))
    for e in eps:
        for chain, rules in endpoint_rules(e).items():
            out.append(block(chain, rules))
    for m, elements in map_elements(eps).items():
        out.append(block("map " + m, ["elements = { %s }" % ", ".join(elements)] if eps else [],
                         "type ifname : verdict"))
    # Unknown workload interfaces: no map element matches, so the dispatch chain drops them.
    out.append(block("from-endpoint", ["iifname vmap @from_endpoints", "drop"]))
    out.append(block("to-endpoint", ["oifname vmap @to_endpoints", "drop"]))
    common = ['iifname "cali*" ct state invalid drop',
              'oifname "cali*" ct state invalid drop',
              'iifname "cali*" ct state established,related accept',
              'oifname "cali*" ct state established,related accept']
    if hooked:
        out.append(block("forward", common + [
            'iifname "cali*" jump from-endpoint',
            'oifname "cali*" jump to-endpoint',
            # Both endpoints' policies allowed it.  Unlike iptables' ACCEPT in FORWARD, this
            # does not stop other tables' base chains at the same hook (Docker's `ip filter`
            # through iptables-nft, policy DROP) from seeing the packet: a native backend needs
            # another way past Docker's FORWARD policy.  Kept to model the agent's rules.
            'iifname "cali*" accept',
            'oifname "cali*" accept'],
            "type filter hook forward priority filter; policy accept"))
        out.append(block("input", [common[0], common[2],
                                   'iifname "cali*" jump from-endpoint',
                                   'iifname "cali*" drop'],     # the agent's default: DROP
                         "type filter hook input priority filter; policy accept"))
    out.append("}\n")
    return "".join(out)


def expected_chains(n, hooked=True):
    return 2 * n + 2 * PROFILES + 2 + (2 if hooked else 0)


# How (a) is phrased.  Measured with --phrasings (nft 1.0.6, kernel 6.18, 2 vCPUs, 40 samples
# each, interleaved round-robin so drift hits all alike), p50 in ms at 1,000 / 10,000 endpoints
# in three runs:
#   add chain + add rule                   10.05 / 90.40    9.47 / 87.85    9.74 / 86.96
#   add table + add chain + add rule        9.89 / 89.61    9.56 / 87.62    9.54 / 87.36
#   add chain { rules }                     9.72 / 89.65    9.46 / 87.17    9.70 / 87.74
#   table { chains } + add element         10.31 / 89.92    9.77 / 87.56    9.93 / 87.98
#   table { chains, maps with elements }   10.40 / 89.17    9.84 / 87.52    9.81 / 87.90
# All within 7% at 1,000 and 2% at 10,000, inside each one's p10-p90 spread, and the order
# changes from run to run: the phrasing does not matter, because every phrasing makes nft dump
# all chains into its cache and the kernel revalidate the table (see inside_nft).
# ADD_ENDPOINT is the one the measurements use: `add chain { rules }`, the fastest in 3 of the
# 6 cells and one command per chain.
def phrase_commands(ep, declare_table=False):
    """`add chain` + `add rule` per rule + `add element`, one command a line."""
    lines = ["add table %s" % T] if declare_table else []
    for chain, rules in endpoint_rules(ep).items():
        lines.append("add chain %s %s" % (T, chain))
        lines += ["add rule %s %s %s" % (T, chain, r) for r in rules]
    for m, elements in map_elements([ep]).items():
        lines.append("add element %s %s { %s }" % (T, m, ", ".join(elements)))
    return "\n".join(lines) + "\n"


def phrase_chain_bodies(ep):
    """`add chain ... { rules }`: each chain with its rules in one command."""
    lines = ["add chain %s %s { %s; }" % (T, chain, "; ".join(rules))
             for chain, rules in endpoint_rules(ep).items()]
    for m, elements in map_elements([ep]).items():
        lines.append("add element %s %s { %s }" % (T, m, ", ".join(elements)))
    return "\n".join(lines) + "\n"


def phrase_table_block(ep, with_maps=False):
    """`table inet calico { chain ... { ... } }`, the map elements as `add element` after it,
    or (with_maps) inside the block as map declarations with elements."""
    out = ["table %s {\n" % T]
    for chain, rules in endpoint_rules(ep).items():
        out.append(block(chain, rules))
    if with_maps:
        for m, elements in map_elements([ep]).items():
            out.append(block("map " + m, ["elements = { %s }" % ", ".join(elements)],
                             "type ifname : verdict"))
    out.append("}\n")
    if not with_maps:
        out += ["add element %s %s { %s }\n" % (T, m, ", ".join(elements))
                for m, elements in map_elements([ep]).items()]
    return "".join(out)


PHRASINGS = {
    "add chain + add rule": phrase_commands,
    "add table + add chain + add rule": lambda ep: phrase_commands(ep, declare_table=True),
    "add chain { rules }": phrase_chain_bodies,
    "table { chains } + add element": phrase_table_block,
    "table { chains, maps with elements }": lambda ep: phrase_table_block(ep, with_maps=True),
}
ADD_ENDPOINT = "add chain { rules }"


# --- an alternative native layout: endpoints as set elements ------------------------------------
#
# The layout above fails the goal (see inside_nft) because it has two chains per endpoint: nft's
# cache dump and the kernel's validation walk both grow with the number of chains.  Here an
# endpoint is only set elements, so a new or removed endpoint adds or deletes elements of sets
# that hold no verdicts: nothing to validate, and the chain count (204) does not grow with N.
#   - anti-spoofing: one set of interface . MAC . address triples; a packet from a workload
#     interface whose triple is not in it is dropped (this also drops unknown interfaces);
#   - policy: per profile a set of the interfaces that use it, and in the dispatch chains per
#     profile "if the interface is in the set: clear the mark, jump, return if allowed".
# Differences from the agent's semantics, to weigh before building it: an endpoint's profiles
# run in profile order rather than in the endpoint's own order (matters only for deny rules);
# and a packet is tested against every profile's set (3 lookups per profile per direction), so
# the per-packet cost grows with the number of profiles, not endpoints.

def element_ruleset(n):
    eps = [Endpoint(endpoint_index(i)) for i in range(n)]
    by_profile = {}
    for e in eps:
        by_profile.setdefault(e.profile, []).append(e)

    def elements(items):
        return ["elements = { %s }" % ", ".join(items)] if items else []
    out = ["table %s {\n" % T]
    for p in range(PROFILES):
        name = "prof%02d" % p
        members = by_profile.get(name, [])
        out.append(block("set tag-" + name, elements([e.ip for e in members]), "type ipv4_addr"))
        for d in ("i", "o"):
            out.append(block("set ifs-%s-%s" % (name, d),
                             elements(['"%s"' % e.iface for e in members]), "type ifname"))
    out.append(block("set sources", elements(['"%s" . %s . %s' % (e.iface, MAC, e.ip)
                                                for e in eps]),
                     "type ifname . ether_addr . ipv4_addr"))
    for p in range(PROFILES):
        out.append(block("p-prof%02d-i" % p, profile_rules(p)))
        out.append(block("p-prof%02d-o" % p, ["meta mark set meta mark | %s return" % ALLOW]))
    for chain, match, d in (("from-endpoint", "iifname", "o"), ("to-endpoint", "oifname", "i")):
        rules = ["meta nfproto != ipv4 drop"]
        if chain == "from-endpoint":
            rules.append("iifname . ether saddr . ip saddr != @sources drop")
        for p in range(PROFILES):
            test = "%s @ifs-prof%02d-%s" % (match, p, d)
            rules += ["%s meta mark set meta mark & %s" % (test, KEEP_OTHER_BITS),
                      "%s jump p-prof%02d-%s" % (test, p, d),
                      "%s meta mark & %s != 0 return" % (test, ALLOW)]
        out.append(block(chain, rules + ["drop"]))
    out.append(block("forward", [
        'iifname "cali*" ct state invalid drop', 'oifname "cali*" ct state invalid drop',
        'iifname "cali*" ct state established,related accept',
        'oifname "cali*" ct state established,related accept',
        'iifname "cali*" jump from-endpoint', 'oifname "cali*" jump to-endpoint',
        'iifname "cali*" accept', 'oifname "cali*" accept'],
        "type filter hook forward priority filter; policy accept"))
    out.append(block("input", [
        'iifname "cali*" ct state invalid drop',
        'iifname "cali*" ct state established,related accept',
        'iifname "cali*" jump from-endpoint', 'iifname "cali*" drop'],
        "type filter hook input priority filter; policy accept"))
    out.append("}\n")
    return "".join(out)


def element_endpoint(ep, verb):
    """verb add | delete: one endpoint's elements, one transaction."""
    return "".join("%s element %s %s { %s }\n" % (verb, T, s, e) for s, e in (
        ("sources", '"%s" . %s . %s' % (ep.iface, MAC, ep.ip)),
        ("ifs-%s-i" % ep.profile, '"%s"' % ep.iface),
        ("ifs-%s-o" % ep.profile, '"%s"' % ep.iface)))


def remove_endpoint(ep):
    """Map elements first (nothing dispatches to the chains any more), then the chains (a
    chain still holding rules can be deleted in one command on this kernel)."""
    lines = ['delete element %s %s { "%s" }' % (T, m, ep.iface)
             for m in ("from_endpoints", "to_endpoints")]
    lines += ["delete chain %s %s" % (T, chain) for chain in endpoint_rules(ep)]
    return "\n".join(lines) + "\n"


def rule_change(k):
    """Profile k % 100's inbound chain rewritten with one rule changed (an extra port)."""
    p = k % PROFILES
    chain = "p-prof%02d-i" % p
    lines = ["flush chain %s %s" % (T, chain)]
    lines += ["add rule %s %s %s" % (T, chain, r) for r in profile_rules(p, port=1000 + k)]
    return "\n".join(lines) + "\n"


def remote_address(k):
    """An endpoint on another host joining a tag: an address outside the local ones."""
    return "10.200.%d.%d" % ((k >> 8) & 255, k & 255)


def tag_add(k):
    return "add element %s tag-prof%02d { %s }\n" % (T, k % PROFILES, remote_address(k))


def tag_delete(k):
    return "delete element %s tag-prof%02d { %s }\n" % (T, k % PROFILES, remote_address(k))


# --- a third native layout: shared profile-list chains ------------------------------------------
#
# The agent's semantics kept exactly (policy.endpoint_chains), but nothing per endpoint is a chain
# or a rule: an endpoint is set elements plus two verdict-map elements.
#   - Anti-spoofing (from a workload only) is one positive set lookup, "this interface may send
#     from this MAC and this source address", the packet going on to dispatch if it matches and
#     dropped if none does (from-endpoint).  Four sets: with / without a MAC (keyed
#     ifname . ether_addr . ipv4_addr and ifname . ipv4_addr: an endpoint without a MAC only
#     ever appears in the second, so no MAC test applies to it, like _anti_spoof), and in each
#     case one set of single addresses (the usual /32, no flags: a hash set) and one with
#     `flags interval` for wider CIDRs (a pipapo set, which takes ifname . ether . prefix).
#     Positive lookups rather than `... != @set drop` because an endpoint's addresses are spread
#     over two sets (a packet is good if it is in either) and a negated lookup cannot say "in
#     neither"; and single addresses kept out of the interval sets because those cost more per
#     change: the listint diagnostic, one interval set holding everything, measured (a) 4.70 /
#     7.43 ms at 1,000 / 10,000 (1.58x, against 1.46x) and, through nft -i, (d) 10.0 / 14.3 ms
#     against 1.1 / 1.2 (a removal from the interval, pipapo, set costs ~9 ms of CPU itself).
#     Accepted by nft 1.0.6 and kernel 6.18 (checked when this file was written).  One side
#     effect not copied: the agent's several-nets form leaves mark bit 0x02000000 clear on a
#     packet it passes; nothing reads that bit afterwards.
#   - Policy: the endpoint's own profiles in its own order, in a chain shared by every endpoint
#     with the same ordered profile list (list_chain): per profile clear the allow bit, jump the
#     profile's chain, return if the bit is set; drop at the end.  `iifname vmap @from_endpoints`
#     and `meta nfproto . oifname vmap @to_endpoints` go (goto) to the endpoint's list chains,
#     so its `return` leaves to the base chain, as felix-from-<iface> does today.  The to-map's
#     key carries the family: the agent has no to-chain in a family the endpoint has no address
#     in (so that family is dropped), and a list chain, shared, cannot know the endpoint's
#     families; from-direction the anti-spoof sets (family-specific lookups) already drop it.
#   - An inactive endpoint (or one without profiles) maps to `drop` directly: the agent's chain
#     is then anti-spoofing and DROP, the same outcome.
#   - IPv6 would add the same four sets over ipv6_addr (`ip6 saddr`) and `ipv6 . "<iface>"`
#     elements in to_endpoints; the bench's endpoints are IPv4 only, like the other layouts.
# Per packet: from a workload, 1-4 set lookups and 1 map lookup; to one, 1 map lookup; then the
# list chain, as long as the endpoint's own profile list.  None of it grows with N or with the
# number of profiles.  A new endpoint whose list chain exists is 4+ elements in one transaction;
# one with a new list adds the two list chains first (a').
# Measured (see the module docstring): nft's own cost is flat, the kernel's is not: each
# endpoint's two verdict-map elements are walked at every commit that adds a jump/goto (a, a',
# b).  nft 1.0.6 cannot express the way round it, a data map from interface to list number and a
# small verdict map from list number to list chain, without overwriting the whole packet mark
# (`meta mark set meta mark & ... | iifname map @m`: "Right hand side of binary operation (|)
# must be constant"); nor does a `size` (fixed hash backend) on the maps make the walk cheaper
# to speak of (nft -i (a) 2.8 / 4.8 ms against 2.3 / 5.1 at 1,000 / 10,000).

LIST_TWO_PROFILES = 20    # 1 endpoint in 20 (5%) has two profiles ...
LIST_PAIRS = 25           # ... one of 25 pairs, in either order: at most 150 lists, 300 chains


class ListEndpoint:
    """An endpoint with an ordered profile list, a MAC (most), and its CIDRs (most one /32).
    sample: an endpoint added by a timed sample, which keeps to the usual one /32."""

    def __init__(self, i, sample=False):
        base = Endpoint(i)
        self.iface, self.ip, self.active = base.iface, base.ip, True
        h = int(hashlib.sha256(b"profiles%d" % i).hexdigest()[:8], 16)
        if h % LIST_TWO_PROFILES == 0:
            j = (h // LIST_TWO_PROFILES) % LIST_PAIRS
            pair = ("prof%02d" % (4 * j), "prof%02d" % (4 * j + 2))
            self.profiles = pair if (h // (LIST_TWO_PROFILES * LIST_PAIRS)) % 2 else pair[::-1]
        else:
            self.profiles = (base.profile,)
        # 1 in 10 without a MAC (the agent then skips the MAC test); the rest a MAC of their own.
        self.mac = None if i % 10 == 5 else "ee:ee:%02x:%02x:%02x:%02x" % (
            (i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255)
        self.nets = [self.ip + "/32"]
        if i % 100 in (3, 5) and not sample:    # 2 in 100 (with, without a MAC) also have a /30
            self.nets.append("172.%d.%d.%d/30" % (16 + ((i >> 14) & 15), (i >> 6) & 255,
                                                   (i & 63) << 2))

    def addresses(self):
        """Its tag-set members: each address of each net, as ipsets.endpoint_addresses."""
        out = []
        for net in self.nets:
            out += [str(a) for a in ipaddress.ip_network(net)]
        return out


def list_chain(profiles, direction):
    """direction "from" | "to".  The name hashes the ordered list: same list, same chain."""
    return "%s-list-%s" % (direction, hashlib.sha256(
        "\0".join(profiles).encode()).hexdigest()[:12])


def list_chain_rules(profiles, direction):
    """policy.endpoint_chains' profile part: from-direction runs the outbound chains."""
    d = "o" if direction == "from" else "i"
    rules = []
    for p in profiles:
        rules += ["meta mark set meta mark & %s" % KEEP_OTHER_BITS,
                  "jump p-%s-%s" % (p, d),
                  "meta mark & %s != 0 return" % ALLOW]
    return rules + ["drop"]


def list_endpoint_elements(ep, interval_only=False):
    """[(set or map, element)] of one endpoint.  interval_only: every address in the interval
    anti-spoof sets (the listint diagnostic), not only the wider CIDRs."""
    out = []
    for net in ep.nets:
        single = net.endswith("/32") and not interval_only
        key = ('"%s" . %s . ' % (ep.iface, ep.mac)) if ep.mac else ('"%s" . ' % ep.iface)
        out.append(("src-%s%s" % ("mac" if ep.mac else "nomac", "" if single else "-nets"),
                    key + (net[:-3] if single else net)))
    for p in ep.profiles:
        out += [("tag-" + p, a) for a in ep.addresses()]
    verdicts = {d: ("goto " + list_chain(ep.profiles, d)) if ep.active and ep.profiles
                else "drop" for d in ("from", "to")}
    out.append(("from_endpoints", '"%s" : %s' % (ep.iface, verdicts["from"])))
    out.append(("to_endpoints", 'ipv4 . "%s" : %s' % (ep.iface, verdicts["to"])))
    return out


def list_endpoint(ep, verb, new_list=False, interval_only=False):
    """verb add | delete: one endpoint, one transaction.  new_list: with its two list chains
    (declared before the map elements that name them; deleted after)."""
    chains = ["%s chain %s %s%s" % (verb, T, list_chain(ep.profiles, d),
                                    " { %s; }" % "; ".join(list_chain_rules(ep.profiles, d))
                                    if verb == "add" else "")
              for d in ("from", "to")] if new_list else []
    lines = ["%s element %s %s { %s }" % (verb, T, s, e.split(" : ")[0] if verb == "delete"
                                          else e)
             for s, e in list_endpoint_elements(ep, interval_only)]
    lines = chains + lines if verb == "add" else lines + chains
    return "\n".join(lines) + "\n"


def list_ruleset(n, interval_only=False, hooked=True):
    """The whole table for n endpoints, one `nft -f` (callees first, as in full_ruleset);
    (text, number of chains, number of profile lists).  hooked=False: no base chains."""
    eps = [ListEndpoint(endpoint_index(i)) for i in range(n)]
    elements = {}
    for e in eps:
        for s, el in list_endpoint_elements(e, interval_only):
            elements.setdefault(s, []).append(el)

    def declare(kind, name, head):
        items = elements.get(name)
        return block("%s %s" % (kind, name),
                     ["elements = { %s }" % ", ".join(items)] if items else [], head)
    out = ["table %s {\n" % T]
    for p in range(PROFILES):
        out.append(declare("set", "tag-prof%02d" % p, "type ipv4_addr"))
    for name, key in (("src-mac", "ifname . ether_addr . ipv4_addr"),
                      ("src-nomac", "ifname . ipv4_addr")):
        out.append(declare("set", name, "type " + key))
        out.append(declare("set", name + "-nets", "type %s; flags interval" % key))
    for p in range(PROFILES):
        out.append(block("p-prof%02d-i" % p, profile_rules(p)))
        out.append(block("p-prof%02d-o" % p, ["meta mark set meta mark | %s return" % ALLOW]))
    lists = sorted({e.profiles for e in eps})
    for profiles in lists:
        for d in ("from", "to"):
            out.append(block(list_chain(profiles, d), list_chain_rules(profiles, d)))
    out.append(declare("map", "from_endpoints", "type ifname : verdict"))
    out.append(declare("map", "to_endpoints", "type nf_proto . ifname : verdict"))
    out.append(block("from-dispatch", ["iifname vmap @from_endpoints", "drop"]))
    out.append(block("from-endpoint", [
        "iifname . ether saddr . ip saddr @src-mac goto from-dispatch",
        "iifname . ether saddr . ip saddr @src-mac-nets goto from-dispatch",
        "iifname . ip saddr @src-nomac goto from-dispatch",
        "iifname . ip saddr @src-nomac-nets goto from-dispatch",
        "drop"]))                     # spoofed, or a workload interface we know nothing about
    out.append(block("to-endpoint", ["meta nfproto . oifname vmap @to_endpoints", "drop"]))
    out += base_chains() if hooked else []
    out.append("}\n")
    return "".join(out), 2 * len(lists) + 2 * PROFILES + 3 + (2 if hooked else 0), len(lists)


def base_chains():
    """forward and input as in full_ruleset."""
    common = ['iifname "cali*" ct state invalid drop',
              'oifname "cali*" ct state invalid drop',
              'iifname "cali*" ct state established,related accept',
              'oifname "cali*" ct state established,related accept']
    return [block("forward", common + ['iifname "cali*" jump from-endpoint',
                                       'oifname "cali*" jump to-endpoint',
                                       'iifname "cali*" accept', 'oifname "cali*" accept'],
                  "type filter hook forward priority filter; policy accept"),
            block("input", [common[0], common[2], 'iifname "cali*" jump from-endpoint',
                            'iifname "cali*" drop'],
                  "type filter hook input priority filter; policy accept")]


def sample_endpoint(n, k):
    """A new endpoint for (a) and (d), the k-th sample with n endpoints loaded, whose list
    chains exist: one profile, or (1 sample in 20, as loaded) the two of one of the first
    loaded two-profile endpoints, the same ones at every n (endpoints 1..1000 are loaded at
    both sizes)."""
    ep = ListEndpoint(endpoint_index(n + k), sample=True)
    ep.profiles = ep.profiles[:1]
    if k % LIST_TWO_PROFILES == 0:
        pairs = (e.profiles for e in map(ListEndpoint, range(1, n + 1)) if len(e.profiles) == 2)
        for _ in range(k // LIST_TWO_PROFILES % 10 + 1):
            ep.profiles = next(pairs)
    return ep


def new_list_endpoint(k):
    """An endpoint for (a'): three profiles, a list no populated endpoint has."""
    ep = ListEndpoint(endpoint_index(10 ** 7 + k), sample=True)
    ep.profiles = tuple("prof%02d" % ((k + j) % PROFILES) for j in range(3))
    return ep


# --- timing -----------------------------------------------------------------------------------

def run_timed(argv, text):
    """(wall seconds, child user CPU s, child system CPU s) of one command fed text on stdin.
    RUSAGE_CHILDREN only grows by the children waited for in between, i.e. this one."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(argv, input=text, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError("%s failed: %s\ninput began: %s" % (" ".join(argv), proc.stderr[-800:],
                                                              text[:400]))
    return wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def nft(text):
    return run_timed(["nft", "-f", "-"], text)


def percentile(values, p):
    """Nearest rank (with 40 samples p99 is the largest)."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


def stats(samples):
    """samples: [(wall, user, sys)] -> milliseconds."""
    if not samples:
        return None
    wall = [s[0] for s in samples]
    return {"p50": 1000 * statistics.median(wall), "p10": 1000 * percentile(wall, 10),
            "p90": 1000 * percentile(wall, 90), "p99": 1000 * percentile(wall, 99),
            "n": len(wall),
            # Means, not medians: the kernel splits a process's CPU time between user and
            # system by sampling at timer ticks (4 ms here), so one short run reads 0 or 4 ms;
            # only the mean over many runs estimates the split.
            "usr": 1000 * statistics.mean(s[1] for s in samples),
            "sys": 1000 * statistics.mean(s[2] for s in samples)}


# --- inside a throwaway namespace -------------------------------------------------------------

def check_fresh_namespace():
    """Refuse to touch the kernel unless this is not the namespace we were started from."""
    parent = os.environ.get("NFT_LAYOUT_PARENT_NETNS")
    if not parent or os.readlink("/proc/self/ns/net") == parent:
        sys.exit("refusing to run: not inside a fresh network namespace")


def inside_full(n, hooked=True):
    """Full load from empty (alone: the extra repeats)."""
    if subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout.strip():
        sys.exit("namespace not empty")
    out = {"full": [nft(full_ruleset(n, hooked))]}
    listed = subprocess.run(["nft", "list", "chains", "inet"], capture_output=True,
                            text=True, check=True).stdout
    out["chains"] = sum(1 for line in listed.splitlines() if line.strip().startswith("chain "))
    if out["chains"] != expected_chains(n, hooked):
        sys.exit("loaded %d chains, expected %d" % (out["chains"], expected_chains(n, hooked)))
    return out


def inside_nft(n, samples, phrasings, hooked=True):
    """a-d on the full ruleset.  With hooked=False (the `unhooked` run) the table has no base
    chains: a diagnostic.  On this kernel any transaction that adds a rule with a verdict (or a
    verdict-map element with jump/goto) makes the kernel revalidate the whole table at commit,
    walking every chain reachable from the base chains (forward -> from-endpoint -> the map ->
    every endpoint chain -> profile chains), so the work grows with N whatever the change.
    Without base chains nothing is reachable and that walk is empty; what is left is nft's own
    cost.  (perf at 10,000 endpoints: nft_chain_validate and friends ~55% of (a); the rest
    mostly nf_tables_dump_chains and parsing its output, see below.)

    Two more diagnostics in the hooked run, for (c):
      c_other: one element added to a set of another, empty table.  nft 1.0.6 fills its cache
        before an `add element` or `add rule` by dumping every chain of every table (20,000
        chains, 1.6 MB at 10,000 endpoints, whatever table the command names), so this costs
        as much as (c) does: that cost is the nft command, not the change.
      c_netlink: (c) as one netlink batch written here (NFT_MSG_NEWSETELEM, no cache): the
        kernel's own cost of the change, what a backend talking netlink itself would pay.
        Not quite flat either: every commit walks every chain of every table (nf_tables_commit,
        "step 2"), ~0.02 ms at 2,200 chains and ~0.17 ms at 20,200 back to back, more when
        nft has just run and the chains are out of the CPU caches, as here."""
    out = inside_full(n, hooked)
    add = PHRASINGS[ADD_ENDPOINT]
    nl = Netlink() if hooked else None
    if hooked:
        nft("add table inet other\nadd set inet other s { type ipv4_addr; }\n")
    # One untimed round first: nft's binary and libraries are then in the page cache and the
    # kernel has allocated whatever the first change of each kind allocates.
    warm = Endpoint(endpoint_index(n + 10 ** 6))
    for text in (add(warm), rule_change(0), tag_add(0), tag_delete(0), remove_endpoint(warm)):
        nft(text)
    for key in ["a", "b", "c", "d"] + (["c_other", "c_netlink"] if hooked else []):
        out[key] = []
    # Interleaved, so slow drift (other load on the machine) hits every operation alike; the
    # ruleset is back to exactly n endpoints after each round.
    for k in range(samples):
        ep = Endpoint(endpoint_index(n + k))
        out["a"].append(nft(add(ep)))
        out["b"].append(nft(rule_change(k + 1)))
        out["c"].append(nft(tag_add(k + 1)))
        nft(tag_delete(k + 1))
        out["d"].append(nft(remove_endpoint(ep)))
    # The diagnostics for (c) in loops of their own, the netlink one last: a netlink delete's
    # deferred free runs in a kernel worker after an RCU grace period, and the next nft to exit
    # waits for it (see main), which would slow whichever nft sample came next.
    for k in range(samples if hooked else 0):
        out["c_other"].append(nft("add element inet other s { %s }\n" % remote_address(k)))
    for k in range(samples if hooked else 0):
        set_name = "tag-prof%02d" % ((k + 1) % PROFILES)
        address = remote_address(k + 1)
        t = time.perf_counter()
        nl.set_element(True, "calico", set_name, address)
        out["c_netlink"].append((time.perf_counter() - t, 0.0, 0.0))
        nl.set_element(False, "calico", set_name, address)
    if phrasings and hooked:
        names = list(PHRASINGS)
        out["phrasings"] = {name: [] for name in names}
        for k in range(samples):
            for j in range(len(names)):
                name = names[(k + j) % len(names)]       # rotate the order every round
                ep = Endpoint(endpoint_index(n + 2 * 10 ** 6 + k * len(names) + j))
                out["phrasings"][name].append(nft(PHRASINGS[name](ep)))
                nft(remove_endpoint(ep))
    return out


def inside_elements(n, samples):
    """a-d with the set-element layout (the same b and c: same profile chains and tag sets)."""
    if subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout.strip():
        sys.exit("namespace not empty")
    out = {"full": [nft(element_ruleset(n))], "a": [], "b": [], "c": [], "d": []}
    warm = Endpoint(endpoint_index(n + 10 ** 6))
    for text in (element_endpoint(warm, "add"), rule_change(0), tag_add(0), tag_delete(0),
                 element_endpoint(warm, "delete")):
        nft(text)
    for k in range(samples):
        ep = Endpoint(endpoint_index(n + k))
        out["a"].append(nft(element_endpoint(ep, "add")))
        out["b"].append(nft(rule_change(k + 1)))
        out["c"].append(nft(tag_add(k + 1)))
        nft(tag_delete(k + 1))
        out["d"].append(nft(element_endpoint(ep, "delete")))
    return out


class NftShell:
    """One `nft -i` kept running, fed one transaction a line on stdin (the diagnostic for the
    cost of starting and ending an nft process per change).  nft -i prints nothing after a
    successful `add`, so each transaction is followed by `describe tcp dport`, which prints one
    known line and touches neither the kernel nor nft's cache; its line on stdout means the
    transaction before it is done (nft runs lines in order, and its errors, on stderr, are
    written before the describe line).  A syntax error would have been a cheaper marker, but nft
    drops its cache after any error.  Works with nft 1.0.6 (libedit) and a pipe for stdin.

    What it showed: nft 1.0.6 keeps its cache between lines only while the ruleset's generation
    is unchanged, and every commit changes it, so each change still dumps every chain (strace:
    the same ~600 KB chain dump per `add element` with 10,000 chains as a new process); what a
    long-lived nft saves is its start and exit, and the exit-time wait for the deferred free
    after a deletion (see main).  It also keeps each line in libedit's history (~5% of its time
    after 400 changes in perf), a cost a long-lived agent would have to bound."""
    MARK = b"describe tcp dport\n"
    MARK_END = b"16 bits\n"

    def __init__(self):
        self.proc = subprocess.Popen(["nft", "-i"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.set_blocking(self.proc.stderr.fileno(), False)

    def cpu(self):
        """nft's CPU seconds so far, user and system together: /proc/<pid>/schedstat counts in
        ns, where /proc/<pid>/stat's split is in 10 ms ticks, too coarse for one change."""
        with open("/proc/%d/schedstat" % self.proc.pid) as f:
            return int(f.read().split()[0]) / 1e9

    def run(self, text):
        """(wall, CPU, 0) seconds of one transaction (its commands on one line).  The CPU time
        is user and system together (printed as `total`)."""
        line = "; ".join(c for c in text.splitlines() if c.strip()).encode() + b"\n"
        c0 = self.cpu()
        t = time.perf_counter()
        self.proc.stdin.write(line + self.MARK)
        self.proc.stdin.flush()
        out = b""
        while not out.endswith(self.MARK_END):
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError("nft -i exited: %s" % self.proc.stderr.read())
            out += chunk
        wall = time.perf_counter() - t
        cpu = self.cpu() - c0
        err = self.proc.stderr.read()
        if err:
            raise RuntimeError("nft -i: %s\nline: %s" % (err.decode()[-800:], line[:400]))
        return wall, cpu, 0.0

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def inside_lists(n, samples, variant="lists"):
    """a, a', b, c, d with the shared profile-list layout, then (a) and (d) again through one
    long-lived `nft -i` (NftShell).  Two diagnostic variants measure only the full load, a and
    d (also through nft -i): "listint", every address in the interval anti-spoof sets, and
    "listunhooked", the table without its base chains (no kernel validation walk, as the
    unhooked run of inside_nft).

    A server, unlike the other modes: once loaded it prints `ready`, then for each line `<k>`
    on stdin runs round k (one sample of each) and prints its times as one JSON line, until
    `end`.  in_namespaces runs every size at once and alternates rounds between them, so load
    from elsewhere on the machine (other benches, tests) falls on every size alike."""
    if subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout.strip():
        sys.exit("namespace not empty")
    interval_only = variant == "listint"
    text, chains, lists = list_ruleset(n, interval_only, hooked=variant != "listunhooked")
    out = {"full": [nft(text)], "lists": lists}
    listed = subprocess.run(["nft", "list", "chains", "inet"], capture_output=True,
                            text=True, check=True).stdout
    out["chains"] = sum(1 for line in listed.splitlines() if line.strip().startswith("chain "))
    if out["chains"] != chains:
        sys.exit("loaded %d chains, expected %d" % (out["chains"], chains))
    full = variant == "lists"

    def add(ep, **kw):
        return list_endpoint(ep, "add", interval_only=interval_only, **kw)

    def delete(ep, **kw):
        return list_endpoint(ep, "delete", interval_only=interval_only, **kw)

    def settle():
        """A deletion through nft -i leaves the deferred free of what it deleted pending (no
        process exits to wait for it, see main); the next nft to exit would wait for it, so an
        untimed one does, and no timed sample pays for another's deletion."""
        subprocess.run(["nft", "list", "tables"], capture_output=True, check=True)
    warm = sample_endpoint(n, 10 ** 6)
    warm_list = new_list_endpoint(10 ** 5)
    for t in ([add(warm), delete(warm)] + ([add(warm_list, new_list=True),
                                            delete(warm_list, new_list=True), rule_change(0),
                                            tag_add(0), tag_delete(0)] if full else [])):
        nft(t)
    shell = NftShell()
    for t in (add(warm), delete(warm)):
        shell.run(t)
    settle()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "end":
            break
        k = int(line)
        ep = sample_endpoint(n, k)
        r = {"a": nft(add(ep))}
        if full:
            r["b"] = nft(rule_change(k + 1))
            r["c"] = nft(tag_add(k + 1))
            nft(tag_delete(k + 1))
        r["d"] = nft(delete(ep))
        if full:
            other = new_list_endpoint(k)
            r["a_new_list"] = nft(add(other, new_list=True))
            nft(delete(other, new_list=True))
        r["a_shell"] = shell.run(add(ep))
        r["d_shell"] = shell.run(delete(ep))
        settle()
        print(json.dumps(r), flush=True)
    shell.close()
    return out

class Netlink:
    """Just enough nf_tables netlink to add or delete one IPv4 element of a named set in table
    inet <table>: a batch (begin, NEWSETELEM/DELSETELEM, end) and its ack.  No cache, no
    dumps: the kernel's cost alone."""
    NETLINK_NETFILTER = 12
    NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE = 0x1, 0x4, 0x400
    NLMSG_ERROR = 2
    NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
    NFNL_SUBSYS_NFTABLES = 10
    NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM = 12, 14
    NFPROTO_INET = 1
    NLA_F_NESTED = 0x8000
    # NFTA_SET_ELEM_LIST_{TABLE,SET,ELEMENTS} = 1, 2, 3; NFTA_LIST_ELEM = 1;
    # NFTA_SET_ELEM_KEY = 1; NFTA_DATA_VALUE = 1.

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, self.NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.seq = int(time.time())

    @staticmethod
    def attr(kind, payload):
        head = struct.pack("=HH", 4 + len(payload), kind) + payload
        return head + b"\0" * (-len(head) % 4)

    def message(self, kind, flags, family, res_id, payload=b""):
        self.seq += 1
        body = struct.pack("=BBH", family, 0, socket.htons(res_id)) + payload
        return struct.pack("=IHHII", 16 + len(body), kind, flags, self.seq, 0) + body

    def set_element(self, add, table, set_name, address):
        a = self.attr
        key = a(1 | self.NLA_F_NESTED, a(1, socket.inet_aton(address)))
        payload = (a(1, table.encode() + b"\0") + a(2, set_name.encode() + b"\0")
                   + a(3 | self.NLA_F_NESTED, a(1 | self.NLA_F_NESTED, key)))
        kind = self.NFT_MSG_NEWSETELEM if add else self.NFT_MSG_DELSETELEM
        flags = self.NLM_F_REQUEST | self.NLM_F_ACK | (self.NLM_F_CREATE if add else 0)
        batch = self.message(self.NFNL_MSG_BATCH_BEGIN, self.NLM_F_REQUEST, 0,
                             self.NFNL_SUBSYS_NFTABLES)
        batch += self.message(self.NFNL_SUBSYS_NFTABLES << 8 | kind, flags, self.NFPROTO_INET,
                              0, payload)
        want = self.seq
        batch += self.message(self.NFNL_MSG_BATCH_END, self.NLM_F_REQUEST, 0,
                              self.NFNL_SUBSYS_NFTABLES)
        self.sock.send(batch)
        while True:                       # the ack (or error) of our one message
            data = self.sock.recv(65536)
            offset = 0
            while offset < len(data):
                length, kind, _, seq, _ = struct.unpack_from("=IHHII", data, offset)
                if kind == self.NLMSG_ERROR:
                    err = struct.unpack_from("=i", data, offset + 16)[0]
                    if err:
                        raise OSError(-err, "netlink: %s" % os.strerror(-err))
                    if seq == want:
                        return
                offset += (length + 3) & ~3


def inside_iptables(n, samples):
    """The same n endpoints as the agent renders them (calicoctl.felix.policy), ipsets and all,
    loaded in batches; then one endpoint added and removed --samples times."""
    sys.path.insert(0, REPO)
    from calicoctl.felix import ipsets, policy       # read-only: rendering only

    class Ep:
        def __init__(self, e):
            self.name, self.mac, self.state = e.iface, MAC, "active"
            self.profile_ids, self.ipv4_nets, self.ipv6_nets = [e.profile], [e.ip + "/32"], []

    eps = [Endpoint(endpoint_index(i)) for i in range(n)]
    members = {}
    for e in eps:
        members.setdefault(e.profile, []).append(e.ip)
    sets = []
    for p in range(PROFILES):
        name = ipsets.tag_set("prof%02d" % p, 4)
        sets.append("create %s hash:ip family inet" % name)
        sets += ["add %s %s" % (name, ip) for ip in members.get("prof%02d" % p, [])]
    subprocess.run(["ipset", "restore"], input="\n".join(sets) + "\n", text=True, check=True)

    chains = policy.top_chains(4, "cali")
    for p in range(PROFILES):
        name = "prof%02d" % p
        inbound = [{"action": "allow", "src_tag": name},
                   {"action": "allow", "protocol": "tcp", "dst_ports": [80, 443],
                    "src_tag": "prof%02d" % ((p + 1) % PROFILES)}]
        chains[policy.profile_chain(name, "inbound")] = [
            line for r in inbound for line in policy.rule_lines(r, 4, ipsets.tag_set)]
        chains[policy.profile_chain(name, "outbound")] = policy.rule_lines(
            {"action": "allow"}, 4, ipsets.tag_set)
    for e in eps:
        chains.update(policy.endpoint_chains(Ep(e), 4))
    ifaces = {e.iface for e in eps}
    chains.update(policy.dispatch_chains(ifaces, "cali"))

    def restore_text(updates, extra=(), delete=()):
        lines = ["*filter"] + [":%s - [0:0]" % c for c in sorted(updates)]
        for c in sorted(updates):
            lines += ["-A %s %s" % (c, r) for r in updates[c]]
        lines += list(extra) + ["-X %s" % c for c in delete] + ["COMMIT"]
        return "\n".join(lines) + "\n"

    def restore(text):
        return run_timed(["iptables-restore", "--noflush"], text)

    # Callees before callers (policy.chain_rank), as the agent's executor writes a big change.
    order = sorted(chains, key=lambda c: (policy.chain_rank(c), c))
    full = [0.0, 0.0, 0.0]
    for i in range(0, len(order), IPT_BATCH):
        r = restore(restore_text({c: chains[c] for c in order[i:i + IPT_BATCH]}))
        full = [a + b for a, b in zip(full, r)]
    r = restore(restore_text({}, ["-A INPUT -j %s" % policy.INPUT_CHAIN,
                                  "-A FORWARD -j %s" % policy.FORWARD_CHAIN]))
    full = [a + b for a, b in zip(full, r)]
    out = {"full": [tuple(full)], "chains": len(chains), "a": [], "a_buckets": [], "d": []}

    def buckets_with(iface, present):
        """The two dispatch bucket chains of iface's bucket, with or without it."""
        b = policy.bucket_of(iface, "cali")
        members = {i for i in ifaces if policy.bucket_of(i, "cali") == b}
        members = members | {iface} if present else members - {iface}
        return {policy.bucket_chain(d, b): policy.dispatch_bucket(d, members)
                for d in ("from", "to")}

    def drop_endpoint(mine):
        """Empty its chains (-F by declaring them) and delete them (-X)."""
        return restore_text({c: [] for c in mine}, delete=sorted(mine))

    warm = Endpoint(endpoint_index(n + 10 ** 6))
    mine = policy.endpoint_chains(Ep(warm), 4)
    restore(restore_text(mine))
    restore(drop_endpoint(mine))
    for k in range(samples):
        ep = Endpoint(endpoint_index(n + k))
        mine = policy.endpoint_chains(Ep(ep), 4)
        # The baseline: one endpoint's two chains only.
        out["a"].append(restore(restore_text(mine)))
        restore(drop_endpoint(mine))
        # As the agent does it: the chains and its two dispatch bucket chains, one restore.
        out["a_buckets"].append(restore(restore_text({**mine, **buckets_with(ep.iface, True)})))
        # Its removal, as the agent does it: buckets rewritten without it, chains deleted.
        out["d"].append(restore(restore_text({**buckets_with(ep.iface, False),
                                              **{c: [] for c in mine}}, delete=sorted(mine))))
    return out


# --- the driver -------------------------------------------------------------------------------

def in_namespace(mode, n, samples, phrasings=False):
    """Run this script's `mode` for size n in a fresh network namespace; its JSON result."""
    env = dict(os.environ, NFT_LAYOUT_PARENT_NETNS=os.readlink("/proc/self/ns/net"))
    argv = ["unshare", "-n", sys.executable, os.path.abspath(__file__), "--inside", mode,
            "--sizes", str(n), "--samples", str(samples)] + (["--phrasings"] if phrasings else [])
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit("%s run for %d endpoints failed:\n%s" % (mode, n, proc.stderr[-2000:]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def in_namespaces(mode, sizes, samples):
    """Run the server `mode` (inside_lists) for every size at once, each in a fresh namespace,
    and alternate its rounds between the sizes (the order flipped every round); {n: result}.
    The servers start one after another, so the full loads do not overlap."""
    env = dict(os.environ, NFT_LAYOUT_PARENT_NETNS=os.readlink("/proc/self/ns/net"))
    procs = {}

    def fail(n, what):
        proc = procs[n]
        proc.kill()
        proc.wait()
        proc.stderr.seek(0)
        sys.exit("%s run for %d endpoints failed (%s):\n%s" % (
            mode, n, what, proc.stderr.read().decode(errors="replace")[-2000:]))

    def reply(n):
        line = procs[n].stdout.readline()
        if not line:
            fail(n, "no reply")
        return line
    for n in sizes:
        argv = ["unshare", "-n", sys.executable, os.path.abspath(__file__), "--inside", mode,
                "--sizes", str(n), "--samples", str(samples)]
        procs[n] = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=tempfile.TemporaryFile(), text=True, env=env)
        if reply(n).strip() != "ready":
            fail(n, "not ready")
    rounds = {n: {} for n in sizes}
    for k in range(samples):
        for n in (sizes if k % 2 == 0 else sizes[::-1]):
            procs[n].stdin.write("%d\n" % k)
            procs[n].stdin.flush()
            for key, sample in json.loads(reply(n)).items():
                rounds[n].setdefault(key, []).append(sample)
    out = {}
    for n in sizes:
        procs[n].stdin.write("end\n")
        procs[n].stdin.flush()
        out[n] = dict(json.loads(reply(n)), **rounds[n])
        if procs[n].wait() != 0:
            fail(n, "exit status")
    return out


def fmt(s):
    if s is None:
        return "-"
    return "%7.2f (%.2f-%.2f) p99 %.2f, n=%d" % (s["p50"], s["p10"], s["p90"], s["p99"], s["n"])


def fmt_cpu(s):
    return "-" if s is None else "%.1f+%.1f" % (s["usr"], s["sys"])


def version(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "missing"


# (label, nft result and key, iptables key); "nft" is the hooked run, "unhooked" the run
# without base chains.
ROWS = [("full load from empty", "nft", "full", "full"),
        ("a. new endpoint", "nft", "a", "a"),
        ("a. iptables as the agent: + its 2 dispatch buckets", None, None, "a_buckets"),
        ("b. rule change (profile chain rewritten)", "nft", "b", None),
        ("c. tag membership (+1 set element)", "nft", "c", None),
        ("d. remove endpoint", "nft", "d", "d"),
        ("what it is made of (diagnostics):", None, None, None),
        ("a, table not hooked (no kernel validation walk)", "unhooked", "a", None),
        ("b, table not hooked (no kernel validation walk)", "unhooked", "b", None),
        ("c into a set of another, empty table (nft cache)", "nft", "c_other", None),
        ("c as one netlink batch, no nft (kernel alone)", "nft", "c_netlink", None),
        ("alternative layout, endpoints as set elements:", None, None, None),
        ("full load from empty", "elements", "full", None),
        ("a. new endpoint (3 set elements)", "elements", "a", None),
        ("b. rule change (profile chain rewritten)", "elements", "b", None),
        ("c. tag membership (+1 set element)", "elements", "c", None),
        ("d. remove endpoint (3 set elements)", "elements", "d", None),
        ("third layout, shared profile-list chains (same semantics):", None, None, None),
        ("full load from empty", "lists", "full", None),
        ("a. new endpoint, its list chains exist (elements)", "lists", "a", None),
        ("a'. new endpoint and its 2 new list chains", "lists", "a_new_list", None),
        ("b. rule change (profile chain rewritten)", "lists", "b", None),
        ("c. tag membership (+1 set element)", "lists", "c", None),
        ("d. remove endpoint (elements)", "lists", "d", None),
        ("what it is made of (diagnostics):", None, None, None),
        ("a through one long-lived `nft -i`", "lists", "a_shell", None),
        ("d through one long-lived `nft -i`", "lists", "d_shell", None),
        ("a, table not hooked (no kernel validation walk)", "listunhooked", "a", None),
        ("a, not hooked, through `nft -i` (~kernel alone)", "listunhooked", "a_shell", None),
        ("a, every address in the interval spoof sets", "listint", "a", None),
        ("d, every address in the interval spoof sets", "listint", "d", None),
        ("a, interval spoof sets, through `nft -i`", "listint", "a_shell", None),
        ("d, interval spoof sets, through `nft -i`", "listint", "d_shell", None)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--phrasings", action="store_true",
                    help="also compare ways of phrasing (a) for nft")
    ap.add_argument("--full-repeats", type=int, default=3,
                    help="fresh namespaces for the nft full load (median)")
    ap.add_argument("--inside", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    if args.inside:
        check_fresh_namespace()
        n = sizes[0]
        result = {"full": lambda: inside_full(n),
                  "nft": lambda: inside_nft(n, args.samples, args.phrasings),
                  "unhooked": lambda: inside_nft(n, args.samples, False, hooked=False),
                  "elements": lambda: inside_elements(n, args.samples),
                  "lists": lambda: inside_lists(n, args.samples),
                  "listint": lambda: inside_lists(n, args.samples, "listint"),
                  "listunhooked": lambda: inside_lists(n, args.samples, "listunhooked"),
                  "iptables": lambda: inside_iptables(n, args.samples)}[args.inside]()
        print(json.dumps(result))
        return

    sys.stdout.reconfigure(line_buffering=True)      # progress shows as each size ends
    if not shutil.which("nft"):
        print("nft not found: install nftables (apt-get install -y nftables)")
        sys.exit(1)
    if os.geteuid() != 0:
        print("needs root (network namespaces, nft, iptables-restore)")
        sys.exit(1)
    have_ipt = bool(shutil.which("iptables-restore") and shutil.which("ipset"))
    print("%s | %s | kernel %s | %d CPUs" % (
        version(["nft", "--version"]),
        version(["iptables", "--version"]) if have_ipt else "iptables/ipset missing: skipped",
        os.uname().release, os.cpu_count()))
    # Wall minus cpu is time asleep: after a change that deletes anything (b, d), nft's exit
    # closes its netlink socket and the kernel (nft_rcv_nl_event) waits there for the deferred
    # free of what was deleted, an RCU grace period (seen with perf sched_switch stacks).
    print("times in ms: p50 (p10-p90) p99, n; cpu = the command's own user+system CPU ms, "
          "mean (wall minus cpu = asleep)")

    # The profile-list layout first, every size at once (see inside_lists).
    t = time.perf_counter()
    lists = {mode: in_namespaces(mode, sizes, args.samples)
             for mode in ("lists", "listint", "listunhooked")}
    print("(profile-list layout: every size at once, rounds alternating [%.0f s])" % (
        time.perf_counter() - t))
    results = {}
    for n in sizes:
        t = time.perf_counter()
        res = {"nft": in_namespace("nft", n, args.samples, args.phrasings),
               "unhooked": in_namespace("unhooked", n, args.samples),
               "elements": in_namespace("elements", n, args.samples)}
        for mode, by_size in lists.items():
            res[mode] = by_size[n]
        for _ in range(args.full_repeats - 1):
            res["nft"]["full"] += in_namespace("full", n, args.samples)["full"]
        res["ipt"] = in_namespace("iptables", n, args.samples) if have_ipt else {}
        results[n] = res
        print("\nN = %d endpoints (nft: %d chains; iptables-nft: %s chains; profile-list layout: "
              "%d chains, %d lists) [%.0f s]" % (
                  n, res["nft"]["chains"], res["ipt"].get("chains", "-"), res["lists"]["chains"],
                  res["lists"]["lists"], time.perf_counter() - t))
        print("%-50s %-38s %-11s %s" % ("what", "nft", "cpu", "iptables-nft"))
        for label, side, nk, ik in ROWS:
            if not (nk or ik):
                print(label)
                continue
            ns = stats(res[side][nk]) if nk else None
            s = stats(res["ipt"][ik]) if ik and ik in res["ipt"] else None
            cpu = ("" if nk == "c_netlink" else "%.1f total" % ns["usr"]
                   if nk and nk.endswith("_shell") else fmt_cpu(ns))
            print("%-50s %-38s %-11s %s" % (
                label, fmt(ns) if nk else "(= a)", cpu,
                fmt(s) + "  cpu " + fmt_cpu(s) if s else "-"))
        if args.phrasings:
            print("phrasing of (a), nft (* = the one used above):")
            for name, samples in res["nft"]["phrasings"].items():
                s = stats(samples)
                print("  %-48s %-38s %s" % (name + (" *" if name == ADD_ENDPOINT else ""),
                                            fmt(s), fmt_cpu(s)))

    if len(sizes) >= 2:
        lo, hi = min(sizes), max(sizes)

        def ratio(side, key):
            if not key or key not in results[lo][side]:
                return "-"
            return "%.2f" % (statistics.median(x[0] for x in results[hi][side][key]) /
                             statistics.median(x[0] for x in results[lo][side][key]))
        print("\nratio of p50s, %d / %d endpoints (goal: <= 1.5 for a, b, c)" % (hi, lo))
        print("%-50s %-10s %s" % ("what", "nft", "iptables-nft"))
        for label, side, nk, ik in ROWS:
            if nk or ik:
                print("%-50s %-10s %s" % (label, ratio(side, nk) if nk else "-",
                                          ratio("ipt", ik)))
            else:
                print(label)


if __name__ == "__main__":
    main()

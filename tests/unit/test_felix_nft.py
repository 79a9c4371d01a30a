"""The nftables dataplane (felix/nft_policy.py, felix/nft_calc.py, executor.NftTable).

Pure: rule rendering, names and the incremental bookkeeping of NftDesiredState.  Root: the table
loaded with the real nft in a throwaway network namespace (`unshare -n`), changed step by step
through delta scripts, read back after every step and compared with what we rendered, repaired
after hand edits, and swapped with the iptables dataplane both ways.  Traffic: two workloads
behind veth pairs in child namespaces of that namespace, reaching each other or not as their
profiles and the anti-spoofing sets say."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from calicoctl.datastore import keys
from calicoctl.datastore.rules import Rules
from calicoctl.errors import DataplaneError
from calicoctl.felix import executor, nft_policy
from calicoctl.felix.executor import parse_save
from calicoctl.felix.nft_calc import NftDesiredState
from calicoctl.felix.nft_policy import SET_ALLOW
from calicoctl.felix.policy import FORWARD_CHAIN, INPUT_CHAIN
from calicoctl.felix.state import FelixState

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_kernel = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nft")
    or not shutil.which("ipset"),
    reason="needs root, unshare, nft and ipset (loads a real nft table in a throwaway namespace)")
needs_veth = pytest.mark.skipif(
    not shutil.which("ip") or not shutil.which("nsenter"),
    reason="needs ip and nsenter (workloads behind veth pairs in child namespaces)")
# nft's scanner: a name is a letter, '_' or '.', then letters, digits, / - _ . (kernel: < 256).
NFT_NAME = re.compile(r"^[A-Za-z_.][A-Za-z0-9/\-_.]{0,254}\Z")

# One rule of each kind, with the lines it must become.  The kernel script loads them all as one
# profile's inbound rules, so each line is also checked by nft.
RULE_KINDS = [
    ({"action": "allow", "src_net": "10.1.0.0/16", "dst_net": "10.2.0.0/16"},
     ["meta nfproto ipv4 ip saddr 10.1.0.0/16 ip daddr 10.2.0.0/16 " + SET_ALLOW]),
    ({"action": "allow", "dst_net": "fd00:1::/64"},
     ["meta nfproto ipv6 ip6 daddr fd00:1::/64 " + SET_ALLOW]),
    ({"action": "allow", "src_tag": "web", "dst_tag": "db"},
     ["meta nfproto ipv4 ip saddr @t4-web ip daddr @t4-db " + SET_ALLOW,
      "meta nfproto ipv6 ip6 saddr @t6-web ip6 daddr @t6-db " + SET_ALLOW]),
    ({"action": "allow", "protocol": "udp"}, ["meta l4proto udp " + SET_ALLOW]),
    ({"action": "allow", "protocol": "sctp"}, ["meta l4proto sctp " + SET_ALLOW]),
    ({"action": "allow", "protocol": 47}, ["meta l4proto 47 " + SET_ALLOW]),
    ({"action": "allow", "protocol": "132"}, ["meta l4proto 132 " + SET_ALLOW]),
    ({"action": "allow", "protocol": "tcp", "src_ports": [53], "dst_ports": [80, "1000:2000"]},
     ["meta l4proto tcp tcp sport 53 tcp dport { 80, 1000-2000 } " + SET_ALLOW]),
    ({"action": "allow", "protocol": "udp", "dst_ports": ["5000-5100"]},
     ["meta l4proto udp udp dport 5000-5100 " + SET_ALLOW]),
    ({"action": "allow", "protocol": "icmp", "icmp_type": 8, "icmp_code": 0},
     ["meta nfproto ipv4 meta l4proto icmp icmp type 8 icmp code 0 " + SET_ALLOW]),
    ({"action": "allow", "protocol": "icmpv6", "icmp_type": 128},
     ["meta nfproto ipv6 meta l4proto ipv6-icmp icmpv6 type 128 " + SET_ALLOW]),
    ({"action": "allow", "protocol": "tcp", "ip_version": 6},
     ["meta nfproto ipv6 meta l4proto tcp " + SET_ALLOW]),
    ({"action": "allow"}, [SET_ALLOW]),
    ({"action": "deny", "protocol": "tcp", "src_net": "10.0.0.0/8", "dst_ports": [22]},
     ["meta nfproto ipv4 ip saddr 10.0.0.0/8 meta l4proto tcp tcp dport 22 drop"]),
    ({"action": "deny"}, ["drop"]),
]


# --- pure: one rule ---------------------------------------------------------------------------

@pytest.mark.parametrize("rule,expected", RULE_KINDS, ids=[str(i) for i in range(len(RULE_KINDS))])
def test_rule_lines(rule, expected):
    assert nft_policy.rule_lines(rule) == expected


def test_family_words_only_where_the_families_differ():
    both = [r for r, lines in RULE_KINDS if len(lines) == 1 and "nfproto" not in lines[0]]
    assert len(both) >= 5                                      # the check below checks rules
    for rule in both:
        assert nft_policy.rule_matches(rule, 4) == nft_policy.rule_matches(rule, 6), rule
    # A tag rule reads differently per family: one line each, each naming its family.
    lines = nft_policy.rule_lines({"src_tag": "web"})
    assert [line.split()[2] for line in lines] == ["ipv4", "ipv6"]


def test_rule_of_one_family_is_left_out_of_the_other():
    assert nft_policy.rule_matches({"src_net": "fd00::/64"}, 4) is None
    assert nft_policy.rule_matches({"protocol": "icmp"}, 6) is None
    assert nft_policy.rule_matches({"protocol": "icmpv6"}, 4) is None
    assert nft_policy.rule_matches({"ip_version": 4}, 6) is None


def test_deny_drops_and_allow_marks():
    deny = nft_policy.rule_lines({"action": "deny", "protocol": "udp"})
    allow = nft_policy.rule_lines({"action": "allow", "protocol": "udp"})
    assert deny == ["meta l4proto udp drop"]
    assert allow == ["meta l4proto udp meta mark set meta mark | 0x01000000 return"]


def test_invalid_rule_is_skipped_and_reported():
    bad = {"action": "allow", "dst_ports": [80]}               # ports need tcp or udp
    rules = Rules("p1", inbound=[bad, {"action": "deny", "protocol": "udp"}],
                  outbound=[{"action": "allow"}])
    reported = []
    chains = nft_policy.profile_chains("p1", rules,
                                       lambda *args: reported.append(args[:3]))
    assert chains == {"p-p1-i": ["meta l4proto udp drop"], "p-p1-o": [SET_ALLOW]}
    assert reported == [("p1", "inbound", bad)]
    # Without a callback the rule is still skipped, never widened into an allow.
    assert nft_policy.profile_chains("p1", rules)["p-p1-i"] == ["meta l4proto udp drop"]


def test_plain_names_are_kept():
    assert nft_policy.profile_chain("web", "inbound") == "p-web-i"
    assert nft_policy.profile_chain("a.b_c-D9", "outbound") == "p-a.b_c-D9-o"
    assert nft_policy.tag_set("web", 4) == "t4-web" and nft_policy.tag_set("web", 6) == "t6-web"
    assert nft_policy.profile_chain("x" * 64, "inbound") == "p-" + "x" * 64 + "-i"


ODD_NAMES = ["a b", "a c", "a/b", "a~b", "ünï", "x" * 65, "x" * 66, "web!", "-", "9" * 300,
             "semi;colon", 'quo"te', "new\nline", "{brace}"]


def test_odd_names_are_hashed_into_distinct_valid_nft_names():
    names = set()
    for name in ODD_NAMES:
        for made in (nft_policy.profile_chain(name, "inbound"),
                     nft_policy.profile_chain(name, "outbound"),
                     nft_policy.tag_set(name, 4), nft_policy.tag_set(name, 6)):
            assert NFT_NAME.match(made), (name, made)
            names.add(made)
    assert len(names) == 4 * len(ODD_NAMES)
    hashed = [nft_policy.profile_chain(n, "inbound") for n in ODD_NAMES if n != "-"]
    assert all(re.match(r"^p-x[0-9a-f]{20}-i\Z", n) for n in hashed), hashed
    # ...and none of them meets a plain name's chain.
    assert not names & {nft_policy.profile_chain(n, d) for n in ("a", "ab", "web", "x")
                        for d in ("inbound", "outbound")}


def test_list_chain_depends_on_order_and_direction():
    ab = nft_policy.list_chain(("a", "b"), "inbound")
    assert ab.startswith("il-") and NFT_NAME.match(ab)
    assert ab != nft_policy.list_chain(("b", "a"), "inbound")
    assert nft_policy.list_chain(("a", "b"), "outbound") == "ol-" + ab[3:]
    assert nft_policy.list_chain_rules(("a",), "inbound") == [
        nft_policy.CLEAR_ALLOW, "jump p-a-i", nft_policy.ALLOWED, "drop"]


# --- pure: choosing the dataplane ---------------------------------------------------------------

def test_nftables_usable_reports_the_kernels_refusal(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/sbin/" + name)
    seen = []

    def refuse(cmd, input_text=None):
        seen.append((cmd, input_text))
        raise DataplaneError(cmd, 1, "", "Error: Could not process rule: Operation not "
                             "supported\nmore\n")
    ok, why = executor.nftables_usable(refuse)
    assert not ok and "Could not process rule: Operation not supported" in why
    assert "more" not in why
    assert seen == [(["nft", "-c", "-f", "-"], nft_policy.probe_script())]
    monkeypatch.setattr(shutil, "which", lambda name: None)
    ok, why = executor.nftables_usable(refuse)
    assert not ok and "not installed" in why and len(seen) == 1


def test_choose_dataplane():
    no = lambda: (False, "no nft")                              # noqa: E731
    yes = lambda: (True, "fine")                                # noqa: E731
    assert executor.choose_dataplane("auto", yes) == ("nftables", "fine")
    assert executor.choose_dataplane("auto", no) == ("iptables", "no nft")
    assert executor.choose_dataplane("iptables", yes)[0] == "iptables"
    assert executor.choose_dataplane("nftables", yes)[0] == "nftables"
    with pytest.raises(DataplaneError, match="no nft"):
        executor.choose_dataplane("nftables", no)


# --- pure: NftDesiredState ----------------------------------------------------------------------

def ep_item(eid, ip, profiles, host="h1", ip6=None, state="active", mac="ee:ee:ee:ee:ee:ee"):
    """A (key, value) endpoint record; the interface is cali + eid."""
    return (keys.endpoint(host, "libnetwork", "libnetwork", eid), json.dumps({
        "state": state, "name": ("cali" + eid)[:15], "mac": mac, "profile_ids": profiles,
        "ipv4_nets": [ip + "/32"] if ip else [], "ipv6_nets": [ip6 + "/128"] if ip6 else []}))


def ep_key(eid, host="h1"):
    return keys.endpoint(host, "libnetwork", "libnetwork", eid)


def profile_items(name, inbound, outbound=({"action": "allow"},), tags=None):
    return [(keys.profile_tags(name), json.dumps([name] if tags is None else tags)),
            (keys.profile_rules(name), json.dumps({"id": name, "inbound_rules": list(inbound),
                                                    "outbound_rules": list(outbound)}))]


def loaded_state(*items):
    state = FelixState("h1")
    desired = NftDesiredState()
    desired.update(state, state.load_snapshot([(keys.READY, "true")] + list(items)), full=True)
    return state, desired


def change(state, desired, *items):
    changes = state.apply(*items[0])
    for item in items[1:]:
        changes.merge(state.apply(*item))
    return desired.update(state, changes)


def lset(profiles, version):
    """The interface set of the endpoints with this profile list."""
    return nft_policy.list_set(tuple(profiles), version)


BASE = profile_items("net1", [{"action": "allow", "src_tag": "net1"}]) + \
    profile_items("net2", [{"action": "allow"}])


def test_endpoints_with_one_profile_list_share_its_chains():
    state, desired = loaded_state(*BASE, ep_item("a1", "10.0.0.1", ["net1", "net2"]),
                                  ep_item("a2", "10.0.0.2", ["net1", "net2"]))
    lists = {c for c in desired.nft_chains if c.startswith(("il-", "ol-"))}
    assert lists == {nft_policy.list_chain(("net1", "net2"), d) for d in ("inbound", "outbound")}
    shared = lset(["net1", "net2"], 4)
    assert desired.nft_elements[shared] == {'"calia1"', '"calia2"'}
    assert desired.nft_sets[shared] == desired.nft_sets[lset(["net1", "net2"], 6)] == "ifname"
    # One dispatch rule per list and family in each direction, to the list's chain.
    rule = "meta nfproto ipv4 iifname @%s goto %s" % (
        shared, nft_policy.list_chain(("net1", "net2"), "outbound"))
    assert rule in desired.nft_chains["from-ep"]
    assert desired.nft_chains["from-ep"][-1] == desired.nft_chains["to-ep"][-1] == "drop"
    profiles = {"p-net1-i", "p-net1-o", "p-net2-i", "p-net2-o"}
    assert profiles <= set(desired.nft_chains)
    delta = change(state, desired, (ep_key("a1"), None))
    assert not set(delta.nft_chains) & (lists | profiles)      # still used by a2
    assert not delta.nft_sets and "from-ep" not in delta.nft_chains
    assert lists | profiles <= set(desired.nft_chains)
    assert delta.nft_removed[shared] == {'"calia1"'}
    delta = change(state, desired, (ep_key("a2"), None))
    assert {c for c, r in delta.nft_chains.items() if r is None} == lists | profiles
    assert rule not in delta.nft_chains["from-ep"]
    assert delta.nft_chains["from-ep"] == nft_policy.dispatch_chains(())["from-ep"]
    assert delta.nft_sets == {shared: None, lset(["net1", "net2"], 6): None}
    assert not (lists | profiles) & set(desired.nft_chains)
    assert desired.nft_elements["src4"] == set() and shared not in desired.nft_elements


def test_changing_profiles_moves_the_interface_to_the_other_lists_set():
    state, desired = loaded_state(*BASE, ep_item("a1", "10.0.0.1", ["net1"]))
    delta = change(state, desired, ep_item("a1", "10.0.0.1", ["net2"]))
    assert delta.nft_removed[lset(["net1"], 4)] == {'"calia1"'}
    assert delta.nft_added[lset(["net2"], 4)] == {'"calia1"'}
    assert desired.nft_elements[lset(["net2"], 4)] == {'"calia1"'}
    assert lset(["net1"], 4) not in desired.nft_sets
    assert not delta.nft_added.get("src4") and not delta.nft_removed.get("src4")
    assert delta.nft_chains[nft_policy.list_chain(("net1",), "inbound")] is None
    assert delta.nft_chains["p-net1-i"] is None
    assert delta.nft_chains[nft_policy.list_chain(("net2",), "inbound")][1] == "jump p-net2-i"
    # In the script: the new list's set and chains, the dispatch rules to them, the element,
    # and last the old list's chains and set (its element goes with the set).
    script = nft_policy.delta_script(*_programmed_before(desired, delta), delta.nft_chains,
                                     delta.nft_sets, delta.nft_added, delta.nft_removed)
    lines = script.splitlines()
    new = lines.index('add element inet calico %s { "calia1" }' % lset(["net2"], 4))
    declared = lines.index("add chain inet calico %s" % nft_policy.list_chain(("net2",),
                                                                               "inbound"))
    declared_set = lines.index(nft_policy.set_declaration(lset(["net2"], 4), "ifname"))
    dispatch = lines.index("add rule inet calico to-ep meta nfproto ipv4 oifname @%s goto %s"
                           % (lset(["net2"], 4), nft_policy.list_chain(("net2",), "inbound")))
    deleted = lines.index("delete chain inet calico %s" % nft_policy.list_chain(("net1",),
                                                                                 "inbound"))
    deleted_set = [i for i, line in enumerate(lines) if line.startswith("delete set") and
                   lset(["net1"], 4) in line]
    assert declared < dispatch < new < deleted < deleted_set[0]
    assert declared_set < dispatch
    assert not [line for line in lines if line.startswith("delete element")
                and lset(["net1"], 4) in line]


def _programmed_before(desired, delta):
    """The chains and sets a delta starts from: desired now, with the delta undone."""
    chains = {c: r for c, r in desired.nft_chains.items() if c not in delta.nft_chains}
    chains.update({c: ["old"] for c, r in delta.nft_chains.items() if r is None})
    sets = {n: k for n, k in desired.nft_sets.items() if n not in delta.nft_sets}
    sets.update({n: "ifname" for n, k in delta.nft_sets.items() if k is None})
    return chains, sets


def test_tag_member_on_another_host_is_only_in_the_tag_sets():
    state, desired = loaded_state(*BASE, ep_item("a1", "10.0.0.1", ["net1"]),
                                  ep_item("b1", "10.0.0.9", ["net1"], host="h2", ip6="fd00::9"))
    assert desired.nft_elements["t4-net1"] == {"10.0.0.1", "10.0.0.9"}
    assert desired.nft_elements["t6-net1"] == {"fd00::9"}
    everything_else = {e for name, elements in desired.nft_elements.items()
                       if not name.startswith(("t4-", "t6-")) for e in elements}
    assert everything_else and not any("calib1" in e or "10.0.0.9" in e or "fd00::9" in e
                                       for e in everything_else)
    delta = change(state, desired, (ep_key("b1", "h2"), None))
    assert delta.nft_removed == {"t4-net1": {"10.0.0.9"}, "t6-net1": {"fd00::9"}}
    assert not any(delta.nft_added.values()) and not delta.nft_chains


def test_inactive_endpoint_is_in_no_interface_set():
    state, desired = loaded_state(*BASE, ep_item("a1", "10.0.0.1", ["net1"], ip6="fd00::1",
                                                 state="inactive"))
    assert not [n for n in desired.nft_sets if n.startswith(("e4-", "e6-"))]
    assert not [c for c in desired.nft_chains if c.startswith(("il-", "ol-"))]
    assert desired.nft_elements["t4-net1"] == set()            # an inactive one carries no tag
    assert desired.nft_elements["src4"] == {'"calia1" . 10.0.0.1'}
    # Waking it up puts its interface in its list's sets.
    delta = change(state, desired, ep_item("a1", "10.0.0.1", ["net1"], ip6="fd00::1"))
    assert delta.nft_sets == {lset(["net1"], 4): "ifname", lset(["net1"], 6): "ifname"}
    assert delta.nft_added[lset(["net1"], 6)] == {'"calia1"'}
    assert delta.nft_added["t4-net1"] == {"10.0.0.1"}


def test_ipv4_only_endpoint_has_no_ipv6_elements():
    _, desired = loaded_state(*BASE, ep_item("a1", "10.0.0.1", ["net1"]),
                              ep_item("a2", None, ["net1"], ip6="fd00::2", mac="02:00:00:00:00:02"))
    e = desired.nft_elements
    assert e["src6"] == {'"calia2" . fd00::2'} and e["src4"] == {'"calia1" . 10.0.0.1'}
    assert e[lset(["net1"], 6)] == {'"calia2"'} and e[lset(["net1"], 4)] == {'"calia1"'}
    assert e["mac"] == {'"calia1" . ee:ee:ee:ee:ee:ee', '"calia2" . 02:00:00:00:00:02'}
    assert e["hasmac"] == {'"calia1"', '"calia2"'}


# A tag set deleted and declared again within one update: profile tagger stops carrying tag T
# (its only member then loses it) while profile net2, used here, starts naming T in a rule.
REDECLARE = profile_items("tagger", [], tags=["T"]) + [
    ep_item("b5", "10.0.0.5", ["tagger"], host="h2")]
REDECLARE_CHANGE = (
    (keys.profile_tags("tagger"), "[]"),
    (keys.profile_rules("net2"), json.dumps({"id": "net2", "inbound_rules": [
        {"action": "allow", "src_tag": "T"}], "outbound_rules": []})))


def test_set_deleted_and_declared_again_in_one_update():
    state, desired = loaded_state(*BASE, *REDECLARE, ep_item("a1", "10.0.0.1", ["net2"]))
    assert desired.nft_elements["t4-T"] == {"10.0.0.5"}
    programmed = dict(desired.nft_chains), dict(desired.nft_sets)
    delta = change(state, desired, *REDECLARE_CHANGE)
    assert delta.nft_sets["t4-T"] == "ipv4_addr"               # never left deleted
    assert delta.nft_removed["t4-T"] == {"10.0.0.5"}           # the kernel's copy still has it
    assert desired.nft_sets["t4-T"] == "ipv4_addr" and desired.nft_elements["t4-T"] == set()
    script = nft_policy.delta_script(*programmed, delta.nft_chains, delta.nft_sets,
                                     delta.nft_added, delta.nft_removed)
    assert "delete element inet calico t4-T { 10.0.0.5 }" in script.splitlines()
    assert " t4-T" not in script.replace("delete element inet calico t4-T", "")
    assert "@t4-T" in script                                   # ...and net2's rule uses it


def test_tag_that_comes_and_goes_within_one_batch_reaches_no_script():
    state, desired = loaded_state(*BASE, ep_item("a1", "10.0.0.1", ["net2"]))
    programmed = dict(desired.nft_chains), dict(desired.nft_sets)
    # A new tag with a member appears, and in the same batch its profile loses it again.
    delta = change(state, desired, *profile_items("p9", [], tags=["U"]),
                   ep_item("b6", "10.0.0.6", ["p9"], host="h2"),
                   (keys.profile_tags("p9"), "[]"))
    assert "t4-U" not in desired.nft_sets
    script = nft_policy.delta_script(*programmed, delta.nft_chains, delta.nft_sets,
                                     delta.nft_added, delta.nft_removed)
    assert "t4-U" not in script and "t6-U" not in script


# --- real kernel ------------------------------------------------------------------------------
#
# The script below runs in `unshare -n` and follows a plan (JSON on stdin) built here from the
# helpers above: a snapshot, then steps, each one of
#   change: records set or deleted through FelixState and NftDesiredState, applied as a delta;
#   hand:   an nft command someone else ran, then two refreshes (sync full=False, or quick);
#   stale-change: a hand edit that makes the next change's transaction fail, then the agent's
#           answer to that (a full sync);
#   switch: a new AgentDataplane of the other kind taking over with a full sync.
# After each step it saves what `nft -j list table inet calico` says and what we desired.

KERNEL = textwrap.dedent(r'''
    import json, subprocess, sys
    from calicoctl.felix import nft_policy
    from calicoctl.felix.executor import AgentDataplane, nftables_usable
    from calicoctl.felix.state import Changes, FelixState

    def run(*cmd, stdin=None):
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
        return {"rc": proc.returncode, "out": proc.stdout, "err": proc.stderr}

    def listing():
        return run("nft", "-j", "list", "table", "inet", "calico")

    plan = json.load(sys.stdin)
    out = {"probe": run("nft", "-c", "-f", "-", stdin=nft_policy.probe_script()),
           "usable": nftables_usable(), "after_probe": listing(), "steps": {}}

    def record(name, dp, desired, **extra):
        step = {"listing": listing(), "kind": dp.kind,
                "iptables": {v: run(cmd, "-t", "filter")["out"]
                             for v, cmd in (("4", "iptables-save"), ("6", "ip6tables-save"))},
                "ipsets": run("ipset", "list", "-n")["out"].split()}
        if dp.kind == "nftables":
            step.update(chains=desired.nft_chains, sets=desired.nft_sets,
                        elements={n: sorted(e) for n, e in desired.nft_elements.items()})
        step.update(extra)
        out["steps"][name] = json.loads(json.dumps(step))     # as it is now, not at the end

    state = FelixState("h1")
    dp = AgentDataplane(dataplane="nftables")
    desired = dp.desired_state()
    desired.update(state, state.load_snapshot(plan["snapshot"]), full=True)
    dp.sync(desired, full=True)
    record("full", dp, desired)
    for step in plan["steps"]:
        extra = {}
        if step["op"] == "change":
            changes = Changes()
            for key, value in step["items"]:
                changes.merge(state.apply(key, value))
            delta = desired.update(state, changes)
            dp.apply(delta)
            extra["delta"] = {"sets": delta.nft_sets,
                              "added": {n: sorted(e) for n, e in delta.nft_added.items()},
                              "removed": {n: sorted(e) for n, e in delta.nft_removed.items()}}
        elif step["op"] == "stale-change":
            # Someone removed what this change removes: the transaction fails as a whole.
            assert run("nft", *step["cmd"])["rc"] == 0, step
            extra["broken"] = listing()
            changes = Changes()
            for key, value in step["items"]:
                changes.merge(state.apply(key, value))
            try:
                dp.apply(desired.update(state, changes))
                extra["error"] = None
            except Exception as exc:                # what the agent catches: DataplaneError
                extra["error"] = "%s: %s" % (type(exc).__name__, exc)
            extra["after_error"] = listing()
            dp.sync(desired, full=True)             # the agent's answer to a failed change
        elif step["op"] == "hand":
            assert run("nft", *step["cmd"])["rc"] == 0, step
            extra["broken"] = listing()
            if step["repair"] == "quick":
                extra["repaired"] = [dp.quick_sync(desired), dp.quick_sync(desired)]
            else:
                extra["repaired"] = [dp.sync(desired, full=False), dp.sync(desired, full=False)]
        elif step["op"] == "switch":
            dp = AgentDataplane(dataplane=step["to"])
            desired = dp.desired_state()
            desired.update(state, Changes(), full=True)
            dp.sync(desired, full=True)
        record(step["name"], dp, desired, **extra)
    print(json.dumps(out))
''')

ODD1 = "a profile/with~odd chars"
ODD2 = "L" * 100
ODD_TAG = "odd tag!"
KERNEL_SNAPSHOT = [
    (keys.READY, "true"),
    (keys.pool("192.168.0.0/16", 4), '{"cidr": "192.168.0.0/16", "masquerade": true}'),
    (keys.pool("fd00::/64", 6), '{"cidr": "fd00::/64"}'),
    *profile_items("net1", [{"action": "allow", "src_tag": "net1"},
                            {"action": "deny", "protocol": "tcp", "src_net": "10.0.0.0/8",
                             "dst_ports": list(range(1, 20)) + ["1000:2000"]},
                            {"action": "allow", "protocol": "udp", "src_ports": [53],
                             "dst_tag": "other"}]),
    *profile_items("net2", [], []),
    *profile_items("kinds", [rule for rule, _ in RULE_KINDS], [], tags=[]),
    *REDECLARE,
    ep_item("aa01", "192.168.0.1", ["net1"], ip6="fd00::1"),
    ep_item("ab02", "192.168.0.2", ["net1", "net2"]),
    ep_item("ac03", "192.168.0.3", ["net1", "net2"]),
    ep_item("af07", "192.168.0.7", ["kinds"]),
    ep_item("bb09", "192.168.0.9", ["net1"], host="h2"),
]
LOCAL = ("aa01", "ab02", "ac03", "af07")
KERNEL_STEPS = [
    {"name": "shared-added", "op": "change", "items": [
        ep_item("ad04", "192.168.0.4", ["net1", "net2"]),
        (keys.profile_rules("net2"), json.dumps({"id": "net2", "inbound_rules": [
            {"action": "allow"}], "outbound_rules": []}))]},
    {"name": "one-sharer-removed", "op": "change", "items": [(ep_key("ad04"), None)]},
    {"name": "moved", "op": "change", "items": [ep_item("ab02", "192.168.0.2", ["net2"])]},
    {"name": "inactive", "op": "change", "items": [
        ep_item("ac03", "192.168.0.3", ["net1", "net2"], state="inactive")]},
    {"name": "redeclared", "op": "change", "items": list(REDECLARE_CHANGE)},
    {"name": "odd-names", "op": "change", "items": [
        *profile_items(ODD1, [{"action": "allow", "src_tag": "net1"}]),
        *profile_items(ODD2, [{"action": "allow", "protocol": "tcp", "dst_ports": [80]}],
                       tags=[ODD_TAG]),
        ep_item("ae06", "192.168.0.6", [ODD1, ODD2], ip6="fd00::6")]},
    {"name": "element-repaired", "op": "hand", "repair": "sync",
     "cmd": ["delete", "element", "inet", "calico", "src4", '{ "caliaa01" . 192.168.0.1 }']},
    {"name": "chain-repaired", "op": "hand", "repair": "sync",
     "cmd": ["flush", "chain", "inet", "calico", "p-net1-i"]},
    # Counts unchanged: an endpoint's interface swapped for another in its list's set, a
    # profile's allow for drop.
    {"name": "verdict-repaired", "op": "hand", "repair": "sync",
     "cmd": ['delete element inet calico %s { "caliaa01" }; '
             'add element inet calico %s { "calizz99" }; '
             'flush chain inet calico p-net1-o; add rule inet calico p-net1-o drop'
             % ((nft_policy.list_set(("net1",), 4),) * 2)]},
    {"name": "quick-repaired", "op": "hand", "repair": "quick",
     "cmd": ["delete", "chain", "inet", "calico", "input"]},
    {"name": "table-deleted", "op": "hand", "repair": "quick",
     "cmd": ["delete", "table", "inet", "calico"]},
    {"name": "stale-change", "op": "stale-change",
     "cmd": ["delete", "element", "inet", "calico", "src4", '{ "caliaf07" . 192.168.0.7 }'],
     "items": [ep_item("af07", "192.168.0.17", ["net2"])]},
    {"name": "odd-names-removed", "op": "change", "items": [
        (ep_key("ae06"), None), *[(k(p), None) for p in (ODD1, ODD2)
                                  for k in (keys.profile_tags, keys.profile_rules)]]},
    {"name": "to-iptables", "op": "switch", "to": "iptables"},
    {"name": "to-nftables", "op": "switch", "to": "nftables"},
    {"name": "all-removed", "op": "change", "items": [(ep_key(e), None) for e in LOCAL]},
]
NFT_STEPS = ["full"] + [s["name"] for s in KERNEL_STEPS if s["name"] != "to-iptables"]


@pytest.fixture(scope="module")
def kernel():
    plan = {"snapshot": KERNEL_SNAPSHOT, "steps": KERNEL_STEPS}
    proc = subprocess.run(["unshare", "-n", sys.executable, "-c", KERNEL], input=json.dumps(plan),
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def kernel_elements(listing_text):
    """`nft -j list table` -> {set name: set(element text)}, in the text we write them (an
    interface name quoted, a concatenation joined by ' . ').  A map (our table has none) fails
    the test that reads it."""
    out = {}
    for item in json.loads(listing_text)["nftables"]:
        assert "map" not in item, item
        if "set" not in item:
            continue
        body = item["set"]
        types = body["type"] if isinstance(body["type"], list) else [body["type"]]
        texts = set()
        for elem in body.get("elem", ()):
            parts = elem["concat"] if isinstance(elem, dict) else [elem]
            texts.add(" . ".join('"%s"' % p if t == "ifname" else str(p)
                                 for t, p in zip(types, parts)))
        out[body["name"]] = texts
    return out


def step(kernel, name):
    return kernel["steps"][name]


def kernel_chains(kernel, name):
    listing = step(kernel, name)["listing"]
    assert listing["rc"] == 0, listing["err"]
    return nft_policy.parse_listing(listing["out"])["chains"]


def kernel_sets(kernel, name):
    listing = step(kernel, name)["listing"]
    assert listing["rc"] == 0, listing["err"]
    return kernel_elements(listing["out"])


@needs_kernel
def test_probe_checks_without_committing(kernel):
    assert kernel["probe"]["rc"] == 0, kernel["probe"]["err"]
    assert kernel["usable"] == [True, "nft and the kernel accept our table"]
    assert kernel["after_probe"]["rc"] != 0                   # `nft -c` left no table behind


@needs_kernel
@pytest.mark.parametrize("name", NFT_STEPS)
def test_kernel_table_is_what_we_desired(kernel, name):
    s = step(kernel, name)
    assert s["listing"]["rc"] == 0, s["listing"]["err"]
    read = nft_policy.parse_listing(s["listing"]["out"])
    assert read == nft_policy.expected_listing(s["chains"], s["sets"], s["elements"])
    elements = kernel_elements(s["listing"]["out"])
    assert set(elements) == set(s["sets"])
    for set_name in s["sets"]:
        assert elements[set_name] == set(s["elements"].get(set_name, ())), set_name


@needs_kernel
def test_full_load(kernel):
    sets = kernel_sets(kernel, "full")
    assert sets[lset(["net1", "net2"], 4)] == {'"caliab02"', '"caliac03"'}
    assert sets[lset(["net1"], 6)] == {'"caliaa01"'}
    assert sets["src6"] == {'"caliaa01" . fd00::1'}
    assert sets["t4-net1"] == {"192.168.0.%d" % i for i in (1, 2, 3, 9)}   # 9 is on h2
    assert not [e for name, items in sets.items() if not name.startswith("t4-")
                for e in items if "bb09" in e or ".9" in e]
    assert sets["t4-other"] == sets["t6-other"] == set()      # named by a rule, carried by none
    assert sets["t4-T"] == {"10.0.0.5"}
    chains = kernel_chains(kernel, "full")
    assert chains["p-kinds-i"] == sum(len(lines) for _, lines in RULE_KINDS)
    # The tag rule and the udp rule to a tag once per family, the IPv4 deny once.
    assert chains["p-net1-i"] == 5
    # The iptables filter table keeps only fixed accepts: no per-endpoint chain.
    for v in ("4", "6"):
        ipt = parse_save(step(kernel, "full")["iptables"][v])
        fixed = nft_policy.iptables_chains(int(v), "cali")
        assert fixed[FORWARD_CHAIN] and ipt[FORWARD_CHAIN] == fixed[FORWARD_CHAIN]
        assert ipt[INPUT_CHAIN] == fixed[INPUT_CHAIN]
        assert not [c for c in ipt if c.startswith(("felix-from-", "felix-to-", "felix-p-"))]


@needs_kernel
def test_incremental_changes(kernel):
    sets = kernel_sets(kernel, "shared-added")
    assert '"caliad04"' in sets[lset(["net1", "net2"], 4)]
    assert kernel_chains(kernel, "shared-added")["p-net2-i"] == 1
    shared = nft_policy.list_chain(("net1", "net2"), "inbound")
    assert shared in kernel_chains(kernel, "one-sharer-removed")
    assert '"caliad04"' not in kernel_sets(kernel, "one-sharer-removed")[
        lset(["net1", "net2"], 4)]
    moved = step(kernel, "moved")["delta"]
    assert moved["removed"][lset(["net1", "net2"], 4)] == ['"caliab02"']
    assert moved["added"][lset(["net2"], 4)] == ['"caliab02"']
    assert '"caliab02"' in kernel_sets(kernel, "moved")[lset(["net2"], 4)]
    assert shared in kernel_chains(kernel, "moved")                # ac03 still uses it
    inactive = kernel_sets(kernel, "inactive")
    assert not [name for name, items in inactive.items() if '"caliac03"' in items
                and name.startswith(("e4-", "e6-"))]
    assert lset(["net1", "net2"], 4) not in inactive
    assert shared not in kernel_chains(kernel, "inactive")         # nobody uses it now
    assert "192.168.0.3" not in inactive["t4-net1"]


@needs_kernel
def test_set_declared_again_within_one_update_in_the_kernel(kernel):
    delta = step(kernel, "redeclared")["delta"]
    assert delta["sets"].get("t4-T") == "ipv4_addr" and delta["removed"]["t4-T"] == ["10.0.0.5"]
    assert kernel_sets(kernel, "redeclared")["t4-T"] == set()
    assert kernel_chains(kernel, "redeclared")["p-net2-i"] == 2   # src_tag T, both families


@needs_kernel
def test_odd_names_load(kernel):
    chains = kernel_chains(kernel, "odd-names")
    for profile in (ODD1, ODD2):
        for direction in ("inbound", "outbound"):
            assert nft_policy.profile_chain(profile, direction) in chains
    assert nft_policy.profile_chain(ODD1, "inbound") != nft_policy.profile_chain(ODD2, "inbound")
    sets = kernel_sets(kernel, "odd-names")
    assert sets[nft_policy.tag_set(ODD_TAG, 4)] == {"192.168.0.6"}
    assert sets[nft_policy.tag_set(ODD_TAG, 6)] == {"fd00::6"}
    assert '"caliae06"' in sets[lset([ODD1, ODD2], 6)]
    theirs = {nft_policy.profile_chain(p, d) for p in (ODD1, ODD2)
              for d in ("inbound", "outbound")}
    theirs |= {nft_policy.list_chain((ODD1, ODD2), d) for d in ("inbound", "outbound")}
    assert theirs <= set(chains)
    assert not theirs & set(kernel_chains(kernel, "odd-names-removed"))
    assert nft_policy.tag_set(ODD_TAG, 4) not in kernel_sets(kernel, "odd-names-removed")


@needs_kernel
@pytest.mark.parametrize("name,damaged", [("element-repaired", "sets"),
                                          ("chain-repaired", "chains"),
                                          ("quick-repaired", "chains")])
def test_hand_edits_are_repaired(kernel, name, damaged):
    s = step(kernel, name)
    assert s["broken"]["rc"] == 0
    broken = nft_policy.parse_listing(s["broken"]["out"])
    wanted = nft_policy.expected_listing(s["chains"], s["sets"], s["elements"])
    assert broken[damaged] != wanted[damaged]                 # the hand edit took
    assert s["repaired"][0] > 0 and s["repaired"][1] == 0     # repaired once, then nothing to do
    # (that the table is then what we desired: test_kernel_table_is_what_we_desired)


@needs_kernel
def test_hand_edits_that_keep_every_count_are_repaired(kernel):
    """The deep refresh compares rules and elements as nft prints them, not only counts."""
    s = step(kernel, "verdict-repaired")
    broken = nft_policy.parse_listing(s["broken"]["out"])
    assert broken == nft_policy.expected_listing(s["chains"], s["sets"], s["elements"])
    assert '"calizz99"' in s["broken"]["out"]                 # the hand edit took
    assert s["repaired"][0] > 0 and s["repaired"][1] == 0


@needs_kernel
def test_deleted_table_is_repaired_by_a_quick_refresh(kernel):
    s = step(kernel, "table-deleted")
    assert s["broken"]["rc"] != 0                             # gone
    assert s["repaired"][0] > 0 and s["repaired"][1] == 0


@needs_kernel
def test_failed_change_leaves_the_kernel_untouched_and_a_full_sync_recovers(kernel):
    s = step(kernel, "stale-change")
    assert s["error"] and s["error"].startswith("DataplaneError"), s["error"]
    assert s["after_error"] == s["broken"]                    # nothing of it applied
    assert '"caliaf07"' in kernel_sets(kernel, "stale-change")[lset(["net2"], 4)]


@needs_kernel
def test_switch_to_iptables_removes_the_table(kernel):
    s = step(kernel, "to-iptables")
    assert s["listing"]["rc"] != 0 and "No such file" in s["listing"]["err"]
    assert "-A felix-to-caliaa01" in s["iptables"]["4"]
    assert "-A felix-from-caliaa01" in s["iptables"]["6"]
    assert "felix-v4-net1" in s["ipsets"]


@needs_kernel
def test_switch_back_to_nftables_leaves_no_iptables_policy(kernel):
    assert "felix-v4-net1" in step(kernel, "to-iptables")["ipsets"]   # there was some to remove
    s = step(kernel, "to-nftables")
    for v in ("4", "6"):
        assert "felix-FORWARD" in s["iptables"][v]
        assert not re.search(r"felix-(from|to)-|felix-FROM-|felix-TO-|felix-p-",
                             s["iptables"][v]), s["iptables"][v]
    assert not [n for n in s["ipsets"] if n.startswith(("felix-v4-", "felix-v6-"))], s["ipsets"]
    assert "t4-net1" in kernel_sets(kernel, "to-nftables")


@needs_kernel
def test_removing_every_endpoint_leaves_only_the_fixed_table(kernel):
    chains = kernel_chains(kernel, "all-removed")
    assert sorted(chains) == sorted(nft_policy.base_chains("cali"))
    sets = kernel_sets(kernel, "all-removed")
    for name in nft_policy.fixed_sets():
        assert sets[name] == set(), name
    assert not [name for name in sets if name.startswith(("e4-", "e6-"))]
    assert sets["t4-net1"] == {"192.168.0.9"}                # h2's endpoint still carries it


# --- traffic ------------------------------------------------------------------------------------
#
# In one `unshare -n` namespace (the host), two workloads: each a child `unshare -n cat` (it
# lives while our pipe to it is open, so nothing outlives the test) holding the eth0 end of a
# veth pair whose other end, caliwa / caliwb, is in the host.  The agent's dataplane programs the
# host for endpoints of those names; TCP connections show what gets through.  Addresses are
# 10.65.0.x, routed by hand as the agent's route manager would (no route leaves the namespace).

TRAFFIC = textwrap.dedent(r'''
    import json, os, subprocess, sys, time
    from calicoctl.felix.executor import AgentDataplane
    from calicoctl.felix.state import Changes, FelixState

    SERVER = """
    import select, socket, sys
    socks = []
    for port in map(int, sys.argv[1:]):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(64)
        socks.append(s)
    print("ready", flush=True)
    while True:
        ready, _, _ = select.select(socks + [sys.stdin], [], [])
        if sys.stdin in ready:
            break                                   # our parent closed the pipe: done
        for s in ready:
            c, _ = s.accept()
            c.sendall(b"ok")
            c.close()
    """
    CLIENT = """
    import socket, sys
    dst, port, bind, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    s = socket.socket()
    s.settimeout(timeout)
    if bind != "-":
        s.bind((bind, 0))
    try:
        s.connect((dst, port))
        ok = s.recv(2) == b"ok"
    except OSError:
        ok = False
    sys.exit(0 if ok else 1)
    """

    def sh(*cmd):
        subprocess.run(cmd, check=True, capture_output=True, text=True)

    plan = json.load(sys.stdin)
    sh("ip", "link", "set", "lo", "up")
    own = os.readlink("/proc/self/ns/net")
    workloads = {}
    for name, w in plan["workloads"].items():
        child = subprocess.Popen(["unshare", "-n", "cat"], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while os.readlink("/proc/%d/ns/net" % child.pid) == own:   # until it has unshared
            assert time.monotonic() < deadline, "child namespace never appeared"
        pid = str(child.pid)
        host_if = w["iface"]
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", pid)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "route", "add", w["ip"] + "/32", "dev", host_if)
        for extra in w.get("extra_routes", ()):
            sh("ip", "route", "add", extra + "/32", "dev", host_if)
        # (Not /sys/class/net: that sysfs belongs to the namespace that mounted it.)
        gateway_mac = json.loads(subprocess.run(["ip", "-j", "link", "show", host_if],
                                                check=True, capture_output=True,
                                                text=True).stdout)[0]["address"]
        inside = ["nsenter", "-t", pid, "-n"]
        sh(*inside, "ip", "link", "set", "lo", "up")
        sh(*inside, "ip", "link", "set", "eth0", "address", w["mac"])
        sh(*inside, "ip", "link", "set", "eth0", "up")
        sh(*inside, "ip", "addr", "add", w["ip"] + "/32", "dev", "eth0")
        # Calico's gateway: a link-local next hop the host answers for.
        sh(*inside, "ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
        sh(*inside, "ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
        neighbour = ("ip", "neigh", "replace", "169.254.1.1", "lladdr", gateway_mac, "dev",
                     "eth0", "nud", "permanent")
        sh(*inside, *neighbour)
        server = subprocess.Popen(inside + [sys.executable, "-c", SERVER] +
                                  [str(p) for p in plan["ports"]],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline() == "ready\n"
        workloads[name] = {"pid": pid, "inside": inside, "ip": w["ip"], "keep": (child, server),
                           "neighbour": neighbour}

    def connects(src, dst, port, bind, timeout):
        proc = subprocess.run(workloads[src]["inside"] + [
            sys.executable, "-c", CLIENT, workloads[dst]["ip"], str(port), bind or "-",
            str(timeout)])
        return proc.returncode == 0

    def check(c):
        """Expected to connect: try until it does (or 30 s pass).  Expected not to: one try
        that waits 3 s for an answer that a drop never sends."""
        if not c["expect"]:
            return connects(c["from"], c["to"], c["port"], c.get("bind"), 3)
        deadline = time.monotonic() + 30
        while not connects(c["from"], c["to"], c["port"], c.get("bind"), 1):
            if time.monotonic() > deadline:
                return False
        return True

    state = FelixState("h1")
    dp = AgentDataplane(dataplane="nftables")
    dp.prepare()                                    # IPv4 forwarding, as the agent starts
    desired = dp.desired_state()
    desired.update(state, state.load_snapshot(plan["snapshot"]), full=True)
    dp.sync(desired, full=True)
    results = {}
    for step in plan["steps"]:
        for cmd in step.get("inside", ()):
            w = workloads[cmd[0]]
            sh(*w["inside"], *cmd[1:])
            # A new MAC flushes even permanent neighbours: the gateway's goes back.
            sh(*w["inside"], *w["neighbour"])
        for cmd in step.get("host", ()):
            sh(*cmd)
        if step.get("items"):
            changes = Changes()
            for key, value in step["items"]:
                changes.merge(state.apply(key, value))
            dp.apply(desired.update(state, changes))
        results[step["name"]] = [check(c) for c in step["checks"]]
    for w in workloads.values():
        for proc in w["keep"]:
            proc.stdin.close()
            proc.wait(timeout=30)
    print(json.dumps(results))
''')

WEB = [{"action": "allow", "src_tag": "web"}]
MAC_A, MAC_B, MAC_A2 = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:aa:bb"
FORGED = "10.65.0.99"


def _conn(src, dst, port, expect, bind=None):
    return {"from": src, "to": dst, "port": port, "expect": expect, "bind": bind}


TRAFFIC_PLAN = {
    "ports": [8080, 9090],
    "workloads": {
        # The forged address routes to A, so only our anti-spoofing (not rp_filter) stops it.
        "a": {"iface": "caliwa", "ip": "10.65.0.2", "mac": MAC_A, "extra_routes": [FORGED]},
        "b": {"iface": "caliwb", "ip": "10.65.0.3", "mac": MAC_B},
    },
    "snapshot": [(keys.READY, "true"),
                 (keys.pool("10.65.0.0/16", 4), '{"cidr": "10.65.0.0/16"}'),
                 *profile_items("web", WEB), *profile_items("shut", [], tags=[]),
                 ep_item("wa", "10.65.0.2", ["web"], mac=MAC_A),
                 ep_item("wb", "10.65.0.3", ["web"], mac=MAC_B)],
    "steps": [
        {"name": "same-profile", "checks": [_conn("a", "b", 8080, True),
                                            _conn("b", "a", 8080, True)]},
        {"name": "b-shut", "items": [ep_item("wb", "10.65.0.3", ["shut"], mac=MAC_B)],
         "checks": [_conn("a", "b", 8080, False), _conn("b", "a", 8080, False)]},
        {"name": "deny-port", "items": [
            ep_item("wb", "10.65.0.3", ["web"], mac=MAC_B),
            *profile_items("web", [{"action": "deny", "protocol": "tcp", "dst_ports": [8080]}]
                           + WEB)],
         "checks": [_conn("a", "b", 8080, False), _conn("a", "b", 9090, True)]},
        {"name": "allow-all", "items": profile_items("web", [{"action": "allow"}]),
         "checks": [_conn("a", "b", 8080, True)]},
        {"name": "forged-source", "inside": [("a", "ip", "addr", "add", FORGED + "/32", "dev",
                                              "eth0")],
         "checks": [_conn("a", "b", 8080, False, bind=FORGED), _conn("a", "b", 8080, True)]},
        {"name": "source-now-owned", "items": [
            (ep_item("wa", None, ["web"], mac=MAC_A)[0], json.dumps({
                "state": "active", "name": "caliwa", "mac": MAC_A, "profile_ids": ["web"],
                "ipv4_nets": ["10.65.0.2/32", FORGED + "/32"], "ipv6_nets": []}))],
         "checks": [_conn("a", "b", 8080, True, bind=FORGED)]},
        # A's new MAC: its new connections are dropped (what B starts is established and
        # passes), until the endpoint says that MAC.
        {"name": "mac-changed", "inside": [("a", "ip", "link", "set", "eth0", "address", MAC_A2)],
         "host": [("ip", "neigh", "flush", "dev", "caliwa")],
         "checks": [_conn("a", "b", 8080, False), _conn("b", "a", 8080, True)]},
        {"name": "mac-updated", "items": [ep_item("wa", "10.65.0.2", ["web"], mac=MAC_A2)],
         "checks": [_conn("a", "b", 8080, True)]},
    ],
}
TRAFFIC_STEPS = [s["name"] for s in TRAFFIC_PLAN["steps"]]


@pytest.fixture(scope="module")
def traffic():
    proc = subprocess.run(["unshare", "-n", sys.executable, "-c", TRAFFIC],
                          input=json.dumps(TRAFFIC_PLAN), capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@needs_kernel
@needs_veth
@pytest.mark.parametrize("name", TRAFFIC_STEPS)
def test_traffic(traffic, name):
    expected = [c["expect"] for s in TRAFFIC_PLAN["steps"] if s["name"] == name
                for c in s["checks"]]
    assert traffic[name] == expected

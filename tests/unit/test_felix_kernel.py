"""Root, no Docker: load the generated rules and sets with the real iptables-restore and ipset
restore inside a throwaway network namespace (`unshare -n`), proving they parse and apply, that
incremental changes apply in place, and that a refresh repairs a hand-flushed chain."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ipset"),
    reason="needs root, unshare and ipset (loads real rules in a throwaway namespace)")

SCRIPT = textwrap.dedent(r'''
    import json, subprocess, sys
    from calicoctl.felix.calc import DesiredState
    from calicoctl.felix.executor import AgentDataplane
    from calicoctl.felix.state import FelixState
    from calicoctl.datastore import keys

    def ep(eid, ip, profiles, host="h1", ip6=None):
        return (keys.endpoint(host, "libnetwork", "libnetwork", eid), json.dumps({
            "state": "active", "name": ("cali" + eid)[:15], "mac": "ee:ee:ee:ee:ee:ee",
            "profile_ids": profiles, "ipv4_nets": [ip + "/32"],
            "ipv6_nets": [ip6 + "/128"] if ip6 else []}))

    items = [
        (keys.READY, "true"),
        (keys.pool("192.168.0.0/16", 4), '{"cidr": "192.168.0.0/16", "masquerade": true}'),
        (keys.pool("fd00::/64", 6), '{"cidr": "fd00::/64"}'),
        (keys.profile_tags("net1"), '["net1"]'),
        (keys.profile_rules("net1"), json.dumps({"id": "net1",
            "inbound_rules": [{"action": "allow", "src_tag": "net1"},
                              {"action": "deny", "protocol": "tcp", "src_net": "10.0.0.0/8",
                               "dst_ports": list(range(1, 20)) + ["1000:2000"]},
                              {"action": "allow", "protocol": "icmp", "icmp_type": 8,
                               "icmp_code": 0},
                              {"action": "allow", "protocol": "icmpv6", "icmp_type": 128},
                              {"action": "allow", "protocol": "udp", "src_ports": [53],
                               "dst_tag": "other"},
                              {"action": "allow", "protocol": 47}],
            "outbound_rules": [{"action": "allow"}]})),
        (keys.profile_tags("net2"), '["net2"]'),
        (keys.profile_rules("net2"), '{"id": "net2", "inbound_rules": [], "outbound_rules": []}'),
        ep("aa00000000000001", "192.168.0.1", ["net1"], ip6="fd00::1"),
        ep("ab00000000000002", "192.168.0.2", ["net1", "net2"]),
        ep("bb00000000000003", "192.168.0.3", ["net1"], host="h2"),
    ]
    state = FelixState("h1")
    changes = state.load_snapshot(items)
    desired = DesiredState()
    desired.update(state, changes, full=True)
    dp = AgentDataplane()
    dp.sync(desired, full=True)
    # An incremental change: a new local endpoint and a rule change.
    ch = state.apply(*ep("ac00000000000004", "192.168.0.4", ["net2"]))
    ch.merge(state.apply(keys.profile_rules("net2"),
             '{"id": "net2", "inbound_rules": [{"action": "allow"}], "outbound_rules": []}'))
    dp.apply(desired.update(state, ch))
    # Someone flushes a chain by hand; a refresh puts it back.
    subprocess.run(["iptables", "-F", "felix-from-caliaa000000000"], check=True)
    repaired = dp.sync(desired, full=False)
    again = dp.sync(desired, full=True)         # our text is canonical: nothing to rewrite
    subprocess.run(["iptables", "-D", "FORWARD", "-j", "felix-FORWARD"], check=True)
    subprocess.run(["iptables", "-F", "felix-INPUT"], check=True)
    quick = dp.quick_sync(desired)
    out = {v: subprocess.run([cmd, "-t", "filter"], capture_output=True, text=True).stdout
           for v, cmd in (("4", "iptables-save"), ("6", "ip6tables-save"))}
    out["nat"] = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True,
                                text=True).stdout
    out["sets"] = subprocess.run(["ipset", "save"], capture_output=True, text=True).stdout
    out["repaired"] = repaired
    out["again"] = again
    out["quick"] = quick
    out["desired4"] = desired.chains[("filter", 4)]
    print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def loaded():
    proc = subprocess.run(["unshare", "-n", sys.executable, "-c", SCRIPT], capture_output=True,
                          text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__)))), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def saved_chains(text):
    from calicoctl.felix.executor import parse_save
    return parse_save(text)


def test_rules_load_and_match_what_we_rendered(loaded):
    kernel = saved_chains(loaded["4"])
    assert "felix-FORWARD" in loaded["desired4"]                # the loop below checks chains
    for chain, rules in loaded["desired4"].items():
        assert len(kernel[chain]) == len(rules), chain
    assert kernel["INPUT"] == ["-j felix-INPUT"] and kernel["FORWARD"] == ["-j felix-FORWARD"]
    assert "felix-to-caliac000000000" in kernel                 # incremental add applied
    assert kernel["felix-p-net2-i"] == ["-g felix-ALLOW"]       # rule change applied


def test_multiport_split_and_families(loaded):
    v4 = saved_chains(loaded["4"])["felix-p-net1-i"]
    denies = [r for r in v4 if r.endswith("-j DROP")]
    assert len(denies) == 2                                     # 19 ports + a range > 15
    assert not any("icmp6" in r for r in v4)
    v6 = saved_chains(loaded["6"])["felix-p-net1-i"]
    assert not any("10.0.0.0/8" in r or "--icmp-type" in r for r in v6)
    assert any("icmpv6-type 128" in r for r in v6)


def test_sets_and_nat(loaded):
    assert "add felix-v4-net1 192.168.0.3" in loaded["sets"]    # a remote member
    assert "add felix-v6-net1 fd00::1" in loaded["sets"]
    assert "create felix-v4-other hash:ip" in loaded["sets"]    # referenced, carried by none
    nat = saved_chains(loaded["nat"])
    assert nat["POSTROUTING"][0] == "-j felix-POSTROUTING"
    assert "MASQUERADE" in nat["felix-POSTROUTING"][0]


def test_refresh_repaired_the_flushed_chain(loaded):
    assert loaded["repaired"] == 1
    assert loaded["again"] == 0, "rendered rules differ from iptables-save's canonical form"
    assert loaded["quick"] == 1                                 # felix-INPUT; jump restored
    kernel = saved_chains(loaded["4"])
    assert kernel["felix-from-caliaa000000000"][0].startswith("-m mac ! --mac-source")
    assert kernel["FORWARD"] == ["-j felix-FORWARD"] and len(kernel["felix-INPUT"]) > 2


FLOWS = textwrap.dedent(r'''
    import ipaddress, socket, subprocess
    from calicoctl.dataplane.conntrack import forget_flows
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for address in ("fd00::2/128", "fd00::3/128"):
        subprocess.run(["ip", "addr", "add", address, "dev", "lo", "nodad"], check=True)
    # A rule that uses conntrack makes the kernel track this namespace's packets.
    for tool in ("iptables", "ip6tables"):
        subprocess.run([tool, "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED",
                        "-j", "ACCEPT"], check=True)
    for dst in ("127.0.0.2", "127.0.0.3", "fd00::2", "fd00::3"):
        udp = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
        udp.sendto(b"x", (dst, 9))
        udp.close()
    def tracked():
        with open("/proc/net/nf_conntrack") as f:
            return sorted(str(ipaddress.ip_address(line.split("dst=")[1].split()[0]))
                          for line in f if " udp " in line)
    print(tracked())
    print(forget_flows({"127.0.0.2/32", "fd00::2/128"}))
    print(tracked())
    # Enough entries that IPv4 asks the kernel's filter instead of reading the table.
    for i in range(400):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.sendto(b"x", ("127.0.1.%d" % (i % 250), 9 + i // 250))
        udp.close()
    before = len(tracked())
    print(forget_flows({"127.0.1.5/32"}), before - len(tracked()), "127.0.1.5" in tracked())
''')


def test_forget_flows_deletes_only_that_addresses_tracked_connections():
    """A removed workload's tracked connections would let its old peers reach the next
    workload given its address past that workload's policy (ESTABLISHED is accepted first).
    Both families: a conntrack socket speaks one, and IPv6 on an IPv4 socket is refused."""
    out = subprocess.run(["unshare", "-n", sys.executable, "-c", FLOWS], capture_output=True,
                         text=True, timeout=60, cwd=os.path.dirname(os.path.dirname(
                             os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["['127.0.0.2', '127.0.0.3', 'fd00::2', 'fd00::3']", "2",
                                       "['127.0.0.3', 'fd00::3']", "2 2 False"]


ROUTES = textwrap.dedent('''
    import subprocess
    from calicoctl.dataplane.routing import RouteManager
    from calicoctl.felix.routes import Route
    for name in ("caliA", "caliB"):
        subprocess.run(["ip", "link", "add", name, "up", "type", "veth", "peer", "name",
                        name + "p"], check=True)
    manager = RouteManager()
    a, b = Route("10.65.0.1/32", "caliA"), Route("10.65.0.2/32", "caliB")
    gone = Route("10.65.0.3/32", "caliGone")
    manager.update({a, b, gone}, set())
    print(subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout.strip())
    print(sorted(r.dst for r in manager.programmed))
    manager.update(set(), {a})
    print(subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout.strip())
''')


def test_routes_go_to_each_endpoints_own_interface():
    """The agent's endpoint routes name their veth by index (looked up per route): each lands
    on its own interface, one whose interface is missing waits, and a removal takes only its
    own route."""
    out = subprocess.run(["unshare", "-n", sys.executable, "-c", ROUTES], capture_output=True,
                         text=True, timeout=60, cwd=os.path.dirname(os.path.dirname(
                             os.path.dirname(os.path.abspath(__file__)))))
    assert out.returncode == 0, out.stderr
    assert [line.strip() for line in out.stdout.splitlines()] == [
        "10.65.0.1 dev caliA proto static scope link linkdown",
        "10.65.0.2 dev caliB proto static scope link linkdown",
        "['10.65.0.1/32', '10.65.0.2/32']",
        "10.65.0.2 dev caliB proto static scope link linkdown"]

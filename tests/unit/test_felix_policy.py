"""Pure policy, ipset, NAT and route computation checked against expected text."""

import ipaddress

import pytest

from calicoctl.datastore.models import Endpoint, Pool
from calicoctl.datastore.rules import Rules
from calicoctl.felix import ipsets, nat, policy, routes
from calicoctl.felix.ipsets import tag_set


def ep(name="cali1234567890a", nets4=("10.0.0.1/32",), nets6=(), profiles=("net1",),
       mac="ee:ee:ee:ee:ee:ee", host="h1", state="active", eid=None):
    return Endpoint(host=host, orchestrator="libnetwork", workload="libnetwork",
                    endpoint_id=eid or name[4:] + "ff", name=name, mac=mac, state=state,
                    profile_ids=list(profiles), ipv4_nets=list(nets4), ipv6_nets=list(nets6))


def lines(rule, version=4):
    return policy.rule_lines(rule, version, tag_set)


def test_allow_from_tag_goes_to_allow_chain():
    assert lines({"action": "allow", "src_tag": "net1"}) == [
        "-m set --match-set felix-v4-net1 src -g felix-ALLOW"]


def test_every_field_is_honoured():
    rule = {"action": "deny", "protocol": "tcp", "src_net": "10.1.0.0/16",
            "dst_net": "10.2.0.0/16", "src_tag": "a", "dst_tag": "b", "src_ports": [53],
            "dst_ports": [80, "1000:2000"]}
    assert lines(rule) == [
        "-s 10.1.0.0/16 -d 10.2.0.0/16 -p tcp -m set --match-set felix-v4-a src "
        "-m set --match-set felix-v4-b dst -m multiport --sports 53 "
        "-m multiport --dports 80,1000:2000 -j DROP"]


def test_icmp_type_and_code():
    assert lines({"protocol": "icmp", "icmp_type": 8, "icmp_code": 0}) == [
        "-p icmp -m icmp --icmp-type 8/0 -g felix-ALLOW"]
    assert lines({"protocol": "icmpv6", "icmp_type": 128}, 6) == [
        "-p ipv6-icmp -m icmp6 --icmpv6-type 128 -g felix-ALLOW"]
    assert lines({"protocol": "icmp", "icmp_type": 8}, 6) == []


def test_rule_of_other_family_is_left_out_never_widened():
    assert lines({"action": "allow", "src_net": "fd00::/64"}, 4) == []
    assert lines({"action": "allow", "dst_net": "10.0.0.0/8"}, 6) == []
    assert lines({"action": "allow", "ip_version": 6}, 4) == []
    assert lines({"action": "allow", "src_net": "fd00::/64"}, 6) == [
        "-s fd00::/64 -g felix-ALLOW"]


def test_ports_split_at_multiports_limit():
    ports = list(range(1, 21))                 # 20 single ports -> 15 + 5
    out = lines({"protocol": "udp", "dst_ports": ports})
    assert out == ["-p udp -m multiport --dports %s -g felix-ALLOW" % ",".join(map(str, range(1, 16))),
                   "-p udp -m multiport --dports 16,17,18,19,20 -g felix-ALLOW"]
    ranges = ["%d:%d" % (i * 10, i * 10 + 5) for i in range(1, 9)]   # 8 ranges = 16 slots
    out = lines({"protocol": "tcp", "dst_ports": ranges})
    assert len(out) == 2 and out[1].endswith("--dports 80:85 -g felix-ALLOW")


def test_src_and_dst_chunks_cross():
    out = lines({"protocol": "tcp", "src_ports": list(range(1, 17)), "dst_ports": list(range(1, 17))})
    assert len(out) == 4


def test_invalid_rule_raises_for_the_caller_to_skip():
    from calicoctl.errors import ValidationError
    with pytest.raises(ValidationError):
        lines({"action": "allow", "dst_ports": [80]})      # ports need tcp/udp


def test_endpoint_chains_layout():
    chains = policy.endpoint_chains(ep(profiles=("net1", "web")), 4)
    assert chains == {
        "felix-to-cali1234567890a": [
            "-j MARK --set-xmark 0x0/0x1000000", "-j felix-p-net1-i",
            "-m mark --mark 0x1000000/0x1000000 -j RETURN",
            "-j MARK --set-xmark 0x0/0x1000000", "-j felix-p-web-i",
            "-m mark --mark 0x1000000/0x1000000 -j RETURN",
            "-j DROP"],
        "felix-from-cali1234567890a": [
            "-m mac ! --mac-source ee:ee:ee:ee:ee:ee -j DROP",
            "! -s 10.0.0.1/32 -j DROP",
            "-j MARK --set-xmark 0x0/0x1000000", "-j felix-p-net1-o",
            "-m mark --mark 0x1000000/0x1000000 -j RETURN",
            "-j MARK --set-xmark 0x0/0x1000000", "-j felix-p-web-o",
            "-m mark --mark 0x1000000/0x1000000 -j RETURN",
            "-j DROP"],
    }


def test_endpoint_without_family_address_gets_no_chains_of_it():
    # Its traffic of that family meets the dispatch chain's DROP instead.
    assert policy.endpoint_chains(ep(), 6) == {}
    assert policy.dispatch_bucket("from", set()) == ["-j DROP"]


def test_several_addresses_anti_spoof_with_mark():
    out = policy.endpoint_chains(ep(nets4=("10.0.0.1/32", "10.0.0.2/32")), 4)
    rules = out["felix-from-cali1234567890a"]
    assert rules[1:5] == ["-j MARK --set-xmark 0x2000000/0x2000000",
                          "-s 10.0.0.1/32 -j MARK --set-xmark 0x0/0x2000000",
                          "-s 10.0.0.2/32 -j MARK --set-xmark 0x0/0x2000000",
                          "-m mark --mark 0x2000000/0x2000000 -j DROP"]


def test_inactive_or_profileless_endpoint_is_closed():
    for e in (ep(state="inactive"), ep(profiles=())):
        chains = policy.endpoint_chains(e, 4)
        assert chains["felix-to-cali1234567890a"] == ["-j DROP"]
        assert chains["felix-from-cali1234567890a"][-1] == "-j DROP"


def test_profile_chains_skip_bad_rules_and_report():
    bad = []
    rules = Rules("net1", [{"action": "allow", "src_tag": "net1"}],
                  [{"action": "allow"}, {"protocol": "icmp", "icmp_type": 8}])
    chains = policy.profile_chains("net1", rules, 6, tag_set, lambda *a: bad.append(a))
    assert chains == {"felix-p-net1-i": ["-m set --match-set felix-v6-net1 src -g felix-ALLOW"],
                      "felix-p-net1-o": ["-g felix-ALLOW"]}


def test_long_names_fit_and_stay_distinct():
    long1, long2 = "a" * 64, "a" * 63 + "b"
    c1, c2 = policy.profile_chain(long1, "inbound"), policy.profile_chain(long2, "inbound")
    assert c1 != c2 and len(c1) <= 28 and len(c2) <= 28
    s1 = tag_set(long1, 4)
    assert len(s1) <= 31 and len(ipsets.temp_name(s1)) <= 31


def test_dispatch_is_bucketed_by_the_two_chars_after_the_prefix():
    chains = policy.dispatch_chains({"caliab0000000001", "caliab0000000002", "cali12xx"}, "cali")
    assert chains["felix-FROM-ENDPOINT"] == ["-i cali12+ -g felix-FROM-EP-12",
                                             "-i caliab+ -g felix-FROM-EP-ab", "-j DROP"]
    assert chains["felix-TO-EP-ab"] == ["-o caliab0000000001 -g felix-to-caliab0000000001",
                                        "-o caliab0000000002 -g felix-to-caliab0000000002",
                                        "-j DROP"]


def test_top_chains_endpoint_to_host_action():
    for action, last in (("DROP", "-i cali+ -j DROP"), ("ACCEPT", "-i cali+ -j ACCEPT"),
                         ("RETURN", "-i cali+ -j felix-FROM-ENDPOINT")):
        chains = policy.top_chains(4, "cali", action)
        assert chains["felix-INPUT"][-1] == last
    fwd = policy.top_chains(4, "cali")["felix-FORWARD"]
    assert fwd[-2:] == ["-i cali+ -j ACCEPT", "-o cali+ -j ACCEPT"]
    assert policy.top_chains(4, "cali", ipip_hosts_set="felix-hosts-v4")["felix-INPUT"][0] == \
        "-p ipencap -m set ! --match-set felix-hosts-v4 src -j DROP"


def test_tag_members_from_every_host():
    eps = [ep(nets4=("10.0.0.1/32",), host="h1"), ep(name="cali2", nets4=("10.0.0.2/32",),
                                                      host="h2", profiles=("net1", "web")),
           ep(name="cali3", nets4=("10.0.0.3/32",), state="inactive")]
    members = ipsets.tag_members(eps, {"net1": ["net1"], "web": ["web", "net1"]}, 4)
    assert members == {"net1": {"10.0.0.1", "10.0.0.2"}, "web": {"10.0.0.2"}}
    assert ipsets.tag_sets(members, 4)["felix-v4-web"] == ("hash:ip", "inet",
                                                           frozenset({"10.0.0.2"}))


def test_nat_masquerades_masq_pools_to_outside_all_pools():
    pools = [Pool(ipaddress.ip_network("192.168.0.0/16"), masquerade=True),
             Pool(ipaddress.ip_network("10.0.0.0/8"))]
    assert nat.nat_chains(pools, 4) == {"felix-POSTROUTING": [
        "-m set --match-set felix-masq-v4 src -m set ! --match-set felix-pools-v4 dst "
        "-j MASQUERADE"]}
    assert nat.nat_chains(pools, 6) == {"felix-POSTROUTING": []}
    sets = ipsets.pool_sets(pools, 4)
    assert sets["felix-masq-v4"][2] == frozenset({"192.168.0.0/16"})
    assert sets["felix-pools-v4"][2] == frozenset({"192.168.0.0/16", "10.0.0.0/8"})


def test_routes_for_present_interfaces_only():
    e1, e2 = ep(), ep(name="cali2", nets4=("10.0.0.2/32",), nets6=("fd00::2/128",))
    assert routes.local_routes([e1, e2], {"cali2"}) == {
        routes.Route("10.0.0.2/32", "cali2"), routes.Route("fd00::2/128", "cali2")}


def test_tunnel_routes_for_other_hosts_blocks_in_ipip_pools():
    pools = [Pool(ipaddress.ip_network("192.168.0.0/16"), ipip="tunl0"),
             Pool(ipaddress.ip_network("10.0.0.0/8"))]
    aff = {"h1": {"192.168.0.0/26"}, "h2": {"192.168.0.64/26", "10.0.0.0/26"}}
    assert routes.tunnel_routes(pools, aff, {"h1": "198.18.0.2", "h2": "198.18.0.3"}, "h1") == {
        routes.Route("192.168.0.64/26", "tunl0", "198.18.0.3", onlink=True)}


def test_odd_tag_names_make_names_ipset_and_iptables_take():
    # A tag may be any string; its set's name may hold only what ipset and iptables accept.
    for tag in ("odd tag!", "tag/with/slashes", "x" * 40, "ümlaut"):
        name = tag_set(tag, 4)
        assert len(name) <= ipsets.MAX_SET
        assert all(c.isascii() and (c.isalnum() or c in "_.-~") for c in name), name
    assert tag_set("odd tag!", 4) != tag_set("odd tag?", 4)

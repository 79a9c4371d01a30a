"""BIRD configuration (1.x and 2) and the parsing of birdc's output, against expected text.

The real binaries check every rendering in test_bird_configs.py; the parsing tests read output
captured from real daemons (bird_output/README.md)."""

import ipaddress
import re
from pathlib import Path

from calicoctl.datastore.models import Pool
from calicoctl.felix import bird
from calicoctl.felix.bird import BgpView, render_bird2_config, render_bird_config, render_config
from calicoctl.node import status

CAPTURED = Path(__file__).parent / "bird_output"


def view(**kw):
    base = dict(me="calico-01",
                nodes={"calico-01": {"ip4": "198.18.0.2", "ip6": "fd00::2"},
                       "calico-02": {"ip4": "198.18.0.3", "ip6": "fd00::3", "as": "64512"}},
                pools=[Pool(ipaddress.ip_network("192.168.0.0/16")),
                       Pool(ipaddress.ip_network("10.9.0.0/24"), ipam=False),
                       Pool(ipaddress.ip_network("fd80::/64"))],
                blocks={"192.168.0.0/26", "192.168.9.0/26", "172.16.0.0/26"},
                endpoint_nets={"192.168.0.3/32", "10.9.0.5/32", "172.31.0.9/32"})
    base.update(kw)
    return BgpView(**base)


def test_mesh_global_and_node_peers_with_per_node_as():
    text = render_bird_config(view(global_peers={4: {"198.18.0.200": "64513"}},
                                   node_peers={4: {"198.18.0.201": "65000"}}), 4)
    assert text.splitlines()[1:3] == ["router id 198.18.0.2;",
                                      "log stderr { info, remote, warning, error, auth, fatal, bug };"]
    assert text.rstrip().splitlines()[-3:] == [
        "protocol bgp Mesh_198_18_0_3 from calico_peer { neighbor 198.18.0.3 as 64512; }",
        "protocol bgp Global_198_18_0_200 from calico_peer { neighbor 198.18.0.200 as 64513; }",
        "protocol bgp Node_198_18_0_201 from calico_peer { neighbor 198.18.0.201 as 65000; }"]
    assert "  local as 64511;\n  source address 198.18.0.2;" in text


def test_mesh_off_and_node_as():
    nodes = {"calico-01": {"ip4": "198.18.0.2", "as": "65001"},
             "calico-02": {"ip4": "198.18.0.3"}}
    text = render_bird_config(view(nodes=nodes, mesh=False), 4)
    assert "Mesh_" not in text and "  local as 65001;" in text


def test_exports_only_own_blocks_and_pool_workloads_outside_them():
    text = render_bird_config(view(), 4)
    statics = text[text.index("protocol static calico_blocks"):text.index("template bgp")]
    assert statics == (
        "protocol static calico_blocks {\n"
        "  route 192.168.0.0/26 blackhole;\n"
        "  route 192.168.9.0/26 blackhole;\n"          # 172.16.0.0/26 is in no pool
        "}\n\n")
    # A Docker-IPAM pool address is learnt from the agent's kernel route and announced alone;
    # 192.168.0.3 is inside an own block, 172.31.0.9 in no pool.
    assert "filter calico_learn {\n  if ( net ~ [ 10.9.0.5/32 ] ) then accept;\n  reject;\n}" \
        in text
    assert "  learn;" in text and "  import filter calico_learn;" in text
    assert 'if ( proto = "calico_blocks" ) && ( net ~ [ 192.168.0.0/16+, 10.9.0.0/24+ ] ) ' \
           'then accept;' in text
    assert "if ( source = RTS_INHERIT ) && ( net ~ [ 10.9.0.5/32 ] ) then accept;" in text
    assert "protocol direct {\n  interface -\"cali*\", \"*\";\n}" in text


def test_no_workloads_outside_blocks_learns_nothing():
    text = render_bird_config(view(endpoint_nets={"192.168.0.3/32"}), 4)
    assert "filter calico_learn {\n  reject;\n}" in text
    assert "RTS_INHERIT" not in text


def test_ipv6_config_and_no_address_no_daemon():
    text = render_bird_config(view(), 6)
    assert "router id 198.18.0.2;" in text and "source address fd00::2;" in text
    assert "Mesh_fd00__3" in text and "neighbor fd00::3 as 64512;" in text
    nodes = {"calico-01": {"ip4": "198.18.0.2"}}
    assert render_bird_config(view(nodes=nodes), 6) is None


def test_ipip_pools_are_left_to_the_agent_in_the_kernel():
    text = render_bird_config(view(pools=[Pool(ipaddress.ip_network("192.168.0.0/16"),
                                               ipip="tunl0")]), 4)
    assert "if ( net ~ [ 192.168.0.0/16+ ] ) then reject;" in text


def test_no_pools_exports_nothing():
    text = render_bird_config(view(pools=[]), 4)
    assert "filter calico_export { reject; }" in text


SHOW_PROTOCOLS = """BIRD 1.6.8 ready.
name     proto    table    state  since       info
device1  Device   master   up     21:01:00
direct1  Direct   master   up     21:01:00
kernel1  Kernel   master   up     21:01:00
calico_blocks Static   master   up     21:01:00
Mesh_198_18_0_3 BGP      master   up     21:01:05    Established
Global_198_18_0_200 BGP      master   start  21:01:00    Active        Socket: Connection refused
"""


def test_parse_birdc_show_protocols():
    assert [(s.name, s.state, s.since, s.info)
            for s in status.parse_bird_protocols(SHOW_PROTOCOLS)] == [
        ("Mesh_198_18_0_3", "up", "21:01:05", "Established"),
        ("Global_198_18_0_200", "start", "21:01:00", "Active        Socket: Connection refused")]
    assert len(bird.parse_protocols(SHOW_PROTOCOLS)) == 6


# --- BIRD 2 -----------------------------------------------------------------------------------

def block(text, opening):
    """The lines from `opening` to its closing brace at the start of a line."""
    start = text.index(opening)
    return text[start:text.index("\n}", start) + 2]


def test_bird2_one_config_with_a_channel_per_family():
    text = render_bird2_config(view(global_peers={4: {"198.18.0.200": "64513"},
                                                  6: {"fd00::200": "64513"}}))
    assert render_config(view(), 2, 4) == render_bird2_config(view())
    assert render_config(view(), 2, 6) is None                  # no bird6 on BIRD 2
    assert render_config(view(), 1, 6) == render_bird_config(view(), 6)
    assert block(text, "protocol kernel kernel4") == (
        "protocol kernel kernel4 {\n"
        "  ipv4 { import filter calico_learn4; export filter calico_kernel4; };\n"
        "  persist;          # keep routes while BIRD restarts (agent restarts keep traffic)\n"
        "  scan time 2;\n"
        "  learn;            # workload routes outside our blocks: see the top\n"
        "  graceful restart;\n"
        "}")
    assert "protocol kernel kernel6 {\n  ipv6 { import filter calico_learn6; " in text
    assert block(text, "protocol static calico_blocks4") == (
        "protocol static calico_blocks4 {\n  ipv4;\n  route 192.168.0.0/26 blackhole;\n"
        "  route 192.168.9.0/26 blackhole;\n}")
    assert block(text, "protocol static calico_blocks6") == "protocol static calico_blocks6 {\n" \
        "  ipv6;\n}"
    assert "protocol direct {\n  ipv4;\n  ipv6;\n  interface -\"cali*\", \"*\";\n}" in text
    peer4 = block(text, "template bgp calico_peer4")
    assert "  ipv4 {\n    import filter calico_pools_only4;\n    export filter calico_export4;\n" \
        "    next hop self;" in peer4
    assert "  source address 198.18.0.2;" in peer4 and "  graceful restart;" in peer4
    assert "  source address fd00::2;" in block(text, "template bgp calico_peer6")
    # The protocol names `calicoctl status` types peers by are those of BIRD 1.x.
    assert text.rstrip().splitlines()[-4:] == [
        "protocol bgp Mesh_198_18_0_3 from calico_peer4 { neighbor 198.18.0.3 as 64512; }",
        "protocol bgp Global_198_18_0_200 from calico_peer4 { neighbor 198.18.0.200 as 64513; }",
        "protocol bgp Mesh_fd00__3 from calico_peer6 { neighbor fd00::3 as 64512; }",
        "protocol bgp Global_fd00__200 from calico_peer6 { neighbor fd00::200 as 64513; }"]


def test_bird2_prefix_sets_never_mix_families():
    text = render_bird2_config(view(endpoint_nets={"10.9.0.5/32", "fd80::9/128"}))
    for prefix_set in re.findall(r"\[ ([^]]*) \]", text):
        families = {ipaddress.ip_network(p.rstrip("+")).version for p in prefix_set.split(", ")}
        assert len(families) == 1, prefix_set
    assert "filter calico_learn6 {\n  if ( net ~ [ fd80::9/128 ] ) then accept;" in text
    assert "if ( source = RTS_INHERIT ) && ( net ~ [ 10.9.0.5/32 ] ) then accept;" in \
        block(text, "filter calico_export4")


def test_bird2_leaves_out_a_family_without_an_address():
    nodes = {"calico-01": {"ip4": "198.18.0.2"}, "calico-02": {"ip4": "198.18.0.3"}}
    text = render_bird2_config(view(nodes=nodes))
    assert "ipv6" not in text and "calico_peer6" not in text and "kernel6" not in text
    assert render_bird2_config(view(nodes={"calico-01": {}})) is None


def test_ipv6_only_node_gets_a_router_id_from_its_address():
    nodes = {"calico-01": {"ip6": "fd00::c612:5"}, "calico-02": {"ip6": "fd00::3"}}
    for text in (render_bird2_config(view(nodes=nodes)), render_bird_config(view(nodes=nodes), 6)):
        assert "router id 198.18.0.5;" in text
    assert "ipv4" not in render_bird2_config(view(nodes=nodes))


def test_ipip_pools_stay_out_of_the_kernel_on_bird2():
    text = render_bird2_config(view(pools=[Pool(ipaddress.ip_network("192.168.0.0/16"),
                                                ipip="tunl0")]))
    assert "if ( net ~ [ 192.168.0.0/16+ ] ) then reject;" in block(text, "filter calico_kernel4")


def test_link_local_peers_are_not_rendered():
    v = view(node_peers={6: {"fe80::1": "65000"}})
    for text in (render_bird2_config(v), render_bird_config(v, 6)):
        assert "neighbor fe80::1" not in text
        assert "# Node_fe80__1: a link-local neighbour needs an interface; not peered" in text


# --- what BIRD prints, captured from real daemons ---------------------------------------------

def captured(name):
    return (CAPTURED / name).read_text()


def test_bird_version_from_the_binary_and_from_birdc():
    assert bird.bird_version("BIRD version 1.6.8\n") == (1, 6, 8)
    assert bird.bird_version("BIRD version 2.17.6\n") == (2, 17, 6)
    assert bird.bird_version(captured("bird-2.17.6-show-protocols-all.txt")) == (2, 17, 6)
    assert bird.bird_version(captured("bird6-1.6.8-show-protocols-all.txt")) == (1, 6, 8)
    assert bird.bird_version("bird: command not found") is None


def sessions(name):
    return [(s.name, s.peer, s.state, s.established, status.peer_type(s.name))
            for s in status.parse_bird_protocols(captured(name))]


def test_status_reads_bird_1_6_sessions_from_bird_and_bird6():
    assert sessions("bird-1.6.8-show-protocols-all.txt") == [
        ("Mesh_198_18_7_2", "198.18.7.2", "up", True, "node-to-node mesh"),
        ("Global_198_18_7_9", "198.18.7.9", "start", False, "global")]
    assert sessions("bird6-1.6.8-show-protocols-all.txt") == [
        ("Mesh_fd00_7__2", "fd00:7::2", "up", True, "node-to-node mesh"),
        ("Global_fd00_7__9", "fd00:7::9", "start", False, "global")]


def test_status_reads_bird_2_sessions_of_both_families_from_one_daemon():
    assert sessions("bird-2.17.6-show-protocols-all.txt") == [
        ("Mesh_198_18_7_1", "198.18.7.1", "up", True, "node-to-node mesh"),
        ("Global_198_18_7_9", "198.18.7.9", "start", False, "global"),
        ("Mesh_fd00_7__1", "fd00:7::1", "up", True, "node-to-node mesh"),
        ("Global_fd00_7__9", "fd00:7::9", "start", False, "global")]
    parsed = status.parse_bird_protocols(captured("bird-2.17.6-show-protocols-all.txt"))
    assert parsed[0].since == "16:22:00.652" and parsed[1].info == "Connect"
    report = status.Report(sessions=parsed)
    assert report.problems == ["BGP peer 198.18.7.9 is Connect", "BGP peer fd00:7::9 is Connect"]


def test_short_table_of_both_majors():
    rows = bird.parse_protocols(captured("bird-2.17.6-show-protocols.txt"))
    assert [(r["name"], r["proto"], r["table"]) for r in rows[:4]] == [
        ("device1", "Device", "---"), ("direct1", "Direct", "---"),
        ("kernel4", "Kernel", "master4"), ("kernel6", "Kernel", "master6")]
    first = status.parse_bird_protocols(captured("bird-2.17.6-show-protocols.txt"))[0]
    assert (first.name, first.state, first.since, first.info) == (
        "Mesh_198_18_7_1", "up", "16:22:00.652", "Established")
    assert [s.info for s in status.parse_bird_protocols(
        captured("bird-1.6.8-show-protocols.txt"))] == ["Established", "Connect"]


# --- the agent's wiring -----------------------------------------------------------------------

class FakeBird:
    """A BirdProcess as the agent sees it: which BIRD is installed, and what it was given."""

    def __init__(self, version, major):
        self.binary = "bird" if version == 4 else "bird6"
        self.major = major
        self.given = []

    def configure(self, text):
        self.given.append(text)


def agent_with(major):
    from calicoctl.datastore import keys
    from calicoctl.felix.agent import Agent
    birds = {4: FakeBird(4, major), 6: FakeBird(6, major)}
    agent = Agent(store=None, host="calico-01", dataplane=None, birds=birds)
    agent.state.load_snapshot([(keys.bgp_host_ip("calico-01", 4), "198.18.0.2"),
                               (keys.bgp_host_ip("calico-01", 6), "fd00::2"),
                               (keys.bgp_host_ip("calico-02", 4), "198.18.0.3")])
    agent._update_bird()
    return birds


def test_agent_runs_bird_and_bird6_on_bird_1():
    birds = agent_with(1)
    assert "(BIRD 1.x, IPv4)" in birds[4].given[0] and "Mesh_198_18_0_3" in birds[4].given[0]
    assert "(BIRD 1.x, IPv6)" in birds[6].given[0]


def test_agent_runs_one_bird_for_both_families_on_bird_2():
    birds = agent_with(2)
    assert "(BIRD 2)" in birds[4].given[0] and "source address fd00::2;" in birds[4].given[0]
    assert birds[6].given == [None]           # stops a bird6 left from BIRD 1.x, if any

"""BIRD configuration and `birdc show protocols` parsing, against expected text."""

import ipaddress
import shutil
import subprocess

import pytest

from calicoctl.datastore.models import Pool
from calicoctl.felix import bird
from calicoctl.felix.bird import BgpView, render_bird_config


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


@pytest.mark.skipif(not shutil.which("bird"), reason="bird is not installed")
@pytest.mark.parametrize("version", [4, 6])
def test_bird_accepts_the_config(tmp_path, version):
    conf = tmp_path / "bird.cfg"
    conf.write_text(render_bird_config(view(global_peers={4: {"198.18.0.200": "1"}}), version))
    binary = "bird" if version == 4 else "bird6"
    proc = subprocess.run([binary, "-p", "-c", str(conf)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


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
    assert bird.bgp_peer_states(SHOW_PROTOCOLS) == [
        {"peer": "Mesh_198_18_0_3", "state": "up", "since": "21:01:05", "info": "Established"},
        {"peer": "Global_198_18_0_200", "state": "start", "since": "21:01:00",
         "info": "Active        Socket: Connection refused"}]
    assert len(bird.parse_protocols(SHOW_PROTOCOLS)) == 6

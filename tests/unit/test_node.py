"""`calicoctl node` against a real etcd: registration (--runtime=none), show, stop/remove rules,
per-node BGP peers, and refusal of bad input with nothing written.

Starting containers needs a Docker engine and the node images: tests/st/test_node.py does that on
namespace hosts.  Here forwarding is switched on in files under tmp_path, never in this machine's
own /proc/sys (the root namespace must not forward: tests/st/harness/network.py,
guard_root_forwarding).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from calicoctl.dataplane import sysctl
from calicoctl.node import address
from tests.st.harness import wait_for

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sysctls(tmp_path, monkeypatch):
    paths = {v: tmp_path / p for v, p in sysctl.FORWARDING.items()}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("0")
    monkeypatch.setattr(sysctl, "PROC_SYS", str(tmp_path))
    return paths


@pytest.fixture
def host_ip():
    ip = address.choose_address(address.read_interfaces())
    if ip is None:
        pytest.skip("this machine has no global IPv4 address outside lo/docker/cali/tunl")
    return ip


def test_node_runtime_none_registers_and_starts_nothing(cli, etcd_dump, sysctls, host_ip):
    r = cli("node", "--runtime=none", "--as=64512")
    assert r.code == 0, r
    data = etcd_dump()
    assert data["/calico/v1/host/testhost/bird_ip"] == str(host_ip)
    assert data["/calico/bgp/v1/host/testhost/ip_addr_v4"] == str(host_ip)
    assert data["/calico/bgp/v1/host/testhost/as_num"] == "64512"
    assert data["/calico/v1/host/testhost/config/DefaultEndpointToHostAction"] == "RETURN"
    # Global defaults written where absent.
    assert data["/calico/v1/Ready"] == "true"
    assert data["/calico/bgp/v1/global/as_num"] == "64511"
    assert json.loads(data["/calico/bgp/v1/global/node_mesh"]) == {"enabled": True}
    assert data["/calico/v1/config/InterfacePrefix"] == "cali"
    assert sysctls[4].read_text() == "1" and sysctls[6].read_text() == "0"
    assert "nothing started" in r.err


def test_node_explicit_ip_and_rerun_is_idempotent(cli, etcd_dump, sysctls, host_ip):
    assert cli("node", "--runtime=none", "--ip=%s" % host_ip).code == 0
    first = etcd_dump()
    assert cli("node", "--runtime=none", "--ip=%s" % host_ip).code == 0
    assert etcd_dump() == first
    assert "/calico/bgp/v1/host/testhost/as_num" not in first   # inherits the global AS


def test_node_without_ipv6_writes_ip_addr_v6_empty_and_readers_see_no_address(
        cli, etcd_dump, sysctls, host_ip):
    # The original wrote ip_addr_v6 on every host ("" without --ip6): its plugin and BIRD
    # templates read the key, so it must be there, empty, and mean "no IPv6 address".
    assert cli("node", "--runtime=none").code == 0
    data = etcd_dump()
    assert data["/calico/bgp/v1/host/testhost/ip_addr_v6"] == ""
    assert "/calico/v1/host/testhost/bird6_ip" not in data
    r = cli("node", "show")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in r.out.splitlines() if line.startswith("|")}
    assert rows["testhost"][:2] == [str(host_ip), ""]
    from calicoctl.felix.agent import Agent
    agent = Agent(store=None, host="testhost", dataplane=None, birds={})
    agent.state.load_snapshot([(k, v) for k, v in data.items() if k.startswith("/calico/bgp/")])
    assert agent.state.bgp_view().nodes["testhost"] == {"ip4": str(host_ip), "as": None}


def test_node_dotted_as_is_stored_plain(cli, etcd_dump, sysctls, host_ip):
    assert cli("node", "--runtime=none", "--as=1.10").code == 0
    assert etcd_dump()["/calico/bgp/v1/host/testhost/as_num"] == "65546"   # 65536 * 1 + 10


def test_node_keeps_operator_defaults(cli, etcd_dump, sysctls, raw_etcd):
    raw_etcd.write("/calico/v1/config/LogSeverityScreen", "DEBUG")
    raw_etcd.write("/calico/bgp/v1/global/as_num", "65000")
    assert cli("node", "--runtime=none").code == 0
    data = etcd_dump()
    assert data["/calico/v1/config/LogSeverityScreen"] == "DEBUG"
    assert data["/calico/bgp/v1/global/as_num"] == "65000"


@pytest.mark.parametrize("args, words", [
    (["--ip=10.255.255.254"], "not an address of this host"),
    (["--ip=not-an-ip"], "Invalid IP"),
    (["--ip=fd00::99"], "not an IPv4"),
    (["--ip6=10.0.0.1"], "not an IPv6"),
    (["--as=0"], "Invalid AS"),
    (["--as=4294967296"], "Invalid AS"),
    (["--runtime=rkt"], "rkt is not supported"),
    (["--runtime=lxc"], "--runtime must be docker or none"),
    (["--detach=maybe"], "--detach must be true or false"),
    # The original refused a foreground node with the libnetwork plugin, before any write.
    (["--detach=false", "--libnetwork"], "only valid value for --detach is 'true' when using"),
    (["--runtime=docker", "--detach=FALSE", "--libnetwork"], "--libnetwork"),
    (["--kubernetes"], "--kubernetes is not supported"),
    (["--rkt"], "--rkt is not supported"),
])
def test_node_bad_input_writes_nothing(cli, etcd_dump, sysctls, args, words):
    runtime = [] if any(a.startswith("--runtime") for a in args) else ["--runtime=none"]
    r = cli("node", *runtime, *args)
    assert r.code == 1, r
    assert words in r.err
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert etcd_dump() == {}
    assert sysctls[4].read_text() == "0"


def test_node_refuses_an_address_another_node_holds(cli, etcd_dump, sysctls, host_ip, raw_etcd):
    raw_etcd.write("/calico/bgp/v1/host/otherhost/ip_addr_v4", str(host_ip))
    before = etcd_dump()
    r = cli("node", "--runtime=none")
    assert r.code == 1 and "already the address of node otherhost" in r.err
    assert etcd_dump() == before


def test_node_show_lists_every_node_with_liveness(cli, sysctls, raw_etcd):
    assert cli("node", "--runtime=none", "--as=64512").code == 0
    raw_etcd.write("/calico/bgp/v1/host/deadhost/ip_addr_v4", "198.18.0.99")
    raw_etcd.write("/calico/felix/v1/host/testhost/status",
                   json.dumps({"time": "2026-01-01T00:00:00Z", "uptime": 1}), ttl=30)
    r = cli("node", "show")
    assert r.code == 0, r
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in r.out.splitlines() if line.startswith("|")}
    assert rows["testhost"][2] == "64512" and rows["testhost"][3] == "yes"
    assert rows["deadhost"] == ["198.18.0.99", "", "(64511)", "no"]


def _endpoint(raw_etcd, host, ep_id="a" * 64):
    raw_etcd.write("/calico/v1/host/%s/workload/libnetwork/libnetwork/endpoint/%s" % (host, ep_id),
                   json.dumps({"state": "active", "name": "cali" + ep_id[:11],
                               "mac": "ee:ee:ee:ee:ee:ee", "profile_ids": ["net1"],
                               "ipv4_nets": ["192.168.0.2/32"], "ipv6_nets": []}))


def test_node_stop_refuses_while_endpoints_exist(cli, raw_etcd):
    _endpoint(raw_etcd, "testhost")
    r = cli("node", "stop")
    assert r.code == 1 and "still has 1 endpoint" in r.err and "--force" in r.err


def test_node_remove_refuses_while_endpoints_or_agent_alive(cli, raw_etcd, etcd_dump):
    raw_etcd.write("/calico/bgp/v1/host/deadhost/ip_addr_v4", "198.18.0.99")
    _endpoint(raw_etcd, "deadhost")
    before = etcd_dump()
    r = cli("node", "remove", "--hostname=deadhost")
    assert r.code == 1 and "--remove-endpoints" in r.err
    raw_etcd.write("/calico/felix/v1/host/deadhost/status", "{}", ttl=30)
    r = cli("node", "remove", "--hostname=deadhost", "--remove-endpoints")
    assert r.code == 1 and "alive" in r.err
    raw_etcd.delete("/calico/felix/v1/host/deadhost/status")
    assert {k: v for k, v in etcd_dump().items() if "felix" not in k} == before


def test_node_remove_dead_host_deletes_keys_affinities_and_endpoints(cli, raw_etcd, etcd_dump,
                                                                     store, monkeypatch):
    pytest.importorskip("calicoctl.ipam.allocator")
    from calicoctl.ipam.allocator import IPAMClient
    assert cli("pool", "add", "192.168.0.0/16").code == 0
    ipam = IPAMClient(store, host="deadhost")
    ep_id = "b" * 64
    ip = ipam.auto_assign(4, handle_id=ep_id)
    raw_etcd.write("/calico/bgp/v1/host/deadhost/ip_addr_v4", "198.18.0.99")
    raw_etcd.write("/calico/v1/host/deadhost/bird_ip", "198.18.0.99")
    raw_etcd.write("/calico/libnetwork/v1/" + "c" * 64, json.dumps({"name": "net1",
                                                                    "host": "deadhost"}))
    _endpoint(raw_etcd, "deadhost", ep_id)
    assert any("/calico/ipam/v2/host/deadhost/" in k for k in etcd_dump())
    r = cli("node", "remove", "--hostname=deadhost", "--remove-endpoints")
    assert r.code == 0, r
    data = etcd_dump()
    assert not [k for k in data if "deadhost" in k], data
    assert not [k for k in data if k.startswith("/calico/libnetwork/")]
    assert ipam.get_assignment(ip) is None
    for key, value in data.items():
        if "/assignment/ipv4/block/" in key:
            assert json.loads(value).get("affinity") in (None, "")


def test_node_remove_releases_the_plugins_addresses(cli, raw_etcd, etcd_dump, store):
    # The plugin's IPAM handle is not the endpoint id (plugin/ipam_driver.new_handle).
    from calicoctl.ipam.allocator import IPAMClient
    from calicoctl.plugin.ipam_driver import new_handle
    assert cli("pool", "add", "192.168.0.0/16").code == 0
    ipam = IPAMClient(store, host="deadhost")
    handle = new_handle("deadhost")
    ip = ipam.auto_assign(4, handle_id=handle)
    ep_id = "d" * 64
    raw_etcd.write("/calico/v1/host/deadhost/workload/libnetwork/libnetwork/endpoint/" + ep_id,
                   json.dumps({"state": "active", "name": "cali" + ep_id[:11],
                               "mac": "ee:ee:ee:ee:ee:ee", "profile_ids": ["net1"],
                               "ipv4_nets": ["%s/32" % ip], "ipv6_nets": []}))
    r = cli("node", "remove", "--hostname=deadhost", "--remove-endpoints")
    assert r.code == 0, r
    assert ipam.get_assignment(ip) is None
    assert "/calico/ipam/v2/handle/" + handle not in etcd_dump()


def test_node_bgp_peers(cli, etcd_dump):
    # No peers: the original's sentence for each family, not an empty table.
    r = cli("node", "bgp", "peer", "show")
    assert r.code == 0 and r.out == ("No IPv4 BGP Peers defined for this node.\n\n"
                                     "No IPv6 BGP Peers defined for this node.\n\n"), r
    assert cli("node", "bgp", "peer", "add", "198.18.0.200", "as", "64513").code == 0
    assert cli("node", "bgp", "peer", "add", "fd00::200", "as", "64514").code == 0
    data = etcd_dump()
    assert json.loads(data["/calico/bgp/v1/host/testhost/peer_v4/198.18.0.200"]) == {
        "ip": "198.18.0.200", "as_num": "64513"}
    assert "/calico/bgp/v1/host/testhost/peer_v6/fd00::200" in data
    r = cli("node", "bgp", "peer", "show", "--ipv4")
    assert "198.18.0.200" in r.out and "64513" in r.out and "fd00::200" not in r.out
    assert cli("node", "bgp", "peer", "remove", "198.18.0.200").code == 0
    assert cli("node", "bgp", "peer", "show", "--ipv4").out == \
        "No IPv4 BGP Peers defined for this node.\n\n"
    r = cli("node", "bgp", "peer", "show")
    assert r.out.startswith("No IPv4 BGP Peers defined for this node.\n\n+")
    assert "Node specific IPv6 BGP Peer" in r.out and "fd00::200" in r.out
    r = cli("node", "bgp", "peer", "remove", "198.18.0.200")
    assert r.code == 1 and "not a BGP peer" in r.err
    r = cli("node", "bgp", "peer", "add", "198.18.0.300", "as", "1")
    assert r.code == 1 and "Invalid IP" in r.err


# --- failures said in one line, with nothing written -------------------------------------------

def _error_lines(err):
    """stderr without the warnings that precede a refusal (one line per non-required check)."""
    return [line for line in err.strip().splitlines() if " WARNING " not in line]


@pytest.fixture
def path_without_bird(tmp_path, monkeypatch):
    """PATH as on a host where no BIRD package is installed: every other tool of /usr/sbin (ip,
    iptables, ipset for the kernel probes) is still there."""
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    for entry in os.scandir("/usr/sbin"):
        if not entry.name.startswith("bird"):
            os.symlink(entry.path, sbin / entry.name)
    monkeypatch.setenv("PATH", "%s:/usr/local/bin:/usr/bin:/bin" % sbin)


def test_node_runtime_none_without_bird_says_what_to_install(cli, etcd_dump, sysctls, host_ip,
                                                             path_without_bird):
    from calicoctl.node.checks import bird_package, read_os_release
    r = cli("node", "--runtime=none", "--ip=%s" % host_ip)
    assert r.code == 1, r
    assert _error_lines(r.err) == [
        "This host cannot run Calico yet: BIRD on this host: not installed: the agent run on "
        "this host (--runtime=none) needs BIRD 1.6 or later; %s." % bird_package(
            read_os_release())], r.err
    assert etcd_dump() == {} and sysctls[4].read_text() == "0"
    # calico-node brings its own BIRD: checksystem only warns about the host's.
    r = cli("checksystem")
    line = [x for x in r.out.splitlines() if x.startswith("BIRD on this host")]
    assert len(line) == 1 and " WARNING " in line[0] and "not installed" in line[0], r.out


@pytest.fixture
def old_docker(tmp_path, monkeypatch):
    """start(version, api) -> DOCKER_HOST of an engine stand-in answering as that version
    (tests/unit/engine_standin.py, in its own process)."""
    procs = []

    def start(version, api):
        sock = tmp_path / ("docker-%s.sock" % version)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.unit.engine_standin", str(sock), version, api],
            cwd=REPO, stdin=subprocess.DEVNULL))
        wait_for(lambda: sock.exists() or procs[-1].poll() is not None, timeout=30,
                 what="the engine stand-in's socket")
        assert procs[-1].poll() is None, "the engine stand-in exited %s" % procs[-1].returncode
        monkeypatch.setenv("DOCKER_HOST", "unix://%s" % sock)
        return "unix://%s" % sock
    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


TOO_OLD = ("Docker 19.03.15 (API 1.40) is older than Docker 20.10 (API 1.41), the oldest "
           "calicoctl supports; install Docker 20.10 or later (Debian: apt-get install docker.io)")


def test_docker_older_than_20_10_is_refused_in_one_line(cli, etcd_dump, sysctls, host_ip,
                                                       old_docker):
    old_docker("19.03.15", "1.40")
    r = cli("checksystem")
    assert r.code == 1, r
    assert [x for x in r.out.splitlines() if x.startswith("Docker")] == [
        "%-28s %-8s %s" % ("Docker version", "FAIL", TOO_OLD)], r.out
    assert r.err.strip() == "1 requirement not met: Docker version.", r.err
    r = cli("node", "--ip=%s" % host_ip)
    assert r.code == 1, r
    assert _error_lines(r.err) == [
        "This host cannot run Calico yet: Docker version: %s." % TOO_OLD], r.err
    assert etcd_dump() == {} and sysctls[4].read_text() == "0"


def test_docker_too_old_for_docker_py_is_refused_the_same_way(cli, etcd_dump, sysctls, host_ip,
                                                              old_docker):
    # docker-py itself refuses engines before API 1.24 (Docker 1.12) before asking anything else.
    url = old_docker("1.11.2", "1.23")
    said = ("Docker at %s is older than Docker 20.10 (API 1.41), the oldest calicoctl supports; "
            "install Docker 20.10 or later (Debian: apt-get install docker.io)" % url)
    r = cli("checksystem")
    assert r.code == 1 and "%-28s %-8s %s." % ("Docker reachable", "FAIL", said) in r.out, r
    r = cli("node", "--ip=%s" % host_ip)
    assert r.code == 1, r
    assert _error_lines(r.err) == ["This host cannot run Calico yet: Docker reachable: %s." % said]
    assert etcd_dump() == {} and sysctls[4].read_text() == "0"

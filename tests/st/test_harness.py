"""Smoke test of the testbed itself: if these fail, no other system test can be believed."""

import ipaddress
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.st.harness import Testbed, Underlay, cleanup_stale, network, procs, wait_for


def test_each_host_has_its_own_hostname(two_hosts):
    for host in two_hosts:
        assert host.run(["hostname"]).stdout.strip() == host.name


def test_each_host_sees_only_its_own_interfaces(two_hosts):
    for host in two_hosts:
        links = host.run(["ls", "/sys/class/net"]).stdout.split()
        assert "eth0" in links and "lo" in links
        assert network.DEFAULT_UNDERLAY.bridge not in links   # the root namespace's bridge


def test_container_on_docker_bridge_pings_the_other_host(two_hosts):
    host1, host2 = two_hosts
    # A busybox container on each host's default bridge network gets a docker0 address...
    for host in two_hosts:
        out = host.docker("run", "--rm", "busybox", "ip", "-4", "-o", "addr", "show", "eth0")
        address = ipaddress.ip_interface(out.stdout.split()[3])
        assert address in ipaddress.ip_network("172.17.0.0/16")
    # ...and from host 1's, host 2's underlay address answers (NAT out of docker0, across
    # the bridge into another namespace).
    result = host1.docker("run", "--rm", "busybox", "ping", "-c", "2", "-W", "2", host2.ip,
                          check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 packets received" in result.stdout


def etcd_version(host, etcd):
    out = host.run([sys.executable, "-c",
                    "import urllib.request,sys; "
                    "print(urllib.request.urlopen(sys.argv[1]).read().decode())",
                    etcd.url + "/version"])
    return json.loads(out.stdout)


def test_hosts_reach_etcd_on_the_bridge(two_hosts, etcd_on_bridge):
    for host in two_hosts:
        # Served whichever API the testbed's etcd speaks (CALICO_ST_ETCD_API).
        assert "etcdserver" in etcd_version(host, etcd_on_bridge)


def test_bridge_keeps_its_address_when_a_port_joins(two_hosts, testbed, etcd_on_bridge):
    """A port with a lower MAC than every other (a test's extra namespace) must not change the
    bridge's address: the hosts' ARP entries for etcd's IP would name an address the bridge no
    longer takes frames for, and they would lose etcd for the seconds until the entry is
    probed again (a system test's first requests then time out)."""
    u = testbed.underlay
    bridge_mac = Path(f"/sys/class/net/{u.bridge}/address")
    assert bridge_mac.read_text().strip() == u.bridge_mac
    for host in two_hosts:
        etcd_version(host, etcd_on_bridge)          # so each host has an ARP entry for it
    root_side = "tb-lowmac"
    procs.run(["ip", "link", "add", root_side, "address", "00:00:00:00:00:01", "type", "veth",
               "peer", "name", root_side + "-p"])
    try:
        procs.run(["ip", "link", "set", root_side, "master", u.bridge, "up"])
        assert bridge_mac.read_text().strip() == u.bridge_mac
        for host in two_hosts:
            out = host.run(["ip", "neigh", "show", str(u.bridge_ip), "dev", "eth0"]).stdout
            assert f"lladdr {u.bridge_mac} " in out, out
    finally:
        network.delete_link(root_side)


def test_docker_url_works_from_the_root_namespace(two_hosts):
    engine_ids = set()
    for host in two_hosts:
        client = host.docker_client()
        try:
            assert any("busybox:latest" in image.tags for image in client.images.list())
            info = client.info()
            assert info["Name"] == host.name
            engine_ids.add(info["ID"])
        finally:
            client.close()
    # Each engine is its own, not two views of one: per-host /etc/docker/key.json.
    assert len(engine_ids) == 2


def test_root_namespace_forwarding_is_sealed(testbed):
    b = testbed.underlay.bridge
    rules = {r.split(" ", 1)[1] for r in network.root_rules(b) if r.startswith("iptables ")}
    tail = "-m comment --comment calico-testbed -j"
    # Nothing forwarded between the bridge and anything else; frames within the bridge pass,
    # even under a root dockerd's FORWARD policy DROP (test_beside_docker.py).
    assert rules == {f"-A FORWARD -i {b} ! -o {b} {tail} DROP",
                     f"-A FORWARD ! -i {b} -o {b} {tail} DROP",
                     f"-A FORWARD -i {b} -o {b} {tail} ACCEPT"}, rules


@pytest.fixture
def spare_testbed(testbed_lock, tmp_path):
    """A second, independent testbed (own bridge, subnet, names) so teardown can be checked
    while the session's testbed stays up."""
    args = dict(state_dir=tmp_path / "spare",
                underlay=Underlay("calibr9", ipaddress.ip_network("198.18.9.0/24")),
                name_prefix="spare-")
    cleanup_stale(args["state_dir"], args["underlay"], args["name_prefix"])
    yield args
    cleanup_stale(args["state_dir"], args["underlay"], args["name_prefix"])


def _leftovers(bed_args, pids):
    u = bed_args["underlay"]
    links = procs.run(["ip", "-o", "link", "show"]).stdout
    return {
        "links": [line.split(":")[1].strip() for line in links.splitlines()
                  if u.bridge in line or network.root_veth_name(bed_args["name_prefix"]) in line],
        "processes": [pid for pid in pids if procs.is_alive(pid)],
        "rules": network.root_rules(u.bridge),
        "cgroups": [str(p) for p in Path("/sys/fs/cgroup").glob("*/calico-testbed/spare-*")],
    }


def test_teardown_leaves_nothing(spare_testbed):
    bed = Testbed(**spare_testbed).up(n_hosts=2, etcd=True,
                                      progress=lambda msg: None)
    host = bed.hosts[0]
    bed.hosts[0].docker("run", "-d", "busybox", "sleep", "3600")
    bed.hosts[1].docker("run", "-d", "--net=host", "busybox", "sleep", "3600")
    pids = set()
    for h in bed.hosts:
        pids |= procs.pids_in_namespaces_of(h.pid) | {h.pid}
    pids.add(bed.etcd.pid)
    assert len(pids) > 6      # init, dockerd, containerd, shims, containers, etcd
    bed.down(progress=lambda msg: None)
    wait_for(lambda: not _leftovers(spare_testbed, pids)["processes"], timeout=10,
             what="testbed processes to be gone")
    assert _leftovers(spare_testbed, pids) == {"links": [], "processes": [], "rules": [],
                                               "cgroups": []}
    assert not (Path(host.host_dir) / "docker").exists()
    bed.down(progress=lambda msg: None)     # a second teardown is harmless


def test_copy_logs_keeps_each_hosts_logs_and_etcds(spare_testbed, tmp_path):
    """What the testbed fixture keeps of a failed module: enough to read why afterwards."""
    bed = Testbed(**spare_testbed).up(n_hosts=1, etcd=True, busybox=False,
                                      progress=lambda msg: None)
    try:
        kept = bed.copy_logs(tmp_path / "kept")
    finally:
        bed.down(progress=lambda msg: None)
    assert "API listen on" in (kept / "spare-01" / "dockerd.log").read_text()
    assert "etcd" in (kept / "etcd.log").read_text()
    assert sorted(p.name for p in kept.iterdir()) == ["etcd.log", "spare-01"]


def test_cleanup_stale_removes_a_crashed_run(spare_testbed):
    """A run that died without tearing down (state file gone too) is found by name."""
    up = subprocess.run(
        [sys.executable, "-c",
         "import sys, ipaddress; sys.path.insert(0, sys.argv[1]);"
         "from tests.st.harness import Testbed, Underlay;"
         "b = Testbed(sys.argv[2], Underlay('calibr9', ipaddress.ip_network('198.18.9.0/24')),"
         " 'spare-').up(n_hosts=1, etcd=False, progress=lambda m: None);"
         "b.hosts[0].docker('run', '-d', 'busybox', 'sleep', '3600');"
         "print(b.hosts[0].pid)",
         str(Path(__file__).resolve().parents[2]), str(spare_testbed["state_dir"])],
        capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    init_pid = int(up.stdout.split()[-1])
    pids = procs.pids_in_namespaces_of(init_pid) | {init_pid}
    (spare_testbed["state_dir"] / "state.json").unlink()      # as if the state was lost
    cleanup_stale(**spare_testbed, progress=lambda msg: None)
    wait_for(lambda: not _leftovers(spare_testbed, pids)["processes"], timeout=10,
             what="stale processes to be gone")
    assert _leftovers(spare_testbed, pids) == {"links": [], "processes": [], "rules": [],
                                               "cgroups": []}


def test_etcd_server_on_loopback():
    """What unit tests use: etcd on 127.0.0.1 with free ports, data removed after."""
    from tests.st.harness import EtcdServer
    from tests.st.harness.etcd_direct import DirectEtcd
    with EtcdServer() as server:
        body = urllib.request.urlopen(server.url + "/version").read()
        assert "etcdserver" in json.loads(body)
        etcd = DirectEtcd(server.url, server.api)
        etcd.write("/calico/probe", "1")
        assert etcd.dump("/calico") == {"/calico/probe": "1"}
        data_dir = server.data_dir
    assert not data_dir.exists()
    assert server.pid is None


def test_node_images_hold_calicoctl_and_the_dataplane_tools(two_hosts, node_images):
    node, libnetwork = node_images
    assert node.startswith("calico/node:v") and libnetwork.startswith("calico/node-libnetwork:v")
    for host in two_hosts:
        for image in node_images:
            out = host.docker("run", "--rm", "--entrypoint", "sh", image, "-c",
                              "command -v calicoctl bird birdc iptables ipset ip && "
                              "python3 -c 'import calicoctl; print(calicoctl.__version__)'")
            paths = out.stdout.split()
            assert paths[0] == "/opt/calico/bin/calicoctl"
            assert "v" + paths[-1] == node.split(":")[1]
    inspect = two_hosts[0].docker("image", "inspect", "--format", "{{json .Config.Cmd}}",
                                  node, libnetwork).stdout.splitlines()
    assert [json.loads(line) for line in inspect] == [["calicoctl", "felix", "serve"],
                                                      ["calicoctl", "plugin", "serve"]]

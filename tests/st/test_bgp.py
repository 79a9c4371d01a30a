"""BGP as an operator configures it, on live BIRD between two hosts: the node-to-node mesh turned
off and on, global peers, and per-node AS numbers with per-node peers. Each configuration must
carry each host's workload block to the other (routes learnt into the kernel from BIRD) and
show in `calicoctl status`; with no session, no route. Runs on BIRD 1.6 (this machine's, on
Debian 12) and BIRD 2 (Debian testing's root)."""

import ipaddress

import pytest

from tests.st.calico_stack import learnt
from tests.st.harness import wait_for
from tests.st.plugin_helpers import calicoctl, container_ip, ping

pytestmark = pytest.mark.engines("host", "forky")

ROUTE_HANG = 90       # seconds before a route that never comes is called a hang


@pytest.fixture(scope="module")
def workloads(calico_stack):
    h1, h2 = calico_stack["hosts"]
    for h in (h1, h2):
        h.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico", "net1")
    h1.docker("run", "--net", "net1", "--name", "workload-A", "-tid", "busybox")
    h2.docker("run", "--net", "net1", "--name", "workload-E", "-tid", "busybox")
    ips = {"A": ipaddress.ip_address(container_ip(h1, "workload-A", "net1")),
           "E": ipaddress.ip_address(container_ip(h2, "workload-E", "net1"))}
    yield calico_stack, ips
    calicoctl(h1, calico_stack["etcd"], "bgp", "node-mesh", "on", check=False)


def _routes_learnt(stack, ips):
    h1, h2 = stack["hosts"]
    return ips["E"] in learnt(h1) and ips["A"] in learnt(h2)


def _routes_gone(stack, ips):
    h1, h2 = stack["hosts"]
    return ips["E"] not in learnt(h1) and ips["A"] not in learnt(h2)


def _status_peers(host, etcd):
    """(peer address, peer type, info) rows of `calicoctl status`'s "IPv4 BGP status" and
    "IPv6 BGP status" tables."""
    # Exit status 1 while any session is down (the IPv6 ones may still be connecting).
    out = calicoctl(host, etcd, "status", check=False).stdout
    rows = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("Peer address", ""):
            rows.append((cells[0], cells[1], cells[4]))
    return rows


def _established(host, etcd, peer_ip, peer_type):
    return any(p == peer_ip and t == peer_type and i.startswith("Established")
               for p, t, i in _status_peers(host, etcd))


def test_mesh_carries_blocks_then_off_withdraws_them(workloads):
    stack, ips = workloads
    h1, h2 = stack["hosts"]
    etcd = stack["etcd"]
    wait_for(lambda: _routes_learnt(stack, ips), timeout=ROUTE_HANG, what="blocks over the mesh")
    assert _established(h1, etcd, h2.ip, "node-to-node mesh")
    result = ping(h1, "workload-A", str(ips["E"]))
    assert result.returncode == 0, result.stdout + result.stderr

    calicoctl(h1, etcd, "bgp", "node-mesh", "off")
    assert "off" in calicoctl(h1, etcd, "bgp", "node-mesh").stdout
    wait_for(lambda: _routes_gone(stack, ips), timeout=ROUTE_HANG,
         what="the mesh's routes to be withdrawn")
    assert not any(t == "node-to-node mesh" for _, t, _ in _status_peers(h1, etcd))


def test_global_peers_carry_blocks_with_the_mesh_off(workloads):
    stack, ips = workloads
    h1, h2 = stack["hosts"]
    etcd = stack["etcd"]
    calicoctl(h1, etcd, "bgp", "node-mesh", "off")
    wait_for(lambda: _routes_gone(stack, ips), timeout=ROUTE_HANG, what="no routes without peers")
    # Every node peers with every global peer but itself: both hosts as global peers make a
    # hand-built mesh.
    for h in (h1, h2):
        calicoctl(h1, etcd, "bgp", "peer", "add", h.ip, "as", "64511")
    try:
        wait_for(lambda: _routes_learnt(stack, ips), timeout=ROUTE_HANG,
             what="blocks over the global peers")
        wait_for(lambda: _established(h1, etcd, h2.ip, "global"), timeout=ROUTE_HANG,
             what="calicoctl status to show the global peer established")
        result = ping(h2, "workload-E", str(ips["A"]))
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        for h in (h1, h2):
            calicoctl(h1, etcd, "bgp", "peer", "remove", h.ip, check=False)
    wait_for(lambda: _routes_gone(stack, ips), timeout=ROUTE_HANG,
         what="the global peers' routes to be withdrawn")


def test_per_node_as_numbers_and_node_peers(workloads):
    """eBGP between two nodes with their own AS numbers, each configured on its own host."""
    stack, ips = workloads
    h1, h2 = stack["hosts"]
    etcd = stack["etcd"]
    calicoctl(h1, etcd, "bgp", "node-mesh", "off")
    as_of = {h1.name: "64601", h2.name: "64602"}
    for h in (h1, h2):
        calicoctl(h, etcd, "node", "--runtime=none", "--ip=%s" % h.ip, "--as=%s" % as_of[h.name])
    shown = calicoctl(h1, etcd, "node", "show").stdout
    assert "64601" in shown and "64602" in shown, shown
    for h, peer in ((h1, h2), (h2, h1)):
        calicoctl(h, etcd, "node", "bgp", "peer", "add", peer.ip, "as", as_of[peer.name])
    try:
        wait_for(lambda: _routes_learnt(stack, ips), timeout=ROUTE_HANG,
             what="blocks over the node-specific eBGP peers")
        wait_for(lambda: _established(h1, etcd, h2.ip, "node specific"), timeout=ROUTE_HANG,
             what="calicoctl status to show the node peer established")
        assert h2.ip in calicoctl(h1, etcd, "node", "bgp", "peer", "show").stdout
        result = ping(h1, "workload-A", str(ips["E"]))
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        for h, peer in ((h1, h2), (h2, h1)):
            calicoctl(h, etcd, "node", "bgp", "peer", "remove", peer.ip, check=False)
    wait_for(lambda: _routes_gone(stack, ips), timeout=ROUTE_HANG,
         what="the node peers' routes to be withdrawn")

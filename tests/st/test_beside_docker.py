"""The testbed on a machine where Docker already runs in the root namespace.

Installing docker.io on a machine with systemd starts a dockerd, which sets the root namespace's
FORWARD policy to DROP and has bridge-nf-call-iptables on, so frames bridged between the hosts'
veths pass through that FORWARD chain. This module puts the root namespace in that state and
checks that BGP and workload traffic still cross the underlay.
"""

import ipaddress
from pathlib import Path

import pytest

from tests.st.calico_stack import learnt
from tests.st.harness import procs, wait_for
from tests.st.plugin_helpers import container_ip, ping

BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def _policy(binary):
    for line in procs.run([binary, "-w", "-S", "FORWARD"]).stdout.splitlines():
        if line.startswith("-P FORWARD "):
            return line.split()[2]
    raise AssertionError(f"{binary} -S FORWARD shows no policy")


@pytest.fixture(scope="module")
def root_like_docker(testbed):
    """FORWARD policy DROP and bridged frames through iptables, as a root dockerd leaves them;
    put back afterwards."""
    binaries = ("iptables", "ip6tables")
    saved = {b: _policy(b) for b in binaries}
    assert BRIDGE_NF.exists(), "this kernel has no br_netfilter: cannot reproduce Docker's setting"
    saved_nf = BRIDGE_NF.read_text().strip()
    try:
        for b in binaries:
            procs.run([b, "-w", "-P", "FORWARD", "DROP"])
        BRIDGE_NF.write_text("1\n")
        yield
    finally:
        for b, policy in saved.items():
            procs.run([b, "-w", "-P", "FORWARD", policy])
        BRIDGE_NF.write_text(saved_nf + "\n")


def test_bgp_and_workloads_cross_the_underlay(root_like_docker, calico_stack):
    h1, h2 = calico_stack["hosts"]
    assert _policy("iptables") == "DROP"
    for h in (h1, h2):
        h.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico", "net1")
    h1.docker("run", "--net", "net1", "--name", "workload-A", "-tid", "busybox")
    h2.docker("run", "--net", "net1", "--name", "workload-E", "-tid", "busybox")
    ip_a = ipaddress.ip_address(container_ip(h1, "workload-A", "net1"))
    ip_e = ipaddress.ip_address(container_ip(h2, "workload-E", "net1"))
    # Each host's block reaches the other over BGP across the bridge, or not at all.
    wait_for(lambda: ip_e in learnt(h1) and ip_a in learnt(h2), timeout=90,
             what="each host to learn the other's workload block over BGP")
    result = ping(h1, "workload-A", str(ip_e), count=2)
    assert result.returncode == 0, result.stdout + result.stderr

"""The plugin with the agent running beside it: Join waits for the agent's "up" report, and
traffic flows on the agent's rules (not the tests' stand-in ACCEPT rules), across hosts on the
routes BGP gives.  The stack is the one every system test uses (tests/st/calico_stack.py)."""

import ipaddress
import json

from tests.st.calico_stack import learnt
from tests.st.harness import wait_for
from tests.st.plugin_helpers import container_ip, endpoint_id, etcd_keys, ping, ping_answered


def test_join_waits_for_the_agent_and_traffic_flows(calico_stack):
    h1, h2 = calico_stack["hosts"]
    etcd = calico_stack["etcd"]
    for h in (h1, h2):
        h.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico", "net1")
    h1.docker("run", "--net", "net1", "--name", "workload-A", "-tid", "busybox")
    h1.docker("run", "--net", "net1", "--name", "workload-C", "-tid", "busybox")
    h2.docker("run", "--net", "net1", "--name", "workload-E", "-tid", "busybox")
    # No waiting here: docker run returned, so Join has seen the agent's report.
    ep = endpoint_id(h1, "workload-A", "net1")
    status = etcd_keys(etcd).get(
        "/calico/felix/v1/host/calico-01/workload/libnetwork/libnetwork/endpoint/" + ep)
    assert status and json.loads(status)["status"] == "up"
    assert "did not report endpoint" not in calico_stack["plugins"][0].log()
    result = ping(h1, "workload-A", "workload-C.net1")
    assert result.returncode == 0, result.stdout + result.stderr
    ip_a, ip_e = container_ip(h1, "workload-A", "net1"), container_ip(h2, "workload-E", "net1")
    wait_for(lambda: ipaddress.ip_address(ip_e) in learnt(h1)
             and ipaddress.ip_address(ip_a) in learnt(h2),
             timeout=60, what="each host to learn the other's block over BGP")
    result = ping(h1, "workload-A", ip_e)
    assert result.returncode == 0, result.stdout + result.stderr
    # And the agent's policy is what let it through: a net2 workload is refused.
    for h in (h1, h2):
        h.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico", "net2")
    h2.docker("run", "--net", "net2", "--name", "workload-D", "-tid", "busybox")
    ip_d = container_ip(h2, "workload-D", "net2")
    wait_for(lambda: ipaddress.ip_address(ip_d) in learnt(h1), timeout=60,
             what="calico-01 to learn the route to workload-D")
    # ping_answered raises for a ping that never ran, so "refused" is a real answer.
    assert ping_answered(h1, "workload-A", ip_e), "workload-E stopped answering"
    assert not ping_answered(h1, "workload-A", ip_d, count=3), "net1 reached net2"

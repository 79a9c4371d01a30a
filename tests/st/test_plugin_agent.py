"""The plugin with the agent running beside it: Join waits for the agent's "up" report, and
traffic flows on the agent's rules (not the tests' stand-in ACCEPT rules)."""

import json

import pytest

from tests.st.calico_stack import remove_stand_in
from tests.st.harness import wait_for
from tests.st.plugin_helpers import (PluginProcess, calicoctl, clean_docker, container_ip,
                                     endpoint_id, etcd_keys, ping, route_to, wipe_etcd)


@pytest.fixture
def stack(two_hosts, etcd_on_bridge):
    etcd = etcd_on_bridge
    calicoctl(two_hosts[0], etcd, "pool", "add", "192.168.0.0/16")
    plugins, agents = [], []
    for h in two_hosts:
        remove_stand_in(h)
        plugins.append(PluginProcess(h, etcd, log_name="plugin-agent").start())
        agents.append(PluginProcess(h, etcd, log_name="felix-plugin-test",
                                    args=("felix", "serve", "--no-bgp", "--log-level=INFO"))
                      .start(wait=False))
    for h in two_hosts:
        wait_for(lambda h=h: "/calico/felix/v1/host/%s/status" % h.name in etcd_keys(etcd),
                 timeout=60, what="the agent on %s" % h.name)
    yield plugins
    for h in two_hosts:
        clean_docker(h)
    for p in plugins:
        p.stop()
    for agent in agents:
        agent.stop()
    wipe_etcd(etcd)


def test_join_waits_for_the_agent_and_traffic_flows(two_hosts, etcd_on_bridge, stack):
    h1, h2 = two_hosts
    etcd = etcd_on_bridge
    for h in two_hosts:
        h.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico", "net1")
    h1.docker("run", "--net", "net1", "--name", "workload-A", "-tid", "busybox")
    h1.docker("run", "--net", "net1", "--name", "workload-C", "-tid", "busybox")
    h2.docker("run", "--net", "net1", "--name", "workload-E", "-tid", "busybox")
    ep = endpoint_id(h1, "workload-A", "net1")
    status = etcd_keys(etcd).get(
        "/calico/felix/v1/host/calico-01/workload/libnetwork/libnetwork/endpoint/" + ep)
    assert status and json.loads(status)["status"] == "up"
    assert "did not report endpoint" not in stack[0].log()
    result = ping(h1, "workload-A", "workload-C.net1")
    assert result.returncode == 0, result.stdout + result.stderr
    ip_a, ip_e = container_ip(h1, "workload-A", "net1"), container_ip(h2, "workload-E", "net1")
    route_to(h1, ip_e, h2)
    route_to(h2, ip_a, h1)
    result = ping(h1, "workload-A", ip_e)
    assert result.returncode == 0, result.stdout + result.stderr

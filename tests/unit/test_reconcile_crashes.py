"""Reconciliation after crashes the churn test found: a plugin killed inside CreateEndpoint
leaves a veth that no endpoint record names; dockerd killed between CreateEndpoint and Join
leaves an endpoint Docker never mentions again (reconciliation reruns when Docker returns)."""

import ipaddress

import pytest

from calicoctl.datastore import endpoints
from calicoctl.datastore.models import Endpoint, Pool
from calicoctl.datastore.pools import add_pool
from tests.unit.plugin_support import (EP, NET, _root, calico_network, netns,  # noqa: F401
                                    ns_run, plugin, plugin_parts, start_container)

pytestmark = pytest.mark.skipif(not _root(), reason="needs root to make a network namespace")


def test_veth_without_an_endpoint_record_is_removed(store, plugin, plugin_parts, netns):
    from calicoctl.plugin.names import DockerView
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.9.0.0/24")))
    pool_id = calico_network(plugin)
    addr, _, _ = start_container(plugin, pool_id, endpoint_id=EP)
    dataplane = plugin_parts[2].network_driver.dataplane
    # What a plugin killed between creating the veth and writing the record leaves behind.
    dataplane.set_up_workload("cali0123456789a", "tmp0123456789a", 1500, ["10.9.0.99/32"])
    # A veth that `calicoctl container` made for its own endpoint is not ours to remove.
    endpoints.write_endpoint(store, Endpoint(
        host="testhost", orchestrator="docker", workload="c1", endpoint_id="feed" * 8,
        name="califeedfeedfee", mac="ee:ee:ee:ee:ee:ee", profile_ids=[],
        ipv4_nets=["10.9.0.98/32"], ipv6_nets=[]))
    dataplane.set_up_workload("califeedfeedfee", "tmpfeedfeedfee", 1500, ["10.9.0.98/32"])
    view = DockerView()
    view.networks = {NET: "net1"}
    view.endpoints = {EP: (NET, "c1", "workload-A", [addr.split("/")[0]])}
    reconciler = plugin_parts[2]
    reconciler.grace = 0.01
    cleaned = reconciler.run(view)
    assert cleaned["veths"] == ["cali0123456789a"] and cleaned["endpoints"] == []
    links = ns_run(netns, "ip", "-o", "link", "show").stdout
    assert "cali0123456789a" not in links
    assert "cali" + EP[:11] in links and "califeedfeedfee" in links


def test_reconciliation_reruns_after_docker_comes_back(store, plugin_parts):
    """Each fresh listing after a lost connection hands its view to on_sync."""
    from calicoctl.plugin.names import NameLearner, wait_until

    class FakeDocker:     # stands in for dockerd dropping the event stream twice
        calls = 0

        def events(self, **kwargs):
            FakeDocker.calls += 1
            if FakeDocker.calls <= 2:
                raise ConnectionError("dockerd restarting")
            return iter(())

        def networks(self, **kwargs):
            return []

        def close(self):
            pass

    seen = []
    learner = NameLearner(store, "testhost", FakeDocker, on_sync=seen.append)
    learner.start()
    try:
        assert wait_until(lambda: len(seen) >= 2, timeout=10)
    finally:
        learner.stop()

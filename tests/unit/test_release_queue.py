"""Teardown calls that arrive while etcd is down are answered, kept on disk, and applied once etcd
answers again -- by the running plugin's retry thread, or by the next plugin at start-up.

Runs its own etcd (stopped and started with its data kept), so the session's etcd is untouched.
"""

import ipaddress
import json

import pytest

from calicoctl.dataplane import Dataplane
from calicoctl.datastore import keys
from calicoctl.datastore.models import Pool
from calicoctl.datastore.pools import add_pool
from tests.st.harness.procs import wait_for
from tests.unit.etcd_server import EtcdServer
from tests.unit.plugin_support import (EP, EP2, NET, Plugin, _root, calico_network,  # noqa: F401
                                    netns, start_container)

pytestmark = pytest.mark.skipif(not _root(), reason="needs root to make a network namespace")

HOST = "testhost"


@pytest.fixture
def own_etcd():
    server = EtcdServer(name="release-queue").start()
    yield server
    server.stop()


@pytest.fixture
def parts(own_etcd, netns, tmp_path):
    from calicoctl.datastore.store import EtcdSettings, EtcdStore
    from calicoctl.plugin import server
    # A short timeout: a dead etcd refuses connections at once anyway; this bounds the rest.
    store = EtcdStore(EtcdSettings(endpoints=[own_etcd.url]), timeout=0.5)
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.9.0.0/24")))
    path = str(tmp_path / "pending-releases.jsonl")

    def make():
        app, _, _ = server.build(store, HOST, felix_wait=0, dataplane=Dataplane(netns),
                                 reconcile=False, pending_path=path)
        app.pending.retry_interval = 0.1
        return app, Plugin(app.test_client())
    return store, path, make


def _teardown(plugin, pool_id, addr, endpoint_id):
    for call, body in (("NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": endpoint_id}),
                       ("NetworkDriver.DeleteEndpoint",
                        {"NetworkID": NET, "EndpointID": endpoint_id}),
                       ("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": addr})):
        assert plugin.ok(call, body) == {}


def _state(store, endpoint_id, addr):
    from calicoctl.ipam.allocator import IPAMClient
    eps = [k for k in [keys.endpoint(HOST, keys.LIBNETWORK_ORCHESTRATOR,
                                     keys.LIBNETWORK_WORKLOAD, endpoint_id)] if store.get(k)]
    held = IPAMClient(store, HOST).get_assignment(ipaddress.ip_address(addr.split("/")[0]))
    return eps, held


def _on_disk(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_releases_during_an_outage_are_applied_when_etcd_returns(parts, own_etcd, netns):
    store, path, make = parts
    app, plugin = make()
    pool_id = calico_network(plugin)
    addr1, _, _ = start_container(plugin, pool_id, endpoint_id=EP)
    addr2, _, _ = start_container(plugin, pool_id, endpoint_id=EP2, sandbox="/x/2")
    app.pending.start()
    try:
        own_etcd.stop(remove_data=False)
        _teardown(plugin, pool_id, addr1, EP)          # Docker is told all went well
        assert not app.pending.applied
        kept = _on_disk(path)                          # durable before the answer
        assert [e["call"] for e in kept] == ["NetworkDriver.Leave",
                                             "NetworkDriver.DeleteEndpoint",
                                             "IpamDriver.ReleaseAddress"]
        assert all(e["host"] == HOST for e in kept)
        own_etcd.start()
        wait_for(lambda: not app.pending.entries(), timeout=15, what="the deferred calls")
    finally:
        app.pending.stop()
    eps, held = _state(store, EP, addr1)
    assert not eps and held is None
    assert _on_disk(path) == []
    # The other container is untouched.
    eps, held = _state(store, EP2, addr2)
    assert eps and held is not None
    handles = [name for name, _ in store.list_dir(keys.IPAM_HANDLES_DIR)]
    assert handles == [held["handle_id"]]


def test_a_restarted_plugin_applies_what_the_last_one_kept(parts, own_etcd):
    store, path, make = parts
    app, plugin = make()
    pool_id = calico_network(plugin)
    addr, _, _ = start_container(plugin, pool_id, endpoint_id=EP)
    own_etcd.stop(remove_data=False)
    _teardown(plugin, pool_id, addr, EP)
    assert len(_on_disk(path)) == 3
    del app, plugin                                    # the plugin dies with etcd still down
    own_etcd.start()
    app2, _ = make()
    assert len(app2.pending.entries()) == 3
    app2.pending.start()                               # what serve() does at start-up
    try:
        wait_for(lambda: not app2.pending.entries(), timeout=15, what="start-up replay")
    finally:
        app2.pending.stop()
    eps, held = _state(store, EP, addr)
    assert not eps and held is None
    assert not store.list_dir(keys.IPAM_HANDLES_DIR)


def test_a_release_replayed_late_never_frees_a_reused_address(parts, own_etcd):
    """The address was freed by other means meanwhile and handed to a new container: the old
    release must not take it away."""
    store, path, make = parts
    app, plugin = make()
    pool_id = calico_network(plugin)
    addr, _, _ = start_container(plugin, pool_id, endpoint_id=EP)
    own_etcd.stop(remove_data=False)
    plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": addr})
    own_etcd.start()
    from calicoctl.ipam.allocator import IPAMClient
    ip = ipaddress.ip_address(addr.split("/")[0])
    ipam = IPAMClient(store, "otherhost")
    ipam.release([ip])                                 # e.g. start-up reconciliation
    ipam.assign(ip, handle_id="someone-else")
    assert app.pending.apply() == 0
    assert ipam.get_assignment(ip)["handle_id"] == "someone-else"
    # The endpoint (still recorded) keeps its address too.
    ipam.release([ip])
    ipam.assign(ip, handle_id="libnetwork.%s.feedface" % HOST)
    own_etcd.stop(remove_data=False)
    plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": addr})
    own_etcd.start()
    assert app.pending.apply() == 0
    assert ipam.get_assignment(ip) is not None


def test_an_address_given_out_again_drops_its_pending_release(parts, own_etcd):
    store, path, make = parts
    app, plugin = make()
    pool_id = calico_network(plugin)
    own_etcd.stop(remove_data=False)
    plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": "10.9.0.7/32"})
    assert len(app.pending.entries()) == 1
    own_etcd.start()
    plugin.ok("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "10.9.0.7"})
    assert app.pending.entries() == []


def test_other_failures_still_reach_docker(parts, own_etcd):
    """Only an unreachable etcd defers; a bad request is refused as before, and a create call
    with etcd down fails (nothing to keep: Docker gives up the container)."""
    store, path, make = parts
    app, plugin = make()
    pool_id = calico_network(plugin)
    assert "Invalid address" in plugin.err("IpamDriver.ReleaseAddress",
                                           {"PoolID": pool_id, "Address": "x"})
    own_etcd.stop(remove_data=False)
    assert "Cannot reach etcd" in plugin.err("IpamDriver.RequestAddress", {"PoolID": pool_id})
    own_etcd.start()
    assert app.pending.entries() == []

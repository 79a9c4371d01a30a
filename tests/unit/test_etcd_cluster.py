"""Against a real three-member etcd cluster on loopback: members die and come back while Calico
reads, writes and watches; nothing is lost, nothing applied twice, and the user sees at most a log
line.  Everything goes through ETCD_ENDPOINTS, as users configure it."""

import threading
import time

import pytest

from calicoctl.datastore import profiles
from calicoctl.datastore.store import EtcdSettings, EtcdStore
from tests.st.harness import wait_for
from tests.unit.etcd_cluster import EtcdCluster
from tests.unit.etcd_direct import DirectEtcd

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster(etcd_server):
    """Three members serving the API the test etcd serves (both, through its parameter)."""
    c = EtcdCluster(3, enable_v2=etcd_server.enable_v2).start()
    yield c
    c.stop()


@pytest.fixture
def cluster_env(cluster, etcd_env, monkeypatch):
    """Every member up, /calico empty, and the environment pointing at the cluster."""
    cluster.restart_stopped()
    for name, value in cluster.env().items():
        monkeypatch.setenv(name, value)
    store = EtcdStore()
    store.delete("/calico", recursive=True)
    return cluster


def test_rule_edits_from_two_threads_survive_member_kills(cluster_env):
    """200 compare-and-swap rule edits from two threads sharing one store, with reads (plain and
    quorum) between them.  Midway the member in use is killed, later restarted; then the raft
    leader is killed.  Every edit is in the final rules exactly once."""
    cluster = cluster_env
    store = EtcdStore()
    profiles.create_profile(store, "web")
    per_thread = 100
    done = []
    errors = []

    def edit(thread):
        try:
            for i in range(per_thread):
                port = thread * 1000 + i

                def add(rules, port=port):
                    rules.inbound.append({"action": "allow", "protocol": "tcp",
                                          "dst_ports": [port]})
                    return rules
                profiles.update_rules(store, "web", add)
                profiles.get_rules(store, "web")
                store.read("/calico/v1/policy/profile/web/rules", quorum=True)
                done.append(port)
        except Exception as exc:  # the test's verdict: record it for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=edit, args=(t,)) for t in (1, 2)]
    for t in threads:
        t.start()
    wait_for(lambda: len(done) >= 40 or errors, timeout=20, retry_on=(), what="40 edits")
    in_use = store._endpoint_index
    cluster.kill(in_use)
    wait_for(lambda: len(done) >= 90 or errors, timeout=20, retry_on=(),
             what="90 edits with a member down")
    cluster.restart(in_use)
    wait_for(lambda: len(done) >= 120 or errors, timeout=20, retry_on=(), what="120 edits")
    leader = cluster.leader_index()
    cluster.kill(leader)
    for t in threads:
        t.join(120)
    # Each error whole: a list's repr is cut short, and the part cut was the other members'.
    assert not errors, "\n".join("%s: %s" % (type(e).__name__, e) for e in errors)
    assert len(done) == 2 * per_thread

    rules = profiles.get_rules(store, "web")
    ports = [r["dst_ports"][0] for r in rules.inbound if r.get("dst_ports")]
    expected = sorted(t * 1000 + i for t in (1, 2) for i in range(per_thread))
    assert sorted(ports) == expected  # none lost, none applied twice

    # The killed leader comes back and catches up with everything written while it was away.
    cluster.restart(leader)
    direct = DirectEtcd(cluster.members[leader].url, cluster.api)
    final = store.get("/calico/v1/policy/profile/web/rules", quorum=True)
    wait_for(lambda: direct.get("/calico/v1/policy/profile/web/rules") == final,
             timeout=20, retry_on=(), what="restarted member to catch up")


def test_watch_moves_to_another_member_when_its_member_dies(cluster_env):
    cluster = cluster_env
    store = EtcdStore()
    in_use = store._endpoint_index
    index = store.current_index() + 1
    result = {}

    def watch():
        # Watched again from the same index after each quiet watch, as the agent does.
        result["event"] = wait_for(lambda: store.watch("/calico/v1/test", index, timeout=5),
                                   timeout=30, retry_on=(), what="the write to reach the watch")

    t = threading.Thread(target=watch)
    t.start()
    # Wait until the watch is parked on its member, then kill that member under it.
    wait_for(lambda: store.connected_to(cluster.members[in_use].url), timeout=20, retry_on=(),
             what="watch to connect")
    time.sleep(0.2)  # no condition to poll: the watch request is in flight inside urllib3
    cluster.kill(in_use)
    writer = EtcdStore(EtcdSettings(endpoints=[m.url for i, m in enumerate(cluster.members)
                                               if i != in_use]))
    writer.set("/calico/v1/test/k", "after-kill")
    t.join(40)
    assert result["event"].value == "after-kill"
    assert store._endpoint_index != in_use


def test_cli_works_with_a_member_down(cluster_env, cli, etcd_dump):
    cluster = cluster_env
    cluster.kill(0)
    r = cli("pool", "add", "10.10.0.0/16")
    assert r.code == 0, r
    r = cli("pool", "show")
    assert r.code == 0 and "10.10.0.0/16" in r.out, r
    store = EtcdStore()
    assert store.get("/calico/v1/ipam/v4/pool/10.10.0.0-16", quorum=True) is not None


def test_quorum_read_with_a_member_down(cluster_env):
    cluster = cluster_env
    store = EtcdStore()
    store.set("/calico/v1/test/q", "1")
    cluster.kill(cluster.leader_index())
    assert store.get("/calico/v1/test/q", quorum=True) == "1"
    store.set("/calico/v1/test/q", "2")
    assert store.get("/calico/v1/test/q", quorum=True) == "2"


@pytest.mark.timeout(60)     # only a hang takes this long; bench/etcd_failover.py times it
def test_whole_cluster_down_is_one_line(cluster_env, cli):
    cluster = cluster_env
    for i in range(3):
        cluster.kill(i)
    r = cli("pool", "show")
    assert r.code == 1
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r
    assert all(url in lines[0] for url in cluster.endpoints)
    assert "ETCD_ENDPOINTS" in lines[0]

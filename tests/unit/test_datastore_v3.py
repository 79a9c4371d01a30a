"""What only the v3 backend does: transactions for IPAM, compaction, leases, tokens.

Against an etcd with the v2 API off (this module's own, overriding the conftest's per-API
servers).  The store's behaviour shared with v2 is covered, for both APIs, by every other test.
"""

import ipaddress
import json
import subprocess

import pytest

from calicoctl.datastore import keys, pools
from calicoctl.datastore.models import Pool
from calicoctl.datastore.result import HistoryLost, Write
from calicoctl.datastore.store import EtcdSettings, EtcdStore
from calicoctl.ipam.allocator import IPAMClient
from tests.st.harness import wait_for
from tests.unit.etcd_server import EtcdServer

BLOCK = "/calico/ipam/v2/assignment/ipv4/block/10.60.0.0-26"
HANDLE = "/calico/ipam/v2/handle/ep1"


@pytest.fixture(scope="module")
def etcd_server():
    server = EtcdServer(name="v3", enable_v2=False).start()
    yield server
    server.stop()


def changes_since(store, index):
    """Every change after index, as (revision, key, deleted), read back through a watch."""
    found = []
    while True:
        event = store.watch("/calico", index, timeout=0.5)
        if event is None:
            return found
        found.append((event.modified_index, event.key, event.deleted))
        index = event.modified_index + 1


# -- IPAM in transactions ----------------------------------------------------------------------

def test_allocation_with_a_handle_is_one_transaction(store, raw_etcd):
    pools.add_pool(store, Pool(cidr=ipaddress.ip_network("10.60.0.0/26")))
    ipam = IPAMClient(store, host="h1")
    ipam.auto_assign(4)                      # claims the block
    before = store.current_index()
    ip = ipam.auto_assign(4, handle_id="ep1")
    changes = changes_since(EtcdStore(), before + 1)
    # One revision changed the block and created the handle: no state in between.
    assert sorted(changes) == [(before + 1, BLOCK, False), (before + 1, HANDLE, False)]
    assert raw_etcd.modified_index(BLOCK) == raw_etcd.modified_index(HANDLE) == before + 1
    assert json.loads(raw_etcd.get(HANDLE)) == {"id": "ep1", "block": {"10.60.0.0/26": 1}}
    assert ipam.release_by_handle("ep1") == [ip]


def test_a_handle_changed_meanwhile_is_read_again_not_overwritten(store, raw_etcd):
    """The transaction assumes a new handle; an existing one makes it fail whole, and the retry
    adds to the counts that are there."""
    pools.add_pool(store, Pool(cidr=ipaddress.ip_network("10.60.0.0/26")))
    raw_etcd.write(HANDLE, json.dumps({"id": "ep1", "block": {"10.70.0.0/26": 2}}))
    ip = IPAMClient(store, host="h1").auto_assign(4, handle_id="ep1")
    assert json.loads(raw_etcd.get(HANDLE)) == {
        "id": "ep1", "block": {"10.70.0.0/26": 2, "10.60.0.0/26": 1}}
    assert ip in ipaddress.ip_network("10.60.0.0/26")


def test_claim_lost_to_another_host_leaves_no_affinity_key(store, raw_etcd):
    pools.add_pool(store, Pool(cidr=ipaddress.ip_network("10.60.0.0/26")))
    IPAMClient(store, host="h1").auto_assign(4)
    before = store.current_index()
    # h2's claim of the same block fails whole: no orphan key to clean up later.
    assert IPAMClient(store, host="h2")._claim(ipaddress.ip_network("10.60.0.0/26")) is None
    assert store.current_index() == before
    assert not [k for k in raw_etcd.dump() if "/ipam/v2/host/h2/" in k]


def test_write_all_is_all_or_nothing(store, raw_etcd):
    raw_etcd.write("/calico/t/a", "1")
    index = raw_etcd.modified_index("/calico/t/a")
    assert store.write_all([Write("/calico/t/a", "2", prev_index=index + 5),
                            Write("/calico/t/b", "x", absent=True)]) is None
    assert raw_etcd.dump("/calico/t") == {"/calico/t/a": "1"}
    revision = store.write_all([Write("/calico/t/a", "2", prev_index=index),
                                Write("/calico/t/b", "x", absent=True),
                                Write("/calico/t/c", "y")])
    assert raw_etcd.dump("/calico/t") == {"/calico/t/a": "2", "/calico/t/b": "x",
                                          "/calico/t/c": "y"}
    assert {raw_etcd.modified_index(k) for k in ("/calico/t/a", "/calico/t/b")} == {revision}


def test_write_all_check_only_is_a_condition_never_a_write(store, raw_etcd):
    raw_etcd.write("/calico/t/pool", "p")
    index = raw_etcd.modified_index("/calico/t/pool")
    check = Write("/calico/t/pool", prev_index=index, check_only=True)
    stale = Write("/calico/t/pool", prev_index=index + 5, check_only=True)
    for conditional in (True, False):     # with and without a condition of its own
        write = Write("/calico/t/a", "1", absent=conditional)
        assert store.write_all([write, stale]) is None
        assert raw_etcd.dump("/calico/t") == {"/calico/t/pool": "p"}
    assert store.write_all([Write("/calico/t/a", "1", absent=True), check]) is not None
    assert store.write_all([Write("/calico/t/b", "2"), check]) is not None
    assert raw_etcd.dump("/calico/t") == {"/calico/t/pool": "p", "/calico/t/a": "1",
                                          "/calico/t/b": "2"}
    assert raw_etcd.modified_index("/calico/t/pool") == index


# -- watching ---------------------------------------------------------------------------------

def test_watch_from_a_compacted_revision_is_history_lost(store, raw_etcd):
    index = store.current_index() + 1
    store.set("/calico/v1/w", "1")
    raw_etcd.forget_history()
    with pytest.raises(HistoryLost) as info:
        store.watch("/calico", index, timeout=1)
    assert "compacted" in str(info.value)
    # Reading everything again gives the index to watch from, and watching works from there.
    snapshot = store.read("/calico", recursive=True)
    store.set("/calico/v1/w", "2")
    assert store.watch("/calico", snapshot.store_index + 1, timeout=5).value == "2"


def test_watch_sees_keys_below_not_beside(store):
    index = store.current_index() + 1
    store.set("/calicoX", "beside")          # in v3's prefix range of "/calico", not below it
    store.set("/calico/v1/k", "below")
    event = store.watch("/calico", index, timeout=5)
    assert (event.key, event.value) == ("/calico/v1/k", "below")


def streams_opened(watcher):
    """A list that gets the request of each watch stream the watcher opens from now on (the
    streams are opened as before)."""
    opened = []
    real_open = watcher._open

    def counting_open(*args, **kwargs):
        opened.append(args[1])
        return real_open(*args, **kwargs)
    watcher._open = counting_open
    return opened


def test_a_watch_followed_on_keeps_one_stream_and_misses_nothing(store):
    """A stream opened anew from a past revision waits for etcd's 100 ms resync of "unsynced"
    watches, so one followed from where it left off stays open: one stream for a run of
    events written while the reader is busy, none lost or repeated; another position or key
    opens another."""
    import threading
    import time
    watcher = store.backend.watcher
    opened = streams_opened(watcher)
    start = store.current_index() + 1

    def writer():
        for i in range(20):
            store.set("/calico/v1/follow/k%02d" % i, str(i))
            time.sleep(0.005)
    thread = threading.Thread(target=writer)
    thread.start()
    seen, index = [], start
    try:
        while len(seen) < 20:
            event = store.watch("/calico/v1/follow", index, timeout=10)
            assert event is not None, "no event within 10 s after %s" % seen
            seen.append(event.value)
            index = event.modified_index + 1
            time.sleep(0.01)                 # the reader's own work on each event
    finally:
        thread.join()
    assert seen == [str(i) for i in range(20)]
    assert len(opened) == 1, opened
    # Back to an earlier position: a new stream from there.
    assert store.watch("/calico/v1/follow", start, timeout=5).value == "0"
    assert len(opened) == 2
    # Another key: another stream.
    store.set("/calico/v1/other/k", "x")
    assert store.watch("/calico/v1/other", start, timeout=5).value == "x"
    assert len(opened) == 3


def test_moving_to_another_key_never_disturbs_the_next_stream(store):
    """Moving a watch to another key closes the kept stream while its reader thread is still
    blocked reading it, and opens the next.  When every stream came from one connection pool,
    the old reader's late teardown sometimes closed the connection the next stream had just
    been handed: that stream was opened twice, or said nothing for the whole timeout (in about
    one move in a hundred; here, a hundred moves in a row)."""
    watcher = store.backend.watcher
    opened = streams_opened(watcher)
    for i in range(100):
        key = "/calico/v1/move/%02d" % i
        index = store.current_index() + 1
        store.set(key, str(i))
        event = store.watch(key, index, timeout=5)
        assert event is not None and event.value == str(i), "move %d: no event" % i
        assert len(opened) == i + 1, "move %d opened %d streams" % (i, len(opened) - i)


def test_watching_opens_its_stream_from_now_and_closes_it(store):
    """The stream is opened on entry with no start revision (etcd's synced group: a change
    made while the caller reads is delivered at once, not at the 100 ms resync), the watch
    inside continues that stream, and leaving closes it."""
    watcher = store.backend.watcher
    opened = streams_opened(watcher)
    key = "/calico/v1/report"
    with store.watching(key) as index:
        assert [("start_revision" in r) for r in opened] == [False]
        assert index == store.current_index()
        store.set(key, "up")
        assert store.watch(key, index + 1, timeout=5).value == "up"
        assert len(opened) == 1
        stream = watcher._local.stream
        assert stream is not None and stream.connection.is_open()
    assert watcher._local.stream is None and not stream.connection.is_open()


def test_a_quiet_watch_keeps_its_stream_and_tells_what_has_arrived(store):
    """Quiet slices (the agent's quarter second) leave the stream open; and once events have
    arrived that the caller has not taken, the event it takes carries the newest revision
    received as its store_index, so the agent knows to take the rest into the same batch."""
    watcher = store.backend.watcher
    opened = streams_opened(watcher)
    prefix = "/calico/v1/batch"
    index = store.current_index() + 1
    store.set(prefix + "/k0", "0")
    first = store.watch(prefix, index, timeout=5)
    assert first.value == "0" and len(opened) == 1
    stream = watcher._local.stream
    assert store.watch(prefix, first.modified_index + 1, timeout=0.2) is None
    assert watcher._local.stream is stream and len(opened) == 1
    for i in range(1, 5):
        store.set(prefix + "/k%d" % i, str(i))
    last = store.current_index()
    wait_for(lambda: stream.latest_revision() >= last, timeout=10, retry_on=(),
             what="the stream's reader to receive the four writes")
    event = store.watch(prefix, first.modified_index + 1, timeout=5)
    assert event.value == "1" and event.modified_index < last
    assert event.store_index >= last
    assert len(opened) == 1


# -- leases and users -------------------------------------------------------------------------

def test_ttl_is_a_lease(store, raw_etcd):
    store.set("/calico/felix/v1/host/h1/status", "{}", ttl=30)
    node = store.read("/calico/felix/v1/host/h1/status")
    assert node.ttl is not None and 0 < node.ttl <= 30
    store.set("/calico/felix/v1/host/h1/status", "{}")
    assert store.read("/calico/felix/v1/host/h1/status").ttl is None


def etcdctl(endpoint, *args):
    subprocess.run(["etcdctl", "--endpoints", endpoint, *args], check=True,
                   env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture
def auth_etcd():
    """An etcd of its own with v3 users: root, and calico with readwrite on the /calico prefix."""
    server = EtcdServer(name="v3-auth", enable_v2=False).start()
    ep = server.url
    etcdctl(ep, "user", "add", "root:rootpw")
    etcdctl(ep, "user", "grant-role", "root", "root")
    etcdctl(ep, "role", "add", "calico")
    etcdctl(ep, "role", "grant-permission", "--prefix=true", "calico", "readwrite", "/calico")
    etcdctl(ep, "user", "add", "calico:calicopw")
    etcdctl(ep, "user", "grant-role", "calico", "calico")
    etcdctl(ep, "auth", "enable")
    yield server
    server.stop()


def test_a_token_etcd_forgot_is_asked_for_again(auth_etcd):
    """etcd's tokens live in the memory of the member that issued them: after a restart the
    old one is invalid, and the store authenticates again instead of failing."""
    store = EtcdStore(EtcdSettings(endpoints=[auth_etcd.url], username="calico",
                                   password="calicopw"))
    store.set("/calico/v1/a", "1")
    auth_etcd.stop(remove_data=False)
    auth_etcd.start()
    assert store.get("/calico/v1/a") == "1"
    store.set("/calico/v1/a", "2")
    assert store.get("/calico/v1/a") == "2"


def test_a_user_without_rights_to_calico_is_one_line(auth_etcd):
    from calicoctl.errors import DatastoreError
    etcdctl(auth_etcd.url, "--user", "root:rootpw", "user", "add", "other:otherpw")
    store = EtcdStore(EtcdSettings(endpoints=[auth_etcd.url], username="other",
                                   password="otherpw"))
    with pytest.raises(DatastoreError) as info:
        store.get(keys.READY)
    message = str(info.value)
    assert "\n" not in message and "refused user other" in message and "/calico" in message

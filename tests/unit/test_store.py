"""EtcdSettings from the environment, and EtcdStore's failover, timeouts and retried writes.

Cluster behaviour (members killed for real) is in test_etcd_cluster.py, TLS in test_etcd_tls.py.
Here the failing member is a FaultyMember stand-in in front of the test etcd, which makes the
awkward cases (a hung member, a member that applies a write and dies before answering)
deterministic.
"""

import logging

import pytest

from calicoctl.datastore.failover import TOTAL_TIMEOUT_FACTOR, Endpoints, RequestTally
from calicoctl.datastore.store import EtcdSettings, EtcdStore
from calicoctl.datastore.store_v2 import V2Backend
from calicoctl.datastore.store_v3 import V3Backend
from calicoctl.errors import CalicoError, DatastoreError
from tests.st.harness import wait_for
from tests.unit.etcd_cluster import FaultyMember, SilentThenServing
from tests.unit.etcd_server import free_port


# -- settings ---------------------------------------------------------------------------------

def test_endpoints_list():
    s = EtcdSettings.from_env({"ETCD_ENDPOINTS": "http://a:2379, http://b:4001,"})
    assert s.endpoints == ["http://a:2379", "http://b:4001"]


def test_authority_and_scheme():
    s = EtcdSettings.from_env({"ETCD_AUTHORITY": "10.0.0.1:4001", "ETCD_SCHEME": "HTTPS"})
    assert s.endpoints == ["https://10.0.0.1:4001"]
    assert EtcdSettings.from_env({}).endpoints == ["http://127.0.0.1:2379"]
    assert EtcdSettings.from_env({"ETCD_AUTHORITY": "a:1,b:2"}).endpoints == [
        "http://a:1", "http://b:2"]


def test_endpoints_win_over_authority():
    s = EtcdSettings.from_env({"ETCD_ENDPOINTS": "http://a:1", "ETCD_AUTHORITY": "b:2"})
    assert s.endpoints == ["http://a:1"]


def test_ipv6_endpoint_and_default_port():
    s = EtcdSettings.from_env({"ETCD_ENDPOINTS": "http://[::1]:2379,http://host"})
    assert s.endpoints == ["http://[::1]:2379", "http://host:2379"]
    client = V2Backend(s, 3.0, Endpoints(s, 3.0))._make_client(s.endpoints[0])
    assert client.base_uri == "http://[::1]:2379"
    assert V3Backend(s, 3.0, Endpoints(s, 3.0))._make_client(s.endpoints[0]).base_url == \
        "http://[::1]:2379"


@pytest.mark.parametrize("env", [
    {"ETCD_ENDPOINTS": "a:2379"},
    {"ETCD_ENDPOINTS": "http://a:notaport"},
    {"ETCD_ENDPOINTS": "http://a:99999"},
    {"ETCD_ENDPOINTS": "ftp://a:1"},
    {"ETCD_ENDPOINTS": "http://a:1/v2/keys"},
    {"ETCD_AUTHORITY": "a:b:c"},
    {"ETCD_SCHEME": "gopher"},
    {"ETCD_CA_CERT_FILE": "/nonexistent/ca.pem"},
    {"ETCD_CERT_FILE": "/etc/hostname"},
    {"ETCD_USERNAME": "root"},
    {"ETCD_PASSWORD": "secret"},
])
def test_bad_settings_are_one_line(env):
    with pytest.raises(CalicoError) as info:
        EtcdSettings.from_env(env)
    assert "\n" not in str(info.value)


def test_to_env_round_trips(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    env = {"ETCD_ENDPOINTS": "https://a:2379,https://b:2379", "ETCD_CA_CERT_FILE": str(ca),
           "ETCD_CERT_FILE": str(ca), "ETCD_KEY_FILE": str(ca), "ETCD_USERNAME": "u",
           "ETCD_PASSWORD": "p"}
    s = EtcdSettings.from_env(env)
    assert EtcdSettings.from_env(s.to_env()) == s
    single = EtcdSettings.from_env({"ETCD_AUTHORITY": "h:1", "ETCD_SCHEME": "https"}).to_env()
    assert single["ETCD_AUTHORITY"] == "h:1" and single["ETCD_SCHEME"] == "https"


def test_client_gets_tls_and_credentials_the_python_etcd_way(tmp_path):
    """python-etcd 0.4.5 + urllib3 2: ca_cert -> ca_certs + CERT_REQUIRED, cert=(cert, key) ->
    cert_file/key_file, username/password -> a basic auth header; and no silent retries."""
    import ssl
    for name in ("ca.pem", "c.pem", "k.pem"):
        (tmp_path / name).write_text("x")
    s = EtcdSettings.from_env({
        "ETCD_ENDPOINTS": "https://127.0.0.1:2379", "ETCD_CA_CERT_FILE": str(tmp_path / "ca.pem"),
        "ETCD_CERT_FILE": str(tmp_path / "c.pem"), "ETCD_KEY_FILE": str(tmp_path / "k.pem"),
        "ETCD_USERNAME": "root", "ETCD_PASSWORD": "pw"})
    client = V2Backend(s, 3.0, Endpoints(s, 3.0))._make_client(s.endpoints[0])
    kw = client.http.connection_pool_kw
    assert client.base_uri == "https://127.0.0.1:2379"
    assert kw["ca_certs"] == str(tmp_path / "ca.pem") and kw["cert_reqs"] == ssl.CERT_REQUIRED
    assert (kw["cert_file"], kw["key_file"]) == (str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    assert kw["retries"].total is False
    assert client._get_headers()["authorization"].startswith("Basic ")


def test_v3_client_gets_tls_the_requests_way(tmp_path):
    """etcd3gw's requests session verifies against ETCD_CA_CERT_FILE and presents the client
    certificate; users get a token from etcd itself (test_datastore_v3.py), not basic auth."""
    for name in ("ca.pem", "c.pem", "k.pem"):
        (tmp_path / name).write_text("x")
    s = EtcdSettings.from_env({
        "ETCD_ENDPOINTS": "https://127.0.0.1:2379", "ETCD_CA_CERT_FILE": str(tmp_path / "ca.pem"),
        "ETCD_CERT_FILE": str(tmp_path / "c.pem"), "ETCD_KEY_FILE": str(tmp_path / "k.pem")})
    client = V3Backend(s, 3.0, Endpoints(s, 3.0))._make_client(s.endpoints[0])
    assert client.base_url == "https://127.0.0.1:2379"
    assert client.session.verify == str(tmp_path / "ca.pem")
    assert client.session.cert == (str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    assert "Authorization" not in client.session.headers


# -- failover and timeouts --------------------------------------------------------------------

# How long failing and failing over take is bench/etcd_failover.py's figure; here a test only
# has a bound (pytest-timeout) that catches a hang.

@pytest.mark.timeout(60)
def test_every_endpoint_down_is_one_line_naming_all(etcd_env):
    dead = ["http://127.0.0.1:%d" % free_port() for _ in range(3)]
    store = EtcdStore(EtcdSettings(endpoints=dead))
    with pytest.raises(DatastoreError) as info:
        store.get("/calico/v1/Ready")
    message = str(info.value)
    assert "\n" not in message and all(e in message for e in dead)
    assert "Connection refused" in message and "ETCD_ENDPOINTS" in message


def test_dead_endpoint_is_skipped_with_a_log_line(etcd_env, caplog):
    dead = "http://127.0.0.1:%d" % free_port()
    store = EtcdStore(EtcdSettings(endpoints=[dead, etcd_env.url]))
    with caplog.at_level(logging.WARNING, logger="calicoctl.datastore.store"):
        assert store.create("/calico/test/a", "1")
        assert store.get("/calico/test/a") == "1"
    assert any(dead in r.getMessage() for r in caplog.records)
    # It sticks with the endpoint that works: no second failure.
    caplog.clear()
    store.get("/calico/test/a")
    assert not caplog.records


@pytest.mark.timeout(60)
def test_lost_connection_attempt_is_tried_again(etcd_env):
    """A connect that times out (a lost SYN, a full accept queue) is not a dead member: the same
    single endpoint is asked again within the operation's deadline, and the request succeeds."""
    member = SilentThenServing(upstream=("127.0.0.1", etcd_env.client_port))
    try:
        store = EtcdStore(EtcdSettings(endpoints=[member.url], api=etcd_env.api))
        store.set("/calico/test/lost-syn", "1")
        assert member.unanswered == 1
        assert store.get("/calico/test/lost-syn") == "1"
    finally:
        member.close()


@pytest.mark.timeout(60)
def test_hung_member_costs_one_timeout_then_fails_over(etcd_env):
    hung = FaultyMember("hang")
    try:
        store = EtcdStore(EtcdSettings(endpoints=[hung.url, etcd_env.url], api=etcd_env.api),
                          timeout=0.5)
        store.set("/calico/test/b", "2")
        # The hung member was tried once (its timeout paid), then the store moved on and stays.
        assert hung.connections == 1
        assert store.get("/calico/test/b") == "2"
        assert store.settings.endpoints[store._endpoint_index] == etcd_env.url
        assert hung.connections == 1
    finally:
        hung.close()


@pytest.mark.timeout(60)
def test_all_members_hung_is_bounded(etcd_env):
    hung = [FaultyMember("hang") for _ in range(3)]
    try:
        store = EtcdStore(EtcdSettings(endpoints=[h.url for h in hung]), timeout=0.5)
        with pytest.raises(DatastoreError) as info:
            store.get("/calico/v1/Ready")
        # It gives up at its deadline instead of cycling through the members: at most
        # TOTAL_TIMEOUT_FACTOR request timeouts, plus the request in flight at the deadline.
        tries = sum(h.connections for h in hung)
        assert 1 <= tries <= TOTAL_TIMEOUT_FACTOR + 1, tries
        assert "\n" not in str(info.value)
    finally:
        for h in hung:
            h.close()


def test_request_tally_counts_this_threads_operations_only(store):
    """What the plugin logs as each call's etcd share: this thread's operations while open."""
    import threading
    key = "/calico/test/tally"
    store.set(key, "before")                         # no tally open: counted nowhere
    with RequestTally() as tally:
        assert store.get(key) == "before"
        store.set(key, "during")
        other = threading.Thread(target=store.get, args=(key,))
        other.start()
        other.join()
        with RequestTally() as inner:                # the innermost open tally counts
            store.get(key)
    assert (tally.count, inner.count) == (2, 1)
    assert tally.seconds > 0 and inner.seconds > 0
    store.get(key)
    assert tally.count == 2


def test_watching_sees_a_change_made_between_its_read_and_its_watch(store):
    """The plugin's wait for the agent's report: enter, read (nothing yet), the report lands,
    then watch: the watch must give that change, not wait for the next."""
    key = "/calico/test/report"
    with store.watching(key) as index:
        assert store.get(key) is None
        store.set(key, "up")
        event = store.watch(key, index + 1, timeout=5)
        assert event is not None and (event.key, event.value) == (key, "up")


def test_quiet_watches_ask_their_member_only_once_quiet_for_the_timeout(etcd_env):
    """The agent watches in quarter-second slices: a probe of the member after every quiet
    slice was four requests a second at rest.  Quiet slices shorter, together, than the
    store's timeout ask nothing; once quiet for that long, each one asks (a wedged member is
    still left within about a timeout)."""
    def probes_over(store, slices, slice_seconds):
        index = store.current_index() + 1
        backend = store.backend
        name = "_read" if etcd_env.api == "2" else "range"
        real, asked = getattr(backend, name), []

        def counting(*args, **kwargs):
            asked.append(args)
            return real(*args, **kwargs)
        setattr(backend, name, counting)
        for _ in range(slices):
            assert store.watch("/calico/test/quiet", index, timeout=slice_seconds) is None
        return len(asked)
    settings = EtcdSettings(endpoints=[etcd_env.url], api=etcd_env.api)
    assert probes_over(EtcdStore(settings, timeout=30), 3, 0.2) == 0
    assert probes_over(EtcdStore(settings, timeout=0.1), 3, 0.2) == 3


def test_watch_leaves_a_hung_member(etcd_env, raw_etcd):
    """A watch whose member hangs times out there, the store moves to another member, and the
    next watch from the same index delivers the change made meanwhile."""
    hung = FaultyMember("hang")
    try:
        store = EtcdStore(EtcdSettings(endpoints=[hung.url, etcd_env.url], api=etcd_env.api),
                          timeout=0.5)
        index = raw_etcd.write("/calico/test/w", "0")
        raw_etcd.write("/calico/test/w", "1")
        # As the agent does: watch again from the same index after a quiet watch.
        event = wait_for(lambda: store.watch("/calico/test", index + 1, timeout=1), timeout=10,
                         retry_on=(), what="the change to reach a watch from the same index")
        assert event.value == "1"
    finally:
        hung.close()


# -- writes retried after a member applied them and died -------------------------------------

@pytest.fixture
def dropping(etcd_env):
    member = FaultyMember("drop-response", upstream=("127.0.0.1", etcd_env.client_port))
    # The API is given: a probe would meet the stand-in first and move the store past it.
    settings = EtcdSettings(endpoints=[member.url, etcd_env.url], api=etcd_env.api)
    yield EtcdStore(settings), member
    member.close()


def test_create_applied_then_connection_lost_is_not_reported_as_conflict(dropping, raw_etcd):
    store, member = dropping
    assert store.create("/calico/test/c", "ours") is True
    assert member.requests == 1          # the first attempt reached etcd and was applied
    assert raw_etcd.get("/calico/test/c") == "ours"


def test_cas_applied_then_connection_lost_is_success_not_retry(dropping, raw_etcd):
    store, member = dropping
    index = raw_etcd.write("/calico/test/d", "old")
    assert store.cas("/calico/test/d", "new", index) is True
    assert member.requests == 1


def test_update_is_not_applied_twice(etcd_env, raw_etcd):
    """A read-modify-write append whose CAS lands on a member that then dies appends once."""
    member = FaultyMember("drop-writes", upstream=("127.0.0.1", etcd_env.client_port))
    try:
        store = EtcdStore(EtcdSettings(endpoints=[member.url, etcd_env.url], api=etcd_env.api))
        raw_etcd.write("/calico/test/list", "a")
        store.update("/calico/test/list", lambda old: old + ",b")
        assert member.requests == 1
        assert raw_etcd.get("/calico/test/list") == "a,b"
    finally:
        member.close()


def test_real_conflicts_still_reported(etcd_env, raw_etcd):
    store = EtcdStore()
    raw_etcd.write("/calico/test/e", "theirs")
    assert store.create("/calico/test/e", "ours") is False
    index = raw_etcd.modified_index("/calico/test/e")
    raw_etcd.write("/calico/test/e", "theirs2")
    assert store.cas("/calico/test/e", "ours", index) is False


def test_landed_tells_our_write_from_theirs(etcd_env, raw_etcd):
    store = EtcdStore()
    index = raw_etcd.write("/calico/test/f", "v0")
    raw_etcd.write("/calico/test/f", "theirs", prev_index=index)
    raw_etcd.write("/calico/test/f", "ours")
    # The first change after index was theirs, even though the key now holds our value.
    assert store.backend._landed("/calico/test/f", "ours", prev_index=index) is None
    assert store.backend._landed("/calico/test/f", "theirs", prev_index=index) == index + 1


def test_write_if_returns_the_index_of_a_write_that_landed_before_its_member_died(
        etcd_env, raw_etcd):
    """write_if (used by IPAM, which needs the new index) gets the same protection as cas."""
    member = FaultyMember("drop-writes", upstream=("127.0.0.1", etcd_env.client_port))
    try:
        store = EtcdStore(EtcdSettings(endpoints=[member.url, etcd_env.url], api=etcd_env.api))
        index = raw_etcd.write("/calico/test/i", "old")
        new_index = store.write_if("/calico/test/i", "new", prev_index=index)
        assert new_index == raw_etcd.modified_index("/calico/test/i")
        store._endpoint_index = 0  # back to the member that drops answers
        created = store.write_if("/calico/test/j", "v", prev_exist=False)
        assert created == raw_etcd.modified_index("/calico/test/j")
        assert member.requests == 2
        assert store.write_if("/calico/test/j", "w", prev_exist=False) is None
        assert store.write_if("/calico/test/j", "w", prev_index=index) is None
    finally:
        member.close()


def test_delete_retried_after_lost_answer(dropping, raw_etcd):
    store, _ = dropping
    index = raw_etcd.write("/calico/test/g", "x")
    assert store.delete("/calico/test/g", prev_index=index) is True
    raw_etcd.write("/calico/test/h", "x")
    assert store.delete("/calico/test/h") is True


def test_snapshot_is_every_leaf_below_at_one_index(store, raw_etcd):
    """What an agent starts from (Agent.resync): the leaves with their values, no directory,
    nothing from beside the prefix, and the index to watch on from."""
    assert store.snapshot("/calico/v1") == ([], store.current_index())
    raw_etcd.write("/calico/v1/Ready", "true")
    raw_etcd.write("/calico/v1/host/h1/bird_ip", "198.18.0.11")
    raw_etcd.write("/calico/v1/policy/profile/p/tags", '["p"]')
    raw_etcd.write("/calico/v1/config/Empty", "")
    raw_etcd.write("/calico/v1x/beside", "not below /calico/v1")
    raw_etcd.write("/calico/felix/v1/host/h1/status", "{}")
    items, index = store.snapshot("/calico/v1")
    assert sorted(items) == [("/calico/v1/Ready", "true"), ("/calico/v1/config/Empty", ""),
                             ("/calico/v1/host/h1/bird_ip", "198.18.0.11"),
                             ("/calico/v1/policy/profile/p/tags", '["p"]')]
    assert index == store.current_index()
    raw_etcd.write("/calico/v1/Ready", "false")
    items, later = store.snapshot("/calico/v1")
    assert later > index and ("/calico/v1/Ready", "false") in items

"""`calicoctl datastore migrate`: Calico's v2 keys copied into etcd's v3 keyspace, through the
real CLI against an etcd that serves both APIs (the state of a cluster about to lose v2).

Idempotent, refuses to overwrite a different v3 value with nothing written, --dry-run writes
nothing; and a calicoctl on v3 that finds only v2 data says so in one line naming the command.
"""

import base64
import json
from types import SimpleNamespace

import pytest

from tests.unit.etcd_direct import DirectEtcd
from tests.unit.etcd_server import EtcdServer


@pytest.fixture(scope="module")
def etcd_server():
    """One etcd serving v2 and v3 (overrides the conftest's per-API servers: every test here
    needs both keyspaces of one cluster)."""
    server = EtcdServer(name="migrate", enable_v2=True).start()
    yield server
    server.stop()


@pytest.fixture
def v2(etcd_env):
    return DirectEtcd(etcd_env.url, "2")


@pytest.fixture
def v3(etcd_env):
    direct = DirectEtcd(etcd_env.url, "3")
    direct.delete("/calico", recursive=True)
    yield direct
    direct.delete("/calico", recursive=True)


@pytest.fixture
def calico_v2_data(cli, v2):
    """What a v2-era Calico leaves: pools, a profile with rules, IPAM blocks and handles, an
    expiring agent report.  .dump: every v2 key and value; .ip: the address held by ep1."""
    for argv in (("pool", "add", "10.50.0.0/16"), ("profile", "add", "web"),
                 ("profile", "web", "rule", "add", "inbound", "allow", "tcp", "to", "ports",
                  "80")):
        assert cli(*argv).code == 0
    from calicoctl.datastore import open_store
    from calicoctl.ipam.allocator import IPAMClient
    ip = IPAMClient(open_store(), host="h1").auto_assign(4, handle_id="ep1")
    v2.write("/calico/felix/v1/host/h1/status", json.dumps({"uptime": 1}), ttl=300)
    return SimpleNamespace(dump=v2.dump(), ip=ip)


def test_migrate_copies_every_key_and_value(cli, v2, v3, calico_v2_data):
    r = cli("datastore", "migrate")
    assert r.code == 0, r
    assert v3.dump() == calico_v2_data.dump
    assert v2.dump() == calico_v2_data.dump          # the source is left as it was
    assert "Copied %d keys" % len(calico_v2_data.dump) in r.out


def test_migrated_data_is_what_calicoctl_on_v3_uses(cli, v3, calico_v2_data, monkeypatch):
    assert cli("datastore", "migrate").code == 0
    monkeypatch.setenv("ETCD_API", "3")
    r = cli("pool", "show")
    assert r.code == 0 and "10.50.0.0/16" in r.out, r
    r = cli("profile", "web", "rule", "show")
    assert r.code == 0 and "80" in r.out, r
    from calicoctl.datastore import open_store
    from calicoctl.ipam.allocator import IPAMClient
    store = open_store()
    assert store.api == "3"
    # The address and handle written through v2 release through v3.
    assert IPAMClient(store, host="h1").release_by_handle("ep1") == [calico_v2_data.ip]
    assert "/calico/ipam/v2/handle/ep1" not in v3.dump()


def test_expiring_keys_expire_in_v3_too(cli, v3, calico_v2_data):
    assert cli("datastore", "migrate").code == 0
    key = "/calico/felix/v1/host/h1/status"
    kv = v3.post("/kv/range", {"key": base64.b64encode(key.encode()).decode()})
    lease = kv["kvs"][0].get("lease")
    assert lease and lease != "0"
    ttl = int(v3.post("/lease/timetolive", {"ID": lease})["TTL"])
    assert 0 < ttl <= 300


def test_migrate_twice_copies_nothing_the_second_time(cli, v3, calico_v2_data):
    assert cli("datastore", "migrate").code == 0
    first = v3.dump()
    revision = v3.revision()
    r = cli("datastore", "migrate")
    assert r.code == 0, r
    assert "Copied 0 keys" in r.out and "(%d already there)" % len(calico_v2_data.dump) in r.out
    assert v3.dump() == first and v3.revision() == revision   # not one write


def test_migrate_refuses_a_different_v3_value_and_writes_nothing(cli, v3, calico_v2_data):
    v3.write("/calico/v1/ipam/v4/pool/10.50.0.0-16", '{"cidr":"10.50.0.0/16","other":1}')
    revision = v3.revision()
    r = cli("datastore", "migrate")
    assert r.code == 1 and r.out == "", r
    assert len(r.err.strip().splitlines()) == 1
    assert "/calico/v1/ipam/v4/pool/10.50.0.0-16" in r.err and "nothing was migrated" in r.err
    assert v3.revision() == revision
    assert list(v3.dump()) == ["/calico/v1/ipam/v4/pool/10.50.0.0-16"]


def test_dry_run_prints_the_plan_and_writes_nothing(cli, v3, calico_v2_data):
    revision = v3.revision()
    r = cli("datastore", "migrate", "--dry-run")
    assert r.code == 0, r
    assert sorted(line.split(" ", 1)[1] for line in r.out.splitlines()
                  if line.startswith("copy ")) == sorted(calico_v2_data.dump)
    assert "Would copy %d keys" % len(calico_v2_data.dump) in r.out
    assert v3.revision() == revision and v3.dump() == {}


def test_calicoctl_on_empty_v3_names_the_migration(cli, v3, calico_v2_data, monkeypatch):
    monkeypatch.setenv("ETCD_API", "3")
    r = cli("datastore", "show")
    assert r.code == 0, r
    lines = r.out.strip().splitlines()
    assert lines[0].startswith("etcd v3 API (ETCD_API=3)")
    assert len(lines) == 2 and "calicoctl datastore migrate" in lines[1]
    assert "%d keys" % len(calico_v2_data.dump) in lines[1]
    from calicoctl.datastore import migrate, open_store
    assert migrate.v2_data_waiting(open_store()) == lines[1]
    # Once migrated, nothing to say.
    monkeypatch.delenv("ETCD_API")
    assert cli("datastore", "migrate").code == 0
    monkeypatch.setenv("ETCD_API", "3")
    assert migrate.v2_data_waiting(open_store()) is None


def test_nothing_said_on_v2_or_without_v2_data(cli, v3, etcd_env, monkeypatch):
    from calicoctl.datastore import migrate, open_store
    assert migrate.v2_data_waiting(open_store()) is None      # speaks v2 here
    monkeypatch.setenv("ETCD_API", "3")
    assert migrate.v2_data_waiting(open_store()) is None      # v3 empty, v2 empty too


def test_status_checksystem_and_node_get_the_line(cli, v3, calico_v2_data, monkeypatch):
    """What those commands print (checksystem: every note; status and node: the hint, the
    latter before it writes anything into v3)."""
    from calicoctl.datastore import migrate, open_store
    monkeypatch.setenv("ETCD_API", "3")
    notes = migrate.notes(open_store())
    assert notes[0] == "etcd v3 API (ETCD_API=3)"
    assert len(notes) == 2 and "calicoctl datastore migrate" in notes[1]
    said = []
    migrate.warn_if_unmigrated(open_store(), said.append)
    assert said == notes[1:]
    monkeypatch.delenv("ETCD_API")
    said.clear()
    migrate.warn_if_unmigrated(open_store(), said.append)    # on v2: nothing to say
    assert said == [] and migrate.notes(open_store())[0].startswith("etcd v2 API (detected")

"""Which etcd API calicoctl speaks: detected per cluster (v2 where etcd serves it, v3 where it
does not), forced by ETCD_API in every component, and the same keys and values either way.

These run once per test etcd (conftest's "v2" serves both APIs, "v3" only v3)."""

import json

import pytest

from calicoctl.datastore import api
from calicoctl.datastore.store import EtcdSettings, EtcdStore
from tests.unit.etcd_direct import DirectEtcd


def test_detection_picks_v2_where_served_else_v3(etcd_env):
    store = EtcdStore()
    assert store.api == etcd_env.api
    expected = "serves the v2 API" if etcd_env.api == "2" else "does not serve the v2 API"
    assert expected in store.describe_api()


def test_cli_writes_where_the_detected_api_reads(cli, etcd_env):
    """The pool lands in the keyspace of the detected API, with the v2-era key and JSON."""
    assert cli("pool", "add", "10.40.0.0/16").code == 0
    direct = DirectEtcd(etcd_env.url, etcd_env.api)
    stored = json.loads(direct.get("/calico/v1/ipam/v4/pool/10.40.0.0-16"))
    assert stored == {"cidr": "10.40.0.0/16"}
    if etcd_env.api == "2":
        # Nothing went to the v3 keyspace of the etcd that serves both.
        assert DirectEtcd(etcd_env.url, "3").dump() == {}


def test_detection_probes_once_per_process(etcd_env, monkeypatch):
    api.forget()
    probes = []
    real = api.probe
    monkeypatch.setattr(api, "probe", lambda *a: probes.append(1) or real(*a))
    for _ in range(3):
        EtcdStore().get("/calico/v1/Ready")
    assert len(probes) == 1


def test_etcd_api_forces_v3_on_an_etcd_that_serves_both(cli, etcd_env, monkeypatch):
    monkeypatch.setenv("ETCD_API", "3")
    assert EtcdStore().describe_api() == "etcd v3 API (ETCD_API=3)"
    assert cli("pool", "add", "10.41.0.0/16").code == 0
    assert "/calico/v1/ipam/v4/pool/10.41.0.0-16" in DirectEtcd(etcd_env.url, "3").dump()
    if etcd_env.api == "2":
        assert DirectEtcd(etcd_env.url, "2").dump() == {}
    DirectEtcd(etcd_env.url, "3").delete("/calico", recursive=True)


def test_etcd_api_2_on_an_etcd_without_v2_is_one_line(cli, etcd_env, monkeypatch):
    monkeypatch.setenv("ETCD_API", "2")
    r = cli("pool", "show")
    if etcd_env.api == "2":
        assert r.code == 0, r
        return
    assert r.code == 1 and len(r.err.strip().splitlines()) == 1, r
    assert "does not serve etcd's v2 API" in r.err and "ETCD_API" in r.err


@pytest.mark.parametrize("value", ["4", "v9", "auto", "two"])
def test_wrong_etcd_api_is_one_line(cli, etcd_env, monkeypatch, value):
    monkeypatch.setenv("ETCD_API", value)
    r = cli("pool", "show")
    assert r.code == 1 and r.out == "", r
    assert r.err.strip() == ("ETCD_API must be 2 or 3 (or unset to detect the API etcd "
                             "serves), not %r." % value)


@pytest.mark.parametrize("value, api_name", [("2", "2"), ("3", "3"), ("v3", "3"), (" 2 ", "2"),
                                             ("", None)])
def test_etcd_api_values(value, api_name):
    assert EtcdSettings.from_env({"ETCD_API": value}).api == api_name


def test_etcd_api_travels_to_other_components():
    """calicoctl node hands to_env() to its containers: a forced API goes with it, a detected
    one does not (each component detects the same answer itself)."""
    forced = EtcdSettings.from_env({"ETCD_API": "3", "ETCD_AUTHORITY": "h:1"})
    assert forced.to_env()["ETCD_API"] == "3"
    assert EtcdSettings.from_env(forced.to_env()) == forced
    assert "ETCD_API" not in EtcdSettings.from_env({"ETCD_AUTHORITY": "h:1"}).to_env()


def test_datastore_show_names_the_api(cli, etcd_env):
    r = cli("datastore", "show")
    assert r.code == 0, r
    assert r.out.startswith("etcd v%s API (detected: " % etcd_env.api), r

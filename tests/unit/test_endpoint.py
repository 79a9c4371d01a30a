"""`calicoctl endpoint`: showing endpoints and editing their profile lists, against a real etcd."""

import json

import pytest

from calicoctl.datastore.endpoints import create_endpoint
from calicoctl.datastore.models import Endpoint
from tests.unit.cli_support import assert_fails_cleanly

EID = "5a21f63bc17feb6b9c879bbbc271594dfa1483ddf9af5171efca7a2d509908e5"
NET = "46007b33d4dd56b13ede0f10bb427ba4481e3c0efe64960b0567dd53a80d3420"
KEY = "/calico/v1/host/calico-01/workload/libnetwork/libnetwork/endpoint/" + EID


@pytest.fixture
def endpoints(cli, store):
    """Three endpoints on two hosts; profiles NET, web and db exist."""
    for name in (NET, "web", "db"):
        assert cli("profile", "add", name).code == 0
    create_endpoint(store, Endpoint(
        "calico-01", "libnetwork", "libnetwork", EID, name="cali5a21f63bc17",
        mac="ee:ee:ee:ee:ee:ee", profile_ids=[NET], ipv4_nets=["10.0.0.2/32"],
        ipv6_nets=["fd80::2/128"], ipv4_gateway="169.254.1.1",
        extra={"container_name": "workload-A", "container_id": "6a853ddc289c4754684a93"}))
    create_endpoint(store, Endpoint("calico-01", "docker", "c1", "e2", mac="ee:ee:ee:ee:ee:ee",
                                    ipv4_nets=["10.0.0.3/32"]))
    create_endpoint(store, Endpoint("calico-02", "docker", "c2", "e3", profile_ids=["web"],
                                    state="inactive"))


def stored(etcd_dump, key=KEY):
    return json.loads(etcd_dump()[key])


def test_profile_show_like_the_seed(cli, endpoints):
    r = cli("endpoint", EID, "profile", "show")
    assert r.code == 0, r
    assert r.out == (
        "+------------------------------------------------------------------+\n"
        "|                               Name                               |\n"
        "+------------------------------------------------------------------+\n"
        "| %s |\n"
        "+------------------------------------------------------------------+\n" % NET)
    r = cli("endpoint", "e2", "profile", "show")
    assert r.out == "Endpoint has no profiles associated\n"


def test_show_summary(cli, endpoints):
    r = cli("endpoint", "show")
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert [c.strip() for c in lines[1].strip("|").split("|")] == [
        "Hostname", "Orchestrator ID", "Number of Workloads", "Number of Endpoints"]
    rows = [[c.strip() for c in l.strip("|").split("|")] for l in lines[3:-1]]
    assert rows == [["calico-01", "docker", "1", "1"], ["calico-01", "libnetwork", "1", "1"],
                    ["calico-02", "docker", "1", "1"]]


def test_show_detailed_and_filters(cli, endpoints):
    r = cli("endpoint", "show", "--detailed", "--host=calico-01")
    assert r.code == 0, r
    header = [c.strip() for c in r.out.splitlines()[1].strip("|").split("|")]
    assert header == ["Hostname", "Orchestrator ID", "Workload ID", "Endpoint ID", "Addresses",
                      "MAC", "Profiles", "State", "Container"]
    assert EID in r.out and " e2 " in r.out and "calico-02" not in r.out
    assert "10.0.0.2/32" in r.out and "fd80::2/128" in r.out
    assert "workload-A (6a853ddc289c)" in r.out
    r = cli("endpoint", "show", "--detailed", "--orchestrator=docker", "--endpoint=e3")
    assert "e3" in r.out and "inactive" in r.out and "calico-01" not in r.out
    # No container details anywhere: the original's eight columns.
    assert "Container" not in r.out
    r = cli("endpoint", "show", "--workload=nothing")
    assert r.code == 0 and "calico" not in r.out


def test_profile_append_remove_set(cli, endpoints, etcd_dump):
    r = cli("endpoint", EID, "profile", "append", "web", "db")
    assert r.code == 0, r
    assert "Profiles web, db appended to %s." % EID in r.err
    assert stored(etcd_dump)["profile_ids"] == [NET, "web", "db"]
    # Other fields (including ones we do not model) survive the edit.
    assert stored(etcd_dump)["container_name"] == "workload-A"
    assert stored(etcd_dump)["ipv6_nets"] == ["fd80::2/128"]
    assert cli("endpoint", EID, "--host=calico-01", "profile", "remove", NET).code == 0
    assert stored(etcd_dump)["profile_ids"] == ["web", "db"]
    assert cli("endpoint", EID, "profile", "set", "db", NET).code == 0
    assert stored(etcd_dump)["profile_ids"] == ["db", NET]
    assert cli("endpoint", EID, "profile", "set").code == 0
    assert stored(etcd_dump)["profile_ids"] == []


def test_old_single_profile_id_is_accepted(cli, store, raw_etcd, etcd_dump):
    cli("profile", "add", "old")
    cli("profile", "add", "new")
    key = "/calico/v1/host/h/workload/docker/w/endpoint/e9"
    raw_etcd.write(key, json.dumps({"state": "active", "name": "calie9", "mac": None,
                                    "profile_id": "old", "ipv4_nets": [], "ipv6_nets": []}))
    assert cli("endpoint", "e9", "profile", "show").out.count("old") == 1
    assert cli("endpoint", "e9", "profile", "append", "new").code == 0
    assert stored(etcd_dump, key)["profile_ids"] == ["old", "new"]
    assert "profile_id" not in stored(etcd_dump, key)


@pytest.mark.parametrize("argv, contains", [
    (("endpoint", EID, "profile", "append", "ghost"), "Profile ghost does not exist"),
    (("endpoint", EID, "profile", "set", "web", "ghost"), "Profile ghost does not exist"),
    (("endpoint", EID, "profile", "append", NET), "already in endpoint profile list"),
    (("endpoint", EID, "profile", "append", "web", "web"), "more than once"),
    (("endpoint", EID, "profile", "remove", "db"), "not in endpoint profile list"),
    (("endpoint", EID, "profile", "remove"), "Name the profiles"),
    (("endpoint", EID, "profile", "append", "bad/name"), "Invalid profile name"),
    (("endpoint", "nope", "profile", "append", "web"), "does not exist"),
    (("endpoint", "nope", "profile", "show"), "does not exist"),
    (("endpoint", EID, "--host=calico-02", "profile", "show"), "does not exist"),
    (("endpoint", EID, "--host=a/b", "profile", "show"), "Invalid host name"),
    (("endpoint", "show", "--orchestrator=x y"), "Invalid orchestrator id"),
    (("endpoint", "show", "--endpoint=../x"), "Invalid endpoint id"),
])
def test_bad_input_one_line_nothing_written(cli, endpoints, etcd_dump, argv, contains):
    assert_fails_cleanly(cli, etcd_dump, argv, contains=contains)


def test_ambiguous_endpoint_needs_filters(cli, store, etcd_dump):
    cli("profile", "add", "web")
    for host in ("h1", "h2"):
        create_endpoint(store, Endpoint(host, "docker", "w", "same"))
    assert_fails_cleanly(cli, etcd_dump, ("endpoint", "same", "profile", "append", "web"),
                         contains="ambiguous")
    assert cli("endpoint", "same", "--host=h2", "profile", "append", "web").code == 0
    assert stored(etcd_dump, "/calico/v1/host/h2/workload/docker/w/endpoint/same")[
        "profile_ids"] == ["web"]

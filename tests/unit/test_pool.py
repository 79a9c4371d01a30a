import json

import pytest


def test_pool_add_show_remove(cli, etcd_dump):
    r = cli("pool", "add", "192.168.0.0/16", "--ipip", "--nat-outgoing")
    assert r.code == 0, r
    data = etcd_dump()
    assert json.loads(data["/calico/v1/ipam/v4/pool/192.168.0.0-16"]) == {
        "cidr": "192.168.0.0/16", "ipip": "tunl0", "masquerade": True}
    assert data["/calico/v1/Ready"] == "true"
    assert data["/calico/v1/config/IpInIpEnabled"] == "true"
    r = cli("pool", "show", "--ipv4")
    assert "192.168.0.0/16" in r.out and "ipip,nat-outgoing" in r.out
    assert cli("pool", "remove", "192.168.0.0/16").code == 0
    assert "/calico/v1/ipam/v4/pool/192.168.0.0-16" not in etcd_dump()


def test_pool_range_becomes_smallest_cidrs(cli, etcd_dump):
    r = cli("pool", "range", "add", "10.0.0.0", "10.0.1.127")
    assert r.code == 0, r
    pools = sorted(k for k in etcd_dump() if "/pool/" in k)
    assert pools == ["/calico/v1/ipam/v4/pool/10.0.0.0-24", "/calico/v1/ipam/v4/pool/10.0.1.0-25"]


def test_pool_ipv6(cli, etcd_dump):
    assert cli("pool", "add", "fd80:24e2:f998:72d6::/64").code == 0
    assert "/calico/v1/ipam/v6/pool/fd80:24e2:f998:72d6::-64" in etcd_dump()
    assert "fd80:24e2:f998:72d6::/64" in cli("pool", "show", "--ipv6").out


def test_pool_bad_input_changes_nothing(cli, etcd_dump):
    cases = [
        ("pool", "add", "192.168.0.0/33"),
        ("pool", "add", "not-a-cidr"),
        ("pool", "add", "fd00::/64", "--ipip"),
        ("pool", "add", "10.0.0.0/27"),           # smaller than a block
        ("pool", "add", "10.0.0.0/24", "10.0.0.0/8"),  # overlap among the new pools
        ("pool", "range", "add", "10.0.0.9", "10.0.0.1"),
        ("pool", "range", "add", "10.0.0.1", "fd00::1"),
        ("pool", "remove", "10.9.0.0/16"),
    ]
    for argv in cases:
        r = cli(*argv)
        assert r.code == 1, (argv, r)
        assert len(r.err.strip().splitlines()) == 1, (argv, r)
        assert "Traceback" not in r.err
    assert etcd_dump() == {}


def test_pool_overlap_refused(cli):
    assert cli("pool", "add", "10.0.0.0/16").code == 0
    r = cli("pool", "add", "10.0.1.0/24")
    assert r.code == 1 and "overlaps" in r.err


@pytest.mark.timeout(60)     # only a hang takes this long; bench/etcd_failover.py times it
def test_etcd_unreachable_one_line(cli, monkeypatch):
    monkeypatch.setenv("ETCD_AUTHORITY", "127.0.0.1:1")
    r = cli("pool", "show")
    assert r.code == 1
    assert "127.0.0.1:1" in r.err and len(r.err.strip().splitlines()) == 1, r

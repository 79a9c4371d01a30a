"""calicoctl ipam info/release/show, and pool remove refusing pools still in use."""

import pytest

from calicoctl.ipam.allocator import IPAMClient


@pytest.fixture
def allocated(cli, store):
    assert cli("pool", "add", "10.0.0.0/24").code == 0
    assert cli("pool", "add", "fd00::/64").code == 0
    mine = IPAMClient(store)                                   # testhost
    mine.assign("10.0.0.5", handle_id="ep1", attributes={"container": "c1"})
    IPAMClient(store, host="other").assign("10.0.0.70")
    IPAMClient(store, host="other").assign("fd00::7")
    return mine


def test_info(cli, allocated):
    r = cli("ipam", "info", "10.0.0.5")
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert lines[0] == "IP 10.0.0.5 is assigned."
    assert "Pool:       10.0.0.0/24" in lines and "Block:      10.0.0.0/26" in lines
    assert "Host:       testhost" in lines and "Handle:     ep1" in lines
    assert 'Attributes: {"container": "c1"}' in lines
    assert cli("ipam", "info", "10.0.0.6").out == "IP 10.0.0.6 is not assigned.\n"
    assert "Host:       other" in cli("ipam", "info", "fd00::7").out


def test_release(cli, allocated, store):
    r = cli("ipam", "release", "10.0.0.5")
    assert r.code == 0, r
    assert "assigned to multiple workloads" in r.err
    assert r.out == "Released 10.0.0.5.\n"
    assert allocated.get_assignment("10.0.0.5") is None
    r = cli("ipam", "release", "10.0.0.5")
    assert r.code == 1 and "not assigned" in r.err.splitlines()[-1]
    assert "assigned to multiple workloads" in cli("ipam", "--help").out


def test_show(cli, allocated):
    r = cli("ipam", "show")
    assert r.code == 0, r
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in r.out.splitlines()
            if line.startswith("|")]
    assert rows[0] == ["Pool", "Block", "Host", "Used", "Free"]
    assert ["10.0.0.0/24", "", "", "2", "254"] in rows
    assert ["", "10.0.0.0/26", "testhost", "1", "63"] in rows
    assert ["", "10.0.0.64/26", "other", "1", "63"] in rows
    assert ["", "fd00::/122", "other", "1", "63"] in rows
    r = cli("ipam", "show", "--host=testhost")
    assert "10.0.0.0/26" in r.out and "10.0.0.64/26" not in r.out and "fd00::" not in r.out


def test_show_lists_blocks_of_removed_pools(cli, allocated):
    assert cli("pool", "remove", "10.0.0.0/24", "--force").code == 0
    out = cli("ipam", "show").out
    assert "(pool removed)" in out and "10.0.0.64/26" in out


@pytest.mark.parametrize("argv", [
    ("ipam", "info", "10.0.0.300"),
    ("ipam", "release", "not-an-ip"),
    ("ipam", "info"),
    ("ipam", "frobnicate", "10.0.0.1"),
])
def test_bad_input_is_one_line_exit_1(cli, etcd_dump, argv):
    before = etcd_dump()
    r = cli(*argv)
    assert r.code == 1, r
    assert "Traceback" not in r.err
    if argv[1] in ("info", "release") and len(argv) == 3:
        assert len(r.err.strip().splitlines()) == 1, r
    assert etcd_dump() == before


def test_pool_remove_refuses_pools_in_use(cli, store, etcd_dump):
    assert cli("pool", "add", "10.0.0.0/24").code == 0
    ipam = IPAMClient(store)
    ips = [ipam.auto_assign(4) for _ in range(3)]
    r = cli("pool", "remove", "10.0.0.0/24")
    assert r.code == 1 and len(r.err.strip().splitlines()) == 1
    assert "3 allocated addresses" in r.err and "--force" in r.err
    assert "/calico/v1/ipam/v4/pool/10.0.0.0-24" in etcd_dump()
    ipam.release(ips[:2])
    assert "1 allocated address;" in cli("pool", "remove", "10.0.0.0/24").err
    ipam.release(ips[2:])
    assert cli("pool", "remove", "10.0.0.0/24").code == 0     # emptied blocks do not count
    assert cli("pool", "add", "10.0.0.0/24").code == 0
    ipam.auto_assign(4)
    assert cli("pool", "remove", "10.0.0.0/24", "--force").code == 0
    assert "/calico/v1/ipam/v4/pool/10.0.0.0-24" not in etcd_dump()

"""Pure block logic: no etcd."""

import ipaddress
import itertools

import pytest

from calicoctl.ipam import block as blocks

NET = ipaddress.ip_network("10.0.0.64/26")


def test_new_block_matches_datamodel():
    b = blocks.new_block(NET, "calico-01")
    assert b == {"cidr": "10.0.0.64/26", "affinity": "host:calico-01",
                 "allocations": [None] * 64, "unallocated": list(range(64)), "attributes": []}
    assert blocks.affine_host(b) == "calico-01"
    assert blocks.affine_host(dict(b, affinity=None)) is None


def test_allocate_takes_from_front_and_shares_attributes():
    b = blocks.new_block(NET, "h")
    b1, o1 = blocks.allocate_next(b, "ep1", {"k": "v"})
    b2, o2 = blocks.allocate_next(b1, "ep1", {"k": "v"})
    b3, o3 = blocks.allocate_next(b2, None)
    assert (o1, o2, o3) == (0, 1, 2)
    assert b3["allocations"][:3] == [0, 0, 1]
    assert b3["attributes"] == [{"handle_id": "ep1", "secondary": {"k": "v"}},
                                {"handle_id": None, "secondary": {}}]
    assert b["unallocated"] == list(range(64)) and b["allocations"][0] is None  # input untouched
    assert blocks.address_at(NET, o3) == ipaddress.ip_address("10.0.0.66")
    assert blocks.ordinal_of(NET, ipaddress.ip_address("10.0.0.66")) == 2


def test_release_appends_and_compacts_attributes():
    b = blocks.new_block(NET, "h")
    for handle in ("a", "b", "c"):
        b, _ = blocks.allocate_next(b, handle)
    new, released, handles = blocks.release_ordinals(b, [0, 0, 5])
    assert released == [0] and handles == {"a": 1}
    assert new["unallocated"][-1] == 0 and new["unallocated"][0] == 3
    assert new["attributes"] == [{"handle_id": "b", "secondary": {}},
                                 {"handle_id": "c", "secondary": {}}]
    assert new["allocations"][:3] == [None, 0, 1]
    assert blocks.ordinals_of_handle(new, "c") == [2]
    assert blocks.attributes_at(new, 2) == ("c", {})


def test_allocate_specific_ordinal():
    b = blocks.new_block(NET, "h")
    b = blocks.allocate_ordinal(b, 7, "x")
    assert 7 not in b["unallocated"] and b["allocations"][7] == 0
    assert blocks.allocate_ordinal(b, 7) is None


def test_full_block():
    b = blocks.new_block(NET, "h")
    for _ in range(64):
        b, o = blocks.allocate_next(b)
        assert o is not None
    assert blocks.allocate_next(b) == (b, None)
    assert blocks.free_count(b) == 0 and blocks.used_count(b) == 64


def test_normalise_repairs_queue_from_allocations():
    b = blocks.new_block(NET, "h")
    b, _ = blocks.allocate_next(b)
    del b["unallocated"]
    assert blocks.normalise(b)["unallocated"] == list(range(1, 64))
    b["unallocated"] = [5, 0, 5, 99]        # 0 is allocated, 5 twice, 99 out of range
    fixed = blocks.normalise(b)["unallocated"]
    assert fixed[0] == 5 and sorted(fixed) == list(range(1, 64))


def test_block_cidr_for_both_families():
    assert blocks.block_cidr_for(ipaddress.ip_address("192.168.3.77")) == \
        ipaddress.ip_network("192.168.3.64/26")
    assert blocks.block_cidr_for(ipaddress.ip_address("fd00::1:ff")) == \
        ipaddress.ip_network("fd00::1:c0/122")


def test_free_blocks_skips_existing():
    pool = ipaddress.ip_network("10.0.0.0/24")
    existing = [ipaddress.ip_network("10.0.0.0/26"), ipaddress.ip_network("10.0.0.128/26"),
                ipaddress.ip_network("10.9.0.0/26")]       # outside the pool: ignored
    assert [str(n) for n in blocks.free_blocks(pool, existing)] == ["10.0.0.64/26",
                                                                     "10.0.0.192/26"]
    assert list(blocks.free_blocks(pool, [ipaddress.ip_network("10.0.0.%d/26" % i)
                                          for i in (0, 64, 128, 192)])) == []


@pytest.mark.timeout(60)     # a walk over 2^58 blocks never ends; bench/free_blocks.py times it
def test_free_blocks_of_an_ipv6_64_is_arithmetic():
    pool = ipaddress.ip_network("fd80:24e2:f998:72d6::/64")
    # Many existing blocks scattered through the pool, including the very last one.
    existing = [ipaddress.ip_network((int(pool.network_address) + i * 64, 122))
                for i in range(0, 4000, 2)]
    existing.append(ipaddress.ip_network((int(pool.broadcast_address) - 63, 122)))
    first = list(itertools.islice(blocks.free_blocks(pool, existing), 3))
    assert [int(n.network_address) - int(pool.network_address) for n in first] == [64, 192, 320]
    assert all(n.prefixlen == 122 and n.subnet_of(pool) for n in first)

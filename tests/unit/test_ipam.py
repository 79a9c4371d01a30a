"""The IPAM allocator against a real etcd."""

import ipaddress
import json

import pytest

from calicoctl.datastore import pools
from calicoctl.datastore.models import Pool
from calicoctl.errors import PoolExhaustedError, ValidationError
from calicoctl.ipam.allocator import IPAMClient

IP = ipaddress.ip_address
NET = ipaddress.ip_network
BLOCKS4 = "/calico/ipam/v2/assignment/ipv4/block/"


def add_pool(store, cidr, ipam=True):
    pools.add_pool(store, Pool(cidr=NET(cidr), ipam=ipam))


def block_json(etcd_dump, cidr):
    version = NET(cidr).version
    return json.loads(etcd_dump()["/calico/ipam/v2/assignment/ipv%d/block/%s" % (
        version, cidr.replace("/", "-"))])


def test_layout_follows_the_datamodel(store, etcd_dump):
    add_pool(store, "10.0.0.0/26")
    ipam = IPAMClient(store)                     # host from CALICO_HOSTNAME=testhost
    ip = ipam.auto_assign(4, handle_id="ep1", attributes={"container": "c1"})
    assert ip == IP("10.0.0.0")
    data = etcd_dump()
    assert data["/calico/ipam/v2/host/testhost/ipv4/block/10.0.0.0-26"] == ""
    assert json.loads(data[BLOCKS4 + "10.0.0.0-26"]) == {
        "cidr": "10.0.0.0/26", "affinity": "host:testhost",
        "allocations": [0] + [None] * 63, "unallocated": list(range(1, 64)),
        "attributes": [{"handle_id": "ep1", "secondary": {"container": "c1"}}]}
    assert json.loads(data["/calico/ipam/v2/handle/ep1"]) == {
        "id": "ep1", "block": {"10.0.0.0/26": 1}}
    assert ipam.get_assignment(ip) == {
        "ip": ip, "pool": NET("10.0.0.0/26"), "block": NET("10.0.0.0/26"), "host": "testhost",
        "handle_id": "ep1", "attributes": {"container": "c1"}}
    assert ipam.get_assignment("10.0.0.1") is None


def test_affine_block_first_then_a_new_block(store, etcd_dump):
    add_pool(store, "10.0.0.0/24")
    ipam = IPAMClient(store, host="h1")
    got = [ipam.auto_assign(4) for _ in range(65)]
    assert len(set(got)) == 65
    first = NET("%s/26" % got[0])
    assert all(ip in first for ip in got[:64])       # one block filled before another claimed
    assert got[64] not in first
    affinities = sorted(k for k in etcd_dump() if "/ipam/v2/host/h1/" in k)
    assert len(affinities) == 2


def test_ipv6_including_a_64_pool(store, etcd_dump):
    add_pool(store, "fd80:24e2:f998:72d6::/64")
    ipam = IPAMClient(store, host="h6")
    a = ipam.auto_assign(6, handle_id="ep6")
    b = ipam.auto_assign(6)
    assert a in NET("fd80:24e2:f998:72d6::/64") and b == a + 1
    block = NET("%s/122" % a, strict=False)
    assert block_json(etcd_dump, str(block))["affinity"] == "host:h6"
    # A second host claims another block of the /64 without scanning 2**58 candidates.
    other = IPAMClient(store, host="h7").auto_assign(6)
    assert other not in block and other in NET("fd80:24e2:f998:72d6::/64")
    assert ipam.release_by_handle("ep6") == [a]


def test_ipam_false_and_removed_pools_are_never_used(store):
    add_pool(store, "10.1.0.0/24", ipam=False)
    ipam = IPAMClient(store, host="h1", pool_cache_seconds=0)
    with pytest.raises(ValidationError, match="No IPv4 pool"):
        ipam.auto_assign(4)
    with pytest.raises(ValidationError, match="Docker's IPAM"):
        ipam.assign("10.1.0.5")
    add_pool(store, "10.2.0.0/24")
    first = ipam.auto_assign(4)
    assert first in NET("10.2.0.0/24")
    pools.remove_pool(store, NET("10.2.0.0/24"))
    add_pool(store, "10.3.0.0/24")
    # The host's affine block (with free space) is in a removed pool: skip it.
    assert ipam.auto_assign(4) in NET("10.3.0.0/24")
    with pytest.raises(ValidationError, match="not a pool"):
        ipam.auto_assign(4, pool=NET("10.2.0.0/24"))


def requests_sent(store):
    """A list that gets one entry per request the store sends to etcd from now on (the
    requests are sent as before)."""
    backend = store.backend
    name = "_unary" if store.api == "3" else "_call"
    real, sent = getattr(backend, name), []

    def counting(*args, **kwargs):
        sent.append(args[1] if name == "_unary" else args[0])
        return real(*args, **kwargs)
    setattr(backend, name, counting)
    return sent


def test_fast_path_round_trips_and_the_pool_it_rests_on(store):
    """The common allocation (the host's block has room): on v3 one transaction, which reads
    no pools but holds only while the block's pool record is unchanged, so a removal takes
    effect at once however young the cached list; on v2 the pool list (read again once a second
    at most), the handle, then the block."""
    add_pool(store, "10.2.0.0/24")
    ipam = IPAMClient(store, host="h1", pool_cache_seconds=0)
    first = ipam.auto_assign(4, handle_id="a")
    sent = requests_sent(store)
    assert ipam.auto_assign(4, handle_id="b") == first + 1
    assert sent == (["/kv/txn"] if store.atomic_writes else ["read", "write", "write"])
    if not store.atomic_writes:
        return
    del sent[:]
    steady = IPAMClient(store, host="h1", pool_cache_seconds=3600)
    assert steady.auto_assign(4, handle_id="c") == first + 2   # claims nothing: h1's block
    pools.remove_pool(store, NET("10.2.0.0/24"))
    add_pool(store, "10.3.0.0/24")
    # The cached list still holds 10.2.0.0/24; the transaction's condition on it fails.
    assert steady.auto_assign(4, handle_id="d") in NET("10.3.0.0/24")
    pools.add_pool(store, Pool(cidr=NET("10.3.0.0/24"), ipam=False))   # reconfigured
    add_pool(store, "10.4.0.0/24")
    assert steady.auto_assign(4, handle_id="e") in NET("10.4.0.0/24")


def test_pool_argument_restricts_the_choice(store):
    add_pool(store, "10.0.0.0/24")
    add_pool(store, "10.5.0.0/24")
    ipam = IPAMClient(store, host="h1")
    assert ipam.auto_assign(4, pool=NET("10.5.0.0/24")) in NET("10.5.0.0/24")
    assert ipam.auto_assign(4, pool=NET("10.0.0.0/24")) in NET("10.0.0.0/24")
    assert ipam.auto_assign(4, pool=NET("10.5.0.0/24")) in NET("10.5.0.0/24")


def test_exhaustion_then_borrowing(store):
    add_pool(store, "10.0.0.0/25")                # two blocks: 128 addresses
    a = IPAMClient(store, host="ha")
    b = IPAMClient(store, host="hb")
    held = [a.auto_assign(4) for _ in range(128)]
    assert len(set(held)) == 128
    for client in (a, b):
        with pytest.raises(PoolExhaustedError, match=r"10\.0\.0\.0/25 is full"):
            client.auto_assign(4)
    assert a.release([held[70]]) == set()
    # ha's blocks are the only ones; hb borrows the released address.
    assert b.auto_assign(4) == held[70]
    assert b.get_assignment(held[70])["host"] == "ha"
    with pytest.raises(PoolExhaustedError):
        a.auto_assign(4)


def test_specific_assignment(store, etcd_dump):
    add_pool(store, "10.0.0.0/24")
    ipam = IPAMClient(store, host="h1")
    ipam.assign("10.0.0.200", handle_id="ep1", attributes={"a": "b"})
    block = block_json(etcd_dump, "10.0.0.192/26")
    assert block["affinity"] == "host:h1" and block["allocations"][8] == 0
    assert 8 not in block["unallocated"]
    assert "/calico/ipam/v2/host/h1/ipv4/block/10.0.0.192-26" in etcd_dump()
    with pytest.raises(ValidationError, match=r"10\.0\.0\.200 is already in use"):
        IPAMClient(store, host="h2").assign("10.0.0.200")
    with pytest.raises(ValidationError, match=r"10\.9\.0\.1 is not in any configured"):
        ipam.assign("10.9.0.1")
    # Another host may take a specific address from h1's block; the block stays h1's.
    IPAMClient(store, host="h2").assign(IP("10.0.0.201"))
    assert block_json(etcd_dump, "10.0.0.192/26")["affinity"] == "host:h1"
    assert ipam.get_assignment("10.0.0.200")["handle_id"] == "ep1"
    # Auto-assignment never hands out what was assigned specifically.
    got = {ipam.auto_assign(4) for _ in range(100)}
    assert not got & {IP("10.0.0.200"), IP("10.0.0.201")}


def test_release_is_idempotent_and_requeues_at_the_end(store, etcd_dump):
    add_pool(store, "10.0.0.0/26")
    ipam = IPAMClient(store, host="h1")
    ips = [ipam.auto_assign(4, handle_id="ep%d" % i) for i in range(3)]
    assert ipam.release([ips[0], IP("10.0.0.50"), IP("10.200.0.1")]) == {
        IP("10.0.0.50"), IP("10.200.0.1")}
    assert ipam.release([ips[0]]) == {ips[0]}
    block = block_json(etcd_dump, "10.0.0.0/26")
    assert block["unallocated"][-1] == 0 and block["unallocated"][0] == 3
    assert "/calico/ipam/v2/handle/ep0" not in etcd_dump()
    assert ipam.auto_assign(4) == IP("10.0.0.3")       # not the one just released
    ipam.release(ips[1:] + [IP("10.0.0.3")])
    # Emptied, the block stays and stays affine to its host.
    block = block_json(etcd_dump, "10.0.0.0/26")
    assert block["affinity"] == "host:h1" and block["allocations"] == [None] * 64
    assert "/calico/ipam/v2/host/h1/ipv4/block/10.0.0.0-26" in etcd_dump()


def test_release_of_both_families_at_once(store, etcd_dump):
    # `calicoctl container remove` releases an endpoint's IPv4 and IPv6 addresses together.
    add_pool(store, "10.0.0.0/26")
    add_pool(store, "fd00::/64")
    ipam = IPAMClient(store, host="h1")
    v4, v6 = ipam.auto_assign(4), ipam.auto_assign(6)
    assert ipam.release([v6, v4, IP("fd00::99")]) == {IP("fd00::99")}
    assert ipam.get_assignment(v4) is None and ipam.get_assignment(v6) is None


def test_handles(store, etcd_dump):
    add_pool(store, "10.0.0.0/24")
    add_pool(store, "fd00::/64")
    ipam = IPAMClient(store, host="h1")
    v4 = ipam.auto_assign(4, handle_id="ep1")
    v6 = ipam.auto_assign(6, handle_id="ep1")
    extra = ipam.auto_assign(4, handle_id="ep1")
    keep = ipam.auto_assign(4, handle_id="ep2")
    handle = json.loads(etcd_dump()["/calico/ipam/v2/handle/ep1"])
    assert handle["id"] == "ep1" and sorted(handle["block"].values()) == [1, 2]
    assert ipam.release_by_handle("ep1") == [v4, extra, v6]
    assert "/calico/ipam/v2/handle/ep1" not in etcd_dump()
    assert ipam.get_assignment(keep)["handle_id"] == "ep2"
    assert ipam.release_by_handle("ep1") == []
    assert ipam.release_by_handle("never") == []


def test_release_by_handle_without_its_record(store, raw_etcd):
    """A writer that died between its block write and its handle write leaks nothing."""
    add_pool(store, "10.0.0.0/24")
    ipam = IPAMClient(store, host="h1")
    ip = ipam.auto_assign(4, handle_id="ep9")
    raw_etcd.delete("/calico/ipam/v2/handle/ep9")
    assert ipam.release_by_handle("ep9") == [ip]
    assert ipam.get_assignment(ip) is None


def test_crashed_claimant_blocks_nobody(store, raw_etcd, etcd_dump):
    add_pool(store, "10.0.0.0/26")                # exactly one block
    # "dead" wrote its affinity and died before creating the block.
    raw_etcd.write("/calico/ipam/v2/host/dead/ipv4/block/10.0.0.0-26", "")
    ip = IPAMClient(store, host="alive").auto_assign(4)
    assert ip == IP("10.0.0.0")
    data = etcd_dump()
    assert json.loads(data[BLOCKS4 + "10.0.0.0-26"])["affinity"] == "host:alive"
    # Nothing advertises a block its host does not hold.
    assert [k for k in data if "/ipam/v2/host/" in k] == [
        "/calico/ipam/v2/host/alive/ipv4/block/10.0.0.0-26"]


def test_claimant_that_lost_and_died_is_cleaned_when_it_returns(store, raw_etcd, etcd_dump):
    add_pool(store, "10.0.0.0/25")
    IPAMClient(store, host="winner").assign("10.0.0.1")
    raw_etcd.write("/calico/ipam/v2/host/loser/ipv4/block/10.0.0.0-26", "")
    ip = IPAMClient(store, host="loser").auto_assign(4)
    assert ip in NET("10.0.0.64/26")
    assert sorted(k for k in etcd_dump() if "/host/loser/" in k) == [
        "/calico/ipam/v2/host/loser/ipv4/block/10.0.0.64-26"]


def test_returning_claimant_finishes_its_own_claim(store, raw_etcd, etcd_dump):
    add_pool(store, "10.0.0.0/24")
    raw_etcd.write("/calico/ipam/v2/host/h1/ipv4/block/10.0.0.128-26", "")
    assert IPAMClient(store, host="h1").auto_assign(4) == IP("10.0.0.128")


def test_release_host_affinities(store, etcd_dump):
    add_pool(store, "10.0.0.0/24")
    gone = IPAMClient(store, host="gone")
    gone.assign("10.0.0.5")
    gone.assign("10.0.0.130")
    gone.release(["10.0.0.130"])                 # its block is now empty
    IPAMClient(store, host="stays").assign("10.0.0.200")
    gone.release_host_affinities("gone")
    data = etcd_dump()
    assert not [k for k in data if "/ipam/v2/host/gone" in k]
    assert BLOCKS4 + "10.0.0.128-26" not in data                  # empty: deleted
    kept = json.loads(data[BLOCKS4 + "10.0.0.0-26"])
    assert kept["affinity"] is None and kept["allocations"].count(None) == 63
    assert [k for k in data if "/ipam/v2/host/stays" in k]

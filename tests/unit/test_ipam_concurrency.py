"""Several processes, each posing as a different host, allocating from one small pool at once."""

import ipaddress
import multiprocessing
import os
import random
import threading
import traceback

from calicoctl.datastore import pools
from calicoctl.datastore.models import Pool
from calicoctl.ipam import block as blocks
from calicoctl.ipam.records import list_blocks
from calicoctl.ipam.usage import count_allocated

POOL = ipaddress.ip_network("10.7.0.0/24")   # 4 blocks for 5 hosts: claims race, one borrows
HOSTS = 5
THREADS = 3
PER_THREAD = 16                               # 5 * 3 * 16 = 240 of 256 addresses


def _worker(authority, host, seed, reports, barrier):
    try:
        os.environ["ETCD_AUTHORITY"] = authority
        os.environ.pop("ETCD_ENDPOINTS", None)
        from calicoctl.datastore import open_store
        from calicoctl.ipam.allocator import IPAMClient
        ipam = IPAMClient(open_store(), host=host)
        rng = random.Random(seed)
        held = {}                               # ip -> handle id
        lock = threading.Lock()
        counter = iter(range(10 ** 6))

        def allocate(n):
            for _ in range(n):
                with lock:
                    handle = "%s-%d" % (host, next(counter))
                ip = ipam.auto_assign(4, handle_id=handle)
                with lock:
                    assert ip not in held, "%s handed out twice in one process" % ip
                    held[ip] = handle

        def release(items):
            for ip, handle in items:
                if rng.random() < 0.5:
                    assert ipam.release([ip]) == set()
                else:
                    assert ipam.release_by_handle(handle) == [ip]

        def in_threads(fn, parts):
            threads = [threading.Thread(target=fn, args=(p,)) for p in parts]
            errors = []
            for t in threads:
                t.run = _catching(t.run, errors)
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]

        # Phase 1: allocate at once from several threads.
        in_threads(allocate, [PER_THREAD] * THREADS)
        reports.put((host, sorted(map(str, held)), None))
        barrier.wait()
        # Phase 2: release about half at random, then allocate as many again.
        chosen = [item for item in sorted(held.items()) if rng.random() < 0.5]
        for ip, _ in chosen:
            del held[ip]
        in_threads(release, [chosen[i::THREADS] for i in range(THREADS)])
        in_threads(allocate, [len(chosen[i::THREADS]) for i in range(THREADS)])
        reports.put((host, sorted(map(str, held)), None))
        barrier.wait()
        # Phase 3: release everything.
        everything = sorted(held.items())
        held.clear()
        in_threads(release, [everything[i::THREADS] for i in range(THREADS)])
        reports.put((host, [], None))
        barrier.wait()
    except BaseException:
        reports.put((host, None, traceback.format_exc()))


def _catching(run, errors):
    def wrapped():
        try:
            run()
        except BaseException as exc:   # re-raised in the worker's main thread
            errors.append(exc)
    return wrapped


def _check(store, reports):
    """Every address held exactly once, inside the pool, and etcd agrees with the callers."""
    held = {}
    for host, ips, error in reports:
        assert error is None, "%s failed:\n%s" % (host, error)
        for ip in ips:
            assert ip not in held, "%s held by both %s and %s" % (ip, held[ip], host)
            held[ip] = host
    assert all(ipaddress.ip_address(ip) in POOL for ip in held)
    assert count_allocated(store, POOL) == len(held)
    in_etcd = {}
    for cidr, (block, _) in list_blocks(store, 4).items():
        for ordinal, index in enumerate(block["allocations"]):
            if index is not None:
                handle = block["attributes"][index]["handle_id"]
                in_etcd[str(blocks.address_at(cidr, ordinal))] = handle.rsplit("-", 1)[0]
    assert in_etcd == held
    return held


def test_processes_as_hosts_never_share_an_address(store, etcd_env, etcd_dump):
    pools.add_pool(store, Pool(cidr=POOL))
    ctx = multiprocessing.get_context("spawn")
    reports, barrier = ctx.Queue(), ctx.Barrier(HOSTS + 1, timeout=300)
    procs = [ctx.Process(target=_worker, args=(etcd_env.authority, "host%d" % i, i, reports,
                                               barrier)) for i in range(HOSTS)]
    for p in procs:
        p.start()
    try:
        sizes = []
        for phase in range(3):
            got = [reports.get(timeout=300) for _ in procs]
            sizes.append(len(_check(store, got)))
            barrier.wait()
        assert sizes == [HOSTS * THREADS * PER_THREAD] * 2 + [0]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    # A full release leaves every block empty (and still affine), and no handle behind.
    data = etcd_dump()
    found = list_blocks(store, 4)
    assert len(found) == 4
    for cidr, (block, _) in found.items():
        assert block["allocations"] == [None] * 64 and sorted(block["unallocated"]) == \
            list(range(64))
        assert blocks.affine_host(block) is not None
    assert not [k for k in data if k.startswith("/calico/ipam/v2/handle/")]
    # Affinity keys match the blocks' own affinity exactly (no orphans from lost races).
    keyed = sorted(k for k in data if k.startswith("/calico/ipam/v2/host/"))
    assert keyed == sorted("/calico/ipam/v2/host/%s/ipv4/block/%s" % (
        blocks.affine_host(b), str(c).replace("/", "-")) for c, (b, _) in found.items())


def _die_mid_claim(authority):
    """Claim a block for host "dead", but exit (like kill -9) at the block's creation: on v2
    right after the affinity write, on v3 (one transaction for both) instead of it."""
    os.environ["ETCD_AUTHORITY"] = authority
    os.environ.pop("ETCD_ENDPOINTS", None)
    from calicoctl.datastore import open_store
    from calicoctl.ipam import records
    from calicoctl.ipam.allocator import IPAMClient

    def killed(store, cidr, block, prev_index):
        if prev_index is None:
            os._exit(9)

    def killed_in_txn(store, writes):
        if any(w.absent and "/assignment/" in w.key for w in writes):
            os._exit(9)
    records.write_block = killed
    records.commit = killed_in_txn
    IPAMClient(open_store(), host="dead").auto_assign(4)


def test_claimant_killed_between_affinity_and_block(store, etcd_env, etcd_dump):
    pools.add_pool(store, Pool(cidr=ipaddress.ip_network("10.8.0.0/26")))   # one block only
    proc = multiprocessing.get_context("spawn").Process(target=_die_mid_claim,
                                                        args=(etcd_env.authority,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 9
    # v2 leaves the claimant's affinity key behind; v3 wrote nothing (all or nothing).
    assert ("/calico/ipam/v2/host/dead/ipv4/block/10.8.0.0-26" in etcd_dump()) == (
        not store.atomic_writes)
    assert not [k for k in etcd_dump() if "/assignment/" in k]
    # Another host takes the block at once; the dead host's key no longer advertises it.
    from calicoctl.ipam.allocator import IPAMClient
    assert IPAMClient(store, host="alive").auto_assign(4) == ipaddress.ip_address("10.8.0.0")
    data = etcd_dump()
    assert [k for k in data if k.startswith("/calico/ipam/v2/host/")] == [
        "/calico/ipam/v2/host/alive/ipv4/block/10.8.0.0-26"]
    assert blocks.affine_host(list_blocks(store, 4)[ipaddress.ip_network("10.8.0.0/26")][0]) \
        == "alive"

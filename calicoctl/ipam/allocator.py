"""Block-affinity address allocation (Calico's IPAM, with its known bugs fixed).

Each host claims 64-address blocks and hands out addresses from its own blocks; when it has no
room it claims a free block, and only when no block is free does it borrow an address from
another host's block.  Correctness never rests on what this client remembers: every block and
handle write is a compare-and-swap on its modified index (bounded retries), and every decision that
is not protected by such a write is taken on a quorum read.

Speed comes from what the client remembers.  It keeps the last state it wrote (or read) of each
block with that state's modified index, so the common allocation is a single compare-and-swap on
the host's block; a stale memory only costs a failed CAS and one re-read.  When a handle is given,
its record is written first, without reading it, for the block the address will most likely
come from (create-if-absent; corrected in the rare case the guess was wrong): two round trips.
Handle first means a crash in between leaves a harmless surplus count, never an address that
release_by_handle cannot find.

On a store with transactions (etcd v3) there is no second round trip and no crash window: the
block and its handle's count change in one transaction (`_Counted`), and a claim creates the
block and writes the affinity key in one transaction that fails whole when another host created
the block first.  Releasing is the same on both.  There the fast path reads no pools either: its
transaction carries the condition that the block's pool record is the one last read
(pools.unchanged), so a pool removed or reconfigured a moment ago fails it, and the allocation
reads the pools again and starts over: one round trip, and no window at all.

Finding a block to claim reads the existing blocks in one recursive listing and computes free
block CIDRs arithmetically (block.free_blocks): an IPv6 /64 pool, 2**58 blocks, costs what a
/24 does.

Crash safety of a claim: the host writes its affinity key, then creates the block
(create-if-absent) with its own "affinity" field.  The block is the truth: a host never considers
itself affine to a block that does not say so, an affinity key without a block blocks nobody
(another host may claim the block, and the winner deletes every other host's key for it), and a
host that comes back finishes or drops its own half-done claims.
"""

import ipaddress
import itertools
import logging
import random
import threading
import time

from calicoctl.datastore import pools as pool_store
from calicoctl.datastore.cas import CONFLICT, retry_on_conflict
from calicoctl.errors import CalicoError, PoolExhaustedError, ValidationError
from calicoctl.ipam import block as blocks
from calicoctl.ipam import records
from calicoctl.nodename import node_name

log = logging.getLogger(__name__)

# Compare-and-swap attempts on one block or handle before giving up with ConflictError.  Losing
# many times in a row needs dozens of writers on the same block; back-off (datastore/cas.py)
# spreads them out.
CAS_ATTEMPTS = 40
# Lost claim races tolerated in one allocation before we stop claiming and borrow instead.
CLAIM_ATTEMPTS = 32
# Claims pick among the lowest SPREAD free blocks at random (see _spread).
SPREAD = 8
# How long a cached pool list may steer the fast path without transactions (etcd v2).  Adding
# or removing a pool while an allocation is in flight is a race in any design; this bounds it to
# about a second, and every slow-path decision (claiming, borrowing, exhaustion) re-reads the
# pools by quorum.  With transactions the fast path's commit checks the pool instead.
POOL_CACHE_SECONDS = 1.0


class IPAMClient:
    """Allocate and release addresses for one host.  Safe to share between threads."""

    def __init__(self, store, host=None, pool_cache_seconds=POOL_CACHE_SECONDS):
        self.store = store
        self.host = host or node_name()
        self.pool_cache_seconds = pool_cache_seconds
        self._blocks = {}                 # block network -> (block, modified index) last seen
        self._affine = {4: None, 6: None}  # sorted block networks affine to us; None = unknown
        self._pools = {}      # version -> (monotonic time read, [Pool], {cidr: record index})
        self._repaired = set()            # versions whose affinity keys we have reconciled
        self._lock = threading.Lock()

    # -- public API -----------------------------------------------------------------------------

    def auto_assign(self, version, handle_id=None, attributes=None, pool=None):
        """One address of the given family for this host; see the module docstring."""
        if version not in (4, 6):
            raise ValidationError("IP version must be 4 or 6, not %r." % (version,))
        if pool is not None:
            pool = ipaddress.ip_network(pool)
            if pool.version != version:
                raise ValidationError("Pool %s is not an IPv%d pool." % (pool, version))
        atomic = self.store.atomic_writes
        counted = _Counted(handle_id) if handle_id is not None and atomic else None
        guess, check = self._fast_guess(version, pool, checked=atomic)
        if check is not None:
            ip = self._try_checked(guess, handle_id, attributes, counted, check)
            if ip is not None:
                return ip
            # The block, the handle or the pool changed: go on from freshly read pools, with
            # the same block (read again) while its pool is still there.
            if not _inside(guess, _usable(self._read_pools(version), pool)):
                guess = None
        if counted is not None:
            return self._auto_assign(version, handle_id, attributes, pool, guess, counted)[0]
        early = handle_id is not None and guess is not None
        if early:
            self._change_handle(handle_id, {guess: 1}, assume_new=True)
        try:
            ip, cidr = self._auto_assign(version, handle_id, attributes, pool, guess)
        except BaseException:
            if early:
                self._settle(handle_id, {guess: -1})
            raise
        if handle_id is not None and not (early and cidr == guess):
            try:
                self._change_handle(handle_id, {guess: -1, cidr: 1} if early else {cidr: 1})
            except CalicoError:
                self.release([ip])      # no handle record, no address: leave nothing behind
                raise
        return ip

    def assign(self, ip, handle_id=None, attributes=None):
        """Assign one specific address (Docker's --ip), claiming its block if nobody has."""
        ip = ipaddress.ip_address(ip)
        pool = self._pool_of(ip)
        cidr = blocks.block_cidr_for(ip)
        ordinal = blocks.ordinal_of(cidr, ip)
        counted = None
        if handle_id is not None and self.store.atomic_writes:
            counted = _Counted(handle_id)   # the handle changes in the block's transaction
        elif handle_id is not None:
            self._change_handle(handle_id, {cidr: 1})   # handle first: a crash leaves no leak

        @retry_on_conflict(CAS_ATTEMPTS, "assigning %s in pool %s" % (ip, pool.cidr))
        def assign_once():
            state = records.read_block(self.store, cidr)
            if state is None:
                state = self._claim(cidr) or records.read_block(self.store, cidr)
                if state is None:
                    return CONFLICT
            block, index = state
            if block is None:
                raise ValidationError("The IPAM block %s holding %s is corrupt." % (cidr, ip))
            new = blocks.allocate_ordinal(block, ordinal, handle_id, attributes)
            if new is None:
                raise ValidationError("%s is already in use." % ip)
            return None if self._cas(cidr, new, index, counted) else CONFLICT

        try:
            return assign_once()
        except BaseException:
            if handle_id is not None and counted is None:
                self._settle(handle_id, {cidr: -1})
            raise

    def release(self, ips):
        """Release addresses; returns the set of those that were not allocated."""
        ips = {ipaddress.ip_address(ip) for ip in ips}
        by_block = {}
        for ip in ips:
            by_block.setdefault(blocks.block_cidr_for(ip), []).append(ip)
        not_allocated = set()
        for cidr, members in sorted(by_block.items(), key=lambda kv: (kv[0].version, kv[0])):
            ordinals = [blocks.ordinal_of(cidr, ip) for ip in members]
            released, handles = self._release_in_block(cidr, lambda b: ordinals)
            not_allocated.update(ip for ip in members
                                 if blocks.ordinal_of(cidr, ip) not in released)
            for handle_id, count in handles.items():
                self._settle(handle_id, {cidr: -count})
        return not_allocated

    def release_by_handle(self, handle_id):
        """Release every address held under handle_id; returns them (sorted)."""
        released = []     # across attempts: a lost handle delete does not undo block releases

        @retry_on_conflict(CAS_ATTEMPTS, "releasing handle %s" % handle_id)
        def release_once():
            state = records.read_handle(self.store, handle_id)
            if state is None:
                # No record: either nothing was held, or a writer died between its block write
                # and its handle write.  One listing per family finds the latter.
                cidrs = [c for v in (4, 6) for c, (b, _) in
                         records.list_blocks(self.store, v).items()
                         if b is not None and blocks.ordinals_of_handle(b, handle_id)]
            else:
                cidrs = [ipaddress.ip_network(c) for c in state[0]["block"]]
            for cidr in sorted(cidrs, key=lambda c: (c.version, c)):
                ordinals, _ = self._release_in_block(
                    cidr, lambda b: blocks.ordinals_of_handle(b, handle_id))
                released.extend(blocks.address_at(cidr, o) for o in ordinals)
            if state is None or records.delete_handle(self.store, handle_id, state[1]):
                return sorted(released, key=lambda ip: (ip.version, ip))
            return CONFLICT

        return release_once()

    def get_assignment(self, ip):
        """What holds ip: {"ip","pool","block","host","handle_id","attributes"}, or None."""
        ip = ipaddress.ip_address(ip)
        cidr = blocks.block_cidr_for(ip)
        state = records.read_block(self.store, cidr)
        if state is None or state[0] is None:
            return None
        block = state[0]
        ordinal = blocks.ordinal_of(cidr, ip)
        if block["allocations"][ordinal] is None:
            return None
        handle_id, attributes = blocks.attributes_at(block, ordinal)
        pool = next((p.cidr for p in self._read_pools(ip.version) if ip in p.cidr), None)
        return {"ip": ip, "pool": pool, "block": cidr, "host": blocks.affine_host(block),
                "handle_id": handle_id, "attributes": attributes}

    def release_host_affinities(self, host):
        """Forget host's blocks (node remove): empty ones are deleted, others lose their host."""
        for version in (4, 6):
            for cidr, (block, index) in records.list_blocks(self.store, version).items():
                if block is not None and blocks.affine_host(block) == host:
                    self._disown(cidr, block, index)
        records.delete_host(self.store, host)
        if host == self.host:
            self._blocks.clear()
            self._affine = {4: None, 6: None}
            self._repaired.clear()

    # -- auto-assign ----------------------------------------------------------------------------

    def _fast_guess(self, version, wanted_pool, checked=False):
        """(block, condition): an affine block that, as far as we remember, has room (None to
        take the slow path), and the condition its commit must carry, or None.  checked (a
        store with transactions): rather than read the pools again, however old the cached
        list, use it, on the condition that the block's pool record is still the one read."""
        affine = self._affine[version]
        if affine is None:
            return None, None
        cached = self._pools.get(version)
        just_read = False
        if cached is None or (not checked and
                              time.monotonic() - cached[0] > self.pool_cache_seconds):
            self._read_pools(version)
            cached, just_read = self._pools[version], True
        usable = _usable(cached[1], wanted_pool)
        for cidr in affine:
            state = self._blocks.get(cidr)
            if state and state[0] is not None and state[0]["unallocated"] and \
                    _inside(cidr, usable):
                if just_read or not checked:
                    return cidr, None
                pool = next(p for p in usable if cidr.subnet_of(p.cidr))
                return cidr, pool_store.unchanged(pool, cached[2][pool.cidr])
        return None, None

    def _try_checked(self, cidr, handle_id, attributes, counted, check):
        """One transaction on the remembered state of the block, carrying check: the address,
        or None when any condition failed (no retry: the pool may be what changed)."""
        block, index = self._blocks[cidr]
        new, ordinal = blocks.allocate_next(block, handle_id, attributes)
        if ordinal is not None and self._cas(cidr, new, index, counted, check):
            return blocks.address_at(cidr, ordinal)
        return None

    def _auto_assign(self, version, handle_id, attributes, wanted_pool, guess, counted=None):
        if guess is not None:
            ip = self._allocate_in(guess, handle_id, attributes, self._blocks.get(guess),
                                   counted)
            if ip is not None:
                return ip, guess
        return self._auto_assign_slow(version, handle_id, attributes, wanted_pool, counted)

    def _auto_assign_slow(self, version, handle_id, attributes, wanted_pool, counted):
        usable = _usable(self._read_pools(version), wanted_pool)
        if wanted_pool is not None and not usable:
            raise ValidationError("%s is not a pool Calico IPAM allocates from; see "
                                  "'calicoctl pool show'." % wanted_pool)
        if not usable:
            raise ValidationError("No IPv%d pool is configured for Calico IPAM; add one with "
                                  "'calicoctl pool add'." % version)
        existing = records.list_blocks(self.store, version)
        self._blocks.update(existing)
        self._affine[version] = sorted(c for c, (b, _) in existing.items()
                                       if b is not None and blocks.affine_host(b) == self.host)
        if version not in self._repaired:
            self._repair_affinities(version, existing)
        # 1. Our own blocks.
        for cidr in list(self._affine[version]):
            if _inside(cidr, usable):
                ip = self._allocate_in(cidr, handle_id, attributes, self._blocks.get(cidr),
                                       counted)
                if ip is not None:
                    return ip, cidr
        # 2. Claim a block nobody has.
        lost = 0
        for pool in usable:
            for cidr in _spread(blocks.free_blocks(pool.cidr, existing)):
                state = self._claim(cidr)
                if state is None:
                    lost += 1
                    if lost >= CLAIM_ATTEMPTS:
                        break
                    continue
                ip = self._allocate_in(cidr, handle_id, attributes, state, counted)
                if ip is not None:
                    return ip, cidr
            if lost >= CLAIM_ATTEMPTS:
                break
        # 3. Borrow from other hosts' blocks (fresh listing: blocks claimed since count too).
        if lost:
            existing = records.list_blocks(self.store, version)
        for cidr, (block, index) in sorted(existing.items()):
            if block is not None and block["unallocated"] and _inside(cidr, usable):
                ip = self._allocate_in(cidr, handle_id, attributes, (block, index), counted)
                if ip is not None:
                    return ip, cidr
        full = ", ".join(str(p.cidr) for p in usable)
        raise PoolExhaustedError("No free IPv%d address: pool%s %s %s full." % (
            version, "s" if len(usable) > 1 else "", full, "are" if len(usable) > 1 else "is"))

    def _allocate_in(self, cidr, handle_id, attributes, state, counted=None):
        """Take the next free address of one block by CAS; None if the block is full.

        state is the (block, index) to try first (what we remember), or None to read it."""
        @retry_on_conflict(CAS_ATTEMPTS, "allocating in block %s" % cidr)
        def allocate_once():
            nonlocal state
            if state is None:
                state = records.read_block(self.store, cidr)
                if state is None:
                    return None
                self._blocks[cidr] = state
            block, index = state
            if block is None:
                return None
            new, ordinal = blocks.allocate_next(block, handle_id, attributes)
            if ordinal is None:
                return None
            if self._cas(cidr, new, index, counted):
                return blocks.address_at(cidr, ordinal)
            state = None      # lost: read the block again
            return CONFLICT

        return allocate_once()

    def _cas(self, cidr, block, index, counted=None, check=None):
        """Write the block by CAS on index; with counted (a _Counted), add one to its handle's
        count for this block in the same transaction; with check (a condition-only Write), only
        while that holds too."""
        if counted is None and check is None:
            new_index = records.write_block(self.store, cidr, block, index)
        else:
            writes = [records.block_write(cidr, block, index)]
            writes += [counted.write(cidr)] if counted is not None else []
            writes += [check] if check is not None else []
            new_index = records.commit(self.store, writes)
            if new_index is None and counted is not None:
                counted.refresh(self.store)    # the handle may be what changed
        if new_index is None:
            self._blocks.pop(cidr, None)
            return False
        self._blocks[cidr] = (block, new_index)
        return True

    # -- claiming blocks ------------------------------------------------------------------------

    def _claim(self, cidr):
        """Make cidr this host's block: (block, index) on success, None if another host has it."""
        block = blocks.new_block(cidr, self.host)
        atomic = self.store.atomic_writes
        if atomic:
            # Compare-on-create: the block and our affinity key, or (another host was first)
            # neither.
            index = records.commit(self.store, [records.block_write(cidr, block, None),
                                                records.affinity_write(self.host, cidr)])
        else:
            records.set_affinity(self.store, self.host, cidr)
            index = records.write_block(self.store, cidr, block, None)
        if index is None:
            state = records.read_block(self.store, cidr)
            if state is None or state[0] is None or blocks.affine_host(state[0]) != self.host:
                if not atomic:
                    records.delete_affinity(self.store, self.host, cidr)  # leave no orphan
                return None
            block, index = state      # ours already (another process of this host made it)
        else:
            # A claimant that died after its affinity write left a key for a block it never
            # got; now that the block says whose it is, such keys must not advertise it.
            for host, other in records.all_affinities(self.store, cidr.version):
                if other == cidr and host != self.host:
                    records.delete_affinity(self.store, host, cidr)
        with self._lock:
            affine = set(self._affine[cidr.version] or []) | {cidr}
            self._affine[cidr.version] = sorted(affine)
        self._blocks[cidr] = (block, index)
        return block, index

    def _repair_affinities(self, version, existing):
        """Make this host's affinity keys agree with the blocks (once per client and family)."""
        keyed = set(records.host_affinities(self.store, self.host, version))
        for cidr in sorted(keyed):
            state = existing.get(cidr)
            if state is None and _inside(cidr, _usable(self._pools[version][1], None)):
                # Our own claim died half-way: finish it (or drop the key if someone beat us).
                self._claim(cidr)
            elif state is None:
                records.delete_affinity(self.store, self.host, cidr)   # its pool is gone
            elif state[0] is None or blocks.affine_host(state[0]) != self.host:
                records.delete_affinity(self.store, self.host, cidr)
        for cidr in self._affine[version]:
            if cidr not in keyed:
                records.set_affinity(self.store, self.host, cidr)
        self._repaired.add(version)

    def _disown(self, cidr, block, index):
        @retry_on_conflict(CAS_ATTEMPTS, "releasing block %s" % cidr)
        def disown_once():
            nonlocal block, index
            if blocks.used_count(block) == 0:
                if records.delete_block(self.store, cidr, index):
                    return None
            else:
                new = dict(block, affinity=None)
                if records.write_block(self.store, cidr, new, index) is not None:
                    return None
            state = records.read_block(self.store, cidr)
            if state is None or state[0] is None:
                return None
            block, index = state
            return CONFLICT

        disown_once()

    # -- release --------------------------------------------------------------------------------

    def _release_in_block(self, cidr, choose):
        """Release choose(block)'s ordinals by CAS: (released ordinals, {handle: count})."""
        @retry_on_conflict(CAS_ATTEMPTS, "releasing in block %s" % cidr)
        def release_once():
            state = records.read_block(self.store, cidr)
            if state is None or state[0] is None:
                return [], {}
            block, index = state
            new, released, handles = blocks.release_ordinals(block, choose(block))
            if not released or self._cas(cidr, new, index):
                return released, handles
            return CONFLICT

        return release_once()

    # -- handles --------------------------------------------------------------------------------

    def _change_handle(self, handle_id, deltas, assume_new=False):
        """Add deltas ({block network: +n/-n}) to a handle's counts; delete it at zero.

        assume_new skips the first read: try create-if-absent, fall back to read and CAS.
        """
        store = self.store
        state = (None, None) if assume_new else None

        @retry_on_conflict(CAS_ATTEMPTS, "updating handle %s" % handle_id)
        def change_once():
            nonlocal state
            if state is None:
                state = records.read_handle(store, handle_id) or (None, None)
            handle, index = state
            counts = dict((handle or {}).get("block") or {})
            for cidr, delta in deltas.items():
                counts[str(cidr)] = counts.get(str(cidr), 0) + delta
            counts = {c: n for c, n in counts.items() if n > 0}
            if not counts:
                if index is None or records.delete_handle(store, handle_id, index):
                    return None
            elif records.write_handle(store, handle_id, {"id": handle_id, "block": counts},
                                      index) is not None:
                return None
            state = None      # lost: read the handle again
            return CONFLICT

        change_once()

    def _settle(self, handle_id, deltas):
        """Undo a handle change after a failed allocation, best effort (a surplus is harmless:
        release_by_handle frees only what the blocks say the handle holds)."""
        try:
            self._change_handle(handle_id, deltas)
        except CalicoError as exc:
            log.warning("Could not correct handle %s: %s", handle_id, exc)

    # -- pools ----------------------------------------------------------------------------------

    def _read_pools(self, version):
        indexed = pool_store.list_pools_indexed(self.store, version, quorum=True)
        pools = [pool for pool, _ in indexed]
        self._pools[version] = (time.monotonic(), pools, {p.cidr: i for p, i in indexed})
        return pools

    def _pool_of(self, ip):
        """The pool Calico IPAM may assign ip from, or a ValidationError saying why not."""
        for pool in self._read_pools(ip.version):
            if ip in pool.cidr:
                if not pool.ipam:
                    raise ValidationError("%s is in pool %s, which Docker's IPAM manages, not "
                                          "Calico's." % (ip, pool.cidr))
                return pool
        raise ValidationError("%s is not in any configured IPv%d pool." % (ip, ip.version))


class _Counted:
    """A handle whose count goes into the transaction that writes its address's block.

    Starts by assuming the handle has no record yet (a new endpoint's, the common case): the
    transaction creates it.  When a transaction fails, refresh() reads the record so the next
    attempt compares on what is there.
    """

    def __init__(self, handle_id):
        self.handle_id = handle_id
        self.counts, self.index = {}, None

    def write(self, cidr):
        counts = dict(self.counts)
        counts[str(cidr)] = counts.get(str(cidr), 0) + 1
        return records.handle_write(self.handle_id, counts, self.index)

    def refresh(self, store):
        state = records.read_handle(store, self.handle_id)
        self.counts, self.index = ({}, None) if state is None else (
            dict(state[0]["block"]), state[1])


def _spread(candidates):
    """The free blocks in a slightly shuffled order: hosts claiming at the same moment would
    otherwise all race for the lowest free block and lose to each other in turn."""
    head = list(itertools.islice(candidates, SPREAD))
    random.shuffle(head)
    yield from head
    yield from candidates


def _usable(pools, wanted):
    return [p for p in pools if p.ipam and (wanted is None or p.cidr == wanted)]


def _inside(cidr, pools):
    return any(cidr.subnet_of(p.cidr) for p in pools)

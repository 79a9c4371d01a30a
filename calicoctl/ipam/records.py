"""IPAM records in etcd: blocks, host affinities and handles, read and written atomically.

Every write here is conditional (compare-and-swap on the modified index, or create-if-absent)
and returns the new modified index, so the allocator can keep the state it just wrote and use it
for its next compare-and-swap without reading the block again.  Every read that an allocation
decision rests on is a quorum read.  Where the store has transactions (etcd v3), `commit` writes
a block together with its handle, or with its affinity key, in one atomic step.
"""

import ipaddress
import json

from calicoctl.datastore import keys
from calicoctl.datastore.result import Write
from calicoctl.datastore.store import dump_json
from calicoctl.errors import ValidationError
from calicoctl.ipam import block as blocks


def _write(store, key, value, prev_index):
    """CAS on prev_index, or create-if-absent when None: the new modified index, or None.

    The index lets the allocator's next compare-and-swap skip re-reading the block.
    """
    if prev_index is None:
        return store.write_if(key, value, prev_exist=False)
    return store.write_if(key, value, prev_index=prev_index)


def _parse_block(value):
    try:
        return blocks.normalise(json.loads(value))
    except (ValueError, ValidationError):
        return None   # a broken block still exists (never claimed over) but is never used


# --- blocks -----------------------------------------------------------------------------------

def read_block(store, cidr):
    """(block, modified index) by quorum read, or None if the block does not exist."""
    result = store.read(keys.block(cidr, cidr.version), quorum=True)
    if result is None or result.is_dir:
        return None
    return _parse_block(result.value), result.modified_index


def list_blocks(store, version):
    """Every existing block of a family, {network: (block, modified index)}, in one quorum read."""
    found = {}
    for key, value, index in store.children(keys.blocks_dir(version), quorum=True):
        kind, c = keys.match_key(key)
        if kind != "block":
            continue
        found[ipaddress.ip_network(c["cidr"])] = (_parse_block(value), index)
    return found


def write_block(store, cidr, block, prev_index):
    """CAS the block on prev_index (create-if-absent when None); the new index or None."""
    return _write(store, keys.block(cidr, cidr.version), dump_json(block), prev_index)


def block_write(cidr, block, prev_index):
    """The Write of a block for commit: a CAS on prev_index, or a create when None."""
    return Write(keys.block(cidr, cidr.version), dump_json(block), prev_index=prev_index,
                 absent=prev_index is None)


def commit(store, writes):
    """Apply Writes atomically (stores with transactions only); the new index, or None if a
    condition failed."""
    return store.write_all(writes)


def delete_block(store, cidr, prev_index):
    return store.delete(keys.block(cidr, cidr.version), prev_index=prev_index)


# --- host affinities --------------------------------------------------------------------------

def set_affinity(store, host, cidr):
    store.set(keys.host_affinity(host, cidr, cidr.version), "")


def affinity_write(host, cidr):
    return Write(keys.host_affinity(host, cidr, cidr.version), "")


def delete_affinity(store, host, cidr):
    return store.delete(keys.host_affinity(host, cidr, cidr.version))


def host_affinities(store, host, version):
    """Blocks whose affinity key this host has (they may be stale: the block is the truth)."""
    found = []
    for key, _, _ in store.children(keys.host_affinity_dir(host, version), quorum=True):
        kind, c = keys.match_key(key)
        if kind == "host_affinity":
            found.append(ipaddress.ip_network(c["cidr"]))
    return sorted(found)


def all_affinities(store, version):
    """(host, block network) for every affinity key of one family, in one read."""
    found = []
    for key, _, _ in store.children(keys.IPAM_HOSTS_DIR, quorum=True):
        kind, c = keys.match_key(key)
        if kind == "host_affinity" and c["version"] == version:
            found.append((c["host"], ipaddress.ip_network(c["cidr"])))
    return found


def delete_host(store, host):
    store.delete(keys.ipam_host_dir(host), recursive=True)


# --- handles ----------------------------------------------------------------------------------

def read_handle(store, handle_id):
    """(handle JSON, modified index) by quorum read, or None."""
    result = store.read(keys.handle(handle_id), quorum=True)
    if result is None or result.is_dir:
        return None
    try:
        handle = json.loads(result.value)
    except ValueError:
        handle = None
    if not isinstance(handle, dict) or not isinstance(handle.get("block"), dict):
        handle = {"id": handle_id, "block": {}}
    return handle, result.modified_index


def write_handle(store, handle_id, handle, prev_index):
    return _write(store, keys.handle(handle_id), dump_json(handle), prev_index)


def delete_handle(store, handle_id, prev_index):
    return store.delete(keys.handle(handle_id), prev_index=prev_index)


def handle_write(handle_id, counts, prev_index):
    """The Write that makes a handle's record hold counts ({block cidr str: n}; deleted when
    empty), conditional on its index (on its absence when prev_index is None)."""
    counts = {c: n for c, n in counts.items() if n > 0}
    value = dump_json({"id": handle_id, "block": counts}) if counts else None
    return Write(keys.handle(handle_id), value, prev_index=prev_index,
                 absent=prev_index is None)

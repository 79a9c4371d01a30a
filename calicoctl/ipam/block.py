"""Allocation blocks as pure data: the stored JSON and what can be done to it.

A block is the unit a host claims: 64 consecutive addresses (BLOCK_PREFIX: /26 or /122).  Its JSON
(docs/datamodel.md) is

    {"cidr": "192.168.0.0/26", "affinity": "host:calico-01",
     "allocations": [0, null, ...64...], "unallocated": [1, 2, ...],
     "attributes": [{"handle_id": "ep1", "secondary": {}}]}

`allocations[i]` is null (free) or an index into `attributes`; `unallocated` is the queue of free
ordinals, taken from the front and refilled at the back so a released address is not handed out
again at once.  Every function here works on a copy and does no I/O, so the allocator can apply it
inside a compare-and-swap loop and the tests can exercise it without etcd.
"""

import ipaddress

from calicoctl.datastore.models import BLOCK_PREFIX
from calicoctl.errors import ValidationError

BLOCK_SIZE = 64          # 2 ** (32 - 26) == 2 ** (128 - 122): the same for both families
AFFINITY_PREFIX = "host:"


def block_cidr_for(ip):
    """The block (an ip_network) that holds ip."""
    return ipaddress.ip_network("%s/%d" % (ip, BLOCK_PREFIX[ip.version]), strict=False)


def ordinal_of(block_cidr, ip):
    return int(ip) - int(block_cidr.network_address)


def address_at(block_cidr, ordinal):
    return block_cidr.network_address + ordinal


def affinity_for(host):
    return AFFINITY_PREFIX + host


def affine_host(block):
    """The host a block belongs to (its own "affinity" field is the truth), or None."""
    affinity = block.get("affinity") or ""
    return affinity[len(AFFINITY_PREFIX):] if affinity.startswith(AFFINITY_PREFIX) else None


def new_block(block_cidr, host):
    return {"cidr": str(block_cidr),
            "affinity": affinity_for(host) if host else None,
            "allocations": [None] * BLOCK_SIZE,
            "unallocated": list(range(BLOCK_SIZE)),
            "attributes": []}


def normalise(block):
    """A well-formed copy of a stored block; tolerates data without `unallocated`."""
    if not isinstance(block, dict) or "cidr" not in block:
        raise ValidationError("Stored IPAM block is not a JSON object with a cidr.")
    b = dict(block)
    allocations = b.get("allocations")
    if not isinstance(allocations, list) or len(allocations) != BLOCK_SIZE:
        raise ValidationError("Stored IPAM block %s does not have %d allocations." % (
            b["cidr"], BLOCK_SIZE))
    b["allocations"] = list(allocations)
    b["attributes"] = list(b.get("attributes") or [])
    free = [o for o in range(BLOCK_SIZE) if allocations[o] is None]
    queue = b.get("unallocated")
    if not isinstance(queue, list) or sorted(queue) != free:
        # Repair a queue that disagrees with allocations (allocations are the truth), keeping the
        # order of the entries that are still right.
        queue = [o for o in (queue or []) if isinstance(o, int) and 0 <= o < BLOCK_SIZE
                 and allocations[o] is None]
        seen = set(queue)
        queue = list(dict.fromkeys(queue)) + [o for o in free if o not in seen]
    b["unallocated"] = queue
    return b


def free_count(block):
    return sum(1 for a in block["allocations"] if a is None)


def used_count(block):
    return BLOCK_SIZE - free_count(block)


def _copy(block):
    """A copy safe to change: the lists are new; attribute entries are never changed in place."""
    b = dict(block)
    for name in ("allocations", "unallocated", "attributes"):
        b[name] = list(block[name])
    return b


def _attribute_index(block, handle_id, attributes):
    """Index of the attributes entry for (handle, attributes), appending one if new."""
    entry = {"handle_id": handle_id, "secondary": dict(attributes or {})}
    for i, existing in enumerate(block["attributes"]):
        if existing == entry:
            return i
    block["attributes"].append(entry)
    return len(block["attributes"]) - 1


def allocate_next(block, handle_id=None, attributes=None):
    """(new block, ordinal) taking the first free ordinal, or (block, None) when full."""
    if not block["unallocated"]:
        return block, None
    b = _copy(block)
    ordinal = b["unallocated"].pop(0)
    b["allocations"][ordinal] = _attribute_index(b, handle_id, attributes)
    return b, ordinal


def allocate_ordinal(block, ordinal, handle_id=None, attributes=None):
    """New block with this ordinal allocated; None if it is already in use."""
    if block["allocations"][ordinal] is not None:
        return None
    b = _copy(block)
    b["unallocated"].remove(ordinal)
    b["allocations"][ordinal] = _attribute_index(b, handle_id, attributes)
    return b


def release_ordinals(block, ordinals):
    """(new block, released ordinals, {handle_id: count released}).

    Ordinals already free are skipped (release is idempotent).  Freed ordinals join the back of
    `unallocated`; attribute entries nobody uses any more are dropped.
    """
    b = _copy(block)
    released, handles = [], {}
    for o in ordinals:
        index = b["allocations"][o]
        if index is None:
            continue
        handle_id = b["attributes"][index].get("handle_id")
        if handle_id is not None:
            handles[handle_id] = handles.get(handle_id, 0) + 1
        b["allocations"][o] = None
        b["unallocated"].append(o)
        released.append(o)
    if released:
        _compact_attributes(b)
    return b, released, handles


def ordinals_of_handle(block, handle_id):
    return [o for o, index in enumerate(block["allocations"])
            if index is not None and block["attributes"][index].get("handle_id") == handle_id]


def _compact_attributes(b):
    used = sorted({i for i in b["allocations"] if i is not None})
    remap = {old: new for new, old in enumerate(used)}
    b["attributes"] = [b["attributes"][i] for i in used]
    b["allocations"] = [None if i is None else remap[i] for i in b["allocations"]]


def attributes_at(block, ordinal):
    """(handle_id, secondary attributes) of an allocated ordinal."""
    entry = block["attributes"][block["allocations"][ordinal]]
    return entry.get("handle_id"), dict(entry.get("secondary") or {})


def free_blocks(pool_cidr, existing):
    """Block networks inside pool_cidr that do not exist yet, lowest first, lazily.

    Computed from the sorted offsets of the existing blocks, never by probing block after block,
    so it is as cheap for an IPv6 /64 pool (2**58 blocks) as for a /24.
    """
    prefix = BLOCK_PREFIX[pool_cidr.version]
    if pool_cidr.prefixlen > prefix:
        return
    base = int(pool_cidr.network_address)
    count = pool_cidr.num_addresses // BLOCK_SIZE
    taken = sorted({(int(b.network_address) - base) // BLOCK_SIZE for b in existing
                    if b.version == pool_cidr.version and b.subnet_of(pool_cidr)})
    make = ipaddress.IPv4Network if pool_cidr.version == 4 else ipaddress.IPv6Network
    index = 0
    for stop in taken + [count]:
        while index < stop:
            yield make((base + index * BLOCK_SIZE, prefix))
            index += 1
        index = stop + 1

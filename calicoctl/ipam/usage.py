"""How much of a pool is in use (read-only; the allocator lives in ipam.allocator)."""

import ipaddress
import json

from calicoctl.datastore import keys


def count_allocated(store, pool_cidr):
    """Number of addresses allocated in blocks inside pool_cidr."""
    total = 0
    for key, value, _ in store.children(keys.blocks_dir(pool_cidr.version)):
        kind, c = keys.match_key(key)
        if kind != "block" or not ipaddress.ip_network(c["cidr"]).subnet_of(pool_cidr):
            continue
        try:
            block = json.loads(value)
            total += sum(1 for a in block.get("allocations", []) if a is not None)
        except (ValueError, AttributeError):
            continue
    return total

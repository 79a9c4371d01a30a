"""How much of a pool is in use (read-only; the allocator lives in ipam.allocator)."""

import ipaddress
import json
from dataclasses import dataclass, field

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


@dataclass
class BlockUsage:
    cidr: object          # ipaddress network of the block
    host: str             # the host the block is affine to (its own field), or None
    used: int
    free: int


@dataclass
class PoolUsage:
    cidr: object          # the pool's network, or None for blocks outside every pool
    ipam: bool = True     # False: Docker's IPAM owns the pool, Calico never allocates from it
    blocks: list = field(default_factory=list)   # (with a host filter: that host's blocks)
    used: int = 0                                  # addresses in use in the whole pool

    @property
    def size(self):
        return self.cidr.num_addresses if self.cidr is not None else 0


def usage_report(store, host=None):
    """Per pool (both families, sorted) the blocks inside it, with use and affine host.

    One read of the pools and one listing of the blocks per family.  Blocks whose pool has been
    removed are reported under a PoolUsage with cidr None, so no allocated address is hidden.
    With host, only the blocks affine to that host are listed.
    """
    from calicoctl.datastore.pools import list_pools
    from calicoctl.ipam import block as blocks
    from calicoctl.ipam.records import list_blocks
    report = []
    for version in (4, 6):
        pools = [PoolUsage(p.cidr, p.ipam) for p in list_pools(store, version)]
        orphans = PoolUsage(None)
        for cidr, (block, _) in sorted(list_blocks(store, version).items()):
            if block is None:
                continue
            affine = blocks.affine_host(block)
            used = blocks.used_count(block)
            owner = next((p for p in pools if cidr.subnet_of(p.cidr)), orphans)
            owner.used += used
            if host is None or affine == host:
                owner.blocks.append(BlockUsage(cidr, affine, used, blocks.BLOCK_SIZE - used))
        report.extend(pools)
        if orphans.blocks:
            report.append(orphans)
    return report

"""IP pools: /calico/v1/ipam/v4/pool/<cidr> (and v6)."""

import json

from calicoctl.datastore import keys
from calicoctl.datastore.models import BLOCK_PREFIX, IPIP_DEVICE, Pool
from calicoctl.datastore.result import Write
from calicoctl.datastore.store import dump_json
from calicoctl.errors import AlreadyExistsError, NotFoundError, ValidationError


def list_pools(store, version=None, quorum=False):
    """Every pool (of one family, or both), sorted by CIDR."""
    return [pool for pool, _ in list_pools_indexed(store, version, quorum)]


def list_pools_indexed(store, version=None, quorum=False):
    """[(pool, its record's modified index)], sorted by CIDR: the index is what
    unchanged() compares."""
    versions = (version,) if version else (4, 6)
    pools = []
    for v in versions:
        for key, value, index in store.children(keys.pools_dir(v), quorum=quorum):
            try:
                pools.append((Pool.from_json(json.loads(value)), index))
            except (ValueError, ValidationError):
                continue   # a hand-edited, broken pool is not a pool
    return sorted(pools, key=lambda pi: (pi[0].version, pi[0].cidr))


def unchanged(pool, index):
    """The condition, for an atomic group of writes (EtcdStore.write_all), that the pool's
    record is still the one read at index: neither removed nor reconfigured since."""
    return Write(keys.pool(pool.cidr, pool.version), prev_index=index, check_only=True)


def get_pool(store, cidr):
    value = store.get(keys.pool(cidr, cidr.version))
    if value is None:
        raise NotFoundError("%s is not a configured pool." % cidr)
    return Pool.from_json(json.loads(value))


def check_new_pool(pool, existing):
    """Refuse pools that IPAM could not use or that overlap one already configured."""
    block = BLOCK_PREFIX[pool.version]
    if pool.cidr.prefixlen > block:
        raise ValidationError(
            "Pool %s is smaller than one allocation block (/%d); use a prefix of /%d or shorter."
            % (pool.cidr, block, block))
    if pool.ipip and pool.version == 6:
        raise ValidationError("IPIP is only supported for IPv4 pools.")
    for other in existing:
        if other.version == pool.version and other.cidr.overlaps(pool.cidr) \
                and other.cidr != pool.cidr:
            raise ValidationError("Pool %s overlaps the existing pool %s; remove that first or "
                                  "choose a CIDR that does not overlap." % (pool.cidr, other.cidr))


def add_pool(store, pool, replace=True):
    """Add (or with replace, reconfigure) a pool, keeping the IpInIpEnabled flag right."""
    check_new_pool(pool, list_pools(store, pool.version))
    key = keys.pool(pool.cidr, pool.version)
    if replace:
        store.set(key, dump_json(pool.to_json()))
    elif not store.create(key, dump_json(pool.to_json())):
        raise AlreadyExistsError("Pool %s already exists." % pool.cidr)
    if pool.ipip:
        # Felix only starts its IPIP machinery when told; set it once any pool needs it.
        store.set(keys.config("IpInIpEnabled"), "true")


def remove_pool(store, cidr):
    if not store.delete(keys.pool(cidr, cidr.version)):
        raise NotFoundError("%s is not a configured pool." % cidr)


def default_ipip(enabled):
    return IPIP_DEVICE if enabled else None

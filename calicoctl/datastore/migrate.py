"""Moving Calico's data from etcd's v2 keyspace to its v3 keyspace.

etcd keeps the two keyspaces apart: what calicoctl wrote through the v2 API is invisible to the
v3 API.  A cluster that is to lose its v2 API (etcd 3.6, or 3.4/3.5 restarted without
--enable-v2=true) needs Calico's keys copied first, while v2 is still served.  `migrate` does
that: the same keys, the same values, a key that expires in v2 expires in v3 after the time it
had left.  It reads everything and checks everything before it writes anything: a v3 key that
holds a different value stops it with one line naming the key, and nothing is written.  Keys
already equal in v3 are left alone, so running it again is harmless.

`v2_data_waiting` is the one-line hint for a calicoctl that speaks v3, finds no Calico data
there, and sees the v2 API holding some: the sign of an upgrade that skipped the migration.
"""

import dataclasses

from calicoctl.datastore import api, keys
from calicoctl.datastore.result import Write
from calicoctl.errors import CalicoError

# Keys per transaction: below etcd's default --max-txn-ops (128) with room for the compares.
BATCH = 60
MIGRATE_COMMAND = "calicoctl datastore migrate"


@dataclasses.dataclass
class Plan:
    """What a migration would do: keys to copy (key -> (value, ttl or None)), keys already the
    same in v3, and keys whose v3 value differs (key -> (v2 value, v3 value))."""
    copy: dict
    same: list
    conflicts: dict


def stores_for(store):
    """(v2 store, v3 store) on the cluster store is configured for."""
    from calicoctl.datastore.store import EtcdStore
    return tuple(EtcdStore(dataclasses.replace(store.settings, api=which), timeout=store.timeout)
                 for which in ("2", "3"))


def plan(v2, v3):
    """Compare Calico's keys in the two keyspaces (reads only)."""
    if not api.serves_v2(v2.settings, v2.endpoints):
        raise CalicoError("etcd at %s does not serve the v2 API, so there is nothing to migrate "
                          "from; restart it with --enable-v2=true to copy Calico's v2 data, "
                          "then turn v2 off." % v2.settings.describe())
    source = v2.read(keys.ROOT, recursive=True, quorum=True)
    present = {k: v for k, v, _ in v3.children(keys.ROOT, quorum=True)}
    result = Plan(copy={}, same=[], conflicts={})
    for node in (source.leaves if source is not None else []):
        there = present.get(node.key)
        if there is None:
            result.copy[node.key] = (node.value, node.ttl)
        elif there == node.value:
            result.same.append(node.key)
        else:
            result.conflicts[node.key] = (node.value, there)
    return result


def migrate(store, dry_run=False):
    """Copy Calico's v2 keys into v3 (see the module docstring); returns the Plan carried out
    (or, with dry_run, the one that would be)."""
    v2, v3 = stores_for(store)
    todo = plan(v2, v3)
    if todo.conflicts:
        key = sorted(todo.conflicts)[0]
        more = len(todo.conflicts) - 1
        raise CalicoError(
            "etcd's v3 keyspace already holds a different value at %s%s; nothing was migrated. "
            "Remove the v3 key%s or set ETCD_API=3 to keep using what v3 holds." % (
                key, " (and %d more key%s)" % (more, "s" if more > 1 else "") if more else "",
                "s" if more else ""))
    if dry_run or not todo.copy:
        return todo
    items = sorted(todo.copy.items())
    for start in range(0, len(items), BATCH):
        # A key that expires in v2 expires in v3 after the time it had left.
        writes = [Write(key, value, absent=True, ttl=ttl)
                  for key, (value, ttl) in items[start:start + BATCH]]
        if v3.write_all(writes) is None:
            raise CalicoError("Another writer changed Calico's v3 keys during the migration "
                              "(near %s); run '%s' again." % (writes[0].key, MIGRATE_COMMAND))
    return todo


def v2_data_waiting(store):
    """One line when store speaks v3, v3 holds no Calico data, and the cluster's v2 API does;
    else None.  Cheap when v3 holds data (one count)."""
    if store.api != "3" or store.backend.count(keys.ROOT + "/") > 0:
        return None
    if not api.serves_v2(store.settings, store.endpoints):
        return None
    v2, _ = stores_for(store)
    found = v2.read(keys.ROOT, recursive=True, quorum=True)
    if found is None or not found.leaves:
        return None
    count = len(found.leaves)
    return ("etcd's v3 keyspace holds no Calico data but its v2 API holds %d key%s: copy %s "
            "with '%s' (or set ETCD_API=2 to keep using v2)." % (
                count, "" if count == 1 else "s", "it" if count == 1 else "them",
                MIGRATE_COMMAND))


def notes(store):
    """What status and checksystem say about the datastore: which API and why, and the
    migration hint when it applies; [] when etcd cannot be asked (their etcd check says why)."""
    try:
        hint = v2_data_waiting(store)
        return [store.describe_api()] + ([hint] if hint else [])
    except CalicoError:
        return []


def warn_if_unmigrated(store, say):
    """Pass the migration hint to say() before a command writes into an empty v3 keyspace
    (after which the hint could no longer tell an upgrade that skipped migrating)."""
    try:
        hint = v2_data_waiting(store)
    except CalicoError:
        return    # the command's own etcd access reports the problem
    if hint:
        say(hint)

"""Calico's etcd data: copy it from etcd's v2 keyspace into its v3 keyspace.

Usage:
  calicoctl datastore migrate [--dry-run]
  calicoctl datastore show

Description:
  etcd keeps what was written through its v2 API apart from what is written through v3.
  calicoctl speaks v2 where etcd serves it and v3 where it does not (ETCD_API=2 or 3 forces
  one).  Before etcd stops serving v2 (etcd 3.6, or 3.4/3.5 without --enable-v2=true), copy
  Calico's data across while v2 is still on:

    calicoctl datastore migrate --dry-run    # what would be copied
    calicoctl datastore migrate              # copy it; run again at will: equal keys are skipped

  A v3 key that already holds a different value stops the migration with one line naming it,
  before anything is written.  'show' says which etcd API calicoctl uses here, and why.

Options:
  --dry-run     Print what would be copied; write nothing.
"""

from calicoctl.datastore import migrate, open_store
from calicoctl.output import out


def run(arguments):
    if arguments["show"]:
        return datastore_show(open_store())
    return datastore_migrate(open_store(), arguments["--dry-run"])


def datastore_show(store):
    out("%s at %s" % (store.describe_api(), store.settings.describe()))
    hint = migrate.v2_data_waiting(store)
    if hint:
        out(hint)


def datastore_migrate(store, dry_run):
    plan = migrate.migrate(store, dry_run=dry_run)
    verb = "Would copy" if dry_run else "Copied"
    if dry_run:
        for key in sorted(plan.copy):
            out("copy %s" % key)
    out("%s %d key%s from etcd's v2 keyspace to v3 (%d already there)." % (
        verb, len(plan.copy), "" if len(plan.copy) == 1 else "s", len(plan.same)))

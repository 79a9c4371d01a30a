"""What the store hands back, the same whichever etcd API is underneath.

etcd's v2 API answers with nodes (python-etcd result objects), its v3 API with key-values and
revisions.  Callers see neither: a read or a watch event is a `Node`, a lost watch position is
`HistoryLost`, and a multi-key transaction is a list of `Write`s.  The indexes are v2's
modifiedIndex/createdIndex or v3's mod_revision/create_revision; either way a larger number is a
later change, and the number is what a compare-and-swap compares on.
"""

from dataclasses import dataclass, field

from calicoctl.errors import DatastoreError


@dataclass
class Node:
    """One key (or directory) as read, or one change as seen by a watch.

    value is None for a directory and for a deletion.  leaves: for a recursive read of a
    directory, every key below it (directories left out); for a plain read, its immediate
    children that hold values.  children: a directory's immediate children as (name, is_dir).
    store_index: the store-wide index (v2 X-Etcd-Index, v3 header revision) when etcd answered,
    the point a snapshot is consistent at.
    """
    key: str
    value: str = None
    modified_index: int = 0
    created_index: int = 0
    is_dir: bool = False
    deleted: bool = False
    store_index: int = None
    leaves: list = field(default_factory=list)
    children: list = field(default_factory=list)
    ttl: int = None


class HistoryLost(DatastoreError):
    """A watch asked for changes etcd no longer keeps (v2: the index left its 1000-event window;
    v3: the revision has been compacted).  The caller must read everything again."""


@dataclass(frozen=True)
class Write:
    """One write of an atomic group (see EtcdStore.write_all).

    value None deletes the key.  The write happens only if every condition of the group holds:
    prev_index set means the key's modified index must still be prev_index; absent=True means
    the key must not exist; neither means no condition on this key.  ttl: the key expires after
    that many seconds.  check_only: a condition and nothing more (the key is not written), so a
    group can rest on a record it does not change.
    """
    key: str
    value: str = None
    prev_index: int = None
    absent: bool = False
    ttl: int = None
    check_only: bool = False

"""The store's v2 backend: etcd's v2 keys API through python-etcd.

This is where Calico's data has lived since v0.12: directories, TTLs and a 1000-event watch
window.  It maps python-etcd's results onto `result.Node` and its exceptions onto the library's
hierarchy, and fails over through failover.Endpoints.  A conditional write (create,
compare-and-swap, compare-and-delete) that failed on a dying member may still have been applied;
when the retry then reports a conflict we look at the key's history to tell "our write landed"
from "someone else's did" (see `_landed`), so no update is lost or applied twice.
"""

import contextlib
import json
import logging
import threading
import time
import urllib.parse

from calicoctl.datastore.etcd_errors import classify, quiet_python_etcd
from calicoctl.datastore.failover import CONNECT_TIMEOUT, TOTAL_TIMEOUT_FACTOR, QuietWatches
from calicoctl.datastore.result import HistoryLost, Node
from calicoctl.errors import DatastoreError

log = logging.getLogger("calicoctl.datastore.store")

_DELETES = ("delete", "expire", "compareAndDelete")


def _node(result, key=None):
    """A python-etcd result as a Node (a read's leaves and children included)."""
    node = Node(key=result.key, value=None if result.dir else result.value,
                modified_index=result.modifiedIndex, created_index=result.createdIndex,
                is_dir=bool(result.dir), deleted=result.action in _DELETES,
                store_index=result.etcd_index, ttl=result.ttl)
    if result.dir:
        node.leaves = [Node(key=n.key, value=n.value, modified_index=n.modifiedIndex,
                            created_index=n.createdIndex, ttl=n.ttl)
                       for n in result.leaves if not n.dir and n.key != result.key]
        # python-etcd exposes a directory's immediate children only through _children.
        node.children = [(c["key"].rsplit("/", 1)[1], bool(c.get("dir")))
                         for c in result._children]
    return node


class V2Backend:
    """The primitives of EtcdStore over etcd's v2 API.  Safe to share between threads."""

    api = "2"
    atomic_writes = False     # v2 has no multi-key transactions

    def __init__(self, settings, timeout, endpoints):
        self.settings = settings
        self.timeout = timeout
        self.endpoints = endpoints
        self._clients = {}
        self._lock = threading.Lock()
        self.quiet = QuietWatches(timeout)

    # -- connection ---------------------------------------------------------------------------

    def _make_client(self, endpoint):
        import etcd  # deferred: python-etcd costs tens of ms to import.
        import urllib3
        parsed = urllib.parse.urlsplit(endpoint)
        kwargs = dict(host=parsed.hostname if ":" not in parsed.hostname
                      else "[%s]" % parsed.hostname,
                      port=parsed.port or 2379, protocol=parsed.scheme,
                      read_timeout=self.timeout, allow_reconnect=False)
        if self.settings.ca_cert:
            kwargs["ca_cert"] = self.settings.ca_cert
        if self.settings.cert:
            kwargs["cert"] = (self.settings.cert, self.settings.key)
        if self.settings.username:
            kwargs["username"] = self.settings.username
            kwargs["password"] = self.settings.password
        client = etcd.Client(**kwargs)
        # python-etcd builds its urllib3 pool with urllib3's default of three silent retries,
        # which re-sends a PUT that may already have been applied (a create or CAS applied
        # twice) and hides the original error.  We fail over ourselves, so: no retries, and a
        # short connect timeout next to the read timeout.
        pool_kw = dict(client.http.connection_pool_kw)
        pool_kw["retries"] = False
        client.http = urllib3.PoolManager(num_pools=10, **pool_kw)
        client._read_timeout = self._timeouts(self.timeout)
        return client

    @staticmethod
    def _timeouts(read):
        import urllib3
        read = read or None  # python-etcd's 0 means "wait for ever" (a watch without timeout)
        connect = CONNECT_TIMEOUT if read is None else min(CONNECT_TIMEOUT, read)
        return urllib3.Timeout(connect=connect, read=read)

    def _client_for(self, endpoint):
        with self._lock:
            if not self._clients:
                quiet_python_etcd()
            client = self._clients.get(endpoint)
            if client is None:
                client = self._clients[endpoint] = self._make_client(endpoint)
            return client

    def connected_to(self, endpoint):
        """Whether a request has gone (or is going) to endpoint."""
        return endpoint in self._clients

    def _call(self, op, *args, expect=(), budget=None, **kwargs):
        """One python-etcd call through the failover loop (failover.Endpoints.run).

        expect: the python-etcd exceptions that are answers this caller interprets (key not
        found, compare failed, ...); any other answer is a one-line DatastoreError.
        """
        import etcd
        return self.endpoints.run(
            lambda endpoint, _: getattr(self._client_for(endpoint), op)(*args, **kwargs),
            classify, answers=expect, passthrough=(etcd.EtcdWatchTimedOut,), budget=budget)

    # -- primitives ---------------------------------------------------------------------------

    def _read(self, key, **kwargs):
        import etcd
        try:
            return self._call("read", key, expect=(etcd.EtcdKeyNotFound,), **kwargs)
        except etcd.EtcdKeyNotFound:
            return None

    def read(self, key, recursive=False, quorum=False):
        result = self._read(key, recursive=recursive, quorum=quorum)
        return None if result is None else _node(result)

    def snapshot(self, key):
        # Straight from etcd's JSON: python-etcd's result objects, one per key and then a Node
        # each, took as long again as etcd's answer and its JSON at 10,000 endpoints.
        import etcd
        try:
            response = self._call("api_execute", "/v2/keys" + key, "GET",
                                  params={"recursive": "true", "quorum": "true"},
                                  expect=(etcd.EtcdKeyNotFound,))
            data, index = response.data, response.headers.get("X-Etcd-Index")
        except etcd.EtcdKeyNotFound as exc:
            payload = exc.payload if isinstance(exc.payload, dict) else {}
            return [], int(payload.get("index", 0))
        try:
            items, pending = [], [json.loads(data)["node"]]
            while pending:
                node = pending.pop()
                if node.get("dir"):
                    pending.extend(node.get("nodes", ()))
                elif node["key"] != key:
                    items.append((node["key"], node.get("value")))
            return items, int(index)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DatastoreError("etcd's answer to a read of %s is not etcd v2's JSON (%s)."
                                 % (key, exc)) from None

    def children(self, key, recursive=True, quorum=False):
        result = self._read(key, recursive=recursive, quorum=quorum)
        if result is None:
            return []
        return [(n.key, n.value, n.modifiedIndex) for n in result.leaves
                if not n.dir and n.key != key]

    def list_dir(self, key, quorum=False):
        result = self._read(key, quorum=quorum)
        if result is None or not result.dir:
            return []
        return [(c["key"].rsplit("/", 1)[1], bool(c.get("dir"))) for c in result._children]

    def set(self, key, value, ttl=None):
        return self._call("write", key, value, ttl=ttl).modifiedIndex

    def write_if(self, key, value, prev_index=None, prev_exist=None):
        import etcd
        conditions = {}
        if prev_index is not None:
            conditions["prevIndex"] = prev_index
        if prev_exist is not None:
            conditions["prevExist"] = prev_exist
        expect = (etcd.EtcdAlreadyExist, etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound)
        try:
            return self._call("write", key, value, expect=expect, **conditions).modifiedIndex
        except expect as exc:
            if not exc.calico_retried:
                return None
            if prev_index is not None:
                return self._landed(key, value, prev_index=prev_index)
            return self._landed(key, value, created=True)

    def write_all(self, writes):
        raise DatastoreError("etcd's v2 API has no multi-key transactions.")

    def delete(self, key, recursive=False, prev_index=None):
        import etcd
        kwargs = {}
        if recursive:
            kwargs.update(recursive=True, dir=True)
        if prev_index is not None:
            kwargs["prevIndex"] = prev_index
        try:
            self._call("delete", key, expect=(etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed,
                                              etcd.EtcdNotDir), **kwargs)
            return True
        except etcd.EtcdKeyNotFound as exc:
            if exc.calico_retried and prev_index is None:
                # Our first attempt died on a failing member and the key is gone now: most
                # likely that attempt removed it.  Either way the caller's goal holds.
                return True
            if exc.calico_retried:
                return self._landed(key, None, prev_index=prev_index) is not None
            return False
        except etcd.EtcdCompareFailed as exc:
            if not exc.calico_retried:
                return False
            return self._landed(key, None, prev_index=prev_index) is not None
        except etcd.EtcdNotDir:
            self._call("delete", key)
            return True

    def delete_empty_dirs(self, key, stop_at):
        import etcd
        expect = (etcd.EtcdKeyNotFound, etcd.EtcdDirNotEmpty, etcd.EtcdNotDir)
        while key.startswith(stop_at + "/"):
            try:
                self._call("delete", key, dir=True, expect=expect)
            except expect:
                return
            except DatastoreError:
                return
            key = key.rsplit("/", 1)[0]

    @contextlib.contextmanager
    def watching(self, key):
        # A v2 wait from a past index is answered from etcd's event history at once.
        yield self.current_index()

    def watch(self, key, index, timeout):
        import etcd
        started = time.monotonic()
        try:
            result = self._call("read", key, recursive=True, wait=True, waitIndex=index,
                                timeout=self._timeouts(timeout),
                                expect=(etcd.EtcdKeyNotFound, etcd.EtcdEventIndexCleared),
                                budget=(timeout or 0) + self.timeout * TOTAL_TIMEOUT_FACTOR)
        except etcd.EtcdKeyNotFound:
            return None
        except etcd.EtcdEventIndexCleared as exc:
            raise HistoryLost("etcd no longer holds changes from index %d (%s); reading "
                              "everything again." % (index, exc)) from None
        except etcd.EtcdWatchTimedOut:
            # A quiet watch looks exactly like a member that stopped answering: once it has been
            # quiet for long enough, ask that member something quick; if it is wedged, this moves
            # us to another member before the caller watches again.
            if self.quiet.probe_due(started):
                self._read(key)
                self.quiet.heard()
            return None
        self.quiet.heard()
        return _node(result)

    def _landed(self, key, value, prev_index=None, created=False):
        """Did our own conditional write, retried after a failure, land before the retry?
        Its modifiedIndex if so, else None.

        The retry found the key changed (or present).  etcd keeps the key's recent history, so
        look at the first change after prev_index (CAS, compare-and-delete) or at the key's
        creation (create): if that change is exactly ours, it was our first attempt.  value None
        means a delete.  If the history has been compacted away, fall back to comparing the
        current value.
        """
        import etcd
        try:
            if created:
                current = self._read(key, quorum=True)
                if current is None:
                    return None
                event = self._call("read", key, wait=True, waitIndex=current.createdIndex,
                                   expect=(etcd.EtcdEventIndexCleared,))
                if event.value == value and event.modifiedIndex == current.createdIndex:
                    return event.modifiedIndex
                return None
            event = self._call("read", key, wait=True, waitIndex=prev_index + 1,
                               expect=(etcd.EtcdEventIndexCleared,))
        except etcd.EtcdEventIndexCleared:
            current = self._read(key, quorum=True)
            landed = (current is None) if value is None else (
                current is not None and current.value == value)
            log.warning("etcd history for %s is compacted; judged our retried write %s by the "
                        "current value.", key, "landed" if landed else "lost")
            if not landed:
                return None
            return current.modifiedIndex if current is not None else prev_index
        prev = getattr(event, "_prev_node", None)
        ours = (prev is not None and prev.modifiedIndex == prev_index and
                (event.action in _DELETES if value is None else event.value == value))
        if not ours:
            return None
        log.warning("etcd: our write to %s landed before its member failed; not repeating it.",
                    key)
        return event.modifiedIndex

    def current_index(self):
        import etcd
        from calicoctl.datastore import keys
        # Any key carries the cluster-wide index; Calico's root is one an etcd user restricted
        # to /calico may read (the etcd root is not).
        try:
            return self._call("read", keys.ROOT, quorum=True,
                              expect=(etcd.EtcdKeyNotFound,)).etcd_index
        except etcd.EtcdKeyNotFound as exc:
            payload = exc.payload if isinstance(exc.payload, dict) else {}
            return int(payload.get("index", 0))

"""Teardown calls that arrive while etcd is unreachable are kept on local disk and applied later.

Docker does not retry a failed Leave, DeleteEndpoint, ReleaseAddress or DeleteNetwork: it logs
the error and forgets the container, so an answer of "etcd is down" would leak the endpoint record
and its address for good (the most common complaint about the original plugin).  Instead the
plugin answers Docker with success, appends the call and its request to a local file, and a
background thread replays the calls, in the order they arrived, once etcd answers again (and at
start-up, for calls recorded before a restart).

The file is JSON lines ({"id", "host", "call", "request", "time"}), rewritten whole on every
change: written to a temporary file, fsync'd, renamed over the old one and the directory fsync'd,
so a crash leaves the old list or the new one, never half of one.  Several plugins may share the
directory (namespace hosts on one machine): a lock file serialises the rewrites and each plugin
replays only its own host's entries.

Replaying is the same handler with the same request, which is idempotent for all four calls.  One
extra check guards ReleaseAddress: by the time it is replayed the address may have been freed by
other means (start-up reconciliation) and handed to a new container, so it is released only if
it is still held under one of this host's plugin handles and no endpoint of this host holds it;
an address the plugin assigns meanwhile drops any pending release of it.
"""

import fcntl
import ipaddress
import json
import logging
import os
import threading
import time
import uuid

from calicoctl.errors import CalicoError, DatastoreError

log = logging.getLogger(__name__)

DEFAULT_PATH = "/var/lib/calico/pending-releases.jsonl"
# Calls whose loss would leak state in etcd; everything else fails back to Docker as before.
DEFERRABLE = ("NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint",
              "IpamDriver.ReleaseAddress", "NetworkDriver.DeleteNetwork")
# How often the background thread retries while entries are pending.  A retry against a dead
# etcd costs one refused connection (or the store's few-second timeout), so a couple of seconds
# keeps the lag after etcd's return short without busy-looping.
RETRY_INTERVAL = 2.0


class PendingReleases:
    def __init__(self, path, host, retry_interval=RETRY_INTERVAL):
        self.path = path
        self.host = host
        self.retry_interval = retry_interval
        self.appliers = {}          # call -> function(request), set by the composition root
        self._mutex = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self.applied = 0            # replayed successfully (for logs and tests)

    # -- recording ---------------------------------------------------------------------------

    def guard(self, call, handler):
        """handler, except that an unreachable etcd defers the call instead of failing it."""
        def guarded(request):
            try:
                return handler(request)
            except DatastoreError as exc:
                self.add(call, request)
                log.warning("%s deferred until etcd answers again (%s)", call, exc)
                return {}
        return guarded

    def add(self, call, request):
        entry = {"id": uuid.uuid4().hex, "host": self.host, "call": call, "request": request,
                 "time": time.time()}
        self._rewrite(lambda entries: entries + [entry])
        self._wake.set()

    def forget_address(self, ip):
        """The allocator just gave ip out again: any release of it still pending is stale."""
        def drop(entries):
            return [e for e in entries if not (
                e.get("host") == self.host and e.get("call") == "IpamDriver.ReleaseAddress"
                and _address_of(e.get("request")) == ip)]
        if self.entries():
            self._rewrite(drop)

    def entries(self):
        """This host's pending entries, oldest first."""
        return [e for e in self._read() if e.get("host") == self.host]

    # -- replaying ---------------------------------------------------------------------------

    def apply(self):
        """Replay this host's entries in order; stop at the first that etcd still cannot take.
        Returns how many remain."""
        done = set()
        for entry in self.entries():
            applier = self.appliers.get(entry.get("call"))
            try:
                if applier is None:
                    raise CalicoError("no handler for %r" % entry.get("call"))
                applier(entry["request"])
            except DatastoreError:
                break
            except Exception as exc:  # noqa: BLE001 - one bad entry must not block the rest
                log.warning("Dropping deferred %s %s: %s", entry.get("call"),
                            json.dumps(entry.get("request")), exc)
            else:
                self.applied += 1
                log.warning("Applied deferred %s %s", entry["call"], json.dumps(entry["request"]))
            done.add(entry["id"])
        if done:
            self._rewrite(lambda entries: [e for e in entries if e.get("id") not in done])
        return len(self.entries())

    def start(self):
        self._thread = threading.Thread(target=self._run, name="pending-releases", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._wake.set()

    def _run(self):
        while not self._stop.is_set():
            try:
                remaining = self.apply() if self.entries() else 0
            except Exception:  # noqa: BLE001 - e.g. the disk: keep the thread, try again
                log.exception("Replaying deferred calls failed")
                remaining = 1
            self._wake.clear()
            self._wake.wait(self.retry_interval if remaining else None)

    # -- the file ----------------------------------------------------------------------------

    def _read(self):
        try:
            with open(self.path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                log.warning("Skipping a malformed line in %s: %r", self.path, line[:200])
                continue
            if isinstance(entry, dict) and "id" in entry:
                entries.append(entry)
        return entries

    def _rewrite(self, change):
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        with self._mutex, open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)   # other plugins sharing the directory
            entries = change(self._read())
            tmp = "%s.%d.tmp" % (self.path, os.getpid())
            with open(tmp, "w") as f:
                f.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def _address_of(request):
    try:
        return ipaddress.ip_address(str((request or {}).get("Address", "")).split("/")[0])
    except ValueError:
        return None

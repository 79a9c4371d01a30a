"""Calico's view of etcd, whichever API etcd speaks: the one interface the rest of the code uses.

`EtcdStore` offers the few primitives everything else is built from: read, create-if-absent,
compare-and-swap, delete, read-modify-write with retries, watch, and (v3 only) an atomic group of
writes.  Underneath is one of two backends, chosen on first use (api.py): store_v2.py (python-etcd,
etcd's v2 keys API) or store_v3.py (etcd3gw, etcd's v3 JSON gateway).  Both return `result.Node`s,
raise `result.HistoryLost` when a watch fell behind, map their clients' exceptions onto the
library's hierarchy (a user sees one line naming the etcd endpoints, not a traceback), fail over
between members (failover.py), and never apply a retried conditional write twice.  The keys and the
JSON values are the same in both keyspaces.  Connection settings come from the environment
through `EtcdSettings.from_env`; nothing connects at import time, nor when a store is made.
"""

import json
import logging
import os
import threading
import urllib.parse
from dataclasses import dataclass, field

from calicoctl.datastore.cas import CONFLICT, retry_on_conflict
from calicoctl.datastore.failover import Endpoints
from calicoctl.errors import CalicoError

log = logging.getLogger(__name__)

DEFAULT_AUTHORITY = "127.0.0.1:2379"
# How long one etcd request may take before we call that endpoint unresponsive.  Commands must fail
# within a few seconds when etcd is down.
DEFAULT_TIMEOUT = 3.0
CAS_RETRIES = 20
APIS = ("2", "3")


@dataclass
class EtcdSettings:
    endpoints: list = field(default_factory=lambda: ["http://" + DEFAULT_AUTHORITY])
    ca_cert: str = None
    cert: str = None
    key: str = None
    username: str = None
    password: str = None
    api: str = None           # "2" or "3" forces that etcd API; None detects it (api.py)

    @classmethod
    def from_env(cls, environ=None):
        """Settings from ETCD_ENDPOINTS (comma-separated URLs) or ETCD_AUTHORITY (host:port, or
        several, comma-separated) with ETCD_SCHEME; TLS files; username and password; ETCD_API."""
        env = os.environ if environ is None else environ
        scheme = (env.get("ETCD_SCHEME") or "http").strip().lower()
        if scheme not in ("http", "https"):
            raise CalicoError("ETCD_SCHEME must be http or https, not %r." % scheme)
        if env.get("ETCD_ENDPOINTS", "").strip():
            endpoints = [e.strip() for e in env["ETCD_ENDPOINTS"].split(",") if e.strip()]
        else:
            authorities = (env.get("ETCD_AUTHORITY") or "").split(",")
            endpoints = ["%s://%s" % (scheme, a.strip()) for a in authorities if a.strip()]
            endpoints = endpoints or ["%s://%s" % (scheme, DEFAULT_AUTHORITY)]
        endpoints = [_check_endpoint(e) for e in endpoints]
        api = (env.get("ETCD_API") or "").strip().lower().removeprefix("v") or None
        if api is not None and api not in APIS:
            raise CalicoError("ETCD_API must be 2 or 3 (or unset to detect the API etcd serves), "
                              "not %r." % env["ETCD_API"])
        settings = cls(api=api, endpoints=endpoints,
                       ca_cert=env.get("ETCD_CA_CERT_FILE") or None,
                       cert=env.get("ETCD_CERT_FILE") or None,
                       key=env.get("ETCD_KEY_FILE") or None,
                       username=env.get("ETCD_USERNAME") or None,
                       password=env.get("ETCD_PASSWORD") or None)
        for var, path in (("ETCD_CA_CERT_FILE", settings.ca_cert),
                          ("ETCD_CERT_FILE", settings.cert), ("ETCD_KEY_FILE", settings.key)):
            if path and not os.path.isfile(path):
                raise CalicoError("etcd TLS file %s (%s) does not exist or is not a file." % (
                    path, var))
            if path and not os.access(path, os.R_OK):
                raise CalicoError("etcd TLS file %s (%s) is not readable by this user." % (
                    path, var))
        if bool(settings.cert) != bool(settings.key):
            raise CalicoError("ETCD_CERT_FILE and ETCD_KEY_FILE must be given together.")
        if bool(settings.username) != bool(settings.password):
            # python-etcd would silently drop a lone username and send no credentials at all.
            raise CalicoError("ETCD_USERNAME and ETCD_PASSWORD must be given together.")
        if settings.uses_tls and not any(e.startswith("https:") for e in endpoints):
            log.warning("etcd TLS files are set but no endpoint uses https (%s); set ETCD_SCHEME="
                        "https or use https:// in ETCD_ENDPOINTS.", settings.describe())
        return settings

    @property
    def uses_tls(self):
        return bool(self.ca_cert or self.cert)

    def describe(self):
        return ",".join(self.endpoints)

    def to_env(self):
        """The environment that gives another process (e.g. a node container) these settings."""
        env = {"ETCD_ENDPOINTS": ",".join(self.endpoints)}
        if len(self.endpoints) == 1:
            # Older consumers only read ETCD_AUTHORITY/ETCD_SCHEME; ETCD_ENDPOINTS wins for ours.
            parsed = urllib.parse.urlsplit(self.endpoints[0])
            env["ETCD_AUTHORITY"] = parsed.netloc
            env["ETCD_SCHEME"] = parsed.scheme
        for name, value in (("ETCD_CA_CERT_FILE", self.ca_cert), ("ETCD_CERT_FILE", self.cert),
                            ("ETCD_KEY_FILE", self.key), ("ETCD_USERNAME", self.username),
                            ("ETCD_PASSWORD", self.password), ("ETCD_API", self.api)):
            if value:
                env[name] = value
        return env


def _check_endpoint(endpoint):
    """endpoint as a normalised URL, or CalicoError saying what is wrong with it."""
    bad = CalicoError("etcd endpoint %r is not a URL like http://127.0.0.1:2379; fix "
                      "ETCD_ENDPOINTS or ETCD_AUTHORITY." % endpoint)
    try:
        parsed = urllib.parse.urlsplit(endpoint)
        port = parsed.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        raise bad from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise bad
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment or parsed.username:
        raise bad
    host = parsed.hostname
    if ":" in host:
        host = "[%s]" % host  # an IPv6 literal keeps its brackets in a URL
    return "%s://%s:%d" % (parsed.scheme, host, port or 2379)


class EtcdStore:
    """Calico's view of etcd.  Values are strings; JSON helpers decode/encode on the way.

    Making one does no I/O: the API is chosen (one probe per process, api.py) and the backend
    built on the first request.  One store may be shared by several threads (the agent watches
    while it writes).
    """

    def __init__(self, settings=None, timeout=DEFAULT_TIMEOUT):
        self.settings = settings or EtcdSettings.from_env()
        self.timeout = timeout
        self.endpoints = Endpoints(self.settings, timeout)
        self._backend = None
        self._api_reason = None
        self._lock = threading.Lock()

    # -- which API ------------------------------------------------------------------------------

    @property
    def backend(self):
        """The V2Backend or V3Backend this store speaks through (chosen on first use)."""
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    from calicoctl.datastore import api
                    chosen, self._api_reason = api.choose(self.settings, self.endpoints)
                    if chosen == "3":
                        from calicoctl.datastore.store_v3 import V3Backend as backend
                    else:
                        from calicoctl.datastore.store_v2 import V2Backend as backend
                    self._backend = backend(self.settings, self.timeout, self.endpoints)
        return self._backend

    @property
    def api(self):
        """"2" or "3": the etcd API this store speaks."""
        return self.backend.api

    def describe_api(self):
        """One line for users: which API, and why ("v3 (detected: ...)")."""
        return "etcd v%s API (%s)" % (self.api, self._api_reason)

    @property
    def atomic_writes(self):
        """Whether write_all can change several keys in one atomic step (v3 only)."""
        return self.backend.atomic_writes

    @property
    def _endpoint_index(self):
        """Index in settings.endpoints of the member in use (tests watch it move)."""
        return self.endpoints.index

    @_endpoint_index.setter
    def _endpoint_index(self, index):
        self.endpoints.index = index

    def connected_to(self, endpoint):
        """Whether a request has gone (or is going) to endpoint (tests wait for a watch)."""
        return self.backend.connected_to(endpoint)

    # -- primitives (the backend's) -------------------------------------------------------------

    def read(self, key, recursive=False, quorum=False):
        """A result.Node for key (a directory's with its leaves and children), or None."""
        return self.backend.read(key, recursive=recursive, quorum=quorum)

    def snapshot(self, key):
        """([(key, value) of every leaf below key], the store index they are consistent at),
        in one quorum read; ([], the current index) when nothing is below key. What an agent
        starts from: the cheapest full read, with no result object per key."""
        return self.backend.snapshot(key)

    def children(self, key, recursive=True, quorum=False):
        """All leaf (key, value, modified index) triples below key; [] if key is absent."""
        return self.backend.children(key, recursive=recursive, quorum=quorum)

    def list_dir(self, key, quorum=False):
        """Immediate children of a directory as (name, is_dir) pairs; [] if absent."""
        return self.backend.list_dir(key, quorum=quorum)

    def set(self, key, value, ttl=None):
        """Write key unconditionally (expiring after ttl seconds); its new modified index."""
        return self.backend.set(key, value, ttl=ttl)

    def write_if(self, key, value, prev_index=None, prev_exist=None):
        """A conditional write: only if key's modified index is prev_index, or (prev_exist=False)
        only if key is absent.  Returns the new modified index, or None if the condition failed.

        Safe to use across a failing member: if the first attempt landed before its member died,
        the retry's conflict is recognised as our own write, never reported as a lost race
        (which would make the caller apply its change a second time).
        """
        if prev_index is None and prev_exist is None:
            raise ValueError("write_if needs prev_index or prev_exist")
        return self.backend.write_if(key, value, prev_index=prev_index, prev_exist=prev_exist)

    def write_all(self, writes):
        """Apply result.Write items atomically: all, if every condition holds, or none.  The new
        modified index of every written key, or None if a condition failed.  Only where
        atomic_writes is true (v3); as safe across a failing member as write_if."""
        return self.backend.write_all(list(writes))

    def delete(self, key, recursive=False, prev_index=None):
        """Delete key (or a directory, recursively).  True if something was deleted."""
        return self.backend.delete(key, recursive=recursive, prev_index=prev_index)

    def delete_empty_dirs(self, key, stop_at):
        """Remove key's directory and its parents up to (not including) stop_at while empty
        (v2; v3 has no directories to leave behind)."""
        return self.backend.delete_empty_dirs(key, stop_at)

    def watch(self, key, index, timeout):
        """The next change (a result.Node) at or after index at or below key, or None on
        timeout.  After an event, watch again from its modified_index + 1.

        A watch on a member that dies moves to the next member with the same index, so no event
        is missed.  result.HistoryLost reaches the caller: it must read everything again.
        """
        return self.backend.watch(key, index, timeout)

    def watching(self, key):
        """A context that watches key (and below) from now; it gives the index to continue from
        (`watch(key, index + 1, ...)`), taken before anything read inside it, so a change made
        after that read is seen.  Use it to wait for a key that may already be there: enter,
        read, then watch.  On v3 the watch is opened on entry (a watch opened after the change
        from an older revision is served up to 100 ms late; v3_watch.py) and closed on exit."""
        return self.backend.watching(key)

    def current_index(self):
        """etcd's store-wide index (v2 X-Etcd-Index, v3 revision), the point a snapshot is
        consistent at."""
        return self.backend.current_index()

    # -- built on the primitives ----------------------------------------------------------------

    def get(self, key, default=None, quorum=False):
        result = self.read(key, quorum=quorum)
        if result is None or result.is_dir:
            return default
        return result.value

    def get_json(self, key, default=None, quorum=False):
        value = self.get(key, quorum=quorum)
        return default if value is None else json.loads(value)

    def set_json(self, key, obj, ttl=None):
        return self.set(key, dump_json(obj), ttl=ttl)

    def create(self, key, value):
        """Create key only if absent.  True if we created it."""
        return self.write_if(key, value, prev_exist=False) is not None

    def set_if_absent(self, key, value):
        return self.create(key, value)

    def cas(self, key, value, prev_index):
        """Write key only if its modified index is still prev_index.  True on success."""
        return self.write_if(key, value, prev_index=prev_index) is not None

    def update(self, key, mutate, retries=CAS_RETRIES):
        """Read-modify-write one key with compare-and-swap, retried on conflict.

        mutate(old_value_or_None) returns the new string value, or None to leave the key alone.
        Returns the value written (or None).  Two operators editing the same key never lose an
        update: the loser re-reads and re-applies its change.
        """
        # Retried at once, as this loop always was; whether contended keys here would gain from
        # the IPAM back-off (datastore/cas.py) has not been measured.
        @retry_on_conflict(retries, "updating %s" % key, backoff=False)
        def update_once():
            result = self.read(key, quorum=True)
            old = None if result is None or result.is_dir else result.value
            new = mutate(old)
            if new is None or new == old:
                return new
            if result is None:
                written = self.create(key, new)
            else:
                written = self.cas(key, new, result.modified_index)
            return new if written else CONFLICT

        return update_once()


def dump_json(obj):
    # Compact and key-ordered so equal objects store equal strings (CAS compares cheaply).
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)

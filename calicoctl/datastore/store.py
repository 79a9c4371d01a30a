"""A thin wrapper over python-etcd (v2 API) that speaks in Calico's terms.

It maps python-etcd's many exceptions onto the library's hierarchy (so a user sees one line naming
the etcd endpoints, not a traceback), and offers the few primitives everything else is built from:
read, create-if-absent, compare-and-swap, delete, read-modify-write with retries, and watch.
Connection settings come from the environment through `EtcdSettings.from_env`; nothing connects at
import time.

Several endpoints (an etcd cluster): every request goes to the endpoint that last worked; when it
fails with a connection problem or a transient cluster error (leader election, raft timeout) the
request moves on to the next member, with one log line.  python-etcd's own reconnect logic is not
used: it needs the cluster's advertised member list, and retries writes blindly.  A conditional
write (create, compare-and-swap, compare-and-delete) that failed on a dying member may still have
been applied; when the retry then reports a conflict we look at the key's history to tell "our
write landed" from "someone else's did" (see `_landed`), so no update is lost or applied twice.
"""

import json
import logging
import os
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

from calicoctl.datastore.etcd_errors import classify, quiet_python_etcd, tls_hint
from calicoctl.errors import CalicoError, ConflictError, DatastoreError

log = logging.getLogger(__name__)

DEFAULT_AUTHORITY = "127.0.0.1:2379"
# How long one etcd request may take before we call that endpoint unresponsive.  Commands must fail
# within a few seconds when etcd is down (issue: foundation).
DEFAULT_TIMEOUT = 3.0
# Connecting is the quick part: a member that does not accept a TCP connection in a second is
# down or unreachable, and waiting longer per endpoint would multiply by the number of endpoints.
CONNECT_TIMEOUT = 1.0
# Total time one operation may spend across endpoints, as a multiple of the per-request timeout:
# enough for a killed leader to be replaced (raft election plus one retry) but still "a few
# seconds" for a user whose whole cluster is down.
TOTAL_TIMEOUT_FACTOR = 2
CAS_RETRIES = 20
# Pause between passes over the endpoint list while the cluster answers but is not ready (no
# leader yet); doubled per pass up to the cap.
RETRY_PAUSE = 0.05
RETRY_PAUSE_MAX = 0.5


@dataclass
class EtcdSettings:
    endpoints: list = field(default_factory=lambda: ["http://" + DEFAULT_AUTHORITY])
    ca_cert: str = None
    cert: str = None
    key: str = None
    username: str = None
    password: str = None

    @classmethod
    def from_env(cls, environ=None):
        """Settings from ETCD_ENDPOINTS (comma-separated URLs) or ETCD_AUTHORITY (host:port, or
        several, comma-separated) with ETCD_SCHEME; TLS files; username and password."""
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
        settings = cls(endpoints=endpoints,
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
                            ("ETCD_PASSWORD", self.password)):
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

    One store may be shared by several threads (the agent watches while it writes).
    """

    def __init__(self, settings=None, timeout=DEFAULT_TIMEOUT):
        self.settings = settings or EtcdSettings.from_env()
        self.timeout = timeout
        self._clients = {}
        self._endpoint_index = 0
        self._lock = threading.Lock()

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

    @property
    def client(self):
        """The python-etcd client of the endpoint in use (for the odd call we do not wrap)."""
        return self._client_for(self.settings.endpoints[self._endpoint_index])

    def _rotation(self):
        """Endpoint indexes to try, starting with the one that last worked."""
        n = len(self.settings.endpoints)
        first = self._endpoint_index
        return [(first + i) % n for i in range(n)]

    def _auth_message(self, endpoint, reason):
        if not self.settings.username:
            return ("etcd at %s requires a user name and password (%s); set ETCD_USERNAME and "
                    "ETCD_PASSWORD." % (endpoint, reason))
        return ("etcd at %s refused user %s (%s): check ETCD_USERNAME and ETCD_PASSWORD, and "
                "that the user's roles may read and write /calico." % (
                    endpoint, self.settings.username, reason))

    def _use(self, index):
        self._endpoint_index = index

    @staticmethod
    def _report_failover(problems, endpoint):
        """The one log line a user sees when a member fails and another takes over."""
        failed = ["%s (%s)" % (e, r) for e, r in problems.items() if e != endpoint]
        if failed:
            log.warning("etcd %s failed; continuing with %s.", ", ".join(failed), endpoint)

    def _call(self, op, *args, budget=None, **kwargs):
        """Run one python-etcd call, failing over between endpoints and mapping errors.

        etcd's answers (key not found, compare failed, ...) are raised as python-etcd exceptions
        for the primitives below to interpret; such an exception carries `calico_retried = True`
        when an earlier attempt of the same call failed after it may have reached etcd.
        Everything else becomes a one-line DatastoreError.
        """
        import etcd
        endpoints = self.settings.endpoints
        deadline = time.monotonic() + (budget or self.timeout * TOTAL_TIMEOUT_FACTOR)
        retried = False
        pause = RETRY_PAUSE
        problems = {}
        while True:
            kinds = set()
            for index in self._rotation():
                endpoint = endpoints[index]
                try:
                    result = getattr(self._client_for(endpoint), op)(*args, **kwargs)
                except (etcd.EtcdKeyError, etcd.EtcdCompareFailed, etcd.EtcdDirNotEmpty,
                        etcd.EtcdEventIndexCleared) as exc:
                    self._use(index)  # an answer from etcd: this endpoint works
                    exc.calico_retried = retried
                    self._report_failover(problems, endpoint)
                    raise
                except etcd.EtcdWatchTimedOut as exc:
                    exc.calico_retried = retried
                    raise
                except etcd.EtcdException as exc:
                    kind, reason = classify(exc)
                    if kind == "fatal":
                        raise DatastoreError("etcd at %s refused the request: %s" % (
                            endpoint, reason)) from None
                    if kind == "auth":
                        raise DatastoreError(self._auth_message(endpoint, reason)) from None
                    if kind == "transient" and problems.get(endpoint) == reason and any(
                            s in reason for s in ("without response", "reset by peer")):
                        # A dying member drops a connection once; one that does it on every
                        # pass is no etcd we can talk to (e.g. a TLS port spoken to in HTTP).
                        kind = "unreachable"
                    kinds.add(kind)
                    # Said once, when another member answers (or in the final error).
                    log.debug("etcd endpoint %s failed (%s); trying the next one.",
                              endpoint, reason)
                    problems[endpoint] = reason
                    # Unreachable means the request never left; anything else may have landed.
                    retried = retried or kind != "unreachable"
                    if time.monotonic() >= deadline:
                        break
                    continue
                self._use(index)
                self._report_failover(problems, endpoint)
                return result
            detail = "; ".join("%s: %s" % (e, problems[e]) for e in endpoints if e in problems)
            if kinds == {"tls"}:
                raise DatastoreError("TLS with etcd failed: %s (%s)." % (
                    tls_hint(self.settings, detail), detail))
            if kinds <= {"unreachable", "tls"} or time.monotonic() >= deadline:
                hint = ""
                if "without response" in detail and any(
                        e.startswith("http:") for e in endpoints):
                    # What etcd's TLS listener does to a plain-HTTP request.
                    hint = " If etcd serves https, use https:// endpoints or ETCD_SCHEME=https."
                raise DatastoreError(
                    "Cannot reach etcd at %s (%s). Start etcd or point ETCD_ENDPOINTS / "
                    "ETCD_AUTHORITY at a running member.%s" % (
                        self.settings.describe(), detail, hint))
            # Members answer but the cluster is not ready (electing a leader): pass again soon.
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, RETRY_PAUSE_MAX)

    # -- primitives ---------------------------------------------------------------------------

    def read(self, key, recursive=False, quorum=False, **kwargs):
        """The etcd result for key, or None if absent."""
        import etcd
        try:
            return self._call("read", key, recursive=recursive, quorum=quorum, **kwargs)
        except etcd.EtcdKeyNotFound:
            return None

    def get(self, key, default=None, quorum=False):
        result = self.read(key, quorum=quorum)
        if result is None or result.dir:
            return default
        return result.value

    def get_json(self, key, default=None, quorum=False):
        value = self.get(key, quorum=quorum)
        return default if value is None else json.loads(value)

    def children(self, key, recursive=True, quorum=False):
        """All leaf (key, value, modifiedIndex) triples below key; [] if key is absent."""
        result = self.read(key, recursive=recursive, quorum=quorum)
        if result is None:
            return []
        return [(n.key, n.value, n.modifiedIndex) for n in result.leaves
                if not n.dir and n.key != key]

    def list_dir(self, key, quorum=False):
        """Immediate children of a directory as (name, is_dir) pairs; [] if absent."""
        result = self.read(key, quorum=quorum)
        if result is None or not result.dir:
            return []
        # python-etcd exposes a directory's immediate children only through _children.
        return [(c["key"].rsplit("/", 1)[1], bool(c.get("dir"))) for c in result._children]

    def set(self, key, value, ttl=None):
        return self._call("write", key, value, ttl=ttl)

    def set_json(self, key, obj, ttl=None):
        return self.set(key, dump_json(obj), ttl=ttl)

    def create(self, key, value):
        """Create key only if absent.  True if we created it."""
        return self.write_if(key, value, prev_exist=False) is not None

    def write_if(self, key, value, prev_index=None, prev_exist=None):
        """A conditional write: only if key's modifiedIndex is prev_index, or (prev_exist=False)
        only if key is absent.  Returns the new modifiedIndex, or None if the condition failed.

        Safe to use across a failing member: if the first attempt landed before its member died,
        the retry's conflict is recognised as our own write (see _landed), never reported as a
        lost race (which would make the caller apply its change a second time).
        """
        import etcd
        conditions = {}
        if prev_index is not None:
            conditions["prevIndex"] = prev_index
        if prev_exist is not None:
            conditions["prevExist"] = prev_exist
        if not conditions:
            raise ValueError("write_if needs prev_index or prev_exist")
        try:
            return self._call("write", key, value, **conditions).modifiedIndex
        except (etcd.EtcdAlreadyExist, etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound) as exc:
            if not exc.calico_retried:
                return None
            if prev_index is not None:
                return self._landed(key, value, prev_index=prev_index)
            return self._landed(key, value, created=True)

    def set_if_absent(self, key, value):
        return self.create(key, value)

    def cas(self, key, value, prev_index):
        """Write key only if its modifiedIndex is still prev_index.  True on success."""
        return self.write_if(key, value, prev_index=prev_index) is not None

    def delete(self, key, recursive=False, prev_index=None):
        """Delete key (or a directory, recursively).  True if something was deleted."""
        import etcd
        kwargs = {}
        if recursive:
            kwargs.update(recursive=True, dir=True)
        if prev_index is not None:
            kwargs["prevIndex"] = prev_index
        try:
            self._call("delete", key, **kwargs)
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
        """Remove key's directory and its parents up to (not including) stop_at while empty."""
        import etcd
        while key.startswith(stop_at + "/"):
            try:
                self._call("delete", key, dir=True)
            except (etcd.EtcdKeyNotFound, etcd.EtcdDirNotEmpty, etcd.EtcdNotDir):
                return
            except DatastoreError:
                return
            key = key.rsplit("/", 1)[0]

    def update(self, key, mutate, retries=CAS_RETRIES):
        """Read-modify-write one key with compare-and-swap, retried on conflict.

        mutate(old_value_or_None) returns the new string value, or None to leave the key alone.
        Returns the value written (or None).  Two operators editing the same key never lose an
        update: the loser re-reads and re-applies its change.
        """
        for _ in range(retries):
            result = self.read(key, quorum=True)
            old = None if result is None else result.value
            new = mutate(old)
            if new is None or new == old:
                return new
            if result is None:
                if self.create(key, new):
                    return new
            elif self.cas(key, new, result.modifiedIndex):
                return new
        raise ConflictError("Gave up updating %s after %d conflicting writes; try again." % (
            key, retries))

    def watch(self, key, index, timeout):
        """Next change at or after index below key (recursive), or None on timeout.

        A watch on a member that dies moves to the next member with the same index, so no event
        is missed.  etcd.EtcdEventIndexCleared still reaches the caller: it must resync.
        """
        import etcd
        try:
            return self._call("read", key, recursive=True, wait=True, waitIndex=index,
                              timeout=self._timeouts(timeout),
                              budget=(timeout or 0) + self.timeout * TOTAL_TIMEOUT_FACTOR)
        except etcd.EtcdKeyNotFound:
            return None
        except etcd.EtcdWatchTimedOut:
            # A quiet watch looks exactly like a member that stopped answering.  Ask that member
            # something quick: if it is wedged, this moves us to another member before the
            # caller watches again.
            self.read(key)
            return None

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
                current = self.read(key, quorum=True)
                if current is None:
                    return None
                event = self._call("read", key, wait=True, waitIndex=current.createdIndex)
                if event.value == value and event.modifiedIndex == current.createdIndex:
                    return event.modifiedIndex
                return None
            event = self._call("read", key, wait=True, waitIndex=prev_index + 1)
        except etcd.EtcdEventIndexCleared:
            current = self.read(key, quorum=True)
            landed = (current is None) if value is None else (
                current is not None and current.value == value)
            log.warning("etcd history for %s is compacted; judged our retried write %s by the "
                        "current value.", key, "landed" if landed else "lost")
            if not landed:
                return None
            return current.modifiedIndex if current is not None else prev_index
        prev = getattr(event, "_prev_node", None)
        ours = (prev is not None and prev.modifiedIndex == prev_index and
                (event.action in ("compareAndDelete", "delete", "expire") if value is None
                 else event.value == value))
        if not ours:
            return None
        log.warning("etcd: our write to %s landed before its member failed; not repeating it.",
                    key)
        return event.modifiedIndex

    def current_index(self):
        """etcd's X-Etcd-Index, the point a snapshot is consistent at."""
        import etcd
        from calicoctl.datastore import keys
        # Any key carries the cluster-wide index; Calico's root is one an etcd user restricted
        # to /calico may read (the etcd root is not).
        try:
            return self._call("read", keys.ROOT, quorum=True).etcd_index
        except etcd.EtcdKeyNotFound as exc:
            payload = exc.payload if isinstance(exc.payload, dict) else {}
            return int(payload.get("index", 0))


def dump_json(obj):
    # Compact and key-ordered so equal objects store equal strings (CAS compares cheaply).
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)

"""A thin wrapper over python-etcd (v2 API) that speaks in Calico's terms.

It maps python-etcd's many exceptions onto the library's hierarchy (so a user sees one line naming
the etcd address, not a traceback), and offers the few primitives everything else is built from:
read, create-if-absent, compare-and-swap, delete, read-modify-write with retries, and watch.
Connection settings come from the environment through `EtcdSettings.from_env`; nothing connects at
import time.
"""

import json
import logging
import os
import urllib.parse
from dataclasses import dataclass, field

from calicoctl.errors import CalicoError, ConflictError, DatastoreError

log = logging.getLogger(__name__)

DEFAULT_AUTHORITY = "127.0.0.1:2379"
# How long one etcd request may take before we call etcd unreachable.  Commands must fail within
# a few seconds when etcd is down (issue: foundation).
DEFAULT_TIMEOUT = 3.0
CAS_RETRIES = 20


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
        env = os.environ if environ is None else environ
        scheme = env.get("ETCD_SCHEME", "http")
        if scheme not in ("http", "https"):
            raise CalicoError("ETCD_SCHEME must be http or https, not %r." % scheme)
        if env.get("ETCD_ENDPOINTS"):
            endpoints = [e.strip() for e in env["ETCD_ENDPOINTS"].split(",") if e.strip()]
        else:
            endpoints = ["%s://%s" % (scheme, env.get("ETCD_AUTHORITY") or DEFAULT_AUTHORITY)]
        for e in endpoints:
            parsed = urllib.parse.urlsplit(e)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise CalicoError(
                    "etcd endpoint %r is not a URL like http://127.0.0.1:2379; "
                    "fix ETCD_ENDPOINTS or ETCD_AUTHORITY." % e)
        settings = cls(endpoints=endpoints,
                       ca_cert=env.get("ETCD_CA_CERT_FILE") or None,
                       cert=env.get("ETCD_CERT_FILE") or None,
                       key=env.get("ETCD_KEY_FILE") or None,
                       username=env.get("ETCD_USERNAME") or None,
                       password=env.get("ETCD_PASSWORD") or None)
        for path in (settings.ca_cert, settings.cert, settings.key):
            if path and not os.path.isfile(path):
                raise CalicoError("etcd TLS file %s does not exist; check ETCD_CA_CERT_FILE, "
                                  "ETCD_CERT_FILE and ETCD_KEY_FILE." % path)
        if bool(settings.cert) != bool(settings.key):
            raise CalicoError("ETCD_CERT_FILE and ETCD_KEY_FILE must be given together.")
        return settings

    def describe(self):
        return ",".join(self.endpoints)

    def to_env(self):
        """The environment that gives another process (e.g. a node container) these settings."""
        env = {"ETCD_ENDPOINTS": ",".join(self.endpoints)}
        for name, value in (("ETCD_CA_CERT_FILE", self.ca_cert), ("ETCD_CERT_FILE", self.cert),
                            ("ETCD_KEY_FILE", self.key), ("ETCD_USERNAME", self.username),
                            ("ETCD_PASSWORD", self.password)):
            if value:
                env[name] = value
        return env


class EtcdStore:
    """Calico's view of etcd.  Values are strings; JSON helpers decode/encode on the way."""

    def __init__(self, settings=None, timeout=DEFAULT_TIMEOUT):
        self.settings = settings or EtcdSettings.from_env()
        self.timeout = timeout
        self._client = None
        self._endpoint_index = 0

    # -- connection ---------------------------------------------------------------------------

    def _make_client(self, endpoint):
        import etcd  # deferred: python-etcd costs tens of ms to import.
        parsed = urllib.parse.urlsplit(endpoint)
        kwargs = dict(host=parsed.hostname, port=parsed.port or 2379, protocol=parsed.scheme,
                      read_timeout=self.timeout, allow_reconnect=False)
        if self.settings.ca_cert:
            kwargs["ca_cert"] = self.settings.ca_cert
        if self.settings.cert:
            kwargs["cert"] = (self.settings.cert, self.settings.key)
        if self.settings.username:
            kwargs["username"] = self.settings.username
            kwargs["password"] = self.settings.password
        return etcd.Client(**kwargs)

    @property
    def client(self):
        if self._client is None:
            endpoint = self.settings.endpoints[self._endpoint_index]
            self._client = self._make_client(endpoint)
        return self._client

    def _failover(self):
        """Move to the next endpoint; False once every endpoint has been tried."""
        self._client = None
        self._endpoint_index = (self._endpoint_index + 1) % len(self.settings.endpoints)
        return True

    def _call(self, op, *args, **kwargs):
        """Run one python-etcd call, failing over between endpoints and mapping errors."""
        import etcd
        attempts = len(self.settings.endpoints)
        last = None
        for _ in range(attempts):
            try:
                return getattr(self.client, op)(*args, **kwargs)
            except (etcd.EtcdKeyNotFound, etcd.EtcdAlreadyExist, etcd.EtcdCompareFailed,
                    etcd.EtcdNotFile, etcd.EtcdNotDir, etcd.EtcdDirNotEmpty,
                    etcd.EtcdEventIndexCleared, etcd.EtcdWatchTimedOut):
                raise
            except etcd.EtcdException as exc:
                if not _is_connection_problem(exc):
                    raise DatastoreError("etcd at %s refused the request: %s" % (
                        self.settings.endpoints[self._endpoint_index], _one_line(exc)))
                last = exc
                log.warning("etcd endpoint %s failed (%s); trying the next one",
                            self.settings.endpoints[self._endpoint_index], _one_line(exc))
                self._failover()
            except (OSError, ValueError) as exc:  # TLS file problems surface here
                last = exc
                self._failover()
        raise DatastoreError(
            "Cannot reach etcd at %s (%s). Start etcd or point ETCD_ENDPOINTS / ETCD_AUTHORITY "
            "at it." % (self.settings.describe(), _one_line(last)))

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
        import etcd
        try:
            self._call("write", key, value, prevExist=False)
            return True
        except etcd.EtcdAlreadyExist:
            return False

    def set_if_absent(self, key, value):
        return self.create(key, value)

    def cas(self, key, value, prev_index):
        """Write key only if its modifiedIndex is still prev_index.  True on success."""
        import etcd
        try:
            self._call("write", key, value, prevIndex=prev_index)
            return True
        except (etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound):
            return False

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
        except (etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed):
            return False
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
        """Next change at or after index below key (recursive), or None on timeout."""
        import etcd
        try:
            return self._call("read", key, recursive=True, wait=True, waitIndex=index,
                              timeout=timeout)
        except (etcd.EtcdWatchTimedOut, etcd.EtcdKeyNotFound):
            return None
        except DatastoreError as exc:
            if "timed out" in str(exc).lower() or "Read timed out" in str(exc):
                return None
            raise

    def current_index(self):
        """etcd's X-Etcd-Index, the point a snapshot is consistent at."""
        result = self.read("/", quorum=True)
        return result.etcd_index if result is not None else 0


def dump_json(obj):
    # Compact and key-ordered so equal objects store equal strings (CAS compares cheaply).
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def _is_connection_problem(exc):
    import etcd
    if isinstance(exc, etcd.EtcdConnectionFailed):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("connection", "timed out", "timeout", "ssl", "certificate",
                                   "max retries", "refused", "unreachable"))


def _one_line(exc):
    text = str(exc).strip().splitlines()
    return text[-1] if text else exc.__class__.__name__

"""The store's v3 backend: etcd's v3 API through its JSON gateway, with etcd3gw.

etcd 3.4 and 3.5 serve the v2 API only when asked, 3.6 not at all; v3 is what every etcd
serves.  The gateway (POST /v3/kv/range, /kv/txn, /watch, ...) speaks JSON over plain HTTP, so
etcd3gw needs no gRPC or protobuf.  How v2's notions map onto v3:

- directories: there are none.  A key's "directory" is every key below key + "/": reading,
  listing and deleting one are prefix ranges; an empty directory cannot exist, so
  delete_empty_dirs has nothing to do.
- indexes: a key's mod_revision and create_revision play modifiedIndex and createdIndex; the
  response header's revision is the store-wide index.  Every condition compares on these.
- TTL: a lease of that many seconds, attached to the key.
- transactions: every conditional write is a txn (compare, then put or delete), and write_all
  puts several keys in one txn: what IPAM uses so a block and its handle change together.
- users: etcd v3 auth hands out a token (POST /v3/auth/authenticate) that is then sent as the
  Authorization header; tokens belong to the member that issued them and expire, so each
  member's client has its own and asks again when etcd calls it invalid.

Like the v2 backend it fails over between members (failover.Endpoints), and a conditional write
retried after a member failed is checked against the key's history before it is reported as a
conflict (`_landed`), so nothing is applied twice.  Watching is in v3_watch.py.
"""

import base64
import contextlib
import json
import logging
import threading
import urllib.parse

from calicoctl.datastore.etcd_errors import (GRPC_OUT_OF_RANGE, GRPC_UNAUTHENTICATED,
                                             classify_v3, gateway_error)
from calicoctl.datastore.failover import CONNECT_TIMEOUT
from calicoctl.datastore.result import Node

log = logging.getLogger("calicoctl.datastore.store")

# The gateway path of etcd 3.4 and later (3.3 called it /v3beta; it served v2 by default).
API_PATH = "/v3/"


class Compacted(Exception):
    """etcd's answer to a read at a revision it no longer keeps."""


def b64(text):
    return base64.b64encode(text.encode()).decode()


def unb64(text):
    return base64.b64decode(text).decode() if text else ""


def prefix_end(prefix):
    """The range end that makes [prefix, end) every key starting with prefix."""
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode()


def kv_node(kv, revision):
    return Node(key=unb64(kv["key"]), value=unb64(kv.get("value")),
                modified_index=int(kv.get("mod_revision", 0)),
                created_index=int(kv.get("create_revision", 0)), store_index=revision)


def revision_of(answer):
    return int(answer.get("header", {}).get("revision", 0))


def put_op(key, value, lease=None):
    op = {"key": b64(key), "value": b64(value)}
    if lease:
        op["lease"] = lease
    return {"request_put": op}


def delete_op(key, prefix=False):
    op = {"key": b64(key)}
    if prefix:
        op["range_end"] = prefix_end(key)
    return {"request_delete_range": op}


def range_op(key, prefix=False, **options):
    op = {"key": b64(key)}
    if prefix:
        op["range_end"] = prefix_end(key)
    op.update(options)
    return {"request_range": op}


def compare_mod(key, index):
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": index}


def compare_absent(key):
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}


class V3Backend:
    """The primitives of EtcdStore over etcd's v3 API.  Safe to share between threads."""

    api = "3"
    atomic_writes = True

    def __init__(self, settings, timeout, endpoints):
        self.settings = settings
        self.timeout = timeout
        self.endpoints = endpoints
        self._clients = {}
        self._lock = threading.Lock()
        self._pool = None           # urllib3, for every request but the watch's stream
        from calicoctl.datastore.v3_watch import Watcher   # it builds on this module
        self.watcher = Watcher(self)

    # -- connection ---------------------------------------------------------------------------

    def client_for(self, endpoint):
        with self._lock:
            client = self._clients.get(endpoint)
            if client is None:
                client = self._clients[endpoint] = self._make_client(endpoint)
            return client

    def _make_client(self, endpoint):
        import etcd3gw  # deferred: etcd3gw (requests) costs tens of ms to import.
        parsed = urllib.parse.urlsplit(endpoint)
        # The API path is given, not discovered: discovery costs a GET /version per member.
        client = etcd3gw.Etcd3Client(
            host=parsed.hostname, port=parsed.port or 2379, protocol=parsed.scheme,
            ca_cert=self.settings.ca_cert, cert_cert=self.settings.cert,
            cert_key=self.settings.key, timeout=self.timeouts(self.timeout), api_path=API_PATH)
        # Not the environment's proxies or CA bundle (REQUESTS_CA_BUNDLE would replace
        # ETCD_CA_CERT_FILE): the settings alone, as python-etcd does for v2.  requests retries
        # nothing by default (a re-sent txn could apply twice); that stays so.
        client.session.trust_env = False
        client.authenticated = False
        return client

    def _requests_pool(self):
        with self._lock:
            if self._pool is None:
                self._pool = _unary_pool(self.settings, self.timeout)
            return self._pool

    def _unary(self, client, path, payload):
        """One request and its JSON answer, raising what etcd3gw's post raises.  Straight
        through urllib3 rather than requests' session: every plugin call and agent write
        comes here, and requests' layers cost about as much as etcd's own answer."""
        import etcd3gw.exceptions as e3
        import urllib3
        headers = {"Content-Type": "application/json"}
        token = client.session.headers.get("Authorization")
        if token:
            headers["Authorization"] = token
        try:
            resp = self._requests_pool().urlopen(
                "POST", client.get_url(path), body=json.dumps(payload).encode(),
                headers=headers, retries=False, redirect=False)
        except urllib3.exceptions.TimeoutError as exc:
            # Raised while handling exc, so classify_v3 sorts it by exc (its __context__).
            raise e3.ConnectionTimeoutError(str(exc))
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise e3.ConnectionFailedError(str(exc))
        if resp.status != 200:
            text = resp.data.decode(errors="replace")
            raise _status_error(resp.status)(text, resp.reason)
        return json.loads(resp.data)

    @staticmethod
    def timeouts(read):
        """requests' (connect, read) timeouts; read None waits for ever."""
        connect = CONNECT_TIMEOUT if not read else min(CONNECT_TIMEOUT, read)
        return (connect, read or None)

    def connected_to(self, endpoint):
        """Whether a request has gone (or is going) to endpoint."""
        return endpoint in self._clients

    def authenticate(self, client, again=False):
        """Give client a token for its member when users are configured (once, or again when
        etcd called the last one invalid: tokens expire and belong to one member)."""
        if not self.settings.username or (client.authenticated and not again):
            return
        client.session.headers.pop("Authorization", None)
        try:
            answer = client.post(client.get_url("/auth/authenticate"), json={
                "name": self.settings.username, "password": self.settings.password})
        except Exception as exc:  # noqa: BLE001 - sorted by gateway_error, else re-raised
            error = gateway_error(exc)
            if error is None or "authentication is not enabled" not in error[1]:
                raise
            # The cluster has no users: send requests without a token, as v2 would.
            client.authenticated = True
            return
        client.session.headers["Authorization"] = answer["token"]
        client.authenticated = True

    def post(self, path, payload, budget=None, on_answer=None):
        """One gateway request through the failover loop; etcd's JSON answer.

        on_answer(answer, retried) may turn the answer into the result (it runs inside the
        failover attempt, so it knows whether an earlier attempt may have landed).
        """
        def attempt(endpoint, retried):
            client = self.client_for(endpoint)
            self.authenticate(client)
            try:
                answer = self._unary(client, path, payload)
            except Exception as exc:  # noqa: BLE001 - sorted below, else re-raised
                error = gateway_error(exc)
                if error is not None and error[0] == GRPC_UNAUTHENTICATED and \
                        self.settings.username:
                    self.authenticate(client, again=True)
                    answer = self._unary(client, path, payload)
                elif error is not None and error[0] == GRPC_OUT_OF_RANGE and \
                        "compacted" in error[1]:
                    raise Compacted(error[1]) from None
                else:
                    raise
            return answer if on_answer is None else on_answer(answer, retried)
        return self.endpoints.run(attempt, classify_v3, answers=(Compacted,), budget=budget)

    def txn(self, compare, success, failure=(), on_answer=None):
        return self.post("/kv/txn", {"compare": list(compare), "success": list(success),
                                     "failure": list(failure)}, on_answer=on_answer)

    def range(self, key, prefix=False, **options):
        """(kvs, header revision) of key, or of every key below it when prefix."""
        payload = range_op(key, prefix, **options)["request_range"]
        answer = self.post("/kv/range", payload)
        return answer.get("kvs", []), revision_of(answer)

    # -- reads --------------------------------------------------------------------------------

    def read(self, key, recursive=False, quorum=False):
        # v3 reads are linearizable (quorum) unless asked otherwise: quorum needs no option.
        # One read-only txn gets the key and its "directory" at one revision.
        answer = self.txn([], [range_op(key), range_op(key + "/", prefix=True)])
        revision = revision_of(answer)
        exact, below = (r.get("response_range", {}).get("kvs", [])
                        for r in answer.get("responses", []))
        if exact:
            node = kv_node(exact[0], revision)
            lease = exact[0].get("lease")
            if lease and lease != "0":
                node.ttl = self._ttl(lease)
            return node
        if not below:
            return None
        node = Node(key=key, is_dir=True, store_index=revision)
        leaves = [kv_node(kv, revision) for kv in below]
        depth = key.count("/") + 1
        if recursive:
            node.leaves = leaves
        else:
            node.leaves = [n for n in leaves if n.key.count("/") == depth]
        node.children = _immediate(key, (n.key for n in leaves))
        return node

    def snapshot(self, key):
        kvs, revision = self.range(key + "/", prefix=True)
        return [(unb64(kv["key"]), unb64(kv.get("value"))) for kv in kvs], revision

    def _ttl(self, lease):
        answer = self.post("/lease/timetolive", {"ID": lease})
        ttl = int(answer.get("TTL", -1))
        return ttl if ttl >= 0 else None

    def children(self, key, recursive=True, quorum=False):
        kvs, _ = self.range(key + "/", prefix=True)
        found = [(unb64(kv["key"]), unb64(kv.get("value")), int(kv["mod_revision"]))
                 for kv in kvs]
        if not recursive:
            depth = key.count("/") + 1
            found = [f for f in found if f[0].count("/") == depth]
        return found

    def list_dir(self, key, quorum=False):
        kvs, _ = self.range(key + "/", prefix=True, keys_only=True)
        return _immediate(key, (unb64(kv["key"]) for kv in kvs))

    def count(self, prefix):
        """How many keys start with prefix (one cheap request whatever the number)."""
        answer = self.post("/kv/range", range_op(prefix, prefix=True, count_only=True)[
            "request_range"])
        return int(answer.get("count", 0))

    def current_index(self):
        from calicoctl.datastore import keys
        # A count of Calico's keys: answered with the revision, readable by an etcd user whose
        # role covers only the /calico prefix, and cheap however many keys there are.
        _, revision = self.range(keys.ROOT + "/", prefix=True, count_only=True)
        return revision

    # -- writes -------------------------------------------------------------------------------

    def set(self, key, value, ttl=None):
        lease = self.grant(ttl) if ttl else None
        return revision_of(self.post("/kv/put", put_op(key, value, lease)["request_put"]))

    def grant(self, ttl):
        """A new lease of ttl seconds (a lease granted twice by a retry just expires unused)."""
        return self.post("/lease/grant", {"TTL": int(ttl)})["ID"]

    def write_if(self, key, value, prev_index=None, prev_exist=None):
        if prev_index is not None:
            compare = compare_mod(key, prev_index)
        elif prev_exist:
            compare = dict(compare_absent(key), result="GREATER")
        else:
            compare = compare_absent(key)
        return self._conditional([compare], [put_op(key, value)],
                                 lambda: self._landed(key, value, prev_index,
                                                      created=prev_index is None))

    def write_all(self, writes):
        compare, success, leases = [], [], {}
        for w in writes:
            if w.prev_index is not None:
                compare.append(compare_mod(w.key, w.prev_index))
            elif w.absent:
                compare.append(compare_absent(w.key))
            if w.check_only:
                continue
            if w.ttl and w.ttl not in leases:
                leases[w.ttl] = self.grant(w.ttl)     # one lease per lifetime
            success.append(delete_op(w.key) if w.value is None else
                           put_op(w.key, w.value, leases.get(w.ttl)))
        # A txn applies whole or not at all: if its first conditional write landed, all did.
        first = next((w for w in writes if not w.check_only and
                      (w.prev_index is not None or w.absent)), None)
        if first is None:
            answer = self.txn(compare, success)
            return revision_of(answer) if not compare or answer.get("succeeded") else None
        return self._conditional(compare, success, lambda: self._landed(
            first.key, first.value, first.prev_index, created=first.prev_index is None))

    def _conditional(self, compare, success, landed):
        """Run a txn; its revision, or None if a condition failed (after checking, when the txn
        was retried, that the failure is not our own first attempt having landed)."""
        def outcome(answer, retried):
            if answer.get("succeeded"):
                return revision_of(answer)
            return landed if retried else None
        result = self.txn(compare, success, on_answer=outcome)
        return result() if callable(result) else result

    def delete(self, key, recursive=False, prev_index=None):
        if prev_index is not None:
            return self._conditional([compare_mod(key, prev_index)], [delete_op(key)],
                                     lambda: self._landed(key, None, prev_index)) is not None
        ops = [delete_op(key)] + ([delete_op(key + "/", prefix=True)] if recursive else [])

        def outcome(answer, retried):
            deleted = sum(int(r.get("response_delete_range", {}).get("deleted", 0))
                          for r in answer.get("responses", []))
            # Nothing left to delete after a retry: most likely our first attempt removed it.
            # Either way the caller's goal holds.
            return deleted > 0 or retried
        return self.txn([], ops, on_answer=outcome)

    def delete_empty_dirs(self, key, stop_at):
        """v3 has no directories, so deleting the last key below one leaves nothing behind."""

    # -- watching -----------------------------------------------------------------------------

    def watch(self, key, index, timeout):
        return self.watcher.watch(key, index, timeout)

    @contextlib.contextmanager
    def watching(self, key):
        try:
            yield self.watcher.begin(key)
        finally:
            self.watcher.end()

    def _landed(self, key, value, prev_index=None, created=False):
        """Did our own conditional write, retried after a failure, land before the retry?
        Its revision if so, else None.

        As in the v2 backend: the first change to key after prev_index (a compare on
        mod_revision) or the key's creation (a compare on absence) is looked up in etcd's
        history; if it is exactly ours, it was our first attempt.  value None means a delete.
        If the history is compacted, judge by the current value.
        """
        try:
            if created:
                kvs, _ = self.range(key)
                if not kvs:
                    return None
                born = int(kvs[0]["create_revision"])
                at_birth, _ = self.range(key, revision=born)
                if at_birth and unb64(at_birth[0].get("value")) == value:
                    return born
                return None
            event = self.watcher.first_change(key, prev_index + 1)
        except Compacted:
            kvs, _ = self.range(key)
            landed = (not kvs) if value is None else (
                bool(kvs) and unb64(kvs[0].get("value")) == value)
            log.warning("etcd history for %s is compacted; judged our retried write %s by the "
                        "current value.", key, "landed" if landed else "lost")
            if not landed:
                return None
            return int(kvs[0]["mod_revision"]) if kvs else prev_index
        ours = event is not None and (event.deleted if value is None else
                                      (not event.deleted and event.value == value))
        if not ours:
            return None
        log.warning("etcd: our write to %s landed before its member failed; not repeating it.",
                    key)
        return event.modified_index


def _unary_pool(settings, timeout):
    """urllib3 connections to every member, with the TLS files etcd3gw's session is given
    (the v2 probe's, api._pool), a few kept per member for the plugin's concurrent calls."""
    import urllib3
    from calicoctl.datastore.api import pool_options
    connect, read = V3Backend.timeouts(timeout)
    options = pool_options(settings)
    options["timeout"] = urllib3.Timeout(connect=connect, read=read)
    return urllib3.PoolManager(num_pools=max(1, len(settings.endpoints)), maxsize=8, **options)


def _status_error(status):
    """The exception etcd3gw's post raises for this HTTP status (its _EXCEPTIONS_BY_CODE), so
    classify_v3 reads ours the same."""
    import etcd3gw.exceptions as e3
    return {500: e3.InternalServerError, 503: e3.ConnectionFailedError,
            408: e3.ConnectionTimeoutError, 504: e3.ConnectionTimeoutError,
            412: e3.PreconditionFailedError}.get(status, e3.Etcd3Exception)


def _immediate(key, names):
    """(name, is_dir) of the immediate children of key among the keys below it."""
    found = {}
    start = len(key) + 1
    for name in names:
        head, sep, _ = name[start:].partition("/")
        found[head] = found.get(head, False) or bool(sep)
    return sorted(found.items())

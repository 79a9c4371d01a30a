"""Watching etcd's v3 keyspace through the JSON gateway, one change at a time.

EtcdStore.watch(key, index, timeout) answers the next change at or after index, the way v2's
`?wait=true&waitIndex=` does.  v3 watches are streams (POST /v3/watch answers one JSON message
per batch of events, for as long as the connection lasts), so each call opens a stream from
`index`, takes the first message that has events, and closes it.  A message may carry several
events, and one transaction makes several events with the same revision: the rest are kept
(per thread) and handed out by the next calls that continue from where the last event left off
(`modified_index + 1`), so none of a transaction's writes is skipped.

A stream that answered is kept open (one per thread) while the caller continues from where it
left off: etcd puts a watch that starts at a past revision in its "unsynced" group, which it
serves only every 100 ms, so a stream opened anew after events have happened costs up to that
long (about 70 ms measured); one kept open is in the synced group and gets each new event at
once.  A thread of the stream's own reads it into a queue, so a quiet timeout leaves it open
and the caller knows what has already arrived (an event's store_index is the newest revision
received, as v2's X-Etcd-Index is etcd's index when it answered: the agent applies what is
waiting as one batch).  Another key or position closes it, and so does a member quiet for
the store's timeout (it is asked something quick, and the next stream may go elsewhere).

A stream that breaks (its member died) is opened again on the next member from the same
position.  A start revision etcd has compacted away is `HistoryLost`: the caller reads
everything again.
"""

import collections
import json
import queue
import socket
import threading
import time

from calicoctl.datastore import store_v3 as v3
from calicoctl.datastore.etcd_errors import GRPC_UNAUTHENTICATED, classify_v3, is_read_timeout
from calicoctl.datastore.failover import TOTAL_TIMEOUT_FACTOR, QuietWatches
from calicoctl.datastore.result import HistoryLost, Node
from calicoctl.errors import DatastoreError


class _Pending:
    """Events already received for one watch, and the index the caller continues from."""

    def __init__(self, key, events):
        self.key = key
        self.events = collections.deque(events)
        self.cursor = None

    def pop(self):
        event = self.events.popleft()
        self.cursor = event.modified_index + 1
        return event


class _Connection:
    """One watch stream's HTTP connection and the socket it was opened on, on a requests
    session of its own.

    Closing a stream races with its reader thread, which is blocked reading it and tears the
    response down itself when it wakes.  When every stream came from the member's one session,
    the closer handed the connection back to that session's pool first, the next stream was
    given it, and the old reader's late teardown closed the next stream's socket: a second
    open, or no event until the timeout (the moving-to-another-key test in
    tests/unit/test_datastore_v3.py).  A session per stream leaves that connection nowhere to
    go; the socket is taken before any of the body is read, so close() always shuts down the
    one the reader waits on.  A new connection per stream costs little: a stream stays open
    while its caller follows it.
    """

    def __init__(self, session, response):
        self.session = session
        self.response = response
        connection = getattr(response.raw, "connection", None)
        self.socket = getattr(connection, "sock", None)

    def close(self):
        # Shut the socket down first: closing it alone does not wake a reader's recv.
        if self.socket is not None:
            try:
                self.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.response.close()
        self.session.close()

    def is_open(self):
        return not self.response.raw.closed


class _Stream:
    """An open watch stream, read by a thread of its own into a queue, and the revision its
    next events continue from.

    The caller waits on the queue, not on the socket: a quiet timeout never cuts a message in
    half, so the stream stays open across quiet watches, and what has already arrived is known
    (`latest_revision`) without reading."""

    _ENDED = object()

    def __init__(self, key, connection, messages):
        self.key = key
        self.connection = connection
        self.messages = messages
        self.cursor = None
        self.queue = queue.Queue()
        if connection.socket is not None:
            connection.socket.settimeout(None)   # the reader waits as long as the stream lasts
        threading.Thread(target=self._read, name="etcd-watch-reader", daemon=True).start()

    def _read(self):
        try:
            for message in self.messages:
                self.queue.put(message)
        except Exception as exc:  # noqa: BLE001 - handed to the watcher, which sorts it
            self.queue.put(exc)
            return
        self.queue.put(self._ENDED)

    def next_message(self, timeout):
        """The next message; None if none came within timeout (None: wait); raises what the
        reader met; _Stream._ENDED once etcd ended the stream."""
        try:
            item = self.queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, Exception):
            raise item
        return item

    def latest_revision(self):
        """The highest header revision among the messages already received and not yet taken
        (0 if none): what the caller has still to read."""
        with self.queue.mutex:
            waiting = list(self.queue.queue)
        return max((_revision(m) for m in waiting if isinstance(m, dict)), default=0)

    def close(self):
        self.connection.close()


class Watcher:
    def __init__(self, backend):
        self.backend = backend
        self._local = threading.local()
        self.quiet = QuietWatches(backend.timeout)

    def watch(self, key, index, timeout):
        pending = getattr(self._local, "pending", None)
        if pending is not None and pending.key == key and pending.cursor == index \
                and pending.events:
            return self._with_latest(pending.pop())
        self._local.pending = None
        started = time.monotonic()
        deadline = started + timeout if timeout else None
        events = self._continue(key, index, deadline)
        if events is None:
            events = self._next_events(key, index, deadline, below=True, keep=True)
        if not events:
            # A quiet watch looks exactly like a member that stopped answering: once it has been
            # quiet for long enough, ask that member something quick; if it is wedged, this
            # moves us to another member, and the next watch opens its stream there.
            if self.quiet.probe_due(started):
                self._drop()
                self.backend.range(key, count_only=True)
                self.quiet.heard()
            return None
        self.quiet.heard()
        pending = self._local.pending = _Pending(key, events)
        stream = getattr(self._local, "stream", None)
        if stream is not None:
            stream.cursor = events[-1].modified_index + 1
        return self._with_latest(pending.pop())

    def _with_latest(self, event):
        """The event, its store_index raised to the newest revision already received on this
        thread's stream: v2's X-Etcd-Index tells a caller that more changes are waiting
        (the agent then applies them as one batch); a v3 message's header only says when it
        was sent."""
        stream = getattr(self._local, "stream", None)
        if stream is not None:
            # Events still pending came in the event's own message: its store_index (that
            # message's header revision) already covers them.
            latest = stream.latest_revision()
            if latest > (event.store_index or 0):
                event.store_index = latest
        return event

    def _drop(self):
        stream = getattr(self._local, "stream", None)
        self._local.stream = None
        if stream is not None:
            stream.close()

    def _continue(self, key, index, deadline):
        """The next events from this thread's kept stream when the caller continues exactly
        where it left off; [] on a quiet timeout (the stream stays open); None when there is
        no stream to continue (the caller opens one)."""
        stream = getattr(self._local, "stream", None)
        if stream is None:
            return None
        if stream.key != key or stream.cursor != index:
            self._drop()
            return None
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                message = stream.next_message(remaining)
                if message is None:
                    return []
                if message is _Stream._ENDED:
                    self._drop()         # etcd ended the stream: open another
                    return None
                events = _message_events(message, key, index, below=True)
            except HistoryLost:
                self._drop()
                raise
            except Exception as exc:  # noqa: BLE001 - sorted below, else re-raised
                self._drop()
                if classify_v3(exc)[0] is None:
                    raise
                return None              # the member went away: open another
            if events:
                return events

    def begin(self, key):
        """Open this thread's stream on key (and below) from now, before the caller reads what
        it waits for; the revision it was created at (the caller continues from one past it).

        A stream that starts at etcd's current revision is in the synced group from the first
        event, so a change made while the caller reads is delivered at once; one opened after
        that change, from a past revision, waits for the unsynced round (module docstring)."""
        self.end()
        request = {"key": v3.b64(key), "range_end": v3.prefix_end(key)}
        read_timeout = self.backend.timeout
        connection, messages, revision = self.backend.endpoints.run(
            lambda endpoint, _: self._open(endpoint, request, read_timeout), classify_v3,
            budget=self.backend.timeout * TOTAL_TIMEOUT_FACTOR)
        if not revision:
            connection.close()
            raise DatastoreError("etcd opened a watch on %s without saying at which revision"
                                 % key)
        stream = self._local.stream = _Stream(key, connection, messages)
        stream.cursor = revision + 1
        return revision

    def end(self):
        """Close what this thread holds for a watch (its stream and any events not handed out)."""
        self._local.pending = None
        self._drop()

    def first_change(self, key, index):
        """The first change to exactly key at or after index (None if none comes within the
        store's timeout); store_v3.Compacted if etcd no longer has it."""
        try:
            events = self._next_events(key, index, time.monotonic() + self.backend.timeout,
                                       below=False)
        except HistoryLost as exc:
            raise v3.Compacted(str(exc)) from None
        return events[0] if events else None

    # -- one stream ---------------------------------------------------------------------------

    def _next_events(self, key, index, deadline, below, keep=False):
        """The events (Nodes) of the first message with any from a stream on key (and, with
        below, every key under key + "/") from revision index; [] if none came by deadline.
        keep: a stream that gave events stays open as this thread's (see _continue)."""
        request = {"key": v3.b64(key), "start_revision": index}
        if below:
            # Everything starting with key: "/calico" also matches "/calicoX", filtered below.
            request["range_end"] = v3.prefix_end(key)
        endpoints = self.backend.endpoints
        while True:
            remaining = None if deadline is None else max(0.01, deadline - time.monotonic())
            budget = (remaining or 0) + self.backend.timeout * TOTAL_TIMEOUT_FACTOR
            connection, messages, _ = endpoints.run(
                lambda endpoint, _: self._open(endpoint, request, remaining),
                classify_v3, budget=budget)
            try:
                for message in messages:
                    events = _message_events(message, key, index, below)
                    if events:
                        if keep:
                            self._local.stream = _Stream(key, connection, messages)
                            connection = None
                        return events
                return []        # etcd ended the stream: like a timeout, the caller asks again
            except HistoryLost:
                raise
            except Exception as exc:  # noqa: BLE001 - sorted below, else re-raised
                if classify_v3(exc)[0] is None:
                    raise
                if is_read_timeout(exc):
                    return []
                # The member went away mid-stream: take the watch to the next member.
                endpoints.index = (endpoints.index + 1) % len(endpoints.settings.endpoints)
                if deadline is not None and time.monotonic() >= deadline:
                    return []
            finally:
                if connection is not None:
                    connection.close()

    def _open(self, endpoint, request, read_timeout):
        """Open a watch stream on endpoint: (its _Connection, message iterator, the revision
        etcd created it at) once etcd has said the watch is created."""
        import etcd3gw.exceptions as e3
        backend = self.backend
        client = backend.client_for(endpoint)
        backend.authenticate(client)
        for again in (False, True):
            connection = self._post(client, request, read_timeout)
            try:
                response = connection.response
                if response.status_code != 200:
                    raise e3.Etcd3Exception(response.text, response.reason)
                messages = _Messages(response)
                first = next(messages, None) or {}
                error = first.get("error")
            except BaseException:
                connection.close()
                raise
            if not error:
                break
            connection.close()
            if again or error.get("code") != GRPC_UNAUTHENTICATED or \
                    not backend.settings.username:
                raise e3.Etcd3Exception(json.dumps(error), "watch refused")
            backend.authenticate(client, again=True)   # the member forgot our token
        result = first.get("result", {})
        if not result.get("created"):
            messages.push(first)    # not the usual first message: read it as any other
        return connection, messages, int(result.get("header", {}).get("revision", 0))

    def _post(self, client, request, read_timeout):
        """POST /watch on a session of the stream's own, set up as the member's client's (TLS
        files, token, no proxies from the environment): a _Connection."""
        import requests
        shared = client.session
        session = requests.Session()
        session.trust_env = shared.trust_env
        session.verify = shared.verify
        session.cert = shared.cert
        session.headers.update(shared.headers)
        try:
            response = session.post(
                client.get_url("/watch"), json={"create_request": request}, stream=True,
                timeout=self.backend.timeouts(read_timeout))
        except BaseException:
            session.close()
            raise
        return _Connection(session, response)


class _Messages:
    """The JSON messages of a stream, decoded as they arrive (one object per message, with or
    without a newline between them)."""

    def __init__(self, response):
        self._chunks = response.iter_content(chunk_size=None)
        self._buffer = ""
        self._decoder = json.JSONDecoder()
        self._pushed = []

    def __iter__(self):
        return self

    def push(self, message):
        self._pushed.append(message)

    def __next__(self):
        if self._pushed:
            return self._pushed.pop()
        while True:
            text = self._buffer.lstrip()
            if text:
                try:
                    message, end = self._decoder.raw_decode(text)
                except ValueError:
                    pass     # incomplete: wait for more
                else:
                    self._buffer = text[end:]
                    return message
            # StopIteration here (etcd ended the stream) ends the iteration.
            self._buffer = text + next(self._chunks).decode()


def _message_events(message, key, index, below):
    """The events of one stream message on key (and, with below, under key + "/"; a prefix
    range of "/calico" also holds "/calicoX"); HistoryLost if etcd cancelled the watch for
    compaction."""
    compacted = _compacted(message)
    if compacted is not None:
        raise HistoryLost(
            "etcd has compacted its history past revision %d (asked for changes to %s from "
            "%d); reading everything again." % (compacted, key, index))
    return [e for e in _events(message)
            if e.key == key or (below and e.key.startswith(key + "/"))]


def _revision(message):
    return int(((message.get("result") or {}).get("header") or {}).get("revision", 0))


def _compacted(message):
    result = message.get("result") or {}
    if result.get("canceled") and result.get("compact_revision"):
        return int(result["compact_revision"])
    return None


def _events(message):
    if message.get("error"):
        import etcd3gw.exceptions as e3
        raise e3.Etcd3Exception(json.dumps(message["error"]), "watch failed")
    result = message.get("result") or {}
    revision = _revision(message)
    found = []
    for event in result.get("events", []):
        kv = event.get("kv", {})
        deleted = event.get("type") == "DELETE"
        found.append(Node(key=v3.unb64(kv.get("key")),
                          value=None if deleted else v3.unb64(kv.get("value")),
                          modified_index=int(kv.get("mod_revision", 0)),
                          created_index=int(kv.get("create_revision", 0)),
                          deleted=deleted, store_index=revision))
    return found

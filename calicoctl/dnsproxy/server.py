"""The answerer: one loop over every adopted namespace's sockets.

A UDP query that catalog.View answers is answered at once; every other one is forwarded, bytes
unchanged apart from its id, to Docker's resolver from the same namespace (the marked forward
socket), and Docker's answer -- a same-host name, an upstream's answer, NXDOMAIN, SERVFAIL or
nothing at all -- is relayed back unchanged under the client's id.  TCP connections get a
thread each (few and short), with one TCP connection to Docker per client connection.

Bounds, so that no workload can make this grow or starve the others: a token bucket of queries
per namespace, a cap on forwards awaiting Docker (per namespace and in all), on TCP sessions,
and on how long a forward waits.  Past a bound a query is dropped, as an overloaded resolver
drops it, and the client's own retry decides.

Only the loop thread touches the selector and the namespaces' state; other threads hand it work
through post() (a queue and a wake-up socket).
"""

import collections
import logging
import random
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

from calicoctl.dnsproxy import sandboxes, wire
from calicoctl.dnsproxy.catalog import TTL, View
from calicoctl.errors import CalicoError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    # Queries per second per namespace, sustained and at once: well above what a workload
    # without a cache of its own asks, about what this loop answers in all; fairness between
    # namespaces comes from `batch`.
    rate: float = 10000.0
    burst: float = 10000.0
    # Forwards awaiting Docker.  Docker answers its own names at once; only upstream queries
    # wait, up to its 4 s per upstream server (libnetwork resolver.go extIOTimeout, 3 servers).
    pending: int = 1024
    pending_total: int = 8192
    forward_timeout: float = 15.0
    tcp_sessions: int = 8
    tcp_total: int = 64
    tcp_idle: float = 10.0        # seconds a TCP client may stay silent
    batch: int = 64               # datagrams read per socket per wake-up (fairness)


class Bucket:
    """Token bucket; shared by the loop and TCP threads of one namespace."""

    def __init__(self, rate, burst, clock):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = burst
        self.at = clock()
        self.lock = threading.Lock()

    def take(self):
        with self.lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens < 1:
                return False
            self.tokens -= 1
            return True


@dataclass
class Sandbox:
    key: str                      # the netns path as Docker names it (the catalog's key)
    path: str                     # the same namespace as this process opens it
    sockets: object               # sandboxes.Sockets
    bucket: Bucket
    pending: dict = field(default_factory=dict)    # forward id -> (client, id, deadline)
    tcp_sessions: int = 0
    renewed_at: float = 0.0


class Answerer:
    def __init__(self, view=None, limits=Limits(), clock=time.monotonic):
        self.view = view or View("", {}, [])
        self.limits = limits
        self.clock = clock
        self.sandboxes = {}
        self.total_pending = 0
        self.tcp_total = 0
        self.counts = collections.Counter()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._posted = collections.deque()
        self._stopping = False
        self._lock = threading.Lock()      # tcp counters
        self._thread = None

    # -- other threads -----------------------------------------------------------------------

    def set_view(self, view):
        self.view = view                   # one reference swap: readers see old or new

    def add(self, key, path, sockets):
        self.post(self._add, key, path, sockets)

    def remove(self, key):
        """Stop answering in `key`; returns once its sockets are closed."""
        done = threading.Event()
        self.post(self._remove, key, done)
        if self._thread is not None and self._thread.is_alive() and \
                threading.current_thread() is not self._thread:
            done.wait(10)

    def renew_forward(self, key):
        self.post(self._renew_forward, key, True)

    def post(self, fn, *args):
        self._posted.append((fn, args))
        try:
            self._wake_w.send(b"x")
        except BlockingIOError:
            pass                           # already more wake-ups queued than needed

    def start(self):
        self._thread = threading.Thread(target=self.run, name="dns-answerer", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.post(self._stop)
        if self._thread is not None:
            self._thread.join(10)

    # -- the loop ----------------------------------------------------------------------------

    def run(self):
        next_expiry = self.clock() + 1.0
        while not self._stopping:
            for key, _ in self._selector.select(1.0):
                if key.data is None:
                    self._drain_wake()
                else:
                    self._contained(key.data, key.fileobj)
            while self._posted:
                fn, args = self._posted.popleft()
                self._contained(fn, *args)
            now = self.clock()
            if now >= next_expiry:
                self._expire(now)
                next_expiry = now + 1.0
        for key in list(self.sandboxes):
            self._remove(key, None)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _contained(self, fn, *args):
        """One thread answers every workload: a bug met with one packet is logged whole and the
        loop carries on, since its rules would otherwise lead every workload's queries to
        sockets nobody reads."""
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - logged with its traceback; see docstring
            self.counts["bugs"] += 1
            log.exception("Unexpected failure in the answering loop; carrying on")

    def _drain_wake(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _stop(self):
        self._stopping = True

    def _add(self, key, path, sockets):
        if key in self.sandboxes:
            self._remove(key, None)
        sb = Sandbox(key, path, sockets, Bucket(self.limits.rate, self.limits.burst, self.clock))
        self.sandboxes[key] = sb
        self._selector.register(sockets.udp, selectors.EVENT_READ,
                                lambda sock, sb=sb: self._on_query(sb))
        self._selector.register(sockets.forward, selectors.EVENT_READ,
                                lambda sock, sb=sb: self._on_reply(sb))
        self._selector.register(sockets.tcp, selectors.EVENT_READ,
                                lambda sock, sb=sb: self._on_connect(sb))

    def _remove(self, key, done):
        sb = self.sandboxes.pop(key, None)
        if sb is not None:
            for sock in (sb.sockets.udp, sb.sockets.forward, sb.sockets.tcp):
                self._selector.unregister(sock)
            sb.sockets.close()
            self.total_pending -= len(sb.pending)
        if done is not None:
            done.set()

    def _renew_forward(self, key, force=False):
        """A new forward socket: Docker's resolver moved (a live-restored dockerd binds a new
        port) and the old socket's conntrack entry still leads to the old one."""
        sb = self.sandboxes.get(key)
        now = self.clock()
        if sb is None or (not force and now - sb.renewed_at < 1.0):
            return
        sb.renewed_at = now
        try:
            fresh = sandboxes.forward_socket(sb.path)
        except (OSError, CalicoError) as exc:       # the namespace is going away
            log.warning("No new forward socket in %s: %s", key, exc)
            return
        self._selector.unregister(sb.sockets.forward)
        sb.sockets.forward.close()
        sb.sockets.forward = fresh
        self._selector.register(fresh, selectors.EVENT_READ, lambda sock: self._on_reply(sb))
        self.total_pending -= len(sb.pending)
        sb.pending.clear()                 # their answers would come to the old socket
        log.info("Renewed the forward socket in %s", key)

    # -- UDP -----------------------------------------------------------------------------------

    def _on_query(self, sb):
        for _ in range(self.limits.batch):
            try:
                data, client = sb.sockets.udp.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("recvfrom in %s: %s", sb.key, exc)
                return
            if not sb.bucket.take():
                self.counts["dropped_rate"] += 1
                continue
            query = wire.parse_query(data)
            answer = None if query is None else self.answer(sb.key, query, wire.UDP_LIMIT)
            if answer is not None:
                self.counts["answered"] += 1
                self._send(sb.sockets.udp, answer, client)
            else:
                self._forward(sb, data, client)

    def answer(self, key, query, limit):
        """Our answer to `query` from namespace `key`, or None: Docker's resolver answers."""
        addresses = self.view.lookup(key, query.name, query.qtype)
        if addresses is None:
            return None
        rtype = wire.TYPE_AAAA if query.qtype == wire.TYPE_AAAA else wire.TYPE_A
        return wire.build_answer(query, rtype, addresses, TTL, limit)

    def _forward(self, sb, data, client):
        if len(data) < wire.HEADER.size:
            self.counts["dropped_short"] += 1      # Docker cannot read a header either
            return
        if len(sb.pending) >= self.limits.pending or \
                self.total_pending >= self.limits.pending_total:
            self.counts["dropped_pending"] += 1
            return
        forward_id = random.getrandbits(16)
        while forward_id in sb.pending:
            forward_id = random.getrandbits(16)
        try:
            sb.sockets.forward.send(wire.with_id(data, forward_id))
        except ConnectionRefusedError:
            self.counts["dropped_refused"] += 1
            self._renew_forward(sb.key)
            return
        except OSError as exc:
            self.counts["dropped_send"] += 1
            log.debug("forward in %s: %s", sb.key, exc)
            return
        sb.pending[forward_id] = (client, wire.message_id(data),
                                  self.clock() + self.limits.forward_timeout)
        self.total_pending += 1
        self.counts["forwarded"] += 1

    def _on_reply(self, sb):
        for _ in range(self.limits.batch):
            try:
                data = sb.sockets.forward.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                # ICMP port unreachable: nothing listens where Docker's DNAT (as conntrack
                # remembers it) leads.
                self._renew_forward(sb.key)
                return
            except OSError as exc:
                log.debug("recv in %s: %s", sb.key, exc)
                return
            if len(data) < 2:
                continue
            entry = sb.pending.pop(wire.message_id(data), None)
            if entry is None:
                continue                   # too late, or not an answer to us
            self.total_pending -= 1
            client, client_id, _ = entry
            self.counts["relayed"] += 1
            self._send(sb.sockets.udp, wire.with_id(data, client_id), client)

    def _send(self, sock, data, client):
        try:
            sock.sendto(data, client)
        except OSError as exc:              # the client went away; nothing to tell anyone
            log.debug("sendto %s: %s", client, exc)

    def _expire(self, now):
        for sb in self.sandboxes.values():
            late = [i for i, (_, _, deadline) in sb.pending.items() if deadline <= now]
            for forward_id in late:
                del sb.pending[forward_id]
            self.total_pending -= len(late)
            self.counts["expired"] += len(late)

    # -- TCP -----------------------------------------------------------------------------------

    def _on_connect(self, sb):
        try:
            conn, _ = sb.sockets.tcp.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("accept in %s: %s", sb.key, exc)
            return
        with self._lock:
            if sb.tcp_sessions >= self.limits.tcp_sessions or \
                    self.tcp_total >= self.limits.tcp_total:
                self.counts["dropped_tcp"] += 1
                conn.close()
                return
            sb.tcp_sessions += 1
            self.tcp_total += 1
        threading.Thread(target=self._tcp_session, args=(sb, conn), name="dns-tcp",
                         daemon=True).start()

    def _tcp_session(self, sb, conn):
        upstream = None
        try:
            conn.setblocking(True)
            conn.settimeout(self.limits.tcp_idle)
            while True:
                message = read_frame(conn)
                if message is None or not sb.bucket.take():
                    return
                query = wire.parse_query(message)
                answer = None if query is None else self.answer(sb.key, query, wire.TCP_LIMIT)
                if answer is None:
                    if upstream is None:
                        upstream = sandboxes.forward_stream(sb.path,
                                                            self.limits.forward_timeout)
                    upstream.sendall(frame(message))
                    answer = read_frame(upstream)
                    if answer is None:
                        return
                conn.sendall(frame(answer))
        except (OSError, CalicoError) as exc:
            log.debug("TCP session in %s: %s", sb.key, exc)
        finally:
            conn.close()
            if upstream is not None:
                upstream.close()
            with self._lock:
                sb.tcp_sessions -= 1
                self.tcp_total -= 1


def frame(message):
    return len(message).to_bytes(2, "big") + message


def read_frame(sock):
    """One length-prefixed DNS message (RFC 1035 4.2.2), or None at the end of the stream."""
    size = _read_exactly(sock, 2)
    if size is None:
        return None
    return _read_exactly(sock, int.from_bytes(size, "big"))


def _read_exactly(sock, n):
    chunks, left = [], n
    while left:
        try:
            chunk = sock.recv(left)
        except socket.timeout:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)

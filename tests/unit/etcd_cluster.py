"""Real multi-member etcd clusters for tests: loopback ports, v2 API or v3 alone, optional TLS.

`EtcdCluster(3).start()` runs three etcd 3.4 members that form one raft cluster; `kill(i)` takes a
member down hard (SIGKILL, as a crash would) and `restart(i)` brings it back on the same ports and
data directory.  `make_certs(dir)` writes a throwaway CA, a server certificate for 127.0.0.1 and a
client certificate with the `openssl` CLI, so TLS tests need nothing from outside the machine.
"""

import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass

from tests.st.harness import wait_for
from tests.unit.etcd_server import free_port


@dataclass
class TLSFiles:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str          # a CA that signed nothing we use: the "wrong CA" case
    other_client_cert: str  # a client certificate signed by other_ca: the "wrong cert" case
    other_client_key: str


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _make_ca(directory, name):
    # EC P-256 keys: generated in milliseconds, unlike RSA.
    # The extensions are spelled out, not left to openssl.cnf: Python 3.13 (Debian 13) verifies
    # strictly (VERIFY_X509_STRICT) and refuses a chain whose CA lacks them.
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", name + "-key.pem", "-out", name + ".pem", "-days", "2",
             "-subj", "/CN=" + name, "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash", cwd=directory)


def _make_signed(directory, ca, name, extensions):
    ext_file = os.path.join(directory, name + ".ext")
    with open(ext_file, "w") as f:
        # Strict verification (Python 3.13) also wants the issuer's key id in every leaf.
        f.write("basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyAgreement\n"
                "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n" + extensions)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", name + "-key.pem", "-out", name + ".csr", "-subj", "/CN=" + name,
             cwd=directory)
    _openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + "-key.pem",
             "-CAcreateserial", "-out", name + ".pem", "-days", "2", "-extfile", ext_file,
             cwd=directory)


def make_certs(directory):
    """A CA, a server certificate valid for 127.0.0.1, client certificates; returns TLSFiles."""
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl CLI is needed to make test certificates")
    _make_ca(directory, "ca")
    _make_ca(directory, "other-ca")
    _make_signed(directory, "ca", "server",
                 "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                 "extendedKeyUsage=serverAuth,clientAuth\n")
    _make_signed(directory, "ca", "client", "extendedKeyUsage=clientAuth\n")
    _make_signed(directory, "other-ca", "stranger", "extendedKeyUsage=clientAuth\n")
    p = lambda name: os.path.join(directory, name)  # noqa: E731
    return TLSFiles(ca=p("ca.pem"), server_cert=p("server.pem"), server_key=p("server-key.pem"),
                    client_cert=p("client.pem"), client_key=p("client-key.pem"),
                    other_ca=p("other-ca.pem"), other_client_cert=p("stranger.pem"),
                    other_client_key=p("stranger-key.pem"))


class Member:
    def __init__(self, name, base_dir, scheme):
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.scheme = scheme
        self.data_dir = os.path.join(base_dir, name)
        self.proc = None
        self.log = None

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % (self.scheme, self.client_port)

    @property
    def peer_url(self):
        return "http://127.0.0.1:%d" % self.peer_port

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """`size` etcd members on loopback.  tls: TLSFiles to serve https; client_cert_auth: require
    client certificates signed by tls.ca; enable_v2=False: serve the v3 API alone."""

    def __init__(self, size=3, tls=None, client_cert_auth=False, enable_v2=True):
        self.base_dir = tempfile.mkdtemp(prefix="calico-etcd-cluster-")
        self.tls = tls
        self.enable_v2 = enable_v2
        self.client_cert_auth = client_cert_auth
        scheme = "https" if tls else "http"
        self.members = [Member("m%d" % i, self.base_dir, scheme) for i in range(size)]
        self.token = "calico-test-%d" % os.getpid()

    # -- addresses ------------------------------------------------------------------------------

    @property
    def endpoints(self):
        return [m.url for m in self.members]

    @property
    def api(self):
        """The etcd API calicoctl picks for this cluster."""
        return "2" if self.enable_v2 else "3"

    def env(self):
        """ETCD_* variables that point a client at every member."""
        env = {"ETCD_ENDPOINTS": ",".join(self.endpoints)}
        if self.tls:
            env["ETCD_CA_CERT_FILE"] = self.tls.ca
            if self.client_cert_auth:
                env["ETCD_CERT_FILE"] = self.tls.client_cert
                env["ETCD_KEY_FILE"] = self.tls.client_key
        return env

    # -- life cycle -----------------------------------------------------------------------------

    def start(self, timeout=30):
        for member in self.members:
            self._spawn(member, "new")
        for member in self.members:
            self.wait_healthy(member, timeout)
        return self

    def _spawn(self, member, state):
        initial = ",".join("%s=%s" % (m.name, m.peer_url) for m in self.members)
        cmd = [shutil.which("etcd") or "etcd", "--name", member.name,
               "--data-dir", member.data_dir,
               "--listen-client-urls", member.url, "--advertise-client-urls", member.url,
               "--listen-peer-urls", member.peer_url,
               "--initial-advertise-peer-urls", member.peer_url,
               "--initial-cluster", initial, "--initial-cluster-state", state,
               "--initial-cluster-token", self.token,
               "--enable-v2=%s" % ("true" if self.enable_v2 else "false"),
               # Faster leader election than the 1 s default so a killed leader is replaced
               # quickly; still well above loopback round trips.
               "--heartbeat-interval", "50", "--election-timeout", "500"]
        if self.tls:
            cmd += ["--cert-file", self.tls.server_cert, "--key-file", self.tls.server_key]
            if self.client_cert_auth:
                cmd += ["--client-cert-auth", "--trusted-ca-file", self.tls.ca]
        member.log = open(os.path.join(self.base_dir, member.name + ".log"), "a")
        member.proc = subprocess.Popen(cmd, stdout=member.log, stderr=subprocess.STDOUT)

    def _ssl_context(self):
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.tls.ca)
        ctx.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        return ctx

    def member_health(self, member):
        """True when the member answers /health with a leader in sight."""
        try:
            with urllib.request.urlopen(member.url + "/health", timeout=1,
                                        context=self._ssl_context()) as r:
                return json.loads(r.read().decode()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def wait_healthy(self, member, timeout=30):
        def healthy():
            if not member.running:
                raise RuntimeError("etcd member %s exited; see %s" % (member.name, member.log.name))
            return self.member_health(member)
        wait_for(healthy, timeout=timeout, retry_on=(),
                 what="etcd member %s to be healthy (log: %s)" % (member.name, member.log.name))

    def kill(self, index):
        """Crash member index (SIGKILL) and wait until it is gone."""
        member = self.members[index]
        member.proc.send_signal(signal.SIGKILL)
        member.proc.wait(10)
        member.log.close()

    def restart(self, index, timeout=30):
        member = self.members[index]
        self._spawn(member, "existing")
        self.wait_healthy(member, timeout)

    def restart_stopped(self, timeout=30):
        """Bring back every member that is down.  All are started before any is waited for: a
        member alone is not healthy until it has a quorum to elect a leader with."""
        stopped = [m for m in self.members if not m.running]
        for member in stopped:
            self._spawn(member, "existing")
        for member in stopped:
            self.wait_healthy(member, timeout)

    def leader_index(self):
        """Index of the member that is raft leader now (asked of any live member), or None."""
        for member in self.members:
            if not member.running:
                continue
            # The v3 status call: every etcd serves it, with or without the v2 API.
            request = urllib.request.Request(member.url + "/v3/maintenance/status", data=b"{}",
                                             method="POST")
            try:
                with urllib.request.urlopen(request, timeout=1,
                                            context=self._ssl_context()) as r:
                    status = json.loads(r.read().decode())
            except (OSError, ValueError):
                continue
            if status.get("leader") and status.get("leader") == \
                    status.get("header", {}).get("member_id"):
                return self.members.index(member)
        return None

    def stop(self):
        for member in self.members:
            if member.running:
                member.proc.terminate()
                try:
                    member.proc.wait(10)
                except subprocess.TimeoutExpired:
                    member.proc.kill()
                    member.proc.wait()
            if member.log and not member.log.closed:
                member.log.close()
        shutil.rmtree(self.base_dir, ignore_errors=True)


def _is_read(head, body):
    """Whether an HTTP request to etcd only reads: a v2 GET, or a v3 gateway call that changes
    nothing (a range, a lease's time to live, a txn of ranges only)."""
    if head.startswith(b"GET "):
        return True
    path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
    if path in (b"/v3/kv/range", b"/v3/lease/timetolive"):
        return True
    return path == b"/v3/kv/txn" and b"request_put" not in body and \
        b"request_delete_range" not in body


class FaultyMember:
    """A TCP stand-in for a failing etcd member on a loopback port.

    mode "hang": accepts connections and never answers (a wedged member: the client's read
    timeout fires).  mode "drop-response": forwards each request to the real member `upstream`
    (host, port), waits until the member has answered (so the request *was applied*), then resets
    the client's connection without passing the answer on: the member that died after committing
    but before replying, which is what makes retried writes ambiguous.  mode "drop-writes": the
    same for writes, while reads are relayed with their answers (v2: GETs; v3: POSTs that only
    read, see _is_read).
    """

    def __init__(self, mode, upstream=None):
        import socket
        import threading
        self.mode, self.upstream = mode, upstream
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.requests = 0
        self.connections = 0        # accepted: how often a client tried this member
        self._conns = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            self.connections += 1
            if self.mode in ("drop-response", "drop-writes"):
                threading.Thread(target=self._relay_and_drop, args=(conn,), daemon=True).start()

    def _relay_and_drop(self, conn):
        import socket
        import struct
        up = socket.create_connection(self.upstream, timeout=10)
        try:
            request = b""
            conn.settimeout(10)
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                request += chunk
            head, _, body = request.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            while len(body) < length:
                body += conn.recv(65536)
            if self.mode == "drop-writes" and _is_read(head, body):
                # Reads pass: one request per connection, so ask the member to close after it.
                up.sendall(head + b"\r\nConnection: close\r\n\r\n" + body)
                while True:
                    chunk = up.recv(65536)
                    if not chunk:
                        return
                    conn.sendall(chunk)
            self.requests += 1
            up.sendall(head + b"\r\n\r\n" + body)
            up.recv(65536)  # the member answered: the request is applied
        finally:
            up.close()
            # SO_LINGER 0: close with a reset, as a crashed process's kernel would.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def close(self):
        self._closed = True
        _close_listener(self.sock)
        for conn in self._conns:
            try:
                conn.close()
            except OSError:
                pass


def _close_listener(sock):
    """Close a listening socket whose accept() another thread may be blocked in.  close() alone
    does not wake that thread, which then keeps the port and the file open for the rest of the
    session; shutdown() does (its accept fails, and the thread ends)."""
    import socket
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _syn_sent_to(port):
    """Whether a socket on this host is waiting for an answer to its SYN to loopback `port`."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "02" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


class SilentThenServing:
    """A loopback stand-in for a member whose first connection attempt is lost: its accept queue
    is full, so the kernel drops the client's SYN without an answer (as with a lost packet; the
    client's connect times out).  Once a client has tried and given up (its SYN_SENT socket seen,
    then gone), the queue is drained and every connection is relayed to the real member
    `upstream` (host, port)."""

    def __init__(self, upstream):
        import socket
        import threading
        self.upstream = upstream
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.unanswered = 0     # connection attempts abandoned by a client
        self._closed = False
        # Fill the accept queue: connections complete until it is full, then SYNs are dropped.
        self._fillers = []
        while True:
            filler = socket.socket()
            filler.settimeout(0.2)
            try:
                filler.connect(("127.0.0.1", self.port))
            except OSError:
                filler.close()
                break
            self._fillers.append(filler)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        import threading
        import time
        # Polled, not slept: the client's attempt is what this waits for.
        while not _syn_sent_to(self.port):
            if self._closed:
                return
            time.sleep(0.01)
        while _syn_sent_to(self.port):
            time.sleep(0.01)
        self.unanswered += 1
        for filler in self._fillers:
            filler.close()
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn):
        import socket
        import threading
        try:
            up = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            conn.close()
            return

        def pipe(src, dst):
            try:
                while True:
                    chunk = src.recv(65536)
                    if not chunk:
                        break
                    dst.sendall(chunk)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        threading.Thread(target=pipe, args=(up, conn), daemon=True).start()
        pipe(conn, up)

    def close(self):
        self._closed = True
        _close_listener(self.sock)
        for filler in self._fillers:
            filler.close()

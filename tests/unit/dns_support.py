"""A scratch network namespace that looks, for DNS, like a Docker container's: a stand-in for
Docker's embedded resolver on 127.0.0.11 at random ports, with the nat rules Docker 20.10 to 28.5
write in front of it (libnetwork resolver_unix.go), through iptables-nft or iptables-legacy.

The stand-in answers like Docker would: its own containers' names (`local`) with TTL 600,
example.test with 203.0.113.7 (an upstream's answer), fail.test with SERVFAIL (an upstream
failing), slow.test never, anything else NXDOMAIN; a message it cannot parse, not at all.  It
records every question it was asked, so a test can tell what reached Docker.
"""

import os
import socket
import struct
import subprocess
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rrset

from calicoctl.dnsproxy import sandboxes

UPSTREAM_ANSWER = "203.0.113.7"


def run(cmd, check=True):
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError("%s exited %d: %s" % (" ".join(cmd), result.returncode,
                                                   (result.stderr or result.stdout).strip()))
    return result


class DockerNetns:
    """`ip netns add <name>` with the resolver stand-in; close() removes everything."""

    def __init__(self, name, flavour="nft", local=None, rules=True):
        self.name = name
        self.flavour = flavour
        self.path = "/run/netns/" + name
        self.local = {k.lower(): v for k, v in (local or {}).items()}
        self.seen = []            # (name, rdtype) of every question the stand-in was asked
        self._closing = False
        run(["ip", "netns", "del", name], check=False)
        run(["ip", "netns", "add", name])
        try:
            self.exec("ip", "link", "set", "lo", "up")
            self.udp, self.tcp = sandboxes.in_netns(self.path, _resolver_sockets)
            self.ports = {"udp": self.udp.getsockname()[1], "tcp": self.tcp.getsockname()[1]}
            if rules:
                self.add_docker_rules()
            self._threads = [threading.Thread(target=self._serve_udp, daemon=True),
                             threading.Thread(target=self._serve_tcp, daemon=True)]
            for t in self._threads:
                t.start()
        except BaseException:
            run(["ip", "netns", "del", name], check=False)
            raise

    def exec(self, *cmd, check=True):
        return run(["ip", "netns", "exec", self.name, *cmd], check=check).stdout

    def iptables(self, *args):
        return self.exec("iptables-%s" % self.flavour, "-w", *args)

    def nat_rules(self):
        return self.iptables("-t", "nat", "-S")

    def add_docker_rules(self):
        """What Docker's setupIptablesNAT does, in its order."""
        ip = "127.0.0.11"
        self.iptables("-t", "nat", "-N", "DOCKER_OUTPUT")
        self.iptables("-t", "nat", "-I", "OUTPUT", "-d", ip, "-j", "DOCKER_OUTPUT")
        self.iptables("-t", "nat", "-N", "DOCKER_POSTROUTING")
        self.iptables("-t", "nat", "-I", "POSTROUTING", "-d", ip, "-j", "DOCKER_POSTROUTING")
        self._add_resolver_rules()

    def _add_resolver_rules(self):
        ip = "127.0.0.11"
        for proto in ("udp", "tcp"):
            port = self.ports[proto]
            self.iptables("-t", "nat", "-I", "DOCKER_OUTPUT", "-d", ip, "-p", proto, "--dport",
                          "53", "-j", "DNAT", "--to-destination", "%s:%d" % (ip, port))
            self.iptables("-t", "nat", "-I", "DOCKER_POSTROUTING", "-s", ip, "-p", proto,
                          "--sport", str(port), "-j", "SNAT", "--to-source", ":53")

    def move_resolver(self):
        """What a live-restored dockerd does: its resolver binds new random ports and it flushes
        and refills DOCKER_OUTPUT and DOCKER_POSTROUTING (its jumps are already there)."""
        old = (self.udp, self.tcp)
        self.udp, self.tcp = sandboxes.in_netns(self.path, _resolver_sockets)
        self.ports = {"udp": self.udp.getsockname()[1], "tcp": self.tcp.getsockname()[1]}
        for sock in old:
            _shut(sock)
        self.iptables("-t", "nat", "-F", "DOCKER_OUTPUT")
        self.iptables("-t", "nat", "-F", "DOCKER_POSTROUTING")
        self._add_resolver_rules()
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True),
                         threading.Thread(target=self._serve_tcp, daemon=True)]
        for t in self._threads:
            t.start()

    def close(self):
        self._closing = True
        for sock in (self.udp, self.tcp):
            _shut(sock)
        run(["ip", "netns", "del", self.name], check=False)

    # -- the stand-in --------------------------------------------------------------------------

    def respond(self, data):
        try:
            query = dns.message.from_wire(data)
        except Exception:  # noqa: BLE001 - anything it cannot read goes unanswered, as Docker's
            return None
        if not query.question:
            return None
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        self.seen.append((name, question.rdtype))
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        if name in self.local:
            if question.rdtype == 1:
                response.answer.append(dns.rrset.from_text(question.name, 600, "IN", "A",
                                                           self.local[name]))
        elif name == "example.test":
            if question.rdtype == 1:
                response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A",
                                                           UPSTREAM_ANSWER))
        elif name == "fail.test":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name == "slow.test":
            return None
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()

    def _serve_udp(self):
        sock = self.udp
        while not self._closing:
            try:
                data, peer = sock.recvfrom(65535)
            except OSError:
                return
            if sock is not self.udp or self._closing:
                return
            answer = self.respond(data)
            if answer is not None:
                sock.sendto(answer, peer)

    def _serve_tcp(self):
        sock = self.tcp
        while not self._closing:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._tcp_conn, args=(conn,), daemon=True).start()

    def _tcp_conn(self, conn):
        with conn:
            while True:
                size = _recv_exactly(conn, 2)
                data = size and _recv_exactly(conn, struct.unpack("!H", size)[0])
                if data is None:
                    return
                answer = self.respond(data)
                if answer is not None:
                    conn.sendall(struct.pack("!H", len(answer)) + answer)

    # -- a client inside the namespace ------------------------------------------------------------

    def ask(self, name, rdtype="A", tcp=False, timeout=2.0, mark=None):
        """The answer (a dns.message) to a query from inside the namespace, or None when none
        came within timeout.  mark: send with this SO_MARK (bypasses our rules, as our own
        forwards do) -- what the same query got from Docker's resolver alone."""
        query = dns.message.make_query(name, rdtype)
        query.flags |= dns.flags.RD
        raw = self.ask_raw(query.to_wire(), tcp=tcp, timeout=timeout, mark=mark)
        return None if raw is None else dns.message.from_wire(raw)

    def ask_raw(self, data, tcp=False, timeout=2.0, mark=None):
        return sandboxes.in_netns(self.path, _ask_here, data, tcp, timeout, mark)


def _shut(sock):
    """Close a socket a thread may be blocked on (shutdown wakes it; close alone may not)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _resolver_sockets():
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.11", 0))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.11", 0))
    tcp.listen(16)
    return udp, tcp


def _ask_here(data, tcp, timeout, mark):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    with sock:
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, sandboxes.SO_MARK, mark)
        sock.settimeout(timeout)
        try:
            sock.connect(("127.0.0.11", 53))
            if tcp:
                sock.sendall(struct.pack("!H", len(data)) + data)
                size = _recv_exactly(sock, 2)
                return size and _recv_exactly(sock, struct.unpack("!H", size)[0])
            sock.send(data)
            return sock.recv(65535)
        except (socket.timeout, ConnectionError):
            return None


def _recv_exactly(sock, n):
    chunks = []
    while n:
        try:
            chunk = sock.recv(n)
        except OSError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def needs_root_and_netns():
    """Reason the namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (scratch network namespaces)"
    for tool in ("ip", "iptables-nft", "iptables-nft-save", "iptables-nft-restore"):
        if run(["sh", "-c", "command -v " + tool], check=False).returncode != 0:
            return "needs %s" % tool
    return None

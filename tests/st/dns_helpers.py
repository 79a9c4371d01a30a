"""Helpers for names across hosts on namespace hosts (tests/st/test_dns.py, bench/dns_names.py):
`calicoctl dns serve` as a host process, an upstream DNS server of the hosts' own on the testbed
bridge, and a DNS client run inside a container's network namespace.

The upstream is a namespace of its own on the bridge (UPSTREAM_IP), with the hosts'
/etc/resolv.conf pointing at it through a file bound over it in each host's mount namespace (so
this machine's resolv.conf, which the "host" engine's hosts share, is never written).  It
answers example.test with UPSTREAM_ANSWER, fail.test with SERVFAIL and anything else with
NXDOMAIN, and logs every question, so a test can tell which names left the hosts.
"""

import contextlib
import json
import signal
import subprocess
import sys

from tests.st.harness import network, procs, wait_for
from tests.st.plugin_helpers import PYTHON, etcd_env

UPSTREAM_NS = "calico-st-dns"
UPSTREAM_VETH = network.root_veth_name("calico-dns")   # cleanup_stale finds it by prefix
UPSTREAM_IP = "198.18.0.53"
UPSTREAM_ANSWER = "203.0.113.7"     # TEST-NET-3: no real host answers it
READY_FILE = "/run/calico-dns.ready"
DNS_COMMENT = "calico-dns"          # calicoctl/dnsproxy/rules.py COMMENT

# A DNS server, standard library only, on argv[1]:53 over UDP and TCP.
UPSTREAM_STUB = r"""
import socket, struct, sys, threading
ip, answer = sys.argv[1], socket.inet_aton(sys.argv[2])

def respond(data):
    if len(data) < 12:
        return None
    end = 12
    while end < len(data) and data[end]:
        end += data[end] + 1
    labels, pos = [], 12
    while pos < end:
        labels.append(data[pos + 1:pos + 1 + data[pos]].decode("ascii", "replace"))
        pos += data[pos] + 1
    name = ".".join(labels).lower()
    qtype = struct.unpack("!H", data[end + 1:end + 3])[0] if len(data) >= end + 3 else 0
    print("asked", name, qtype, flush=True)
    question = data[12:end + 5]
    rcode, records = 3, b""                                   # NXDOMAIN
    if name == "example.test":
        rcode = 0
        if qtype == 1:
            records = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + answer
    elif name == "fail.test":
        rcode = 2                                             # SERVFAIL
    flags = 0x8180 | rcode
    return struct.pack("!HHHHHH", struct.unpack("!H", data[:2])[0], flags, 1,
                       1 if records else 0, 0, 0) + question + records

def serve_tcp(listener):
    while True:
        conn, _ = listener.accept()
        with conn:
            size = conn.recv(2)
            data = conn.recv(struct.unpack("!H", size)[0]) if len(size) == 2 else b""
            reply = respond(data)
            if reply:
                conn.sendall(struct.pack("!H", len(reply)) + reply)

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((ip, 53))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind((ip, 53))
tcp.listen(16)
threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
print("listening", flush=True)
while True:
    data, peer = udp.recvfrom(4096)
    reply = respond(data)
    if reply:
        udp.sendto(reply, peer)
"""

# A DNS client, standard library only, run inside a container's network namespace:
# argv = name qtype udp|tcp timeout [mark].  Prints the answer's bytes as hex, or "timeout".
CLIENT = r"""
import socket, struct, sys
name, qtype, proto, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
question = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".") if l) + b"\0"
query = struct.pack("!HHHHHH", 0x5ca1, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", qtype, 1)
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
if len(sys.argv) > 5:
    sock.setsockopt(socket.SOL_SOCKET, 36, int(sys.argv[5]))     # SO_MARK
sock.settimeout(timeout)
try:
    sock.connect(("127.0.0.11", 53))
    if proto == "tcp":
        sock.sendall(struct.pack("!H", len(query)) + query)
        size = struct.unpack("!H", sock.recv(2))[0]
        data = b""
        while len(data) < size:
            data += sock.recv(size - len(data))
    else:
        sock.send(query)
        data = sock.recv(65535)
    print(data.hex())
except (socket.timeout, ConnectionError, struct.error):
    print("timeout")
"""


class Upstream:
    """UPSTREAM_STUB in its own namespace on the testbed's bridge."""

    def __init__(self, bridge):
        self.bridge = bridge
        self.proc = None
        self.log_lines = []

    def __enter__(self):
        self.remove()
        procs.run(["ip", "netns", "add", UPSTREAM_NS])
        procs.run(["ip", "link", "add", UPSTREAM_VETH, "type", "veth", "peer", "name", "eth0",
                   "netns", UPSTREAM_NS])
        procs.run(["ip", "link", "set", UPSTREAM_VETH, "master", self.bridge, "up"])
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "addr", "add", UPSTREAM_IP + "/24", "dev", "eth0"],
                    ["ip", "link", "set", "eth0", "up"]):
            procs.run(["ip", "netns", "exec", UPSTREAM_NS, *cmd])
        self.start()
        return self

    def start(self):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", UPSTREAM_NS, sys.executable, "-u", "-c", UPSTREAM_STUB,
             UPSTREAM_IP, UPSTREAM_ANSWER], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True)
        line = self.proc.stdout.readline()
        if "listening" not in line:
            raise AssertionError("the upstream DNS stub did not start: %r" % line)
        import threading
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc):
        for line in proc.stdout:
            self.log_lines.append(line.strip())

    def asked(self):
        """Every name the stub has been asked, in order."""
        return [line.split()[1] for line in list(self.log_lines) if line.startswith("asked ")]

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def __exit__(self, *exc):
        self.stop()
        self.remove()

    @staticmethod
    def remove():
        procs.run(["ip", "netns", "del", UPSTREAM_NS], check=False)
        network.delete_link(UPSTREAM_VETH)


@contextlib.contextmanager
def resolv_conf(hosts, text):
    """Every host's /etc/resolv.conf reads `text` while inside: a file bound over it in the
    host's own mount namespace.  Docker reads it when it makes a container."""
    bound = []
    try:
        for host in hosts:
            host.run(["sh", "-c", "printf '%s' > /run/st-dns-resolv.conf && "
                      "mount --bind /run/st-dns-resolv.conf /etc/resolv.conf" % text])
            bound.append(host)
            assert host.run(["cat", "/etc/resolv.conf"]).stdout == text
        yield
    finally:
        for host in bound:
            host.run(["umount", "/etc/resolv.conf"], check=False)


class DnsProcess:
    """`calicoctl dns serve` in one host; its log is <host log dir>/dns.log."""

    def __init__(self, host, etcd):
        self.host, self.etcd = host, etcd
        self.proc = None

    def start(self, timeout=60):
        self.host.run(["rm", "-f", READY_FILE])
        cmd = [PYTHON, "-m", "calicoctl", "dns", "serve", "--log-level=debug",
               "--ready-file=" + READY_FILE]
        self.proc = self.host.popen(cmd, "dns", env=etcd_env(self.etcd))

        def ready_or_gone():
            return self.proc.poll() is not None or \
                self.host.run(["test", "-e", READY_FILE], check=False).returncode == 0
        try:
            wait_for(ready_or_gone, timeout=timeout,
                     what="calicoctl dns serve on %s" % self.host.name)
        except Exception as exc:
            raise AssertionError("%s; its log ends:\n%s" % (exc, self.log()[-3000:])) from None
        if self.proc.poll() is not None:
            raise AssertionError("calicoctl dns serve on %s exited %s: %s" % (
                self.host.name, self.proc.returncode, self.log()[-3000:]))
        return self

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Stop it with `sig` (nsenter execs the command: the popen'd pid is calicoctl's)."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=timeout)
        code, self.proc = self.proc.returncode, None
        return code

    def log(self):
        path = self.host.log_path("dns")
        return path.read_text() if path.exists() else ""


def sandbox_key(host, container):
    return host.docker("inspect", "--format", "{{.NetworkSettings.SandboxKey}}",
                       container).stdout.strip()


def nat_rules(host, container):
    """`iptables -t nat -S` inside the container's namespace (raises if it cannot run)."""
    return host.run(["nsenter", "--net=" + sandbox_key(host, container), "iptables", "-t", "nat",
                     "-S"]).stdout


def adopted(host, container):
    """Our two rules are the first of nat OUTPUT in the container's namespace."""
    output = [line for line in nat_rules(host, container).splitlines()
              if line.startswith("-A OUTPUT ")]
    return len(output) >= 3 and all(DNS_COMMENT in line for line in output[:2])


def ask(host, container, name, qtype=1, tcp=False, timeout=2.0, mark=None):
    """The raw answer (bytes) from inside the container's namespace to a query for `name`, or
    None when none came within timeout.  mark: send with that SO_MARK, as our own forwards do
    (skipping our rules: what Docker's resolver alone answers)."""
    argv = ["nsenter", "--net=" + sandbox_key(host, container), PYTHON, "-c", CLIENT, name,
            str(qtype), "tcp" if tcp else "udp", str(timeout)]
    if mark is not None:
        argv.append(str(mark))
    out = host.run(argv, timeout=timeout + 30).stdout.strip()
    return None if out == "timeout" else bytes.fromhex(out)


def answer_of(raw):
    """(rcode, sorted addresses) of a raw answer, read with dnspython; None for no answer."""
    if raw is None:
        return None
    import dns.message
    message = dns.message.from_wire(raw)
    return message.rcode(), sorted(rd.to_text() for rrset in message.answer for rd in rrset)


def container_ips(host, container):
    """{network: (ipv4, ipv6)} of a container."""
    out = host.docker("inspect", "--format", "{{json .NetworkSettings.Networks}}",
                      container).stdout
    return {net: (info.get("IPAddress"), info.get("GlobalIPv6Address"))
            for net, info in json.loads(out).items()}

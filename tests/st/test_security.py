"""Security properties of a host running the plugin, the agent and BIRD (issue 7):

- anti-spoofing, IPv4 and IPv6, by address and by MAC: a workload that takes another workload's
  address or MAC gets nothing through, checked at the receivers (same host and the other host)
  with packet counters inside the receivers' own namespaces;
- workload-to-host traffic follows DefaultEndpointToHostAction (DROP, RETURN, ACCEPT), per host
  and globally through `calicoctl config felix`;
- an address handed on from a removed workload to a new one does not carry the old workload's
  tracked connections past the new one's policy;
- the plugin's socket is root's only (mode 0600, and `nobody` cannot connect);
- nothing the project starts listens on a non-loopback address except BIRD on port 179.
"""

import ipaddress
import json
import os
import re
import stat

import pytest

from tests.st.calico_stack import POOL, POOL6, calico_stack, learnt  # noqa: F401 - the fixture
from tests.st.harness import wait_for
from tests.st.plugin_helpers import SOCKET, calicoctl, clean_docker

# Policy must mean the same on both of the agent's dataplanes.
pytestmark = pytest.mark.dataplanes("nftables", "iptables")

# A python `nobody` can run (python3 on PATH may be a shim under /root).
SYSTEM_PYTHON = "/usr/bin/python3"
HOST_PORT = 7777                    # the host's own test service on its underlay address
MACS = {"S": "02:00:00:0a:00:01", "V": "02:00:00:0a:00:02", "R": "02:00:00:0a:00:03",
        "R2": "02:00:00:0a:00:04"}


# --- helpers ----------------------------------------------------------------------------------

def _addresses(host, name, network):
    out = host.docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", name).stdout
    data = json.loads(out)[network]
    return data["IPAddress"], data["GlobalIPv6Address"]


def _netns(host, container):
    pid = host.docker("inspect", "-f", "{{.State.Pid}}", container).stdout.strip()
    return ["nsenter", "-t", pid, "-n"]


def received(host, container, src, version):
    """Packets from src that reached the container: a counting rule at the top of INPUT in the
    container's own namespace (installed on first use)."""
    return _counted(host, container, "INPUT", "-s", src, version)


def sent(host, container, dst, version):
    """Packets the container sent to dst, counted at the top of OUTPUT in its namespace."""
    return _counted(host, container, "OUTPUT", "-d", dst, version)


def _counted(host, container, chain, flag, address, version):
    tool = "iptables" if version == 4 else "ip6tables"
    ns = _netns(host, container)
    rule = [flag, address, "-j", "ACCEPT"]
    if host.run(ns + [tool, "-w", "-C", chain, *rule], check=False).returncode:
        host.run(ns + [tool, "-w", "-I", chain, *rule])
    out = host.run(ns + [tool, "-w", "-L", chain, "-v", "-x", "-n"]).stdout
    plen = 32 if version == 4 else 128
    column = 7 if flag == "-s" else 8
    for line in out.splitlines():
        words = line.split()
        if len(words) > column and words[column] in (address, "%s/%d" % (address, plen)):
            return int(words[0])
    raise AssertionError("no counter for %s in %s's %s:\n%s" % (address, container, chain, out))


def send_pings(host, container, dst, version, source=None, count=3):
    """Pings from container (optionally from a given source address); the result is judged at
    the receiver, not here."""
    args = ["ping", "-%d" % version, "-c", str(count), "-W", "1"]
    if source:
        args += ["-I", source]
    return host.docker("exec", container, *args, dst, check=False, timeout=30)


def _receivers(net):
    return net["receivers"]


def add_address(wl, addr, version):
    """The workload gives itself another address (it has NET_ADMIN).  busybox's ip has no
    'nodad', so an IPv6 address is usable only once duplicate address detection is over."""
    plen = 32 if version == 4 else 128
    wl["host"].docker("exec", wl["name"], "ip", "-%d" % version, "addr", "add",
                      "%s/%d" % (addr, plen), "dev", "eth0")
    if version == 6:
        def settled():
            out = wl["host"].docker("exec", wl["name"], "ip", "-6", "addr", "show", "dev",
                                    "eth0").stdout
            line = [ln for ln in out.splitlines() if addr in ln][0]
            assert "dadfailed" not in line, line
            return "tentative" not in line
        wait_for(settled, timeout=10, what="DAD of %s in %s" % (addr, wl["name"]))


def del_address(wl, addr, version):
    wl["host"].docker("exec", wl["name"], "ip", "-%d" % version, "addr", "del",
                      "%s/%d" % (addr, 32 if version == 4 else 128), "dev", "eth0")


@pytest.fixture(scope="module")
def spoof_net(calico_stack):
    """Workloads S (spoofer, NET_ADMIN), V (victim) and R (receiver) on calico-01 and R2 on
    calico-02, all in one dual-stack network (so policy alone would let S's packets through):
    only anti-spoofing stands between S and V's identity.  Every workload has its own MAC."""
    h1, h2 = calico_stack["hosts"]
    for h in (h1, h2):
        h.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
                 "--ipv6", "secnet")
    placed = {"S": h1, "V": h1, "R": h1, "R2": h2}
    wl = {}
    for role, h in placed.items():
        name = "sec-" + role
        h.docker("run", "--net", "secnet", "--name", name, "--mac-address", MACS[role],
                 "--cap-add", "NET_ADMIN", "-tid", "busybox")
        ip4, ip6 = _addresses(h, name, "secnet")
        assert ip4 and ip6, "expected a dual-stack workload, got %r %r" % (ip4, ip6)
        wl[role] = {"host": h, "name": name, 4: ip4, 6: ip6, "mac": MACS[role]}
    for v in (4, 6):
        wait_for(lambda v=v: ipaddress.ip_address(wl["R2"][v]) in learnt(h1, v)
                 and ipaddress.ip_address(wl["S"][v]) in learnt(h2, v),
                 timeout=60, what="IPv%d routes over BGP" % v)
    yield {"wl": wl, "receivers": (wl["R"], wl["R2"]), "stack": calico_stack}
    for h in (h1, h2):
        clean_docker(h)
        h.docker("network", "rm", "secnet", check=False)


def _assert_control(net, version):
    """V's own pings reach every receiver, and the counters see them."""
    v = net["wl"]["V"]
    for r in _receivers(net):
        before = received(r["host"], r["name"], v[version], version)
        send_pings(v["host"], v["name"], r[version], version, count=1)
        assert received(r["host"], r["name"], v[version], version) > before, \
            "control: IPv%d pings from V did not reach %s" % (version, r["name"])


def _assert_nothing_arrives(net, version, src_addr, source=None, what=""):
    s = net["wl"]["S"]
    before = {r["name"]: received(r["host"], r["name"], src_addr, version)
              for r in _receivers(net)}
    for r in _receivers(net):
        send_pings(s["host"], s["name"], r[version], version, source=source)
    for r in _receivers(net):
        after = received(r["host"], r["name"], src_addr, version)
        assert after == before[r["name"]], "%s: %d IPv%d packet(s) from %s reached %s" % (
            what, after - before[r["name"]], version, src_addr, r["name"])


@pytest.mark.parametrize("version", (4, 6))
def test_forged_address_gets_nothing_through(spoof_net, version):
    s, v = spoof_net["wl"]["S"], spoof_net["wl"]["V"]
    _assert_control(spoof_net, version)
    add_address(s, v[version], version)
    try:
        _assert_nothing_arrives(spoof_net, version, v[version], source=v[version],
                                what="S forging V's address")
    finally:
        del_address(s, v[version], version)


def _set_mac(wl, mac):
    wl["host"].docker("exec", wl["name"], "ip", "link", "set", "dev", "eth0", "address", mac)


@pytest.mark.parametrize("version", (4, 6))
def test_forged_mac_gets_nothing_through(spoof_net, version):
    s, v = spoof_net["wl"]["S"], spoof_net["wl"]["V"]
    # Control: S's own address and MAC get through.
    before = {r["name"]: received(r["host"], r["name"], s[version], version)
              for r in _receivers(spoof_net)}
    for r in _receivers(spoof_net):
        send_pings(s["host"], s["name"], r[version], version, count=1)
        assert received(r["host"], r["name"], s[version], version) > before[r["name"]]
    _set_mac(s, v["mac"])
    try:
        _assert_nothing_arrives(spoof_net, version, s[version], what="S with V's MAC")
        # Both V's address and V's MAC: still nothing (the interface, not the packet, says
        # who sent it).
        add_address(s, v[version], version)
        try:
            _assert_nothing_arrives(spoof_net, version, v[version], source=v[version],
                                    what="S with V's address and MAC")
        finally:
            del_address(s, v[version], version)
    finally:
        _set_mac(s, s["mac"])
    # Its own MAC back: S is heard again.
    r = spoof_net["wl"]["R"]
    before = received(r["host"], r["name"], s[version], version)
    wait_for(lambda: send_pings(s["host"], s["name"], r[version], version, count=1).returncode == 0,
             timeout=10, what="S reaching R with its own MAC again")
    assert received(r["host"], r["name"], s[version], version) > before


# A receiver for one UDP flow: answers every datagram with "pong" and prints what it got from
# whom, until `seconds` pass.
UDP_RECEIVER = """
import socket, sys, time
family = socket.AF_INET if sys.argv[1] == "4" else socket.AF_INET6
s = socket.socket(family, socket.SOCK_DGRAM)
s.bind(("0.0.0.0" if family == socket.AF_INET else "::", int(sys.argv[2])))
s.settimeout(0.2)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    try:
        data, peer = s.recvfrom(2048)
    except socket.timeout:
        continue
    print("got", peer[0], peer[1], data.decode(errors="replace"), flush=True)
    s.sendto(b"pong", peer)
"""

# Sends datagrams from (source address, source port) and waits for one answer.
UDP_SENDER = """
import socket, sys
family = socket.AF_INET if sys.argv[1] == "4" else socket.AF_INET6
s = socket.socket(family, socket.SOCK_DGRAM)
s.bind((sys.argv[2], int(sys.argv[3])))
s.settimeout(1)
for _ in range(3):
    s.sendto(sys.argv[6].encode(), (sys.argv[4], int(sys.argv[5])))
    try:
        print("answer", s.recvfrom(2048)[0].decode())
        break
    except socket.timeout:
        pass
"""
FLOW_PORTS = (5000, 5353)


@pytest.mark.parametrize("version", (4, 6))
def test_forger_cannot_inject_into_anothers_connection(spoof_net, version):
    """V has a live UDP flow with R (so conntrack holds it as ESTABLISHED); S takes V's address
    and sends into that flow from the same ports.  Only V's datagrams may reach R.  (Packets of
    known flows are accepted before any per-endpoint rule, so anti-spoofing must not depend on
    those rules alone.)"""
    import subprocess
    s, v, r = spoof_net["wl"]["S"], spoof_net["wl"]["V"], spoof_net["wl"]["R"]
    sport, dport = FLOW_PORTS
    receiver = subprocess.Popen(
        _netns(r["host"], r["name"]) + [SYSTEM_PYTHON, "-c", UDP_RECEIVER, str(version),
                                        str(dport), "8"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "ready"
        legit = v["host"].run(_netns(v["host"], v["name"]) + [
            SYSTEM_PYTHON, "-c", UDP_SENDER, str(version), v[version], str(sport), r[version],
            str(dport), "legit"])
        assert "answer pong" in legit.stdout, "control: V's flow to R got no answer"
        add_address(s, v[version], version)
        try:
            s["host"].run(_netns(s["host"], s["name"]) + [
                SYSTEM_PYTHON, "-c", UDP_SENDER, str(version), v[version], str(sport),
                r[version], str(dport), "forged"])
        finally:
            del_address(s, v[version], version)
        out = receiver.communicate(timeout=20)[0]
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    assert "legit" in out, out
    assert "forged" not in out, "S's forged datagrams joined V's flow to R:\n" + out


# --- workload to host -------------------------------------------------------------------------

@pytest.fixture
def host_service(spoof_net, tmp_path):
    """busybox httpd on calico-01's underlay address, serving 'ok'."""
    h1 = spoof_net["wl"]["S"]["host"]
    (tmp_path / "ok").write_text("ok\n")
    os.chmod(tmp_path, 0o755)
    proc = h1.popen(["busybox", "httpd", "-f", "-p", "%s:%d" % (h1.ip, HOST_PORT), "-h",
                     str(tmp_path)], "sec-host-httpd")
    wait_for(lambda: ":%d " % HOST_PORT in h1.run(["ss", "-ltn"]).stdout, timeout=10,
             what="the host's test service")
    yield h1
    # nsenter without a pid namespace execs httpd: the popen'd pid is httpd's own.
    proc.terminate()
    proc.wait(timeout=10)


def _reaches_host(wl, host):
    script = ("printf 'GET /ok HTTP/1.0\\r\\n\\r\\n' | nc -w 1 %s %d 2>/dev/null | grep -qx ok"
              % (host.ip, HOST_PORT))
    return wl["host"].docker("exec", wl["name"], "sh", "-c", script, check=False,
                             timeout=30).returncode == 0


def _stays(predicate, times=3):
    return all(predicate() for _ in range(times))


def test_workload_to_host_follows_the_configured_action(spoof_net, host_service):
    from calicoctl.datastore import config
    h1 = host_service
    stack = spoof_net["stack"]
    store, etcd = stack["store"], stack["etcd"]
    v, r = spoof_net["wl"]["V"], spoof_net["wl"]["R"]
    name = "DefaultEndpointToHostAction"
    # The stack registers hosts as `calicoctl node` does: RETURN for this host.
    assert config.get_config(store, name, host=h1.name) == "RETURN"
    assert wait_for(lambda: _reaches_host(v, h1), timeout=10, what="V reaching its host (RETURN)")
    try:
        config.set_config(store, name, "DROP", host=h1.name)
        wait_for(lambda: not _reaches_host(v, h1), timeout=10, what="DROP to take effect")
        assert _stays(lambda: not _reaches_host(v, h1)), "DROP let a connection through"
        # DROP is about the host only: V still reaches a workload next to it.
        assert send_pings(v["host"], v["name"], r[4], 4, count=1).returncode == 0
        config.set_config(store, name, "ACCEPT", host=h1.name)
        wait_for(lambda: _reaches_host(v, h1), timeout=10, what="ACCEPT to take effect")
        config.set_config(store, name, "RETURN", host=h1.name)
        assert _stays(lambda: _reaches_host(v, h1))
        # Globally, through the CLI, once the host's own setting is gone.
        config.set_config(store, name, None, host=h1.name)
        calicoctl(h1, etcd, "config", "felix", name, "DROP", "--force")
        wait_for(lambda: not _reaches_host(v, h1), timeout=10, what="a global DROP to take effect")
        assert _stays(lambda: not _reaches_host(v, h1)), "global DROP let a connection through"
    finally:
        calicoctl(h1, etcd, "config", "felix", name, "--remove", check=False)
        config.set_config(store, name, "RETURN", host=h1.name)
    wait_for(lambda: _reaches_host(v, h1), timeout=10, what="RETURN again")


# --- the plugin's socket and listening ports --------------------------------------------------

CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(%r)
except OSError as exc:
    print("refused", exc.errno)
    sys.exit(3)
s.sendall(b"POST /Plugin.Activate HTTP/1.0\\r\\nContent-Length: 0\\r\\n\\r\\n")
reply = b""
while True:
    part = s.recv(4096)
    if not part:
        break
    reply += part
print(reply.decode(errors="replace"))
""" % SOCKET


# --- an address handed on --------------------------------------------------------------------

HANDED_ON = {4: "192.168.254.7", 6: "fd80:24e2:f998:72d6::fe07"}   # inside POOL and POOL6


@pytest.mark.parametrize("version", (4, 6))
def test_an_address_handed_on_carries_no_old_flows(calico_stack, version):
    """A keeps pinging X's address (one ping process: one tracked flow).  X is removed and Y,
    in a network whose policy refuses A, gets the address.  The kernel still tracks A's flow,
    and a tracked flow is accepted before policy is looked at, so A would reach Y unless the
    agent forgot the flow when X went (calicoctl/dataplane/conntrack.py)."""
    h1 = calico_stack["hosts"][0]
    etcd = calico_stack["etcd"]
    addr = HANDED_ON[version]
    subnet = ["--subnet", POOL if version == 4 else POOL6] + (["--ipv6"] if version == 6 else [])
    ip_flag = "--ip" if version == 4 else "--ip6"
    try:
        for net in ("handon-old", "handon-new"):
            h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
                      *subnet, net)
        h1.docker("run", "--net", "handon-old", "--name", "handon-A", "-tid", "busybox")
        h1.docker("run", "--net", "handon-old", "--name", "handon-X", ip_flag, addr, "-tid",
                  "busybox")
        a_ip = _addresses(h1, "handon-A", "handon-old")[0 if version == 4 else 1]
        h1.docker("exec", "-d", "handon-A", "ping", "-%d" % version, "-i", "0.2", addr)
        wait_for(lambda: received(h1, "handon-X", a_ip, version) > 0, timeout=30,
                 what="A's pings reaching X")
        h1.docker("rm", "-f", "handon-X")
        h1.docker("run", "--net", "handon-new", "--name", "handon-Y", ip_flag, addr, "-tid",
                  "busybox")
        assert _addresses(h1, "handon-Y", "handon-new")[0 if version == 4 else 1] == addr
        before = received(h1, "handon-Y", a_ip, version)
        pinged = sent(h1, "handon-A", addr, version)
        wait_for(lambda: sent(h1, "handon-A", addr, version) >= pinged + 5, timeout=30,
                 what="A sending five more pings to the address, now Y's")
        assert received(h1, "handon-Y", a_ip, version) == before, \
            "IPv%d pings of A's old flow reached Y past Y's policy" % version
        # Control: once Y's policy lets A in, the same pings do arrive.
        calicoctl(h1, etcd, "profile", "handon-new", "rule", "add", "inbound", "allow", "from",
                  "tag", "handon-old")
        wait_for(lambda: received(h1, "handon-Y", a_ip, version) > before, timeout=30,
                 what="A's pings reaching Y once its policy allows them")
    finally:
        clean_docker(h1)
        for net in ("handon-old", "handon-new"):
            h1.docker("network", "rm", net, check=False)


def test_plugin_socket_is_root_only(calico_stack):
    for h in calico_stack["hosts"]:
        st = os.stat(h.root_path(SOCKET))
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
        assert (st.st_uid, st.st_gid) == (0, 0)
        as_root = h.run([SYSTEM_PYTHON, "-c", CONNECT], check=False)
        assert as_root.returncode == 0 and "NetworkDriver" in as_root.stdout, as_root
        as_nobody = h.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           SYSTEM_PYTHON, "-c", CONNECT], check=False)
        assert as_nobody.returncode == 3 and "refused 13" in as_nobody.stdout, \
            "nobody could use the plugin socket: %r" % (as_nobody,)


_SS_PROC = re.compile(r'\(\("([^"]+)"')


def listeners(host):
    """[(proto, address, port, process)] of every listening TCP and bound UDP socket."""
    out = host.run(["ss", "-H", "-ltnup"]).stdout
    found = []
    for line in out.splitlines():
        words = line.split()
        if len(words) < 5:
            continue
        local = words[4]
        addr, _, port = local.rpartition(":")
        addr = addr.strip("[]").split("%")[0]
        m = _SS_PROC.search(line)
        found.append((words[0], addr, int(port), m.group(1) if m else "?"))
    return found


def _loopback(addr):
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False          # '*': every address


def _bird_major(host):
    from calicoctl.felix.bird import bird_version
    result = host.run(["bird", "--version"])
    version = bird_version(result.stdout + result.stderr)
    assert version, "bird --version on %s: %r" % (host.name, result.stderr)
    return version[0]


def test_nothing_listens_beyond_loopback_but_bird(calico_stack):
    for h in calico_stack["hosts"]:
        # The agent runs BIRD and BIRD6 on BIRD 1.x, one BIRD for both families on BIRD 2;
        # wait until each has opened its BGP port.
        daemons = {"bird"} if _bird_major(h) >= 2 else {"bird", "bird6"}
        wait_for(lambda h=h, d=daemons: {p for (_, _, port, p) in listeners(h) if port == 179}
                 >= d, timeout=30, what="%s on %s" % (" and ".join(sorted(daemons)), h.name))
        plugin = calico_stack["plugins"][calico_stack["hosts"].index(h)]
        assert plugin.proc.poll() is None, "the plugin is not running"
        exposed = [l for l in listeners(h) if not _loopback(l[1])
                   and not (l[0] == "tcp" and l[2] == 179 and l[3] in ("bird", "bird6"))]
        assert not exposed, "%s: listening beyond loopback: %s" % (h.name, exposed)

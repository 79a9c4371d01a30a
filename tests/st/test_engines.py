"""What changed for remote drivers between Docker 20.10, 26.1 and 28.5, on the real engines.

Each test drives one change through `docker` on namespace hosts running that engine, with the
plugin serving from this repository: Docker's own options beside --opt (28), the IPv6 "any pool"
that made Docker ask for a pool forever when the host has an IPv6 nameserver (all engines),
Docker 28's gateway-allocation check, the default route and DNS when a container leaves the
network that had them, -p on a Calico network, IPv6 and IPv4 networks in one container, and
Docker 27+'s EndpointOperInfo calls while it restores containers.
"""

import contextlib
import json
import re

import pytest

from tests.st.harness import wait_for
from tests.st.plugin_helpers import (PYTHON, PluginProcess, allow_forwarding, calicoctl,
                                     clean_docker, container_ip, endpoint_id, etcd_keys,
                                     host_links, ping, wipe_etcd)

pytestmark = pytest.mark.engines("host", "trixie", "forky")

POOL = "192.168.0.0/16"
POOL_B = "10.68.0.0/24"
POOL6 = "fd80:24e2:f998:72d6::/64"
# Documentation addresses (RFC 3849, RFC 5737): nothing answers them, and they lie in no pool.
FAR_NAMESERVER6 = "2001:db8::53"
DNS_ANSWER = "203.0.113.7"

# A DNS server answering every A query with argv[2], on argv[1]:53 (UDP, what Docker's embedded
# DNS forwards with).  Standard library only: it runs on the Python of any engine's root.
DNS_STUB = r"""
import socket, struct, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 53))
answer = socket.inet_aton(sys.argv[2])
print("listening", flush=True)
while True:
    data, peer = sock.recvfrom(4096)
    end = 12
    while end < len(data) and data[end]:
        end += data[end] + 1
    question = data[12:end + 5]
    qtype = struct.unpack("!H", data[end + 1:end + 3])[0] if len(data) >= end + 3 else 0
    record = (b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + answer) if qtype == 1 else b""
    sock.sendto(struct.pack("!HHHHHH", struct.unpack("!H", data[:2])[0], 0x8180, 1,
                            1 if record else 0, 0, 0) + question + record, peer)
    print("answered", peer[0], qtype, flush=True)
"""


@pytest.fixture(scope="module")
def plugins(two_hosts, etcd_on_bridge):
    procs = [PluginProcess(h, etcd_on_bridge).start() for h in two_hosts]
    for h in two_hosts:
        allow_forwarding(h)
    yield procs
    for p in procs:
        p.stop()


@pytest.fixture
def clean(two_hosts, etcd_on_bridge, plugins):
    yield
    for h in two_hosts:
        clean_docker(h)
    wipe_etcd(etcd_on_bridge)


def engine_major(host):
    return int(host.engine_version().split(".")[0])


def calls(plugin, name, since=0):
    """[(request, answer)] of every `name` call in the plugin's log after character `since`
    (app.py logs one line per call at debug level)."""
    found = []
    line = r"call (\S+) took [\d.]+ ms \(etcd: [^)]*\) request=(.*) answer=(.*)$"
    for match in re.finditer(line, plugin.log()[since:], re.MULTILINE):
        if match.group(1) == name:
            found.append((json.loads(match.group(2) or "{}"), json.loads(match.group(3))))
    return found


@contextlib.contextmanager
def resolv_conf(host, text):
    """The host's /etc/resolv.conf reads `text` while inside: a file bound over it in the
    host's own mount namespace (the machine's file, which the "host" engine's hosts share, is
    never written).  Docker and the plugin both read it from there."""
    host.run(["sh", "-c", "printf '%s' > /run/st-resolv.conf && "
              "mount --bind /run/st-resolv.conf /etc/resolv.conf" % text])
    try:
        assert host.run(["cat", "/etc/resolv.conf"]).stdout == text
        yield
    finally:
        host.run(["umount", "/etc/resolv.conf"])


@contextlib.contextmanager
def dns_stub(host):
    """DNS_STUB on the host's underlay address; the host's resolv.conf names it."""
    proc = host.popen([PYTHON, "-c", DNS_STUB, host.ip, DNS_ANSWER], "dns")
    try:
        wait_for(lambda: "listening" in host.log_path("dns").read_text(), timeout=15,
                 what="the DNS stub")
        with resolv_conf(host, "nameserver %s\n" % host.ip):
            yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def nslookup(host, container):
    """The A records the container's resolver returns for a name only DNS_STUB knows."""
    result = host.docker("exec", container, "nslookup", "-type=a", "example.test",
                         check=False, timeout=60)
    return re.findall(r"Address:\s*(\d+\.\d+\.\d+\.\d+)$", result.stdout, re.MULTILINE)


def routes(host, container, family="-4"):
    return host.docker("exec", container, "ip", family, "route").stdout


def assert_endpoints_gone(host, etcd):
    """No workload veth on the host, and no endpoint record or address handle in etcd; the
    pool that every test adds first shows the etcd read saw real data."""
    def gone():
        keys = etcd_keys(etcd)
        assert "/calico/v1/ipam/v4/pool/192.168.0.0-16" in keys, sorted(keys)
        left = [k for k in keys if "/workload/" in k or "/ipam/v2/handle/" in k]
        return host_links(host) == [] and not left
    wait_for(gone, timeout=15, what="no cali veth, endpoint or address handle for %s" % host.name)


# --- 1. Docker's own options beside the user's --opt ---------------------------------------

def test_docker_owned_options_are_accepted(two_hosts, etcd_on_bridge, plugins, clean):
    h1, _ = two_hosts
    calicoctl(h1, etcd_on_bridge, "pool", "add", POOL)
    since = len(plugins[0].log())
    # Docker 28 applies these itself (gratuitous ARPs after an interface comes up); older
    # engines pass any key through.  Docker checks the value (0-3), so 0 is valid everywhere.
    h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
              "--opt", "com.docker.network.advertise_addr_nmsgs=0", "--opt", "mtu=1400", "quiet")
    (request, answer), = calls(plugins[0], "NetworkDriver.CreateNetwork", since)
    generic = request["Options"]["com.docker.network.generic"]
    assert generic == {"com.docker.network.advertise_addr_nmsgs": "0", "mtu": "1400"}
    assert answer == {}
    if engine_major(h1) >= 28:
        # 28 also takes IPv4 on/off as an option, and leaves it among the generic ones.
        h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
                  "--opt", "com.docker.network.enable_ipv4=true", "quiet4")
    h1.docker("run", "--net", "quiet", "--name", "o1", "-tid", "busybox")
    h1.docker("run", "--net", "quiet", "--name", "o2", "-tid", "busybox")
    assert "mtu 1400" in h1.docker("exec", "o1", "ip", "link", "show", "eth0").stdout
    assert ping(h1, "o1", container_ip(h1, "o2", "quiet")).returncode == 0
    # A key of the user's that Calico does not know is still refused, with the known ones.
    result = h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
                       "--opt", "colour=blue", "loud", check=False)
    assert result.returncode != 0
    assert "Unknown --opt colour" in result.stderr and "nat-outgoing" in result.stderr, \
        result.stderr


# --- 2. The IPv6 "any pool" and the host's IPv6 nameservers ---------------------------------

def test_ipv6_network_with_an_ipv6_nameserver(two_hosts, etcd_on_bridge, plugins, clean):
    """Docker refuses a new network's pool while it holds one of the host's nameservers and
    asks again, without end (28: even after resolv.conf changes); it exempts only 0.0.0.0/0, so
    an IPv6 "any pool" of ::/0 hung `docker network create --ipv6` on every engine."""
    h1, _ = two_hosts
    etcd = etcd_on_bridge
    calicoctl(h1, etcd, "pool", "add", POOL)
    calicoctl(h1, etcd, "pool", "add", POOL6)
    with resolv_conf(h1, "nameserver %s\nnameserver %s\n" % (h1.ip, FAR_NAMESERVER6)):
        since = len(plugins[0].log())
        # The timeout only bounds a hang; the call answers at once when it works.
        h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
                  "--ipv6", "net6", timeout=60)
        v6_requests = [r for r, _ in calls(plugins[0], "IpamDriver.RequestPool", since)
                       if r.get("V6")]
        assert len(v6_requests) == 1, v6_requests
        ipam = json.loads(h1.docker("network", "inspect", "--format", "{{json .IPAM.Config}}",
                                    "net6").stdout)
        assert POOL6 in [c.get("Subnet") for c in ipam], ipam
        h1.docker("run", "--net", "net6", "--name", "v1", "-tid", "busybox")
        h1.docker("run", "--net", "net6", "--name", "v2", "-tid", "busybox")
        ip6 = json.loads(h1.docker("inspect", "--format", "{{json .NetworkSettings.Networks}}",
                                   "v2").stdout)["net6"]["GlobalIPv6Address"]
        assert ip6.startswith("fd80:24e2:f998:72d6:"), ip6
        result = h1.docker("exec", "v1", "ping", "-6", "-c", "1", "-W", "5", ip6, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    # A nameserver inside the pools' span: Docker would loop again, so the plugin says so.
    with resolv_conf(h1, "nameserver fd80:24e2:f998:72d6::53\n"):
        result = h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
                           "--ipv6", "net6b", check=False, timeout=60)
        assert result.returncode != 0
        assert "fd80:24e2:f998:72d6::53" in result.stderr and "--subnet" in result.stderr, \
            result.stderr
        # With --subnet Docker checks nothing against the nameservers.
        h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
                  "--ipv6", "--subnet", POOL6, "net6b", timeout=60)


# --- 3. Docker 28's gateway-allocation check -------------------------------------------------

def test_docker_ipam_subnet_keeps_no_gateway_address(two_hosts, etcd_on_bridge, plugins, clean):
    """Workloads route through the link-local gateway on their veth; Docker 28 asks the driver
    whether the subnet needs a gateway address, and no longer holds the first one back."""
    h1, _ = two_hosts
    calicoctl(h1, etcd_on_bridge, "pool", "add", POOL)
    since = len(plugins[0].log())
    h1.docker("network", "create", "--driver", "calico", "--subnet", "10.65.0.0/24", "dnet")
    h1.docker("run", "--net", "dnet", "--name", "g1", "-tid", "busybox")
    h1.docker("run", "--net", "dnet", "--name", "g2", "-tid", "busybox")
    checks = calls(plugins[0], "NetworkDriver.GwAllocCheck", since)
    ips = [container_ip(h1, name, "dnet") for name in ("g1", "g2")]
    if engine_major(h1) >= 28:
        assert [answer for _, answer in checks] == [{"SkipIPv4": True, "SkipIPv6": True}]
        assert ips == ["10.65.0.1", "10.65.0.2"]
    else:
        assert checks == []
        assert ips == ["10.65.0.2", "10.65.0.3"]      # Docker holds 10.65.0.1 as a gateway
    info = json.loads(h1.docker("inspect", "--format", "{{json .NetworkSettings.Networks}}",
                                "g1").stdout)["dnet"]
    assert info["Gateway"] == "169.254.1.1"
    assert "default via 169.254.1.1 dev eth0" in routes(h1, "g1")
    assert ping(h1, "g1", ips[1]).returncode == 0


# --- 4. Leaving the network that had the default route ---------------------------------------

def test_leaving_the_first_network_keeps_a_default_route_and_dns(two_hosts, etcd_on_bridge,
                                                                 plugins, clean):
    h1, _ = two_hosts
    etcd = etcd_on_bridge
    calicoctl(h1, etcd, "pool", "add", POOL)
    calicoctl(h1, etcd, "pool", "add", POOL_B)
    with dns_stub(h1):
        h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
                  "--subnet", POOL, "net1")
        h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
                  "--subnet", POOL_B, "net2")
        h1.docker("run", "--net", "net1", "--name", "x1", "-tid", "busybox")
        assert nslookup(h1, "x1") == [DNS_ANSWER]
        h1.docker("network", "connect", "net2", "x1")
        table = routes(h1, "x1")
        # Docker keeps the default on net1 (it sorts first); net2's pool goes by its own
        # interface and its own link-local gateway.
        assert table.count("default") == 1 and "default via 169.254.1.1 dev eth0" in table, \
            table
        assert "%s via 169.254.1.2 dev eth1" % POOL_B in table, table
        h1.docker("network", "disconnect", "net1", "x1")
        table = routes(h1, "x1")
        assert "default via 169.254.1.2 dev eth1" in table, table
        assert nslookup(h1, "x1") == [DNS_ANSWER]
        assert ping(h1, "x1", h1.ip).returncode == 0
        if engine_major(h1) >= 28:
            # Every interface has a gateway, so Docker 28's gw-priority can choose one.
            h1.docker("network", "connect", "--gw-priority", "10", "net1", "x1")
            table = routes(h1, "x1")
            assert table.count("default") == 1 and "default via 169.254.1.1 dev" in table, \
                table
            assert nslookup(h1, "x1") == [DNS_ANSWER]


# --- 5. -p on a Calico network ----------------------------------------------------------------

def test_published_ports_are_refused(two_hosts, etcd_on_bridge, plugins, clean):
    """Docker publishes ports only on its bridge driver: for Calico, -p did nothing at all
    (no DNAT, no docker-proxy, `docker port` empty) while `docker run` succeeded."""
    h1, _ = two_hosts
    etcd = etcd_on_bridge
    calicoctl(h1, etcd, "pool", "add", POOL)
    h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico", "net1")
    result = h1.docker("run", "-d", "-p", "8080:80", "--net", "net1", "--name", "web",
                       "busybox", "httpd", "-f", "-p", "80", check=False)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    refusal = [line for line in lines if "do not publish ports" in line]
    assert len(refusal) == 1 and "(-p 8080:80/tcp)" in refusal[0], result.stderr
    # Docker undid the Join: nothing of the endpoint is left.
    assert_endpoints_gone(h1, etcd)
    h1.docker("rm", "-f", "web")
    # An exposed port alone is no request to publish: the container runs.
    since = len(plugins[0].log())
    h1.docker("run", "-d", "--expose", "80", "--net", "net1", "--name", "web", "busybox",
              "httpd", "-f", "-p", "80")
    (request, answer), = calls(plugins[0], "NetworkDriver.ProgramExternalConnectivity", since)
    assert request["Options"]["com.docker.network.endpoint.exposedports"] and answer == {}
    h1.docker("run", "--net", "net1", "--name", "client", "-tid", "busybox")
    assert ping(h1, "client", container_ip(h1, "web", "net1")).returncode == 0


# --- 6. An IPv6 network and an IPv4 network in one container ---------------------------------

def test_ipv6_and_ipv4_networks_in_one_container(two_hosts, etcd_on_bridge, plugins, clean):
    """Docker 26.0.2+ turns IPv6 off on interfaces that got no IPv6 address; the container's
    IPv6 network works whichever of its networks it joined first."""
    h1, _ = two_hosts
    etcd = etcd_on_bridge
    calicoctl(h1, etcd, "pool", "add", POOL)
    calicoctl(h1, etcd, "pool", "add", POOL6)
    h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico", "--ipv6",
              "net6")
    h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico", "net4")
    h1.docker("run", "--net", "net6", "--name", "d6", "-tid", "busybox")     # IPv6 first
    h1.docker("network", "connect", "net4", "d6")
    h1.docker("run", "--net", "net4", "--name", "d4", "-tid", "busybox")     # IPv4 first
    h1.docker("network", "connect", "net6", "d4")
    for name, v4_if, v6_if in (("d6", "eth1", "eth0"), ("d4", "eth0", "eth1")):
        disabled = h1.docker("exec", name, "cat", "/proc/sys/net/ipv6/conf/%s/disable_ipv6"
                             % v4_if).stdout.strip()
        enabled = h1.docker("exec", name, "cat", "/proc/sys/net/ipv6/conf/%s/disable_ipv6"
                            % v6_if).stdout.strip()
        assert (disabled, enabled) == ("1", "0"), name
        assert "default via fe80::1 dev %s" % v6_if in routes(h1, name, "-6"), name
        assert routes(h1, name).count("default via 169.254.1.") == 1, name
    networks = {name: json.loads(h1.docker("inspect", "--format",
                                           "{{json .NetworkSettings.Networks}}", name).stdout)
                for name in ("d6", "d4")}
    for src, dst in (("d4", "d6"), ("d6", "d4")):
        ip6 = networks[dst]["net6"]["GlobalIPv6Address"]
        result = h1.docker("exec", src, "ping", "-6", "-c", "1", "-W", "5", ip6, check=False)
        assert result.returncode == 0, (src, dst, result.stdout + result.stderr)
        assert ping(h1, src, networks[dst]["net4"]["IPAddress"]).returncode == 0, (src, dst)


# --- 7. Docker 27+ asks for endpoint details while it restores containers -------------------

def test_dockerd_restart_with_live_restore(two_hosts, etcd_on_bridge, plugins, clean):
    h1, _ = two_hosts
    etcd = etcd_on_bridge
    calicoctl(h1, etcd, "pool", "add", POOL)
    h1.stop_dockerd()
    h1.start_dockerd(extra_args=["--live-restore"])
    try:
        h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico", "net1")
        h1.docker("run", "--net", "net1", "--name", "l1", "-tid", "busybox")
        h1.docker("run", "--net", "net1", "--name", "l2", "-tid", "busybox")
        ep = endpoint_id(h1, "l1", "net1")
        since = len(plugins[0].log())
        h1.stop_dockerd()
        h1.start_dockerd(extra_args=["--live-restore"])
        asked = [r["EndpointID"] for r, answer in
                 calls(plugins[0], "NetworkDriver.EndpointOperInfo", since)
                 if answer == {"Value": {}}]
        if engine_major(h1) >= 27:
            assert ep in asked, asked
        else:
            assert asked == []
        assert ping(h1, "l2", container_ip(h1, "l1", "net1")).returncode == 0
    finally:
        clean_docker(h1)
        h1.stop_dockerd()
        h1.start_dockerd()

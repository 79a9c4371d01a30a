"""Names across hosts on the real engines: `calicoctl dns serve` on both namespace hosts beside
the agent and the plugin (tests/st/calico_stack.py), the hosts' resolv.conf pointing at an
upstream DNS server of their own on the testbed bridge (tests/st/dns_helpers.py).

  - the seed's step as written, with Calico IPAM and with Docker's: `docker exec workload-A ping
    -c 4 workload-E.net1` on calico-01 while E runs on calico-02;
  - scoped like Docker's own DNS: another network's names get nothing, a container in two
    networks is answered in the asker's, AAAA for an IPv6 network, a name goes with `docker rm`
    and comes back with `docker run`;
  - every other name is answered as before, byte for byte, also when the upstream fails, and
    no name we answer ever leaves the host;
  - only workloads are answered; Docker's own rules in the workload's namespace are as
    calicoctl/dnsproxy/rules.py assumes on this engine, ours above them;
  - a clean stop hands the workloads back to Docker, a kill leaves them unanswered until the
    next start, and each start answers again.
"""

import ipaddress
import signal
import struct

import pytest

from tests.st.calico_stack import learnt
from tests.st.dns_helpers import (UPSTREAM_ANSWER, UPSTREAM_IP, DnsProcess, Upstream, adopted,
                                  answer_of, ask, container_ips, nat_rules, resolv_conf)
from tests.st.harness import wait_for
from tests.st.plugin_helpers import PYTHON, clean_docker

pytestmark = pytest.mark.engines("host", "trixie", "forky")

POOL = "192.168.0.0/16"
POOL_B = "10.68.0.0/24"               # a second network's own pool, for containers in two
DOCKER_SUBNETS = {"net1": "10.70.0.0/24", "net2": "10.70.1.0/24", "net3": "10.70.2.0/24"}
SEED = {"workload-A": (0, "net1"), "workload-B": (0, "net2"), "workload-C": (0, "net1"),
        "workload-D": (1, "net3"), "workload-E": (1, "net1")}
MARK = 0xCA1D05                        # calicoctl/dnsproxy/rules.py MARK: Docker's resolver alone
NOERROR, SERVFAIL, NXDOMAIN = 0, 2, 3
ROUTES = 60                            # seconds for BGP to carry a new workload's route


@pytest.fixture(scope="module")
def dns_stack(testbed, calico_stack):
    from ipaddress import ip_network

    from calicoctl.datastore import pools
    from calicoctl.datastore.models import Pool
    hosts, store = calico_stack["hosts"], calico_stack["store"]
    # NAT to the upstream: on 20.10 and 26.1 Docker forwards from the workload's namespace.
    pools.add_pool(store, Pool(ip_network(POOL), masquerade=True))
    pools.add_pool(store, Pool(ip_network(POOL_B), masquerade=True))
    with Upstream(testbed.bridge) as upstream, \
            resolv_conf(hosts, "nameserver %s\n" % UPSTREAM_IP):
        services = []
        try:
            services = [DnsProcess(h, calico_stack["etcd"]).start() for h in hosts]
            yield dict(calico_stack, upstream=upstream, dns=services)
        finally:
            for h in hosts:
                clean_docker(h)
            for s in services:
                s.stop()


def make_seed(stack, ipam="calico"):
    """The seed's networks on both hosts and its five workloads; returns {name: ipv4}."""
    hosts = stack["hosts"]
    for i, h in enumerate(hosts):
        for net in ("net1", "net2", "net3"):
            if ipam == "calico":
                h.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
                         net)
            else:
                subnet = DOCKER_SUBNETS[net]
                ip_range = subnet.replace(".0/24", ".%d/26" % (64 * i))
                h.docker("network", "create", "--driver", "calico", "--opt",
                         "nat-outgoing=true", "--subnet", subnet, "--ip-range", ip_range, net)
    for name, (i, net) in SEED.items():
        hosts[i].docker("run", "--net", net, "--name", name, "-tid", "busybox")
    return {name: container_ips(hosts[i], name)[net][0] for name, (i, net) in SEED.items()}


@pytest.fixture
def seed(dns_stack):
    addresses = make_seed(dns_stack)
    try:
        h1 = dns_stack["hosts"][0]
        wait_for(lambda: all(adopted(h1, n) for n in ("workload-A", "workload-B")),
                 timeout=30, what="calico-01's workloads answered")
        yield addresses
    finally:
        for h in dns_stack["hosts"]:
            clean_docker(h)


def a_records(raw):
    assert raw is not None, "no answer"
    rcode, addresses = answer_of(raw)
    assert rcode == NOERROR, rcode
    return addresses


# --- 1. the seed's step ---------------------------------------------------------------------

@pytest.mark.parametrize("ipam", ["calico", "default"])
def test_the_seed_step(dns_stack, ipam):
    h1, h2 = dns_stack["hosts"]
    try:
        addresses = make_seed(dns_stack, ipam)
        wait_for(lambda: all(adopted(h1, n) for n in ("workload-A", "workload-C")) and
                 adopted(h2, "workload-E"), timeout=30, what="the workloads answered")
        wait_for(lambda: ipaddress.ip_address(addresses["workload-E"]) in learnt(h1),
                 timeout=ROUTES, what="calico-01's route to workload-E")
        result = h1.docker("exec", "workload-A", "ping", "-c", "4", "workload-E.net1",
                           check=False, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "PING workload-E.net1 (%s)" % addresses["workload-E"] in result.stdout
        assert "4 packets received" in result.stdout
        # The same host's name, as Docker answers it; the bare name; the other direction.
        for host, source, target, ip in ((h1, "workload-A", "workload-C.net1", "workload-C"),
                                         (h1, "workload-C", "workload-E", "workload-E"),
                                         (h2, "workload-E", "workload-A.net1", "workload-A")):
            result = host.docker("exec", source, "ping", "-c", "1", "-W", "5", target,
                                 check=False, timeout=60)
            assert "(%s)" % addresses[ip] in result.stdout, result.stdout + result.stderr
    finally:
        for h in (h1, h2):
            clean_docker(h)


# --- 2. scoped like Docker's own DNS ----------------------------------------------------------

def test_scoped_like_dockers_own_dns(dns_stack):
    h1, h2 = dns_stack["hosts"]
    try:
        for h in (h1, h2):
            h.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
                     "--subnet", POOL, "net1")
            h.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
                     "--subnet", POOL_B, "net2")
            h.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
                     "--ipv6", "net6")
        h1.docker("run", "--net", "net1", "--name", "workload-A", "-tid", "busybox")
        h1.docker("run", "--net", "net2", "--name", "workload-B", "-tid", "busybox")
        h1.docker("run", "--net", "net6", "--name", "six-A", "-tid", "busybox")
        h2.docker("run", "--net", "net1", "--name", "workload-E", "-tid", "busybox")
        h2.docker("run", "--net", "net1", "--name", "workload-X", "-tid", "busybox")
        h2.docker("network", "connect", "net2", "workload-X")
        h2.docker("run", "--net", "net6", "--name", "six-B", "-tid", "busybox")
        x = container_ips(h2, "workload-X")
        e = container_ips(h2, "workload-E")["net1"][0]
        six_b = container_ips(h2, "six-B")["net6"][1]
        assert six_b, "six-B has no IPv6 address"
        wait_for(lambda: all(adopted(h1, n) for n in ("workload-A", "workload-B", "six-A")),
                 timeout=30, what="calico-01's workloads answered")
        wait_for(lambda: answer_of(ask(h1, "workload-A", "workload-X")) is not None and
                 answer_of(ask(h1, "workload-A", "workload-X"))[1] == [x["net1"][0]],
                 timeout=30, what="workload-X's name on calico-01")
        # The asker's network decides which of X's addresses it gets.
        assert a_records(ask(h1, "workload-B", "workload-X")) == [x["net2"][0]]
        assert a_records(ask(h1, "workload-B", "workload-X.net2")) == [x["net2"][0]]
        assert a_records(ask(h1, "workload-A", "workload-X.net1")) == [x["net1"][0]]
        # Another network's names: nothing, exactly as Docker says for them.
        for name in ("workload-E", "workload-E.net1", "workload-A.net1", "workload-X.net1"):
            raw = ask(h1, "workload-B", name)
            assert answer_of(raw) == (NXDOMAIN, []), name
            assert raw == ask(h1, "workload-B", name, mark=MARK), name
        # AAAA in an IPv6 network; a v4-only name has no AAAA (NOERROR, no records).
        assert a_records(ask(h1, "six-A", "six-B.net6", qtype=28)) == [six_b]
        assert a_records(ask(h1, "workload-A", "workload-E.net1", qtype=28)) == []
        # Gone soon after `docker rm`, back after a new `docker run` of the same name.
        h2.docker("rm", "-f", "workload-E")
        wait_for(lambda: answer_of(ask(h1, "workload-A", "workload-E.net1")) == (NXDOMAIN, []),
                 timeout=30, what="workload-E's name to go")
        h2.docker("run", "--net", "net1", "--name", "workload-E", "-tid", "busybox")
        e2 = container_ips(h2, "workload-E")["net1"][0]
        wait_for(lambda: answer_of(ask(h1, "workload-A", "workload-E.net1")) == (NOERROR, [e2]),
                 timeout=30, what="workload-E's name to come back (%s, was %s)" % (e2, e))
    finally:
        for h in (h1, h2):
            clean_docker(h)


# --- 3. every other name as before ------------------------------------------------------------

OTHER_NAMES = [("workload-A", "workload-C.net1"), ("workload-A", "workload-C"),
               ("workload-A", "example.test"), ("workload-A", "nx.test"),
               ("workload-A", "fail.test"), ("workload-B", "workload-E.net1"),
               ("workload-A", "workload-D.net3")]


def test_every_other_name_is_answered_as_before(dns_stack, seed):
    h1 = dns_stack["hosts"][0]
    upstream = dns_stack["upstream"]
    service = dns_stack["dns"][0]

    def answers():
        return {(src, name, tcp): ask(h1, src, name, tcp=tcp)
                for src, name in OTHER_NAMES for tcp in (False, True)}

    with_us = answers()
    assert a_records(with_us[("workload-A", "example.test", False)]) == [UPSTREAM_ANSWER]
    assert a_records(with_us[("workload-A", "workload-C.net1", False)]) == [seed["workload-C"]]
    assert answer_of(with_us[("workload-A", "fail.test", True)]) == (SERVFAIL, [])
    # Before: Docker's resolver alone, with the service stopped.
    service.stop()
    try:
        assert not adopted(h1, "workload-A")
        assert answers() == with_us
    finally:
        service.start()
    wait_for(lambda: adopted(h1, "workload-A"), timeout=30, what="workload-A answered again")
    # Our answers never leave the host; what Docker forwards still does.
    asked_before = len(upstream.asked())
    assert a_records(ask(h1, "workload-A", "workload-E.net1")) == [seed["workload-E"]]
    assert a_records(ask(h1, "workload-A", "example.test")) == [UPSTREAM_ANSWER]
    assert upstream.asked()[asked_before:] == ["example.test"]
    # A failing upstream: the same failure as Docker alone gives.
    upstream.stop()
    try:
        for name in ("example.test", "nx.test"):
            ours = ask(h1, "workload-A", name, timeout=20)
            alone = ask(h1, "workload-A", name, timeout=20, mark=MARK)
            assert (answer_of(ours) and answer_of(ours)[0]) == \
                (answer_of(alone) and answer_of(alone)[0]), (name, ours, alone)
        # ...while names across hosts still resolve.
        assert a_records(ask(h1, "workload-A", "workload-E.net1")) == [seed["workload-E"]]
    finally:
        upstream.start()


# --- 4. only workloads ------------------------------------------------------------------------

# Sends one query to argv[1]:argv[2] over UDP; prints "answered" or "silence".
PROBE = r"""
import socket, struct, sys
q = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x0aworkload-e\x04net1\x00\x00\x01\x00\x01"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
s.sendto(q, (sys.argv[1], int(sys.argv[2])))
try:
    s.recvfrom(4096)
    print("answered")
except (socket.timeout, ConnectionError):
    print("silence")
"""


def test_only_workloads_are_answered_and_dockers_rules_are_as_assumed(dns_stack, seed):
    h1, h2 = dns_stack["hosts"]
    rules = nat_rules(h1, "workload-A")
    print("calico-01 %s, workload-A's nat rules:\n%s" % (h1.engine_version(), rules))
    output = [line for line in rules.splitlines() if line.startswith("-A OUTPUT ")]
    assert "-p udp" in output[0] and "--dport 53" in output[0] and "calico-dns" in output[0]
    assert "-p tcp" in output[1] and "--dport 53" in output[1] and "calico-dns" in output[1]
    assert output[2] == "-A OUTPUT -d 127.0.0.11/32 -j DOCKER_OUTPUT", output
    docker = [line for line in rules.splitlines() if line.startswith("-A DOCKER_OUTPUT ")]
    assert len(docker) == 2 and all("-j DNAT --to-destination 127.0.0.11:" in d
                                    for d in docker), docker
    # Nothing of ours listens in the hosts' own namespaces...
    for h in (h1, h2):
        listening = h.run(["ss", "-Hlnu"]).stdout + h.run(["ss", "-Hlnt"]).stdout
        assert "127.0.0.11" not in listening and ":53153 " not in listening, listening
    # ...and in the workload's, only on 127.0.0.11, which no packet from outside may carry.
    from tests.st.dns_helpers import sandbox_key
    inside = h1.run(["nsenter", "--net=" + sandbox_key(h1, "workload-A"), "ss", "-Hlnu"]).stdout
    local = [line.split()[3] for line in inside.splitlines()]
    assert local and all(a.startswith("127.0.0.11:") for a in local), inside
    # From the other host and from A's own host: nothing answers at A's address.
    for h in (h2, h1):
        for port in ("53", "53153"):
            out = h.run([PYTHON, "-c", PROBE, seed["workload-A"], port]).stdout.strip()
            assert out == "silence", (h.name, port)


# --- 5. restarts ------------------------------------------------------------------------------

def test_a_restart_breaks_names_no_longer_than_the_restart(dns_stack, seed):
    h1 = dns_stack["hosts"][0]
    service = dns_stack["dns"][0]
    e = seed["workload-E"]
    assert a_records(ask(h1, "workload-A", "workload-E.net1")) == [e]
    # A clean stop hands the workload back to Docker: its own names keep working.
    service.stop(signal.SIGTERM)
    try:
        assert not adopted(h1, "workload-A")
        assert a_records(ask(h1, "workload-A", "workload-C.net1")) == [seed["workload-C"]]
        assert a_records(ask(h1, "workload-A", "example.test")) == [UPSTREAM_ANSWER]
        assert answer_of(ask(h1, "workload-A", "workload-E.net1")) == (NXDOMAIN, [])
    finally:
        service.start()
    wait_for(lambda: answer_of(ask(h1, "workload-A", "workload-E.net1")) == (NOERROR, [e]),
             timeout=30, what="workload-E.net1 after a clean restart")
    # Killed: our rules stay and lead nowhere until the next start takes the workload again.
    service.stop(signal.SIGKILL)
    try:
        assert adopted(h1, "workload-A")
        assert ask(h1, "workload-A", "workload-C.net1", timeout=1) is None
    finally:
        service.start()
    wait_for(lambda: answer_of(ask(h1, "workload-A", "workload-E.net1")) == (NOERROR, [e]),
             timeout=30, what="workload-E.net1 after a kill and a start")
    assert a_records(ask(h1, "workload-A", "workload-C.net1")) == [seed["workload-C"]]
    rules = nat_rules(h1, "workload-A")
    assert rules.count("calico-dns") == 2, rules


def test_the_client_sees_answers_with_its_own_id(dns_stack, seed):
    """The client script asks with id 0x5ca1 (dns_helpers.CLIENT): forwarded and answered
    queries both come back under it."""
    h1 = dns_stack["hosts"][0]
    for name in ("workload-E.net1", "example.test", "workload-C.net1"):
        raw = ask(h1, "workload-A", name)
        assert struct.unpack("!H", raw[:2])[0] == 0x5ca1, name

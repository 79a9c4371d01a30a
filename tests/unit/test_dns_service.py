"""`calicoctl dns serve` for real, without Docker: the service reads the real etcd and adopts
scratch network namespaces that carry a stand-in for Docker's resolver and Docker's exact nat
rules (tests/unit/dns_support.py).  Queries are sent from inside those namespaces, as a
workload sends them.  Needs root."""

import collections
import json
import socket
import threading

import dns.message
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from calicoctl.datastore import keys
from calicoctl.dnsproxy import rules, sandboxes
from calicoctl.dnsproxy.server import Answerer, Limits
from calicoctl.dnsproxy.service import DnsService
from calicoctl.errors import DataplaneError
from tests.st.harness import wait_for
from tests.unit.dns_support import UPSTREAM_ANSWER, DockerNetns, needs_root_and_netns

pytestmark = pytest.mark.skipif(needs_root_and_netns() is not None,
                                reason=str(needs_root_and_netns()))

HOST, OTHER = "calico-01", "calico-02"
E_ADDRESS = "192.168.0.65"


def put_network(store, network_id, name, host):
    store.set(keys.libnetwork_network(network_id), json.dumps({"name": name, "host": host}))


def put_endpoint(store, host, eid, network_id, container, v4=(), v6=(), sandbox=None):
    record = {"state": "active", "name": "cali" + eid[:11], "mac": "ee:ee:ee:ee:ee:ee",
              "profile_ids": [], "ipv4_nets": ["%s/32" % a for a in v4],
              "ipv6_nets": ["%s/128" % a for a in v6], "network_id": network_id,
              "container_name": container}
    if sandbox:
        record["sandbox"] = sandbox
    key = keys.endpoint(host, "libnetwork", "libnetwork", eid)
    store.set(key, json.dumps(record))
    return key


class Running:
    """A DnsService on its own thread; stop() is a clean stop (SIGTERM's path)."""

    def __init__(self, store, answerer=None, refresh=30.0):
        self.service = DnsService(store, HOST, docker_socket=None, root="", refresh=refresh,
                                  answerer=answerer)
        self.thread = threading.Thread(target=self.service.run, daemon=True)
        self.thread.start()

    def adopted(self, *namespaces):
        wait_for(lambda: all(ns.path in self.service.adopted for ns in namespaces),
                 timeout=10, retry_on=(),
                 what="the service to adopt %s" % [ns.name for ns in namespaces])

    def stop(self):
        self.service.stop()
        self.thread.join(15)
        assert not self.thread.is_alive()


@pytest.fixture
def workloads(store):
    """The seed's networks: A (net1) and B (net2) here, in scratch namespaces; E (net1) and D
    (net3) on the other host.  Docker here knows A and B's own neighbour workload-C."""
    a = DockerNetns("calico-dnsut-a", local={"workload-c.net1": "192.168.0.2",
                                             "workload-c": "192.168.0.2"})
    b = None
    try:
        b = DockerNetns("calico-dnsut-b")
        put_network(store, "n1", "net1", HOST)
        put_network(store, "n2", "net2", HOST)
        put_network(store, "m1", "net1", OTHER)
        put_network(store, "m3", "net3", OTHER)
        put_endpoint(store, HOST, "a" * 64, "n1", "workload-A", ["192.168.0.1"], sandbox=a.path)
        put_endpoint(store, HOST, "c" * 64, "n1", "workload-C", ["192.168.0.2"])
        put_endpoint(store, HOST, "b" * 64, "n2", "workload-B", ["192.168.1.1"], sandbox=b.path)
        put_endpoint(store, OTHER, "e" * 64, "m1", "workload-E", [E_ADDRESS], ["fd80::65"])
        put_endpoint(store, OTHER, "d" * 64, "m3", "workload-D", ["192.168.2.1"])
        yield a, b
    finally:
        a.close()
        if b is not None:
            b.close()


@pytest.fixture
def serving(store, workloads):
    running = Running(store)
    try:
        running.adopted(*workloads)
        yield running
    finally:
        running.stop()


def addresses(answer):
    return sorted(rd.to_text() for rrset in answer.answer for rd in rrset)


# --- answers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_names_across_hosts_and_everything_else_as_docker_answers(workloads, serving, tcp):
    a, _ = workloads
    for name in ("workload-E.net1", "workload-e"):
        answer = a.ask(name, tcp=tcp)
        assert addresses(answer) == [E_ADDRESS] and answer.answer[0].ttl == 5, answer
    assert addresses(a.ask("workload-e.net1", "AAAA", tcp=tcp)) == ["fd80::65"]
    assert not [n for n, _ in a.seen if n.startswith("workload-e")]   # never reached Docker
    # What Docker alone says (a marked query skips our rules), byte for byte.
    for name in ("workload-c.net1", "workload-c", "example.test", "nx.test", "fail.test",
                 "workload-d.net3", "workload-d"):
        query = dns.message.make_query(name, "A").to_wire()
        ours = a.ask_raw(query, tcp=tcp)
        docker = a.ask_raw(query, tcp=tcp, mark=rules.MARK)
        assert ours is not None and ours == docker, name
    assert addresses(a.ask("example.test", tcp=tcp)) == [UPSTREAM_ANSWER]
    # No answer from Docker: none from us either.
    assert a.ask("slow.test", tcp=tcp, timeout=0.5) is None


def test_a_workload_resolves_only_its_own_networks(workloads, serving):
    _, b = workloads
    for name in ("workload-a.net1", "workload-e", "workload-e.net1"):
        assert b.ask(name).rcode() == dns.rcode.NXDOMAIN, name
        assert (name, 1) in b.seen            # Docker was asked, and said what it says


def test_a_name_goes_with_its_workload_and_comes_back(store, workloads, serving):
    a, _ = workloads
    key = keys.endpoint(OTHER, "libnetwork", "libnetwork", "e" * 64)
    store.delete(key)
    wait_for(lambda: a.ask("workload-e.net1").rcode() == dns.rcode.NXDOMAIN,
             timeout=10, retry_on=(), what="workload-e.net1 to be gone")
    put_endpoint(store, OTHER, "f" * 64, "m1", "workload-E", ["192.168.0.99"])
    wait_for(lambda: addresses(a.ask("workload-e.net1")) == ["192.168.0.99"],
             timeout=10, retry_on=(), what="workload-e.net1 to come back with its new address")


# --- adopting and handing back ------------------------------------------------------------------

def our_rules(ns):
    return [line for line in ns.nat_rules().splitlines() if rules.COMMENT in line]


def test_rules_go_above_dockers_only_once_docker_has_written_them(store, monkeypatch, caplog):
    from calicoctl.dnsproxy import service as service_module
    monkeypatch.setattr(service_module, "ADOPT_MAX_DELAY", 0.1)
    late = DockerNetns("calico-dnsut-late", rules=False)
    running = None
    try:
        put_network(store, "n1", "net1", HOST)
        put_network(store, "m1", "net1", OTHER)
        put_endpoint(store, HOST, "a" * 64, "n1", "workload-A", ["192.168.0.1"],
                     sandbox=late.path)
        put_endpoint(store, OTHER, "e" * 64, "m1", "workload-E", [E_ADDRESS])
        running = Running(store)
        wait_for(lambda: late.path in running.service.warned, timeout=10, retry_on=(),
                 what="the namespace to wait")
        assert our_rules(late) == []
        # Said once, for an engine whose rules never come (Docker 28's nftables backend).
        assert caplog.text.count("Docker's resolver rules are not in iptables in %s"
                                 % late.path) == 1
        late.add_docker_rules()
        running.adopted(late)
        output = [line for line in late.nat_rules().splitlines() if line.startswith("-A OUTPUT")]
        assert len(output) == 3 and rules.COMMENT in output[0] and "-p udp" in output[0] \
            and rules.COMMENT in output[1] and "-p tcp" in output[1] \
            and output[2] == "-A OUTPUT %s" % rules.DOCKER_JUMP, output
        assert addresses(late.ask("workload-e.net1")) == [E_ADDRESS]
    finally:
        if running is not None:
            running.stop()
        late.close()


def test_legacy_iptables(store):
    legacy = DockerNetns("calico-dnsut-legacy", flavour="legacy")
    running = None
    try:
        put_network(store, "n1", "net1", HOST)
        put_network(store, "m1", "net1", OTHER)
        put_endpoint(store, HOST, "a" * 64, "n1", "workload-A", ["192.168.0.1"],
                     sandbox=legacy.path)
        put_endpoint(store, OTHER, "e" * 64, "m1", "workload-E", [E_ADDRESS])
        running = Running(store)
        running.adopted(legacy)
        assert running.service.adopted[legacy.path].flavour == "legacy"
        assert len(our_rules(legacy)) == 2
        assert addresses(legacy.ask("workload-e.net1")) == [E_ADDRESS]
        assert addresses(legacy.ask("example.test")) == [UPSTREAM_ANSWER]
    finally:
        if running is not None:
            running.stop()
        legacy.close()


def test_a_clean_stop_hands_every_workload_back_and_a_start_takes_them_again(store, workloads):
    a, b = workloads
    before = {ns.name: ns.nat_rules() for ns in workloads}
    first = Running(store)
    first.adopted(a, b)
    assert all(len(our_rules(ns)) == 2 for ns in workloads)
    first.stop()
    assert {ns.name: ns.nat_rules() for ns in workloads} == before
    assert a.ask("workload-e.net1").rcode() == dns.rcode.NXDOMAIN     # Docker alone
    assert addresses(a.ask("example.test")) == [UPSTREAM_ANSWER]
    second = Running(store)
    try:
        second.adopted(a, b)
        assert addresses(a.ask("workload-e.net1")) == [E_ADDRESS]
        assert all(len(our_rules(ns)) == 2 for ns in workloads)
    finally:
        second.stop()


def test_after_a_crash_the_next_start_answers_again(store, workloads):
    a, b = workloads
    crashed = Running(store)
    crashed.adopted(a, b)
    # A crash: the process and its sockets go, our rules stay.
    crashed.service.stopping = True
    crashed.service.shutdown = lambda: crashed.service.answerer.stop()
    crashed.thread.join(15)
    assert len(our_rules(a)) == 2
    assert a.ask("example.test", timeout=0.5) is None      # nothing listens where they lead
    again = Running(store)
    try:
        again.adopted(a, b)
        assert len(our_rules(a)) == 2                      # the same rules, not a second pair
        assert addresses(a.ask("workload-e.net1")) == [E_ADDRESS]
        assert addresses(a.ask("example.test")) == [UPSTREAM_ANSWER]
    finally:
        again.stop()


def test_refresh_repairs_rules_follows_docker_and_lets_go_of_vanished_namespaces(store,
                                                                                 workloads):
    a, b = workloads
    running = Running(store, refresh=0.2)
    try:
        running.adopted(a, b)
        ours = our_rules(a)
        a.iptables("-t", "nat", "-D", "OUTPUT", *ours[0].split()[2:])
        wait_for(lambda: our_rules(a) == ours, timeout=10, retry_on=(),
                 what="our rule to be put back")
        # dockerd live-restored: its resolver on new ports, its chains refilled.
        assert addresses(a.ask("example.test")) == [UPSTREAM_ANSWER]
        a.move_resolver()
        wait_for(lambda: a.ask("example.test", timeout=0.3) is not None,
                 timeout=10, retry_on=(), what="forwarding to Docker's resolver at its new port")
        assert addresses(a.ask("example.test")) == [UPSTREAM_ANSWER]
        # The workload's namespace goes while etcd still lists it: our sockets must not keep
        # it alive.
        b.close()
        wait_for(lambda: b.path not in running.service.answerer.sandboxes,
                 timeout=10, retry_on=(), what="the vanished namespace to be let go")
    finally:
        running.stop()


def test_a_failure_with_one_workload_stops_nothing_else(store, workloads, monkeypatch):
    """A namespace that vanishes while it is taken over, or a bug met with one workload, is
    logged; the others are answered, and that one is tried again."""
    from calicoctl.dnsproxy import service as service_module
    a, b = workloads
    assert pytest.raises(DataplaneError, sandboxes.in_netns, "/run/netns/gone", len, "x")
    monkeypatch.setattr(service_module, "ADOPT_MAX_DELAY", 0.2)
    real = sandboxes.open_sockets
    failed = []

    def once_broken(path, *args):
        if path == b.path and not failed:
            failed.append(path)
            raise RuntimeError("a bug")
        return real(path, *args)
    monkeypatch.setattr(sandboxes, "open_sockets", once_broken)
    running = Running(store)
    try:
        running.adopted(a, b)
        assert failed == [b.path]
        assert addresses(a.ask("workload-e.net1")) == [E_ADDRESS]
        assert running.thread.is_alive()
    finally:
        running.stop()


def test_a_bug_in_answering_one_query_stops_no_other(store, workloads, serving, monkeypatch):
    a, _ = workloads
    answerer = serving.service.answerer
    real = answerer.answer

    def broken_for_one(key, query, limit):
        if query.name == "boom":
            raise RuntimeError("a bug")
        return real(key, query, limit)
    monkeypatch.setattr(answerer, "answer", broken_for_one)
    assert a.ask("boom", timeout=0.3) is None
    assert answerer.counts["bugs"] == 1
    assert addresses(a.ask("workload-e.net1")) == [E_ADDRESS]


# --- bounds and hostile input -------------------------------------------------------------------

def test_each_workload_gets_a_bounded_rate(store, workloads):
    a, _ = workloads
    # A stopped clock: the bucket never refills, so exactly `burst` queries are served.
    answerer = Answerer(limits=Limits(rate=1.0, burst=5.0), clock=lambda: 0.0)
    running = Running(store, answerer=answerer)
    try:
        running.adopted(a)
        answered = sum(a.ask("workload-e.net1", timeout=0.2) is not None for _ in range(12))
        assert answered == 5
        assert answerer.counts["dropped_rate"] == 7
    finally:
        running.stop()


def test_forwards_awaiting_docker_are_bounded(store, workloads):
    a, _ = workloads
    answerer = Answerer(limits=Limits(pending=8, forward_timeout=0.5))
    running = Running(store, answerer=answerer)
    try:
        running.adopted(a)
        for _ in range(20):
            assert a.ask("slow.test", timeout=0.01) is None
        assert answerer.counts["forwarded"] == 8 and answerer.counts["dropped_pending"] == 12
        wait_for(lambda: answerer.total_pending == 0, timeout=10, retry_on=(),
                 what="the forwards to expire")
        assert addresses(a.ask("example.test")) == [UPSTREAM_ANSWER]
    finally:
        running.stop()


def test_tcp_sessions_are_bounded(store, workloads):
    a, _ = workloads
    answerer = Answerer(limits=Limits(tcp_sessions=2, tcp_idle=5.0))
    running = Running(store, answerer=answerer)
    try:
        running.adopted(a)
        idle = [sandboxes.in_netns(a.path, socket.create_connection, ("127.0.0.11", 53))
                for _ in range(3)]
        try:
            wait_for(lambda: answerer.counts["dropped_tcp"] == 1, timeout=10, retry_on=(),
                     what="the third to be refused")
        finally:
            for conn in idle:
                conn.close()
        wait_for(lambda: answerer.tcp_total == 0, timeout=10, retry_on=(),
                 what="the sessions to end")
        assert addresses(a.ask("workload-e.net1", tcp=True)) == [E_ADDRESS]
    finally:
        running.stop()


hostile = st.one_of(
    st.binary(max_size=700),
    st.builds(lambda q, cut, tail: q[:cut] + tail,
              st.sampled_from([dns.message.make_query(n, t).to_wire()
                               for n in ("workload-e.net1", "example.test", "x" * 60)
                               for t in ("A", "AAAA", "ANY")]),
              st.integers(0, 60), st.binary(max_size=40)))


def test_hostile_packets_neither_crash_nor_stall_the_answerer(store, workloads):
    a, b = workloads
    running = Running(store)
    seen = collections.Counter()
    try:
        running.adopted(a)

        @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.lists(hostile, min_size=1, max_size=8), st.sampled_from(["udp", "tcp", "raw"]))
        def case(packets, how):
            sandboxes.in_netns(a.path, _send_blind, packets, how)
            seen[how] += len(packets)
            # Still alive, still right; and the hostile workload's stalled TCP sessions (raw
            # bytes never make a whole frame) take none of another workload's.
            assert addresses(a.ask("workload-e.net1")) == [E_ADDRESS]
            assert addresses(b.ask("example.test", tcp=True)) == [UPSTREAM_ANSWER]
            seen["checked"] += 1

        case()
        assert seen["checked"] == 400 and min(seen["udp"], seen["tcp"], seen["raw"]) >= 200, seen
        assert running.thread.is_alive() and running.service.answerer._thread.is_alive()
    finally:
        running.stop()


def _send_blind(packets, how):
    """Send each packet to 127.0.0.11:53 from inside the namespace, without waiting for what
    (if anything) comes back; over TCP each on its own connection, framed ("tcp") or not
    ("raw")."""
    for packet in packets:
        if how != "udp":
            with socket.create_connection(("127.0.0.11", 53), timeout=1) as conn:
                conn.sendall(len(packet).to_bytes(2, "big") + packet if how == "tcp" else packet)
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(packet, ("127.0.0.11", 53))


def test_our_sockets_are_on_127_0_0_11_only(workloads, serving):
    """Nothing outside the namespace can reach a loopback address: only the workload asks."""
    a, _ = workloads
    socks = serving.service.answerer.sandboxes[a.path].sockets
    assert socks.udp.getsockname()[0] == socks.tcp.getsockname()[0] == "127.0.0.11"
    # Everything listening in the namespace (ours and the stand-in's) is on 127.0.0.11.
    local = [line.split()[3] for line in (a.exec("ss", "-Hlnu") + a.exec("ss", "-Hlnt"))
             .splitlines()]
    assert len(local) == 4 and all(addr.startswith("127.0.0.11:") for addr in local), local

"""calicoctl/dnsproxy/catalog.py: from etcd records to who may resolve what (pure; no services)."""

import collections
import ipaddress
import json
import socket

from hypothesis import HealthCheck, given, settings, strategies as st

from calicoctl.datastore import keys
from calicoctl.dnsproxy.catalog import Records, candidates
from calicoctl.dnsproxy.wire import TYPE_A, TYPE_AAAA, TYPE_MX

NETS = {"n1": "net1", "n2": "net2", "n3": "net3", "m1": "net1", "m2": "net2", "m3": "net3"}


def network_items(ids=NETS):
    return [(keys.libnetwork_network(i), json.dumps({"name": n})) for i, n in ids.items()]


def endpoint_item(host, eid, network_id, container, v4=(), v6=(), sandbox=None, **extra):
    record = {"state": "active", "name": "cali" + eid, "mac": "ee:ee:ee:ee:ee:ee",
              "profile_ids": [], "ipv4_nets": ["%s/32" % a for a in v4],
              "ipv6_nets": ["%s/128" % a for a in v6], "network_id": network_id, **extra}
    if container is not None:
        record["container_name"] = container
    if sandbox is not None:
        record["sandbox"] = sandbox
    return keys.endpoint(host, "libnetwork", "libnetwork", eid), json.dumps(record)


def seed_records():
    """The seed's workloads: A, B, C on calico-01 (n* ids), D, E on calico-02 (m* ids)."""
    r = Records("calico-01")
    r.load(network_items() + [
        endpoint_item("calico-01", "a", "n1", "workload-A", ["192.168.0.1"], sandbox="/ns/A"),
        endpoint_item("calico-01", "b", "n2", "workload-B", ["192.168.1.1"], sandbox="/ns/B"),
        endpoint_item("calico-01", "c", "n1", "workload-C", ["192.168.0.2"], sandbox="/ns/C"),
        endpoint_item("calico-02", "d", "m3", "workload-D", ["192.168.2.1"], sandbox="/ns/D"),
        endpoint_item("calico-02", "e", "m1", "workload-E", ["192.168.0.65"], sandbox="/ns/E"),
    ])
    return r


def ips(packed):
    return None if packed is None else [str(ipaddress.ip_address(p)) for p in packed]


def test_the_seed_step_resolves_across_hosts():
    view = seed_records().view()
    assert view.sandboxes == {"/ns/A": {"net1"}, "/ns/B": {"net2"}, "/ns/C": {"net1"}}
    for name in ("workload-e.net1", "workload-e"):
        assert ips(view.lookup("/ns/A", name, TYPE_A)) == ["192.168.0.65"]
        assert ips(view.lookup("/ns/C", name, TYPE_A)) == ["192.168.0.65"]


def test_names_of_this_host_are_left_to_docker():
    view = seed_records().view()
    assert view.lookup("/ns/A", "workload-c.net1", TYPE_A) is None
    assert view.lookup("/ns/A", "workload-c", TYPE_A) is None


def test_only_networks_the_asker_is_in():
    view = seed_records().view()
    for name in ("workload-e", "workload-e.net1", "workload-a.net1", "workload-d",
                 "workload-d.net3", "workload-e.net3"):
        assert view.lookup("/ns/B", name, TYPE_A) is None, name
    assert view.lookup("/ns/A", "workload-d", TYPE_A) is None
    assert view.lookup("/ns/A", "workload-d.net3", TYPE_A) is None
    assert view.lookup("/ns/nobody", "workload-e", TYPE_A) is None
    # E's own host answers nothing for it: Docker there does.
    e_side = Records("calico-02")
    e_side.load(_items(seed_records()))
    assert e_side.view().lookup("/ns/E", "workload-e", TYPE_A) is None


def _items(records):
    return network_items() + [
        endpoint_item(w.host, w.endpoint_id, w.network_id, w.container,
                      ips(w.ipv4), ips(w.ipv6), w.sandbox)
        for w in records.workloads.values()]


def test_a_container_in_two_networks_is_answered_in_the_askers():
    r = seed_records()
    r.apply(*endpoint_item("calico-02", "e2", "m2", "workload-E", ["192.168.1.65"]))
    view = r.view()
    assert ips(view.lookup("/ns/A", "workload-e", TYPE_A)) == ["192.168.0.65"]
    assert ips(view.lookup("/ns/B", "workload-e", TYPE_A)) == ["192.168.1.65"]
    assert ips(view.lookup("/ns/B", "workload-e.net2", TYPE_A)) == ["192.168.1.65"]
    assert view.lookup("/ns/B", "workload-e.net1", TYPE_A) is None
    # An asker in both networks may reach it through either.
    r.apply(*endpoint_item("calico-01", "a2", "n2", "workload-A", ["192.168.1.2"],
                           sandbox="/ns/A"))
    assert ips(r.view().lookup("/ns/A", "workload-e", TYPE_A)) == ["192.168.0.65",
                                                                  "192.168.1.65"]


def test_aaaa_mx_and_other_types():
    r = seed_records()
    r.apply(*endpoint_item("calico-02", "f", "m1", "six", ["192.168.0.66"], ["fd80::66"]))
    view = r.view()
    assert ips(view.lookup("/ns/A", "six.net1", TYPE_AAAA)) == ["fd80::66"]
    assert view.lookup("/ns/A", "workload-e", TYPE_AAAA) == []       # known, no IPv6: NODATA
    assert view.lookup("/ns/A", "workload-e", TYPE_MX) == []         # as Docker: implicit MX
    assert view.lookup("/ns/A", "workload-e", 16) is None            # TXT: Docker's to answer


def test_dots_in_container_and_network_names():
    r = seed_records()
    r.apply(*endpoint_item("calico-02", "g", "m1", "web.v1", ["192.168.0.70"]))
    r.apply(keys.libnetwork_network("x1"), json.dumps({"name": "my.net"}))
    r.apply(keys.libnetwork_network("y1"), json.dumps({"name": "my.net"}))
    r.apply(*endpoint_item("calico-01", "h", "x1", "asker", ["10.0.0.1"], sandbox="/ns/H"))
    r.apply(*endpoint_item("calico-02", "i", "y1", "db", ["10.0.0.2"]))
    view = r.view()
    assert ips(view.lookup("/ns/A", "web.v1", TYPE_A)) == ["192.168.0.70"]
    assert ips(view.lookup("/ns/A", "web.v1.net1", TYPE_A)) == ["192.168.0.70"]
    assert ips(view.lookup("/ns/H", "db.my.net", TYPE_A)) == ["10.0.0.2"]
    assert candidates("a.b.c") == [("a.b.c", None), ("a.b", "c"), ("a", "b.c")]


def test_a_name_of_both_hosts_in_one_network_is_docker_s():
    r = seed_records()
    r.apply(*endpoint_item("calico-01", "c2", "n1", "workload-E", ["192.168.0.3"]))
    assert r.view().lookup("/ns/A", "workload-e", TYPE_A) is None


def test_records_come_and_go():
    r = seed_records()
    key, value = endpoint_item("calico-02", "e", "m1", "workload-E", ["192.168.0.65"])
    assert r.apply(key, None) is True
    assert r.view().lookup("/ns/A", "workload-e", TYPE_A) is None
    assert r.apply(key, value) is True
    assert r.apply(key, value) is False               # the same again changes nothing
    assert r.view().lookup("/ns/A", "workload-e", TYPE_A) is not None
    # The name is learnt after CreateEndpoint: until then nothing is answered.
    r.apply(*endpoint_item("calico-02", "e", "m1", None, ["192.168.0.65"]))
    assert r.view().lookup("/ns/A", "workload-e", TYPE_A) is None
    # A whole host's directory removed (calicoctl node remove).
    r.apply(key, value)
    assert r.apply(keys.host_dir("calico-02"), None) is True
    assert r.view().lookup("/ns/A", "workload-e", TYPE_A) is None
    # A network without a name yet neither asks nor answers.
    r.apply(keys.libnetwork_network("n1"), json.dumps({"name": None}))
    assert "/ns/A" not in r.view().sandboxes


def test_bad_records_are_skipped():
    r = seed_records()
    key = keys.endpoint("calico-02", "libnetwork", "libnetwork", "bad")
    for value in ("{", "[]", '{"ipv4_nets": "x", "network_id": "m1"}',
                  '{"ipv4_nets": ["nonsense"], "network_id": "m1"}', '{"network_id": 5}'):
        assert r.apply(key, value) is False, value
    assert r.apply(keys.libnetwork_network("z"), "not json") is False
    assert r.apply(keys.endpoint("calico-02", "docker", "x", "y"), "{}") is False


# --- property: an answer never names a workload outside the asker's networks --------------------

HOSTS = ["h1", "h2", "h3"]
NETWORK_IDS = {"%s-%s" % (h, n): n for h in HOSTS for n in ("net1", "net2", "net.3")}
container_names = st.sampled_from(["a", "a.net1", "web.v1", "x"])


@st.composite
def catalogs(draw):
    # Each asker is in one network for sure; the drawn endpoints may add more.
    items = network_items(NETWORK_IDS) + [
        endpoint_item("h1", "s1", "h1-net1", "asker1", ["10.9.0.1"], sandbox="/s1"),
        endpoint_item("h1", "s2", "h1-net.3", "asker2", ["10.9.0.2"], sandbox="/s2")]
    count = draw(st.integers(2, 16))
    for i in range(count):
        host = draw(st.sampled_from(HOSTS))
        net = draw(st.sampled_from(["net1", "net2", "net.3"]))
        sandbox = draw(st.sampled_from(["/s1", "/s2", None])) if host == "h1" else None
        items.append(endpoint_item(host, "e%d" % i, "%s-%s" % (host, net),
                                   draw(container_names), ["10.%d.0.%d" % (HOSTS.index(host), i)],
                                   sandbox=sandbox))
    return items


def test_no_answer_leaks_a_workload_of_another_network_or_of_this_host():
    seen = collections.Counter()

    @settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
    @given(catalogs(), st.sampled_from(["/s1", "/s2"]),
           st.sampled_from(["a", "a.net1", "web.v1", "web.v1.net1", "x.net.3", "a.net2",
                            "a.net1.net1", "nope"]))
    def case(items, asker, name):
        records = Records("h1")
        records.load(items)
        answer = records.view().lookup(asker, name, TYPE_A)
        if answer is None:
            seen["left to Docker"] += 1
            return
        seen["answered"] += 1
        mine = {w.network_id for w in records.workloads.values()
                if w.host == "h1" and w.sandbox == asker}
        my_networks = {NETWORK_IDS[i] for i in mine}
        allowed = {a for w in records.workloads.values() if w.host != "h1"
                   and NETWORK_IDS[w.network_id] in my_networks
                   and name in (w.container, "%s.%s" % (w.container, NETWORK_IDS[w.network_id]))
                   for a in w.ipv4}
        assert answer and set(answer) <= allowed, (items, asker, name, ips(answer))

    case()
    assert seen["answered"] >= 60 and seen["left to Docker"] >= 60, seen


def test_packed_addresses():
    r = seed_records()
    assert r.view().lookup("/ns/A", "workload-e", TYPE_A) == [socket.inet_aton("192.168.0.65")]

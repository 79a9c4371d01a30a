"""The cold-start fast paths give what the general ones give.

A cold start builds the nftables desired state in bulk (nft_calc.NftDesiredState.
_update_endpoints with nothing rendered yet), parses endpoint nets without ipaddress when they
are canonical IPv4 /32s (models.canonical_net), and writes endpoint reports in batches over v3
(status.write_endpoint_reports).  Each is checked here against the path it shortcuts, on
random states.
"""

import ipaddress
import json
import random

import pytest

from calicoctl.datastore import keys
from calicoctl.datastore.models import canonical_net
from calicoctl.felix import status
from calicoctl.felix.calc import DesiredState
from calicoctl.felix.nft_calc import NftDesiredState
from calicoctl.felix.state import Changes, FelixState

HOST = "h1"
PROFILES = ["p%d" % i for i in range(6)] + ["odd name!"]


def random_items(rng, n):
    """A snapshot: profiles with tags and rules, n endpoints on this host and others."""
    items = [(keys.READY, "true")]
    for p in PROFILES:
        tags = rng.sample(PROFILES + ["t-extra"], rng.randint(0, 2))
        inbound = [{"action": "allow", "src_tag": rng.choice(PROFILES + ["nobody"])},
                   {"action": rng.choice(["allow", "deny"]), "protocol": "tcp",
                    "dst_ports": [rng.randint(1, 65535)]}]
        items.append((keys.profile_tags(p), json.dumps(tags)))
        items.append((keys.profile_rules(p), json.dumps(
            {"id": p, "inbound_rules": inbound, "outbound_rules": [{"action": "allow"}]})))
    for i in range(n):
        eid = "%016x" % rng.getrandbits(64)
        v4 = [rng.choice(["10.0.%d.%d/32", "10.0.%d.%d", "10.0.%d.%d/31"])
              % (rng.randint(0, 3), rng.randint(0, 255)) for _ in range(rng.randint(0, 2))]
        v6 = ["fd00::%x/128" % rng.randint(0, 300) for _ in range(rng.randint(0, 1))]
        data = {"state": rng.choice(["active", "active", "inactive"]),
                # Now and then two endpoints share an interface name.
                "name": rng.choice(["cali" + eid[:11], "cali" + eid[:11], "calishared00001"]),
                "mac": rng.choice([None, "EE:EE:EE:EE:EE:EE", "02:00:00:00:00:%02x" % (i % 256)]),
                "profile_ids": rng.sample(PROFILES, rng.randint(0, 3)),
                "ipv4_nets": v4, "ipv6_nets": v6}
        host = rng.choice([HOST, HOST, "h2"])
        items.append((keys.endpoint(host, "libnetwork", "libnetwork", eid), json.dumps(data)))
    rng.shuffle(items)
    return items


def tables(desired):
    """Everything a desired state programs or remembers, in comparable form."""
    return {name: getattr(desired, name) for name in (
        "chains", "sets", "rendered", "profile_users", "buckets", "ep_tags", "tag_eps",
        "profile_eps", "ep_profiles", "nft_chains", "nft_sets", "nft_elements", "list_users",
        "profile_tag_sets")}


def delta_of(delta):
    """A delta without the empty entries the two paths may record differently."""
    return {"chains": {k: v for k, v in delta.chains.items() if v}, "sets": delta.sets,
            "endpoints": delta.endpoints, "nft_chains": delta.nft_chains,
            "nft_sets": delta.nft_sets,
            "nft_added": {k: v for k, v in delta.nft_added.items() if v},
            "nft_removed": {k: v for k, v in delta.nft_removed.items() if v}}


@pytest.mark.parametrize("seed", range(12))
def test_bulk_cold_build_equals_the_per_endpoint_one(seed, monkeypatch):
    state = FelixState(HOST)
    state.load_snapshot(random_items(random.Random(seed), 60))
    bulk = NftDesiredState()
    bulk_delta = bulk.update(state, Changes(), full=True)
    monkeypatch.setattr(NftDesiredState, "_update_endpoints", DesiredState._update_endpoints)
    one_by_one = NftDesiredState()
    slow_delta = one_by_one.update(state, Changes(), full=True)
    assert tables(bulk) == tables(one_by_one)
    assert delta_of(bulk_delta) == delta_of(slow_delta)


@pytest.mark.parametrize("seed", range(6))
def test_bulk_cold_build_equals_an_incremental_build(seed):
    items = random_items(random.Random(seed), 40)
    endpoints = [i for i in items if keys.match_key(i[0])[0] == "endpoint"]
    cold_state = FelixState(HOST)
    cold_state.load_snapshot(items)
    cold = NftDesiredState()
    cold.update(cold_state, Changes(), full=True)
    state = FelixState(HOST)
    state.load_snapshot([i for i in items if i not in endpoints])
    built = NftDesiredState()
    built.update(state, Changes(), full=True)
    rng = random.Random(seed)
    while endpoints:             # in batches of 1 to 5, as a watch delivers them
        size = rng.randint(1, 5)
        batch, endpoints = endpoints[:size], endpoints[size:]
        changes = Changes()
        for key, value in batch:
            state.apply(key, value, changes)
        built.update(state, changes)
    for name in ("chains", "sets", "nft_chains", "nft_sets", "nft_elements"):
        assert getattr(cold, name) == getattr(built, name), name


def test_canonical_net_is_what_ipaddress_prints():
    rng = random.Random(7)
    octets = ["0", "00", "01", "9", "10", "99", "100", "199", "249", "250", "255", "256", "010",
              "1000", "٣"]
    texts = ["10.0.0.1/32", "fd00::1/128", "10.0.0.0/24", "10.0.0.1/24", "1.2.3.4/32\n", ""]
    for _ in range(5000):
        texts.append(".".join(rng.choice(octets) for _ in range(4))
                     + rng.choice(["/32", "/032", "/31", "", "/33", " /32"]))
    for text in texts:
        try:
            expected = str(ipaddress.ip_network(text, strict=False))
        except ValueError:
            expected = ValueError
        try:
            got = canonical_net(text)
        except ValueError:
            got = ValueError
        assert got == expected, text


def test_endpoint_reports_in_batches(store):
    """More reports than one v3 transaction takes; v2 writes them one by one."""
    eps = [(HOST, "libnetwork", "libnetwork", "%016x" % i)
           for i in range(status.REPORT_BATCH * 2 + 5)]
    assert status.write_endpoint_reports(store, HOST, {k: "up" for k in eps}) == []
    for k in eps:
        assert status.endpoint_up(store.get(keys.felix_endpoint_status(HOST, *k[1:])))
    cleared = eps[::2]
    assert status.write_endpoint_reports(store, HOST, {k: None for k in cleared}) == []
    for k in eps:
        value = store.get(keys.felix_endpoint_status(HOST, *k[1:]))
        assert (value is None) == (k in cleared)
        if value is not None:
            assert value == '{"status":"up"}'

"""The agent against the real etcd fixture and a stateful fake of iptables/ipset:
snapshot, watch, batching, resync after the watch index is cleared, bad data failing closed."""

import json

import pytest

from calicoctl.datastore import keys
from tests.unit.felix_support import (HOST, agent, chains, kernel, settle,  # noqa: F401
                                      write_endpoint, write_profile)

def test_snapshot_programs_local_endpoints_and_every_hosts_tags(store, agent, kernel):
    write_profile(store, "net1")
    write_endpoint(store, "aa00000000000001", "10.0.0.1", ["net1"])
    write_endpoint(store, "bb00000000000002", "10.0.0.2", ["net1"], host="otherhost")
    agent.resync()
    f = chains(kernel)
    assert f["INPUT"][0] == "-j felix-INPUT" and f["FORWARD"][0] == "-j felix-FORWARD"
    assert "felix-to-caliaa000000000" in f and "felix-from-caliaa000000000" in f
    assert not any("bb0000" in c for c in f)           # other hosts' endpoints: tags only
    assert kernel.sets["felix-v4-net1"][1] == {"10.0.0.1", "10.0.0.2"}
    assert f["felix-p-net1-i"] == ["-m set --match-set felix-v4-net1 src -g felix-ALLOW"]
    assert chains(kernel, 4, "nat")["POSTROUTING"][0] == "-j felix-POSTROUTING"


def test_watch_applies_changes_in_place_without_rewriting_tables(store, agent, kernel):
    write_profile(store, "net1")
    write_endpoint(store, "aa00000000000001", "10.0.0.1", ["net1"])
    agent.resync()
    kernel.calls.clear()
    write_endpoint(store, "cc00000000000003", "10.0.0.3", ["net1"], host="otherhost")
    settle(agent)
    # A remote member: one set update, no chain touched.
    assert kernel.sets["felix-v4-net1"][1] == {"10.0.0.1", "10.0.0.3"}
    assert [c[0][0] for c in kernel.calls] == ["ipset"]
    assert kernel.calls[0][1] == "add felix-v4-net1 10.0.0.3\n"
    kernel.calls.clear()
    write_profile(store, "net1", inbound=[{"action": "allow", "protocol": "tcp",
                                           "dst_ports": [80]}])
    settle(agent)
    assert chains(kernel)["felix-p-net1-i"] == ["-p tcp -m multiport --dports 80 -g felix-ALLOW"]
    restores = [c for c in kernel.calls if c[0][0].endswith("restore") and "tables" in c[0][0]]
    assert restores and all("--noflush" in c[0] for c in restores)
    assert all(":felix-FORWARD" not in c[1] for c in restores)   # only changed chains


def test_appending_a_profile_and_removing_an_endpoint(store, agent, kernel):
    write_profile(store, "net1")
    write_profile(store, "net2")
    write_endpoint(store, "aa00000000000001", "10.0.0.1", ["net1"])
    agent.resync()
    write_endpoint(store, "aa00000000000001", "10.0.0.1", ["net1", "net2"])
    settle(agent)
    assert "-j felix-p-net2-i" in chains(kernel)["felix-to-caliaa000000000"]
    assert kernel.sets["felix-v4-net2"][1] == {"10.0.0.1"}
    store.delete(keys.endpoint(HOST, "libnetwork", "libnetwork", "aa00000000000001"))
    settle(agent)
    f = chains(kernel)
    assert "felix-to-caliaa000000000" not in f and "felix-p-net1-i" not in f
    assert f["felix-FROM-ENDPOINT"] == ["-j DROP"]


def test_endpoint_status_reported_and_cleared(store, agent, monkeypatch):
    from calicoctl.felix import agent as agent_mod
    monkeypatch.setattr(agent_mod, "present_interfaces", lambda prefix: {"caliaa000000000"})
    write_profile(store, "net1")
    write_endpoint(store, "aa00000000000001", "10.0.0.1", ["net1"])
    agent.resync()
    key = keys.felix_endpoint_status(HOST, "libnetwork", "libnetwork", "aa00000000000001")
    assert json.loads(store.get(key)) == {"status": "up"}
    store.delete(keys.endpoint(HOST, "libnetwork", "libnetwork", "aa00000000000001"))
    settle(agent)
    assert store.get(key) is None
    agent.tick()
    assert json.loads(store.get(keys.felix_status(HOST)))["uptime"] >= 0
    assert store.read(keys.felix_status(HOST)).ttl is not None


def test_resync_after_the_watch_index_is_cleared(store, agent, kernel, raw_etcd):
    """v2: the index left etcd's 1000-event window; v3: the revision was compacted."""
    from calicoctl.datastore.result import HistoryLost
    write_profile(store, "net1")
    agent.resync()
    stale = agent.index
    write_endpoint(store, "aa00000000000001", "10.0.0.1", ["net1"])
    raw_etcd.forget_history()
    agent.index = stale
    with pytest.raises(HistoryLost):
        agent.poll_once()
    agent.resync()
    assert "felix-to-caliaa000000000" in chains(kernel)


def test_startup_removes_stale_chains_and_sets_of_ours(store, agent, kernel):
    kernel.table(4, "filter")["felix-p-gone-i"] = ["-j DROP"]
    kernel.sets["felix-v4-gone"] = ("hash:ip", {"10.9.9.9"})
    kernel.table(4, "filter")["DOCKER-USER"] = ["-j RETURN"]
    agent.resync()
    assert "felix-p-gone-i" not in chains(kernel) and "felix-v4-gone" not in kernel.sets
    assert chains(kernel)["DOCKER-USER"] == ["-j RETURN"]      # never touch others' chains


def test_refresh_repairs_flushed_chains_and_jumps(store, agent, kernel):
    write_profile(store, "net1")
    write_endpoint(store, "aa00000000000001", "10.0.0.1", ["net1"])
    agent.resync()
    good = dict(chains(kernel))
    f = chains(kernel)
    f["felix-from-caliaa000000000"] = []
    f["FORWARD"].remove("-j felix-FORWARD")
    kernel.sets["felix-v4-net1"][1].clear()
    agent.refresh()
    assert chains(kernel)["felix-from-caliaa000000000"] == good["felix-from-caliaa000000000"]
    assert chains(kernel)["FORWARD"][0] == "-j felix-FORWARD"
    assert kernel.sets["felix-v4-net1"][1] == {"10.0.0.1"}


def test_bad_data_fails_closed(store, agent, kernel):
    write_profile(store, "net1", inbound=[
        {"action": "deny", "protocol": "tcp", "dst_ports": ["bogus"]},
        {"action": "allow"},
        {"action": "allow", "dst_ports": [80]}])
    write_endpoint(store, "aa00000000000001", "10.0.0.1", ["net1"])
    store.set(keys.endpoint(HOST, "libnetwork", "libnetwork", "bad"), "{not json")
    agent.resync()
    # The broken deny becomes "deny everything"; the broken allow is skipped.
    assert chains(kernel)["felix-p-net1-i"] == ["-j DROP", "-g felix-ALLOW"]
    assert not any("calibad" in c for c in chains(kernel))


def test_config_endpoint_to_host_and_log_level(store, agent, kernel):
    store.set(keys.host_config(HOST, "DefaultEndpointToHostAction"), "ACCEPT")
    agent.resync()
    assert chains(kernel)["felix-INPUT"][-1] == "-i cali+ -j ACCEPT"
    store.set(keys.host_config(HOST, "DefaultEndpointToHostAction"), "RETURN")
    settle(agent)
    assert chains(kernel)["felix-INPUT"][-1] == "-i cali+ -j felix-FROM-ENDPOINT"


def test_nat_outgoing_pool_sets(store, agent, kernel):
    store.set(keys.pool("192.168.0.0/16", 4), json.dumps({"cidr": "192.168.0.0/16",
                                                          "masquerade": True}))
    agent.resync()
    assert chains(kernel, 4, "nat")["felix-POSTROUTING"] == [
        "-m set --match-set felix-masq-v4 src -m set ! --match-set felix-pools-v4 dst "
        "-j MASQUERADE"]
    assert kernel.sets["felix-masq-v4"][1] == {"192.168.0.0/16"}


def test_read_status_for_calicoctl_status(store, agent, monkeypatch):
    from calicoctl.felix import agent as agent_mod
    from calicoctl.felix.status import read_status
    assert read_status(store, HOST)["alive"] is False
    monkeypatch.setattr(agent_mod, "present_interfaces", lambda prefix: {"caliaa000000000"})
    write_profile(store, "net1")
    write_endpoint(store, "aa00000000000001", "10.0.0.1", ["net1"])
    agent.resync()
    agent.tick()
    status = read_status(store, HOST)
    assert status["alive"] and status["endpoints"] == {"up": 1, "down": 0, "error": 0}


def test_large_change_is_split_and_filled_before_it_is_reachable(kernel, monkeypatch):
    from calicoctl.felix import executor
    from calicoctl.felix.executor import IptablesTable
    monkeypatch.setattr(executor, "BATCH_CHAINS", 2)
    table = IptablesTable("filter", 4, kernel)
    updates = {"felix-ALLOW": ["-j MARK --set-xmark 0x1000000/0x1000000"],
               "felix-p-a-i": ["-g felix-ALLOW"],
               "felix-to-cali1": ["-j felix-p-a-i", "-j DROP"],
               "felix-TO-EP-1": ["-o cali1 -g felix-to-cali1", "-j DROP"],
               "felix-TO-ENDPOINT": ["-o cali1+ -g felix-TO-EP-1", "-j DROP"]}
    table.apply(updates)
    restores = [text for cmd, text in kernel.calls if cmd[0] == "iptables-restore"]
    assert len(restores) > 2                      # split
    batch = {line.split()[1]: i for i, text in enumerate(restores)
             for line in text.splitlines() if line.startswith("-A ")}
    # Each restore is atomic; across restores, a chain is filled no later than its callers.
    order = ["felix-ALLOW", "felix-p-a-i", "felix-to-cali1", "felix-TO-EP-1",
             "felix-TO-ENDPOINT"]
    assert [batch[c] for c in order] == sorted(batch[c] for c in order)
    assert batch["felix-TO-ENDPOINT"] > batch["felix-ALLOW"]
    assert chains(kernel)["felix-TO-ENDPOINT"] == updates["felix-TO-ENDPOINT"]


def test_felix_command_rejects_bad_options(cli):
    r = cli("felix", "serve", "--log-level=LOUD")
    assert r.code == 1 and r.err.count("\n") == 1 and "--log-level" in r.err
    r = cli("felix", "serve", "--refresh-interval=soon")
    assert r.code == 1 and "--refresh-interval" in r.err
    r = cli("felix", "serve", "--backend=iptables")
    assert r.code == 1 and "--backend" in r.err
    r = cli("felix", "serve", "--dataplane=ebpf")
    assert r.code == 1 and "--dataplane" in r.err and "nftables" in r.err


def test_our_jump_may_follow_dockers_user_chain_without_fighting(store, agent, kernel):
    agent.resync()
    f = chains(kernel)
    f["FORWARD"].insert(0, "-j DOCKER-USER")       # dockerd restarted
    kernel.calls.clear()
    agent.refresh()
    assert chains(kernel)["FORWARD"][:2] == ["-j DOCKER-USER", "-j felix-FORWARD"]
    assert not [c for c in kernel.calls if "restore" in c[0][0] and "tables" in c[0][0]]


def test_run_resyncs_after_a_lost_watch_and_an_etcd_outage(store, agent, monkeypatch):
    import threading

    from calicoctl.datastore.result import HistoryLost
    from calicoctl.errors import DatastoreError
    from calicoctl.felix import agent as agent_mod
    monkeypatch.setattr(agent_mod, "RETRY_DELAY", 0.01)
    monkeypatch.setattr(agent.dataplane, "prepare", lambda: None)
    resyncs = []
    real_resync = agent.resync
    failures = [HistoryLost("cleared"), DatastoreError("etcd restarted")]

    def resync():
        resyncs.append(1)
        real_resync()
        if len(resyncs) >= 3:
            agent.stop()

    def poll_once():
        raise failures.pop(0)
    monkeypatch.setattr(agent, "resync", resync)
    monkeypatch.setattr(agent, "poll_once", poll_once)
    t = threading.Thread(target=agent.run)
    t.start()
    t.join(10)
    assert not t.is_alive() and len(resyncs) == 3 and not failures


def test_one_endpoint_change_hands_the_routes_layer_only_its_routes(store, agent, monkeypatch):
    """A new endpoint, its interface appearing, and its removal each touch that endpoint's
    routes only, so the cost of one change does not grow with the endpoints already there."""
    from calicoctl.felix import agent as agent_mod
    present = {"cali%011d" % i for i in range(50)}
    monkeypatch.setattr(agent_mod, "present_interfaces", lambda prefix: set(present))
    write_profile(store, "net1")
    for i in range(50):
        write_endpoint(store, "%011d" % i, "10.0.1.%d" % i, ["net1"])
    agent.resync()
    assert len(agent.dataplane.routes.programmed) == 50
    calls = []
    real_update = agent.dataplane.routes.update
    monkeypatch.setattr(agent.dataplane.routes, "update",
                        lambda add, remove: calls.append((set(add), set(remove)))
                        or real_update(add, remove))
    # A new endpoint whose interface is not there yet: no route (and no report) until it is.
    write_endpoint(store, "new00000000", "10.0.2.1", ["net1"])
    settle(agent)
    assert calls == [(set(), set())]
    present.add("calinew00000000")
    agent.tick()
    added = calls[-1][0]
    assert [r.dev for r in added] == ["calinew00000000"] and not calls[-1][1]
    assert len(agent.dataplane.routes.programmed) == 51
    key = keys.felix_endpoint_status(HOST, "libnetwork", "libnetwork", "new00000000")
    assert json.loads(store.get(key)) == {"status": "up"}
    # Rewritten with its address kept (as Join does): its tracked connections stay.
    write_endpoint(store, "new00000000", "10.0.2.1", ["net1"], sandbox="/var/run/docker/x")
    settle(agent)
    assert getattr(agent.dataplane.routes, "forgotten", []) == []
    # Removed: only its route goes, and its address's tracked connections with it.
    store.delete(keys.endpoint(HOST, "libnetwork", "libnetwork", "new00000000"))
    settle(agent)
    assert calls[-1] == (set(), added)
    assert len(agent.dataplane.routes.programmed) == 50
    assert agent.dataplane.routes.forgotten == [{"10.0.2.1/32"}]


def test_an_address_handed_on_in_one_batch_still_loses_its_flows(store, agent):
    """The old endpoint's removal and the new one's creation can arrive in one batch; the
    address is then held again, yet the old flows must go, or the old peer reaches the new
    workload through them."""
    write_profile(store, "net1")
    write_endpoint(store, "old00000000", "10.0.3.1", ["net1"])
    agent.resync()
    store.delete(keys.endpoint(HOST, "libnetwork", "libnetwork", "old00000000"))
    write_endpoint(store, "new00000000", "10.0.3.1", ["net1"])
    agent.poll_once()
    assert getattr(agent.dataplane.routes, "forgotten", []) == [{"10.0.3.1/32"}]


def test_the_dataplane_choice_follows_what_the_host_supports():
    from calicoctl.errors import DataplaneError
    from calicoctl.felix.executor import choose_dataplane
    works, broken = (lambda: (True, "fine")), (lambda: (False, "nft is not installed"))
    assert choose_dataplane("auto", works) == ("nftables", "fine")
    assert choose_dataplane("auto", broken) == ("iptables", "nft is not installed")
    assert choose_dataplane("iptables", works)[0] == "iptables"
    assert choose_dataplane("nftables", works)[0] == "nftables"
    with pytest.raises(DataplaneError) as exc:
        choose_dataplane("nftables", broken)
    assert "nft is not installed" in str(exc.value) and "--dataplane=iptables" in str(exc.value)


def test_the_agent_reports_its_dataplane(store, agent):
    from calicoctl.felix.status import agent_dataplane
    assert agent_dataplane(store, HOST) is None
    agent.tick()
    assert agent.dataplane.kind == "iptables"
    assert agent_dataplane(store, HOST) == "iptables"


def test_a_resync_pauses_the_collector_and_gives_it_back_even_when_it_fails(store, agent,
                                                                          monkeypatch):
    import gc
    seen = []

    def snapshot(key):
        seen.append(gc.isenabled())
        raise RuntimeError("etcd went away")
    monkeypatch.setattr(agent.store, "snapshot", snapshot)
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        agent.resync()
    assert seen == [False] and gc.isenabled()
    gc.disable()          # a caller that had it off keeps it off
    try:
        with pytest.raises(RuntimeError):
            agent.resync()
        assert seen == [False, False] and not gc.isenabled()
    finally:
        gc.enable()


def test_a_resync_freezes_the_state_it_built_so_no_collection_scans_it(store, agent):
    import gc
    import weakref
    write_endpoint(store, "aa00000000000001", "10.0.0.1", ["net1"])
    gc.unfreeze()
    try:
        agent.resync()
        frozen = gc.get_freeze_count()
        assert frozen > 0 and gc.isenabled()
        endpoints = agent.state.endpoints
        assert endpoints and not any(o is endpoints for g in (0, 1, 2)
                                     for o in gc.get_objects(generation=g))
        # The next resync collects what the last one froze before it freezes again: a cycle
        # that was garbage then is gone.
        class Cycle:
            pass
        cycle = Cycle()
        cycle.me = cycle
        gc.freeze()
        gone = weakref.ref(cycle)
        del cycle
        agent.resync()
        assert gone() is None and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()

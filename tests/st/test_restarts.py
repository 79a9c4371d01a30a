"""Restarts under running workloads on two namespace hosts:
  - dockerd restarted on a host whose plugin runs in its container, as `calicoctl node
    --libnetwork` starts it: the daemon comes back in bounded time (measured), the workloads
    (restart policy) come back reachable, nothing leaks;
  - etcd restarted with its data kept: the agents resync, a release made while etcd was down is
    applied when it is back, and the dataplane follows changes made afterwards;
  - the agent's watch index lost (the agent frozen while more than 1000 events are written):
    it resyncs and the dataplane ends right.
(The agent restarted under a ping stream is tests/st/test_policy.py's
test_agent_restart_under_ping_loses_at_most_two.)
"""

import signal
import time

import pytest

from tests.st.churn_checks import all_problems
from tests.st.demo import default_calicoctl
from tests.st.harness import wait_for
from tests.st.plugin_helpers import calicoctl as calicoctl_in, container_ip, ping
from tests.st.test_churn import PREFIX, stack  # noqa: F401 - the module's agent+plugin stack

ETCD_HISTORY = 1000           # etcd v2 keeps this many events for watchers to catch up on
SETTLE = 90                   # seconds for the system to reach rest after a restart


def reach(host, src, ip, timeout=30):
    """True once src answers a ping to ip within timeout (routes and rules may lag a restart)."""
    try:
        wait_for(lambda: ping(host, src, ip, timeout=1).returncode == 0, timeout=timeout,
                 interval=0.2, what="%s -> %s" % (src, ip))
        return True
    except Exception:  # noqa: BLE001 - the harness's timeout error
        return False


def blocked(host, src, ip):
    return ping(host, src, ip, timeout=1).returncode != 0


def settle(store, hosts, networks, prefix=PREFIX, timeout=SETTLE):
    state = {}

    def clean():
        state["problems"] = all_problems(store, hosts, networks, prefix)[0]
        return not state["problems"]
    try:
        wait_for(clean, timeout=timeout, interval=0.5, what="the system at rest")
    except Exception:  # noqa: BLE001 - report what is still wrong instead
        pass
    return state["problems"]


def report(request, line):
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + line)


# --- dockerd restarted under the node containers (runs first: the stack below is host processes)

@pytest.fixture
def nodes(testbed, two_hosts, node_images):
    from tests.st.plugin_helpers import clean_docker, wipe_etcd
    env = {"authority": testbed.etcd_url.split("//", 1)[1], "calicoctl": default_calicoctl()}

    def node_cmd(host, *args):
        argv = ["env", "-u", "DOCKER_HOST", "-u", "CALICO_HOSTNAME", "-u", "ETCD_ENDPOINTS",
                "ETCD_AUTHORITY=" + env["authority"], env["calicoctl"], *args]
        return host.run(argv, check=False, timeout=240)
    for h in two_hosts:
        clean_docker(h)
    wipe_etcd(testbed.etcd)
    try:
        for h in two_hosts:
            r = node_cmd(h, "node", "--libnetwork")
            assert r.returncode == 0, r.stdout + r.stderr
        yield node_cmd
    finally:
        for h in two_hosts:
            h.run("docker rm -f $(docker ps -aq --filter name=%s) 2>/dev/null; true" % PREFIX,
                  check=False, timeout=120)
            h.docker("network", "rm", "rnet", check=False)
            node_cmd(h, "node", "stop", "--force")
        for h in two_hosts:
            wait_for(lambda h=h: node_cmd(h, "node", "remove", "--remove-endpoints")
                     .returncode == 0, timeout=60, what="node remove on %s" % h.name)
        wipe_etcd(testbed.etcd)


@pytest.mark.parametrize("live_restore", [False, True], ids=["default", "live-restore"])
def test_dockerd_restart_with_the_plugin_in_its_container(testbed, two_hosts, nodes, request,
                                                          live_restore):
    """Without --live-restore dockerd stops the plugin's container with the workloads, and at
    start-up looks the driver up (15 s of retries each) for every Calico network and every
    endpoint it restores before it serves its API: bounded, but long.  With --live-restore the
    plugin keeps serving across the restart and the daemon is back at once."""
    from tests.st.test_policy import store_for
    h1, h2 = two_hosts
    if live_restore:
        h1.stop_dockerd(timeout=60)
        h1.start_dockerd(extra_args=["--live-restore"], timeout=120)
        nodes(h1, "node", "--libnetwork")

        def back_to_default():
            # Empty the host first: a daemon started without live restore would otherwise
            # tear the surviving containers down through the (stopped) plugin.
            h1.run("docker rm -f $(docker ps -aq --filter name=%s) 2>/dev/null; true" % PREFIX,
                   check=False, timeout=120)
            h1.docker("network", "rm", "rnet", check=False)
            nodes(h1, "node", "stop", "--force")
            h1.stop_dockerd(timeout=60)
            h1.start_dockerd(timeout=180)
        request.addfinalizer(back_to_default)
    store = store_for(testbed.etcd)
    nodes(h1, "pool", "add", "192.168.0.0/16")
    for h in two_hosts:
        h.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico", "rnet")
    names = {h1: [PREFIX + "a", PREFIX + "b"], h2: [PREFIX + "c"]}
    for h, ns in names.items():
        for n in ns:
            h.docker("run", "-d", "--restart", "always", "--net", "rnet", "--name", n,
                     "busybox", "sleep", "1000000")
    ip_b, ip_c = container_ip(h1, PREFIX + "b", "rnet"), container_ip(h2, PREFIX + "c", "rnet")
    assert reach(h1, PREFIX + "a", ip_b) and reach(h1, PREFIX + "a", ip_c, timeout=60)

    t0 = time.monotonic()
    h1.stop_dockerd(timeout=60)
    stopped = time.monotonic() - t0
    t1 = time.monotonic()
    h1.start_dockerd(extra_args=["--live-restore"] if live_restore else (), timeout=120)
    api = time.monotonic() - t1

    def all_running():
        out = h1.docker("ps", "--format", "{{.Names}}", check=False).stdout.split()
        return set(names[h1]) <= set(out) and "calico-libnetwork" in out
    wait_for(all_running, timeout=120, what="workloads and plugin running again")
    running = time.monotonic() - t1
    ip_b = container_ip(h1, PREFIX + "b", "rnet")
    ip_a = container_ip(h1, PREFIX + "a", "rnet")
    ok_local = reach(h1, PREFIX + "a", ip_b, timeout=60)
    ok_cross = reach(h2, PREFIX + "c", ip_a, timeout=60)
    reachable = time.monotonic() - t1
    problems = settle(store, two_hosts, ["rnet"])
    report(request, "dockerd restart with Calico workloads (%s): stop %.1f s, API back %.1f s, "
                    "workloads running %.1f s, reachable %.1f s after start; %d problems at rest"
           % ("live-restore" if live_restore else "default", stopped, api, running, reachable,
              len(problems)))
    # Default: one 15 s driver look-up per network and per restored endpoint (3 here), never
    # a hang.  Live restore: no look-up waits at all.
    assert api < (10 if live_restore else 90), "dockerd took %.1f s to answer" % api
    assert ok_local and ok_cross
    assert not problems, "\n".join(problems)


# --- etcd restarted, watch index lost: agent and plugin as host processes ---------------------

@pytest.fixture(scope="module")
def workloads(stack):
    h1, h2 = stack["hosts"]
    made = {}
    for h, name, net in ((h1, "a", "churn1"), (h2, "b", "churn1"), (h1, "c", "churn2"),
                         (h2, "d", "churn2"), (h1, "x", "churn1")):
        h.docker("run", "-d", "--net", net, "--name", PREFIX + name, "busybox", "sleep",
                 "1000000")
        made[name] = (h, container_ip(h, PREFIX + name, net))
    assert reach(h1, PREFIX + "a", made["b"][1], timeout=60)
    return made


def test_etcd_restart_keeps_data_and_the_agents_resync(testbed, stack, workloads, request):
    h1, h2 = stack["hosts"]
    store = stack["store"]
    etcd = testbed.etcd
    assert blocked(h1, PREFIX + "c", workloads["a"][1])          # churn2 -> churn1: no
    etcd.stop(remove_data=False)
    down = time.monotonic()
    # A container removed while etcd is down: Docker is answered, the release is kept.
    removed = h2.docker("rm", "-f", PREFIX + "d", check=False, timeout=120)
    etcd.start()
    testbed.save()                      # the new etcd pid, for a later cleanup
    outage = time.monotonic() - down
    assert removed.returncode == 0, removed.stderr
    # Changes after the restart reach the dataplane: churn1 now admits churn2.
    calicoctl_in(h1, etcd, "profile", "churn1", "rule", "add", "inbound", "allow", "from",
                 "tag", "churn2")
    h2.docker("run", "-d", "--net", "churn2", "--name", PREFIX + "e", "busybox", "sleep",
              "1000000")
    ip_e = container_ip(h2, PREFIX + "e", "churn2")
    problems = settle(store, stack["hosts"], ("churn1", "churn2", "churn3"))
    assert not problems, "\n".join(problems)
    assert reach(h1, PREFIX + "c", workloads["a"][1])            # now allowed
    assert reach(h2, PREFIX + "e", workloads["a"][1], timeout=60)
    assert blocked(h1, PREFIX + "a", ip_e)                       # churn2 still admits only churn2
    assert reach(h1, PREFIX + "a", workloads["b"][1])
    report(request, "etcd restart with data kept: outage %.1f s, release made during it "
                    "applied, dataplane right" % outage)


def test_agent_resyncs_after_its_watch_index_is_lost(testbed, stack, workloads, request):
    import os
    h1, _ = stack["hosts"]
    store = stack["store"]
    agent = stack["agents"][0]
    pids = agent.pids()
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        # While the agent sleeps: a rule goes, a workload goes, and more events than etcd
        # keeps for a watcher to catch up on.
        calicoctl_in(h1, testbed.etcd, "profile", "churn1", "rule", "remove", "inbound",
                     "allow", "from", "tag", "churn2")
        h1.docker("rm", "-f", PREFIX + "x", timeout=120)
        for i in range(ETCD_HISTORY + 100):
            store.set("/calico-st-junk/watch-filler", str(i))
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    wait_for(lambda: "Watch fell too far behind" in agent.log(), timeout=30,
             what="the agent to notice its lost index")
    problems = settle(store, stack["hosts"], ("churn1", "churn2", "churn3"))
    assert not problems, "\n".join(problems)
    wait_for(lambda: blocked(h1, PREFIX + "c", workloads["a"][1]), timeout=30,
             what="churn2 -> churn1 blocked again")
    assert reach(h1, PREFIX + "a", workloads["b"][1])
    store.delete("/calico-st-junk/watch-filler")
    report(request, "agent watch index lost (%d events while frozen): resynced, dataplane "
                    "right" % (ETCD_HISTORY + 100))

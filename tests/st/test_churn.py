"""Churn on two namespace hosts: hundreds of `docker run`/`docker rm` across three Calico-IPAM
networks while the plugin, the agent and dockerd are each SIGKILLed and restarted at random
(seeded) moments.  At the end, after a bounded convergence poll:
  - allocated addresses == the endpoints' addresses (IPAM blocks vs endpoint records);
  - every endpoint record belongs to a running container and every running container's
    endpoint has a record;
  - no veth, route, felix endpoint chain or tag ipset member without an endpoint;
  - live workloads reach each other exactly as the networks' default policy says (same network
    yes, other networks no), on a seeded sample of pairs within and across hosts.  A dockerd kill
    stops that host's containers, so churn can leave a host with none running: fresh workloads
    on every host (one per network, two in the first) join the survivors for this check, and
    show that the system still wires new workloads after the faults.
Prints ops completed, faults injected and addresses leaked (must be 0).  The run must show it
tested something: ops of both kinds, every kind of fault, live workloads at rest, and checked
pairs of every kind (same network on one host, same network across hosts, other networks).

CHURN_SEED, CHURN_OPS and CHURN_SECONDS (environment) change the seed, the number of operations
and the time bound.
"""

import os
import random
import signal
import threading
import time

from tests.st.churn_checks import (NETWORKS, PREFIX, all_problems, report,  # noqa: F401
                                   stack)
from tests.st.harness import procs, wait_for
from tests.st.plugin_helpers import answers_within, ping_answered

SEED = int(os.environ.get("CHURN_SEED", "20261127"))
TARGET_OPS = int(os.environ.get("CHURN_OPS", "300"))
CHURN_SECONDS = float(os.environ.get("CHURN_SECONDS", "240"))
WORKERS_PER_HOST = 3
MAX_PER_WORKER = 4            # live containers a worker keeps at most (so about 24 in all)
FAULT_GAP = (1.0, 4.0)        # seconds between faults (ops run at ~5 a second)
DOWN_TIME = (0.2, 3.0)        # seconds a killed component stays down
CONVERGE_SECONDS = 120
FAULT_KINDS = ("plugin", "agent", "dockerd")


def kill_dockerd(host):
    pid = int(host.run(["cat", "/run/docker.pid"]).stdout)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not procs.is_alive(pid), timeout=20, what="dockerd to die")
    # containerd dies with dockerd; its pid file would make the next dockerd wait on it.
    host.run(["rm", "-f", "/run/docker.pid", "/run/docker/containerd/containerd.pid"])


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = {"run": 0, "rm": 0}
        self.failed = {"run": 0, "rm": 0}
        self.faults = []

    def count(self, kind, ok):
        with self.lock:
            (self.ok if ok else self.failed)[kind] += 1

    @property
    def done(self):
        with self.lock:
            return sum(self.ok.values()) + sum(self.failed.values())


def worker(host, host_index, wid, tally, stop):
    rng = random.Random(SEED * 1000 + host_index * 100 + wid)
    mine = "%s%d-%d-" % (PREFIX, host_index, wid)
    n = 0
    while not stop.is_set() and tally.done < TARGET_OPS:
        listed = host.docker("ps", "-a", "--filter", "name=" + mine, "--format", "{{.Names}}",
                             check=False, timeout=60)
        if listed.returncode != 0:        # dockerd restarting
            stop.wait(0.3)
            continue
        names = sorted(listed.stdout.split())
        if names and (len(names) >= MAX_PER_WORKER or rng.random() < 0.45):
            kind, name = "rm", rng.choice(names)
            result = host.docker("rm", "-f", name, check=False, timeout=120)
        else:
            kind, name = "run", "%s%d" % (mine, n)
            n += 1
            result = host.docker("run", "-d", "--net", rng.choice(NETWORKS), "--name", name,
                                 "busybox", "sleep", "1000000", check=False, timeout=120)
        tally.count(kind, result.returncode == 0)
        if result.returncode != 0:
            stop.wait(0.3)


def faulter(stack, tally, stop):
    rng = random.Random(SEED)
    hosts = stack["hosts"]
    while not stop.wait(rng.uniform(*FAULT_GAP)):
        kind = rng.choice(FAULT_KINDS)
        i = rng.randrange(len(hosts))
        host, down = hosts[i], rng.uniform(*DOWN_TIME)
        started = time.monotonic()
        if kind == "plugin":
            stack["plugins"][i].stop(sig=signal.SIGKILL)
            stop.wait(down)
            stack["plugins"][i].start(timeout=30)
        elif kind == "agent":
            stack["agents"][i].stop(sig=signal.SIGKILL)
            stop.wait(down)
            stack["agents"][i].start()
        else:
            kill_dockerd(host)
            stop.wait(down)
            host.start_dockerd()
        with tally.lock:
            tally.faults.append((kind, host.name, round(time.monotonic() - started, 1)))


def reach_problems(hosts_by_name, containers, rng, same_pairs=10, other_pairs=6):
    """Ping a seeded sample of pairs: same network must answer, other networks must not.
    Returns (problems, {kind: pairs checked}) for kinds "same host", "across hosts" (same
    network) and "other network"."""
    live = [(h, name, net, ip) for h, cs in containers.items() for name, nets in cs.items()
            for net, (_, ip) in nets.items()]
    same = [(a, b) for a in live for b in live if a[1] != b[1] and a[2] == b[2]]
    other = [(a, b) for a in live for b in live if a[2] != b[2]]
    rng.shuffle(same)
    rng.shuffle(other)
    # Half the same-network pairs within a host, half across hosts, when there are enough.
    local = [p for p in same if p[0][0] == p[1][0]]
    across = [p for p in same if p[0][0] != p[1][0]]
    picked_local = local[:same_pairs // 2]
    picked_same = picked_local + across[:same_pairs - len(picked_local)]
    problems, checked = [], {"same host": 0, "across hosts": 0, "other network": 0}
    for a, b in picked_same:
        checked["same host" if a[0] == b[0] else "across hosts"] += 1
        host = hosts_by_name[a[0]]
        if not answers_within(host, a[1], b[3], 20):
            problems.append("%s (%s) cannot reach %s (%s) in the same network %s" % (
                a[1], a[0], b[1], b[0], a[2]))
    for a, b in other[:other_pairs]:
        checked["other network"] += 1
        # ping_answered raises if the ping never ran: an unrun ping proves no isolation.
        if ping_answered(hosts_by_name[a[0]], a[1], b[3]):
            problems.append("%s (%s, %s) reaches %s (%s, %s) across networks" % (
                a[1], a[0], a[2], b[1], b[0], b[2]))
    return problems, checked


def test_churn_with_faults_leaks_nothing(stack, request):
    hosts, store = stack["hosts"], stack["store"]
    tally, stop = Tally(), threading.Event()
    threads = [threading.Thread(target=worker, args=(h, i, w, tally, stop), daemon=True)
               for i, h in enumerate(hosts) for w in range(WORKERS_PER_HOST)]
    fault_thread = threading.Thread(target=faulter, args=(stack, tally, stop), daemon=True)
    started = time.monotonic()
    for t in threads + [fault_thread]:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, CHURN_SECONDS - (time.monotonic() - started)))
    stop.set()
    for t in threads:
        t.join(timeout=150)
    fault_thread.join(timeout=120)
    churn_seconds = time.monotonic() - started
    leaked_at_once = len(all_problems(store, hosts, NETWORKS, PREFIX)[1])

    # Everything is running again (the faulter restarts what it kills before it returns).
    state = {}

    def converged():
        state["problems"], state["leaked"], state["containers"] = all_problems(
            store, hosts, NETWORKS, PREFIX)
        return not state["problems"]
    converge_started = time.monotonic()
    # Not converging is no error here: the problems left are the test's report.
    wait_for(converged, timeout=CONVERGE_SECONDS, retry_on=(), raise_on_timeout=False,
             what="the system to converge")
    converge_seconds = time.monotonic() - converge_started
    problems, leaked, containers = state["problems"], state["leaked"], state["containers"]
    live = {name: len(c) for name, c in containers.items()}
    reach, pairs = [], {}
    if not problems:
        for h in hosts:
            for i, net in enumerate(NETWORKS[:1] + NETWORKS):
                h.docker("run", "-d", "--net", net, "--name",
                         "%sprobe-%s-%d" % (PREFIX, h.name, i), "busybox", "sleep", "1000000")
        wait_for(converged, timeout=CONVERGE_SECONDS, retry_on=(), raise_on_timeout=False,
                 what="the system to converge with the probes")
        problems, containers = state["problems"], state["containers"]
    if not problems:
        reach, pairs = reach_problems({h.name: h for h in hosts}, containers,
                                      random.Random(SEED))
    faults = {}
    for kind, _, _ in tally.faults:
        faults[kind] = faults.get(kind, 0) + 1
    line = ("churn: seed %d, %d ops completed (run %d, rm %d), %d failed during faults, in %.0f s; "
            "%d faults injected %s; live workloads at rest %s; addresses leaked: %d (%d before "
            "convergence, %.0f s to converge); pairs checked %s, %d wrong"
            % (SEED, sum(tally.ok.values()), tally.ok["run"], tally.ok["rm"],
               sum(tally.failed.values()), churn_seconds, len(tally.faults), faults, live,
               len(leaked), leaked_at_once, converge_seconds, pairs, len(reach)))
    # On a failure the testbed's logs are kept by the testbed fixture (tests/st/conftest.py).
    report(request, line)
    # What ran: ops of both kinds, every kind of fault.
    assert sum(tally.ok.values()) >= min(100, TARGET_OPS // 2), line
    assert tally.ok["run"] and tally.ok["rm"], line
    assert set(faults) == set(FAULT_KINDS), "not every kind of fault was injected: " + line
    assert not problems, "%s\n%s" % (line, "\n".join(problems[:40]))
    # What was checked at rest: pairs of every kind.
    assert all(pairs.values()), "a kind of reachability pair was never checked: " + line
    assert not reach, "%s\n%s" % (line, "\n".join(reach))

"""Container start-up time: Calico network vs Docker's bridge, on the same engine.

    .venv/bin/python bench/container_start.py [--runs 20] [--parallel 8] [--idle 30]
                                              [--dataplane auto|nftables|iptables]

Brings up a one-host testbed (tests/st/harness), runs `calicoctl plugin serve --log-level=debug`
in it, creates a Calico network (Calico IPAM) beside Docker's default bridge, and for each network
measures, --runs times, the time from `docker run -d` to the new workload answering a ping from a
neighbour container on the same network (pinged from inside the neighbour's network namespace
every 10 ms, so no `docker exec` overhead lands in the figure).  Then it starts --parallel
containers at once, a few rounds, and reads each plugin call's duration from the plugin's debug
log ("call <Name> took <ms> ms (etcd: <n> operations, <ms> ms)") to give p50/p99 per call and,
under it, the part of it spent in etcd operations.

Beside Docker's built-in and user-defined bridges, a null remote driver (bench/null_driver.py:
the veth, proxy ARP and a /32 route, and addresses from a counter through Docker's remote IPAM
calls, nothing else) gives the engine's cost of any routed remote driver with its own IPAM, as
Calico's is, so the time Calico takes above it is ours.  After each Calico container's removal the
next run waits for the agent to drop that endpoint's report, so its clean-up does not land in
another network's run.

Last, --idle seconds at rest (once the agent has finished the removals): CPU per minute and RSS
of the plugin and the agent, beside the host's dockerd in the same minutes.

The agent runs, as on every user's host (`calicoctl felix serve --no-bgp`, policy dataplane
--dataplane, auto by default), and the plugin waits for its per-endpoint "up" report (in
ProgramExternalConnectivity).  --stand-in replaces it with iptables ACCEPT rules for cali+
(dockerd's FORWARD policy is DROP): the plugin's and the dataplane's share alone, labelled as
such in the output, never what a user pays.
"""

import argparse
import concurrent.futures
import os
import re
import select
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import stats  # noqa: E402  (bench/stats.py, beside this script)
from calicoctl.dataplane.netlink import run_in_netns  # noqa: E402
from support import cpu_and_rss, cpu_with_children, testbed  # noqa: E402  (bench/support.py)
from tests.st.harness import procs as procs_  # noqa: E402
from tests.st.harness.etcd_direct import DirectEtcd  # noqa: E402
from tests.st.plugin_helpers import (PYTHON, PluginProcess, allow_forwarding,  # noqa: E402
                                     calicoctl, container_ip, endpoint_id)

CALL_LINE = re.compile(r"call (\S+) took ([0-9.]+) ms \(etcd: (\d+) operations, ([0-9.]+) ms\)")
# network_driver._wait_for_agent's debug line: the time ProgramExternalConnectivity (or Join,
# for a container's later interfaces) spent waiting for the agent.
WAIT_LINE = re.compile(r"Waited ([0-9.]+) ms for the agent")


def neighbour_pid(host, name):
    return int(host.docker("inspect", "--format", "{{.State.Pid}}", name).stdout)


def _checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _ping_until_answered(ip, timeout, interval=0.01):
    """Echo requests every `interval` until one is answered (True) or timeout (False)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        ident = os.getpid() & 0xFFFF
        deadline = time.monotonic() + timeout
        seq = 0
        while time.monotonic() < deadline:
            seq += 1
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            packet = struct.pack("!BBHHH", 8, 0, _checksum(header + b"bench"), ident, seq)
            sock.sendto(packet + b"bench", (ip, 0))
            until = time.monotonic() + interval
            while True:
                left = until - time.monotonic()
                if left <= 0 or not select.select([sock], [], [], left)[0]:
                    break
                data, addr = sock.recvfrom(2048)
                icmp = data[(data[0] & 0x0F) * 4:]
                if addr[0] == ip and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
                    return True
        return False
    finally:
        sock.close()


def one_start(host, network, ping_from_pid, index, settle=None, answered_hook=None):
    """Seconds from `docker run -d` to the first ping answered; the container is then removed,
    and settle(endpoint ID), when given, waits for what removal leaves the agent to do.
    answered_hook() runs the moment the ping is answered (before anything else)."""
    name = "bench-%s-%d" % (network, index)
    started = time.monotonic()
    host.docker("run", "-d", "--net", network, "--name", name, "busybox", "sleep", "3600")
    ip = container_ip(host, name, network)
    # From inside the neighbour's network namespace, in this process (no fork per probe).
    answered = run_in_netns("/proc/%d/ns/net" % ping_from_pid, _ping_until_answered, ip, 10)
    elapsed = time.monotonic() - started
    if answered_hook is not None:
        answered_hook()
    eid = endpoint_id(host, name, network) if settle else None
    host.docker("rm", "-f", name)
    if settle:
        settle(eid)
    if not answered:
        raise RuntimeError("%s never answered a ping on %s" % (name, network))
    return elapsed


def agent_done_with_all_but(host, etcd, kept):
    """Wait until the agent's only endpoint reports on this host are those of `kept`."""
    prefix = "/calico/felix/v1/host/%s/workload" % host.name
    procs_.wait_for(lambda: sorted(k.rsplit("/", 1)[-1] for k in etcd.dump(prefix)) ==
                    sorted(kept), timeout=60, interval=0.05,
                    what="the agent to finish with the removed containers")


def start_null_driver(host):
    """bench/null_driver.py in the host, its network created (its own IPAM), and its
    interfaces' traffic accepted as the agent accepts Calico's."""
    path = "/run/docker/plugins/nullnet.sock"
    proc = host.popen([PYTHON, str(REPO / "bench" / "null_driver.py"), path], "nulldriver")

    def up():
        if proc.poll() is not None:
            raise RuntimeError("bench/null_driver.py exited %s; see %s"
                               % (proc.returncode, host.log_path("nulldriver")))
        return os.path.exists(host.root_path(path))
    procs_.wait_for(up, timeout=20, what="the null driver's socket")
    for rule in (["-i", "nul+"], ["-o", "nul+"]):
        host.run(["iptables", "-w", "-I", "FORWARD", "1", *rule, "-j", "ACCEPT"])
    host.docker("network", "create", "--driver", "nullnet", "--ipam-driver", "nullnet",
                "nullnet")
    return proc


def agent_done_with(host, etcd, eid):
    """Wait until the agent has dropped its report of a removed endpoint: its routes, sets and
    tracked flows are cleaned up by then, so that work does not land in the next (other
    network's) run and slow it down."""
    key = "/calico/felix/v1/host/%s/workload/libnetwork/libnetwork/endpoint/%s" % (host.name,
                                                                                   eid)
    procs_.wait_for(lambda: etcd.get(key) is None, timeout=30, interval=0.01,
                    what="the agent to finish with removed endpoint %s" % eid[:12])


def parallel_round(host, network, parallel, round_no):
    def start(i):
        host.docker("run", "-d", "--net", network, "--name", "par-%d-%d" % (round_no, i),
                    "busybox", "sleep", "3600")
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        list(pool.map(start, range(parallel)))
    names = ["par-%d-%d" % (round_no, i) for i in range(parallel)]
    host.docker("rm", "-f", *names, timeout=180)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=8,
                        help="containers started at once in each round (0: no such rounds)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle", type=int, default=30,
                        help="seconds to watch the plugin and agent at rest (0: skip)")
    parser.add_argument("--dataplane", default="auto", choices=("auto", "nftables", "iptables"),
                        help="the agent's policy dataplane (calicoctl felix serve --dataplane)")
    parser.add_argument("--no-null-driver", dest="null_driver", action="store_false",
                        help="leave out the null remote driver (bench/null_driver.py), the "
                             "engine's cost of any routed remote driver")
    parser.add_argument("--stand-in", action="store_true",
                        help="ACCEPT rules for cali+ instead of the agent (Join does not wait "
                             "for it): the plugin's share only, not what a user pays")
    args = parser.parse_args()
    if args.runs < 1 or args.parallel < 0 or args.rounds < 0 or args.idle < 0:
        parser.error("--runs must be at least 1; --parallel, --rounds and --idle at least 0")
    with testbed(1) as bed:
        run(bed, args)


def run(bed, args):
    host = bed.hosts[0]
    plugin = PluginProcess(host, bed.etcd).start()
    calicoctl(host, bed.etcd, "pool", "add", "192.168.0.0/16")
    agent = None
    if args.stand_in:
        allow_forwarding(host)
    else:
        agent = PluginProcess(host, bed.etcd, log_name="felix",
                              args=("felix", "serve", "--no-bgp",
                                    "--dataplane=%s" % args.dataplane)).start(wait=False)
    host.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico", "calinet")
    # Docker's built-in bridge is the reference the goal names.  A user-defined bridge network
    # is shown too: like every user-defined network (Calico's included) it gets Docker's
    # embedded DNS resolver in each container, which the built-in bridge does not.
    host.docker("network", "create", "--driver", "bridge", "userbridge")
    networks = {"calico": "calinet", "bridge": "bridge", "userbr": "userbridge"}
    null = None
    if args.null_driver:
        null = start_null_driver(host)
        networks["null"] = "nullnet"
    pids = {}
    for label, network in networks.items():
        host.docker("run", "-d", "--net", network, "--name", "neighbour-" + label, "busybox",
                    "sleep", "3600")
        pids[label] = neighbour_pid(host, "neighbour-" + label)
    times = {label: [] for label in networks}
    # CPU of our two services and of dockerd during each network's runs: on 2 cores, what the
    # agent and plugin burn while a container starts is taken from Docker's own work.
    watched = {"agent": agent, "plugin": plugin}
    watched = {k: p.proc.pid for k, p in watched.items() if p is not None}
    if null is not None:
        watched["null driver"] = null.pid
    watched["dockerd"] = dockerd_pid(host)
    if bed.etcd.pid is not None:
        watched["etcd"] = bed.etcd.pid     # the datastore's share of Calico's starts
    cpu = {label: {k: 0.0 for k in watched} for label in networks}
    cpu_start = {label: {k: 0.0 for k in watched} for label in networks}
    # Each run starts on a quiet host: the agent's clean-up after a Calico container's removal
    # would otherwise run during the next network's start and slow that one instead.
    settle = {}
    if agent is not None:
        direct = DirectEtcd(bed.etcd.url, bed.etcd.api)
        settle["calico"] = lambda eid: agent_done_with(host, direct, eid)
    seq_log_start = len(plugin.log())
    # Interleaved, so drift (page cache, etcd compaction) hits both alike; one warm-up each.
    for i in range(-1, args.runs):
        for label, network in networks.items():
            before = {k: cpu_with_children(pid) for k, pid in watched.items()}
            answered = {}
            t = one_start(host, network, pids[label], i + 1, settle=settle.get(label),
                          answered_hook=lambda: answered.update(
                              {k: cpu_with_children(pid) for k, pid in watched.items()}))
            if i >= 0:
                times[label].append(t)
                for k, pid in watched.items():
                    cpu[label][k] += cpu_with_children(pid) - before[k]
                    cpu_start[label][k] += answered[k] - before[k]
    print("\nContainer start to first ping answered, %s (interleaved runs)" % (
        "STAND-IN ACCEPT rules instead of the agent: not what a user pays" if args.stand_in
        else "with the agent, --dataplane=%s" % args.dataplane))
    for label in networks:
        print("%-8s %s" % (label, stats.summary(times[label], digits=0)))
    print("ratio calico/bridge (medians): %.2fx (goal <= 1.25x)"
          % stats.ratio(times["calico"], times["bridge"]))
    print("ratio calico/user-defined bridge (medians): %.2fx (goal <= 1.0x)"
          % stats.ratio(times["calico"], times["userbr"]))
    if "null" in times:
        m = {label: stats.percentile(v, 50) * 1000 for label, v in times.items()}
        print("null remote driver (the engine's path for any routed remote driver with its own "
              "IPAM, no datastore or agent): %.2fx the user-defined bridge (%+.0f ms); Calico above it: %.2fx "
              "(%+.0f ms, ours: etcd, IPAM, the agent's wait, HTTP server)"
              % (m["null"] / m["userbr"], m["null"] - m["userbr"], m["calico"] / m["null"],
                 m["calico"] - m["null"]))
    # The start's share is what competes with dockerd (2 cores) while the user waits.
    print("CPU per container, mean of %d, with child commands: from `docker run` to the first "
          "ping answered / with the removal too:" % args.runs)
    for label in networks:
        print("  %-8s %s" % (label, ", ".join(
            "%s %.1f / %.1f ms" % (k, cpu_start[label][k] * 1000 / args.runs, v * 1000 /
                                   args.runs) for k, v in cpu[label].items())))
    print_calls("Plugin calls during the sequential runs", plugin.log()[seq_log_start:])

    log_before = len(plugin.log())
    t0 = time.monotonic()
    rounds = args.rounds if args.parallel else 0
    for r in range(rounds):
        parallel_round(host, "calinet", args.parallel, r)
    wall = time.monotonic() - t0
    if rounds:
        print_calls("Plugin calls under %d concurrent `docker run`s (%d rounds, %.1f s, then "
                    "removal)" % (args.parallel, rounds, wall), plugin.log()[log_before:])
    if args.idle:
        if agent is not None:
            # At rest means after the agent has cleaned up the removed containers.
            agent_done_with_all_but(host, DirectEtcd(bed.etcd.url, bed.etcd.api),
                                    [endpoint_id(host, "neighbour-calico", "calinet")])
        at_rest(host, {"plugin": plugin, "agent": agent}, args.idle)
    plugin.stop()
    if agent is not None:
        agent.stop()
    if null is not None:
        null.terminate()
        null.wait(10)


def dockerd_pid(host):
    return next(pid for pid in procs_.pids_in_namespaces_of(host.pid)
                if procs_.cmdline(pid)[:1] == ["dockerd"])


def at_rest(host, procs, seconds):
    """CPU per minute and RSS of the plugin and the agent while nothing happens, beside the
    host's dockerd in the same minutes."""
    pids = {label: p.proc.pid for label, p in procs.items() if p is not None}
    pids["dockerd"] = dockerd_pid(host)
    endpoints = len(host.docker("ps", "-q").stdout.split())
    start = {label: cpu_and_rss(pid)[0] for label, pid in pids.items()}
    rss = {label: [] for label in pids}
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(5)
        for label, pid in pids.items():
            rss[label].append(cpu_and_rss(pid)[1])
    elapsed = time.monotonic() - t0
    print("\nAt rest for %.0f s with %d containers running (RSS sampled every 5 s)" % (
        elapsed, endpoints))
    for label, pid in pids.items():
        cpu = (cpu_and_rss(pid)[0] - start[label]) * 60 / elapsed
        print("  %-8s CPU %.2f s/min, RSS median %.0f MiB (max %.0f, n=%d)" % (
            label, cpu, stats.percentile(rss[label], 50), max(rss[label]), len(rss[label])))


def print_calls(title, log_text):
    """Each call's time, and under it the part spent in etcd operations (app.py's RequestTally:
    the datastore's round trips as the plugin sees them, client included)."""
    calls, etcd = {}, {}
    for line in log_text.splitlines():
        m = CALL_LINE.search(line)
        if m:
            calls.setdefault(m.group(1), []).append(float(m.group(2)))
            etcd.setdefault(m.group(1), []).append((int(m.group(3)), float(m.group(4))))
    waits = [float(m.group(1)) for m in WAIT_LINE.finditer(log_text)]
    rows = []
    for name in sorted(calls):
        rows.append((name, calls[name]))
        if any(n for n, _ in etcd[name]):
            rows.append(("  etcd, %.1f operations" % statistics.mean(n for n, _ in etcd[name]),
                         [ms for _, ms in etcd[name]]))
        if name == "NetworkDriver.ProgramExternalConnectivity" and waits:
            rows.append(("  agent wait", waits))
    print("\n" + title)
    print("%-45s %6s %9s %9s %9s" % ("call", "n", "p50", "p10", "p99"))
    for label, v in rows:
        print("%-45s %6d %8.1fms %8.1fms %8.1fms" % (
            label, len(v), stats.percentile(v, 50), stats.percentile(v, 10),
            stats.percentile(v, 99)))


if __name__ == "__main__":
    main()

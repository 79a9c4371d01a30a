"""Agent speed against the raw cost of loading the same rules, in one run (needs root).

    .venv/bin/python bench/felix.py [--sizes 1000,10000] [--samples 40] [--idle 60] [--json out.json]

For each size N, in a throwaway network namespace with its own etcd:
  - writes 100 profiles (tag = name, an allow-from-tag inbound rule and a tcp port rule) and N
    local endpoints spread over them (no veths: the route work is not measured);
  - cold start: one agent resync (snapshot, desired state, every set and chain programmed);
  - incremental, p50/p99 over --samples: etcd write -> the executor's restore returned (kernel
    state in place) for (a) one new local endpoint, (b) one rule change in a profile, (c) one
    new endpoint on another host (a tag membership change: one ipset update);
  - at rest: the real agent (`calicoctl felix serve`, default refresh interval) started on the
    same etcd, and once it reports alive, its CPU seconds per minute and RSS over --idle
    seconds, with the etcd server's CPU in the same minutes for scale;
  - raw loads of the agent's final IPv4 filter ruleset in fresh namespaces: iptables-nft-restore,
    iptables-legacy-restore and native `nft -f` (the same rules through
    iptables-restore-translate), each from empty; and one endpoint's chains added with
    --noflush on top of the full ruleset (nft and legacy backends).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)

from support import cpu_and_rss  # noqa: E402  (bench/support.py)

PROFILES = 100
HOST = "bench"


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


# --- inside the benchmark namespace --------------------------------------------------------

def populate(client, n):
    client.write("/calico/v1/Ready", "true")
    for p in range(PROFILES):
        name = "prof%02d" % p
        client.write("/calico/v1/policy/profile/%s/tags" % name, json.dumps([name]))
        client.write("/calico/v1/policy/profile/%s/rules" % name, json.dumps({
            "id": name,
            "inbound_rules": [{"action": "allow", "src_tag": name},
                              {"action": "allow", "protocol": "tcp", "dst_ports": [80, 443],
                               "src_tag": "prof%02d" % ((p + 1) % PROFILES)}],
            "outbound_rules": [{"action": "allow"}]}))
    for i in range(n):
        write_endpoint(client, HOST, endpoint_id(i), i)


def endpoint_id(i):
    """64 hex characters like Docker's, distinct in the first 11 (the interface name)."""
    import hashlib
    return hashlib.sha256(str(i).encode()).hexdigest()


def write_endpoint(client, host, eid, i):
    ip = "10.%d.%d.%d" % ((i >> 16) & 255, (i >> 8) & 255, i & 255)
    client.write("/calico/v1/host/%s/workload/libnetwork/libnetwork/endpoint/%s" % (host, eid),
                 json.dumps({"state": "active", "name": "cali" + eid[:11],
                             "mac": "ee:ee:ee:ee:ee:ee", "profile_ids": ["prof%02d" % (i % PROFILES)],
                             "ipv4_nets": [ip + "/32"], "ipv6_nets": []}))


class Timed:
    """Wraps the dataplane: records when each apply() returned (the kernel is then updated)."""

    def __init__(self, dataplane):
        self.dp = dataplane
        self.done = threading.Event()
        self.routes = dataplane.routes

    def __getattr__(self, name):
        return getattr(self.dp, name)

    def apply(self, delta):
        self.dp.apply(delta)
        if delta:
            self.done.set()


def measure(agent, timed, write, samples):
    out = []
    for i in range(samples):
        timed.done.clear()
        t0 = time.perf_counter()
        write(i)
        if not timed.done.wait(10):
            raise RuntimeError("the agent did not apply change %d" % i)
        out.append(time.perf_counter() - t0)
    return out


def inner(n, samples, idle_seconds):
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    import etcd
    from tests.unit.etcd_server import EtcdServer
    server = EtcdServer("felix-bench").start()
    try:
        client = etcd.Client(host="127.0.0.1", port=server.client_port)
        t = time.perf_counter()
        populate(client, n)
        populate_s = time.perf_counter() - t
        os.environ["ETCD_AUTHORITY"] = server.authority
        from calicoctl.datastore.store import EtcdStore
        from calicoctl.felix.agent import Agent
        from calicoctl.felix.executor import AgentDataplane
        dp = AgentDataplane()
        timed = Timed(dp)
        agent = Agent(EtcdStore(timeout=10), HOST, timed, refresh_interval=3600)
        dp.prepare()
        t = time.perf_counter()
        sync_times = []
        real_sync = dp.sync

        def timed_sync(desired, full):
            t1 = time.perf_counter()
            r = real_sync(desired, full)
            sync_times.append(time.perf_counter() - t1)
            return r
        dp.sync = timed_sync
        agent.resync()
        cold = time.perf_counter() - t
        thread = threading.Thread(target=agent.watch_loop, daemon=True)
        thread.start()
        new_ep = measure(agent, timed, lambda i: write_endpoint(
            client, HOST, endpoint_id(10 ** 6 + i), n + i), samples)

        def rule_change(i):
            name = "prof%02d" % (i % PROFILES)
            client.write("/calico/v1/policy/profile/%s/rules" % name, json.dumps({
                "id": name, "inbound_rules": [{"action": "allow", "src_tag": name},
                                              {"action": "allow", "protocol": "tcp",
                                               "dst_ports": [1000 + i]}],
                "outbound_rules": [{"action": "allow"}]}))
        rule = measure(agent, timed, rule_change, samples)
        member = measure(agent, timed, lambda i: write_endpoint(
            client, "otherhost", endpoint_id(2 * 10 ** 6 + i), 2 * n + i), samples)
        agent.stop()
        thread.join(5)
        desired = agent.desired
        idle = idle_cost(server, n, idle_seconds)
        raw = raw_loads(desired, n)
        return {
            "endpoints": n, "profiles": PROFILES, "populate_s": populate_s,
            "cold_start_s": cold, "cold_dataplane_s": sync_times[0] if sync_times else None,
            "filter_v4_chains": len(desired.chains[("filter", 4)]),
            "filter_v4_rules": sum(len(r) for r in desired.chains[("filter", 4)].values()),
            "new_endpoint_ms": summary(new_ep), "rule_change_ms": summary(rule),
            "tag_member_ms": summary(member), "raw": raw, "idle": idle,
        }
    finally:
        server.stop()


def idle_cost(server, n, seconds):
    """The real agent (`calicoctl felix serve`, as a user's host runs it, its periodic repair
    at the default interval included) at rest with these n endpoints programmed: its RSS and
    CPU seconds per minute, sampled every 5 s over `seconds`; the etcd server's CPU in the
    same minutes for scale."""
    env = dict(os.environ, CALICO_HOSTNAME=HOST, ETCD_AUTHORITY=server.authority)
    proc = subprocess.Popen([sys.executable, "-m", "calicoctl", "felix", "serve", "--no-bgp",
                             "--log-level=WARNING"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import etcd
        client = etcd.Client(host="127.0.0.1", port=server.client_port)
        deadline = time.monotonic() + 600
        while True:       # polled: the liveness report is written after the first full sync
            try:
                client.read("/calico/felix/v1/host/%s/status" % HOST)
                break
            except etcd.EtcdKeyNotFound:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the agent never reported alive (exit %s)" % proc.poll())
                time.sleep(0.2)
        start_cpu, _ = cpu_and_rss(proc.pid)
        etcd_start, _ = cpu_and_rss(server.pid)
        started = time.monotonic()
        rss = []
        while time.monotonic() - started < seconds:
            time.sleep(5)
            rss.append(cpu_and_rss(proc.pid)[1])
        elapsed = time.monotonic() - started
        cpu = cpu_and_rss(proc.pid)[0] - start_cpu
        etcd_cpu = cpu_and_rss(server.pid)[0] - etcd_start
        return {"seconds": elapsed, "agent_cpu_per_min": cpu * 60 / elapsed,
                "agent_rss_mib": {"p50": statistics.median(rss), "max": max(rss),
                                  "n": len(rss)},
                "etcd_cpu_per_min": etcd_cpu * 60 / elapsed}
    finally:
        proc.terminate()
        proc.wait(30)


def summary(values):
    return {"p50": 1000 * statistics.median(values), "p99": 1000 * percentile(values, 99),
            "n": len(values)}


def raw_loads(desired, n):
    """Load the final IPv4 filter ruleset from empty with each kernel interface, each in a
    fresh namespace, plus one endpoint's chains on top with --noflush."""
    from calicoctl.felix import policy
    from calicoctl.felix.executor import IptablesTable
    chains = desired.chains[("filter", 4)]
    table = IptablesTable("filter", 4)
    # One endpoint: the full ruleset is loaded without it, then its two chains and its two
    # dispatch buckets are written with --noflush (what the agent does for a new endpoint).
    iface = sorted(i for b in desired.buckets[4].values() for i in b)[0]
    bucket = policy.bucket_of(iface, "cali")
    mine = [policy.endpoint_chain(iface, "to"), policy.endpoint_chain(iface, "from")]
    buckets = [policy.bucket_chain("from", bucket), policy.bucket_chain("to", bucket)]
    without = {c: r for c, r in chains.items() if c not in mine}
    for c in buckets:
        without[c] = [r for r in chains[c] if iface not in r.split()]
    # The top-level jumps belong to the ruleset: nf_tables checks the jump graph reachable
    # from the base chains on every change that adds a jump, so they change what loads cost.
    full = table.restore_input(without, ["-A INPUT -j felix-INPUT",
                                         "-A FORWARD -j felix-FORWARD"])
    full = full.replace("*filter\n", "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n", 1)
    one_text = table.restore_input({c: chains[c] for c in mine + buckets})
    sets = "".join("create %s %s family %s\n" % (name, spec[0], spec[1]) + "".join(
        "add %s %s\n" % (name, m) for m in sorted(spec[2]))
        for name, spec in desired.sets.items() if spec[1] == "inet")
    import shutil
    # Native nft is only a comparison (apt-get install nftables); skipped where absent.
    nft_text = to_native_nft(full, desired.sets) if shutil.which("nft") else None
    with tempfile.TemporaryDirectory() as d:
        paths = {}
        for name, text in (("full", full), ("sets", sets), ("one", one_text),
                           ("nft", nft_text or "")):
            paths[name] = os.path.join(d, name)
            with open(paths[name], "w") as f:
                f.write(text)
        result = {}
        for backend, restore in (("nft", "iptables-restore"),
                                 ("legacy", "iptables-legacy-restore")):
            result["iptables_%s_full_s" % backend] = timed_in_netns(
                ["ipset restore < %s" % paths["sets"]], "%s < %s" % (restore, paths["full"]))
            result["iptables_%s_one_endpoint_s" % backend] = timed_in_netns(
                ["ipset restore < %s" % paths["sets"], "%s < %s" % (restore, paths["full"])],
                "%s --noflush < %s" % (restore, paths["one"]))
        result["native_nft_full_s"] = timed_in_netns([], "nft -f %s" % paths["nft"]) \
            if nft_text else None
    return result


def timed_in_netns(setup, command, repeat=3):
    """Median seconds of `command` in a fresh namespace after the setup commands."""
    script = ("import subprocess, time, sys\n"
              "for c in %r: subprocess.run(c, shell=True, check=True)\n"
              "t = time.perf_counter()\n"
              "subprocess.run(%r, shell=True, check=True)\n"
              "print(time.perf_counter() - t)\n" % (setup, command))
    times = []
    for _ in range(repeat):
        out = subprocess.run(["unshare", "-n", sys.executable, "-c", script],
                             capture_output=True, text=True, check=True)
        times.append(float(out.stdout.strip()))
    return statistics.median(times)


def to_native_nft(restore_text, sets):
    """The same ruleset for `nft -f`: iptables-restore-translate, with set matches (which it
    cannot translate) carried through as comments and turned into `ip saddr @set` matches."""
    import re
    marked = re.sub(r"-m set --match-set (\S+) (src|dst)",
                    lambda m: "-m comment --comment SET_%s_%s" % (m.group(2), m.group(1)),
                    restore_text)
    with tempfile.NamedTemporaryFile("w", suffix=".rules") as f:
        f.write(marked)
        f.flush()
        proc = subprocess.run(["iptables-restore-translate", "-f", f.name], capture_output=True,
                              text=True)
    if proc.returncode != 0:
        sys.stderr.write("iptables-restore-translate failed: %s\n" % proc.stderr[-500:])
        return None
    lines = []
    for name, spec in sets.items():
        if spec[1] == "inet":
            lines.append("add set ip filter %s { type ipv4_addr; }" % name)
            if spec[2]:
                lines.append("add element ip filter %s { %s }" % (name, ", ".join(sorted(spec[2]))))
    for line in proc.stdout.splitlines():
        m = re.search(r' comment "SET_(src|dst)_(\S+?)"', line)
        if m:
            line = line.replace(m.group(0), "")
            match = "ip %saddr @%s " % ("s" if m.group(1) == "src" else "d", m.group(2))
            line = re.sub(r"^(add rule ip filter \S+ )", r"\1" + match, line)
        lines.append(line)
    # Sets must exist before rules use them: table first, then sets, then the rest.
    head = [l for l in lines if l.startswith("add table")]
    rest = [l for l in lines if not l.startswith("add table")]
    return "\n".join(head + sorted(rest, key=lambda l: not l.startswith("add set")
                                   and not l.startswith("add element"))) + "\n"


# --- driver -------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--idle", type=int, default=60,
                        help="seconds the real agent is watched at rest [default: 60]")
    parser.add_argument("--json")
    parser.add_argument("--inner", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print(json.dumps(inner(args.inner, args.samples, args.idle)))
        return
    if os.geteuid() != 0:
        sys.exit("bench/felix.py needs root (it loads rules in throwaway namespaces)")
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        proc = subprocess.run(["unshare", "-n", sys.executable, os.path.abspath(__file__),
                               "--inner", str(n), "--samples", str(args.samples),
                               "--idle", str(args.idle)],
                              capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            sys.exit("size %d failed:\n%s" % (n, proc.stderr[-3000:]))
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        report(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def report(r):
    raw = r["raw"]
    fastest = min(v for k, v in raw.items() if k.endswith("full_s") and v)
    print("== %d endpoints, %d profiles: IPv4 filter %d chains / %d rules" % (
        r["endpoints"], r["profiles"], r["filter_v4_chains"], r["filter_v4_rules"]))
    print("cold start: %.2fs (dataplane sync %.2fs, both families + sets + nat)" % (
        r["cold_start_s"], r["cold_dataplane_s"]))
    for name in ("new_endpoint_ms", "rule_change_ms", "tag_member_ms"):
        print("%-16s p50 %7.1f ms  p99 %7.1f ms  (n=%d)" % (
            name[:-3], r[name]["p50"], r[name]["p99"], r[name]["n"]))
    idle = r["idle"]
    print("at rest (real agent, %.0f s): CPU %.2f s/min, RSS median %.0f MiB (max %.0f, n=%d); "
          "etcd beside it %.2f s/min" % (
              idle["seconds"], idle["agent_cpu_per_min"], idle["agent_rss_mib"]["p50"],
              idle["agent_rss_mib"]["max"], idle["agent_rss_mib"]["n"],
              idle["etcd_cpu_per_min"]))
    for k, v in sorted(raw.items()):
        print("raw %-32s %s" % (k, "%.3fs" % v if v is not None else "n/a"))
    print("ratios: cold start / fastest raw full load = %.2f; new endpoint p50 / raw nft "
          "one-endpoint = %.2f" % (r["cold_start_s"] / fastest,
                                   r["new_endpoint_ms"]["p50"] / 1000.0
                                   / raw["iptables_nft_one_endpoint_s"]))


if __name__ == "__main__":
    main()

"""Agent speed against the raw cost of loading the same rules, in one run, for both policy
dataplanes side by side (needs root).

    .venv/bin/python bench/felix.py [--sizes 1000,10000] [--samples 40] [--idle 60]
                                    [--dataplanes nftables,iptables] [--json out.json]

For each size N and each dataplane (the agent built with AgentDataplane(dataplane=...)), in a
throwaway network namespace with its own etcd:
  - writes 100 profiles (tag = name, an allow-from-tag inbound rule and a tcp port rule) and N
    local endpoints spread over them (no veths: the route work is not measured);
  - cold start: --cold-samples agent resyncs (snapshot, desired state, every set and chain
    programmed), each by a fresh agent process from an empty ruleset, split by phase (snapshot
    read, state parse, desired state, dataplane sync, the rest); and as many restarts, each a
    fresh agent over the rules and sets the one before left;
  - incremental, p50/p99 over --samples: etcd write -> the executor's apply returned (kernel
    state in place) for (a) one new local endpoint, (b) one rule change in a profile, (c) one
    new endpoint on another host (a tag membership change: one ipset or nft set update);
  - at rest: the real agent (`calicoctl felix serve --dataplane=<same>`, default refresh
    interval) started on the same etcd, and once it reports alive (with that dataplane), its CPU
    seconds per minute and RSS over --idle seconds, with the etcd server's CPU in the same
    minutes for scale; and beside it the plugin (`calicoctl plugin serve`, no Docker engine in
    the namespace: its event stream reconnects every 5 s instead);
  - raw baselines from the agent's final desired state, each in fresh namespaces:
    iptables dataplane: its IPv4 filter ruleset loaded from empty with iptables-nft-restore,
      iptables-legacy-restore and native `nft -f` (the same rules through
      iptables-restore-translate); and one endpoint's chains added with --noflush on top of the
      full ruleset (nft and legacy backends);
    nftables dataplane: its table (nft_policy.full_script) loaded from empty with `nft -f`;
      the same table in 5 transactions (a skeleton of sets, chains and rules, then a quarter of
      every set's elements in each of 4 more: the least a load overlapping the agent's own
      work could cost); the same full table followed by the fixed iptables chains it still
      loads (filter, nat and raw of both families, one restore per family); and one
      endpoint's set elements added
      with `nft -f` on top of the full table (--samples rounds, the elements deleted between),
      with the iptables parts present as on the agent's host, and without them.
The summary puts the dataplanes side by side: growth from the smallest to the largest size of
(a), (b) and (c), and cold start against the fastest raw full load (goal for both: <= 1.5x).
For the nftables dataplane that ratio is against its table alone, as the iptables dataplane's
is against its IPv4 filter table alone (neither counts the fixed nat/raw/IPv6 parts the agent
also loads); the ratio against the table plus the iptables parts is printed beside it.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)

import stats  # noqa: E402  (bench/stats.py)
from support import cpu_and_rss  # noqa: E402  (bench/support.py)

PROFILES = 100
HOST = "bench"
DATAPLANES = ("nftables", "iptables")
QUARTERS = 4      # element transactions after the skeleton in the chunked raw load


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


def inner(n, samples, idle_seconds, dataplane, cold_samples):
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
        colds = cold_starts(dataplane, cold_samples)
        restarts = cold_starts(dataplane, cold_samples, restart=True)
        from calicoctl.datastore.store import EtcdStore
        from calicoctl.felix.agent import Agent
        from calicoctl.felix.executor import AgentDataplane
        empty_ruleset()
        dp = AgentDataplane(dataplane=dataplane)
        timed = Timed(dp)
        agent = Agent(EtcdStore(timeout=10), HOST, timed, refresh_interval=3600)
        dp.prepare()
        agent.resync()      # not a sample: this process has run the samples' imports
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
        idle = idle_cost(server, n, idle_seconds, dataplane)
        if dataplane == "nftables":
            raw_samples = nft_raw_loads(desired, samples)
            shape = {"nft_chains": len(desired.nft_chains),
                     "nft_rules": sum(len(r) for r in desired.nft_chains.values()),
                     "nft_sets": len(desired.nft_sets),
                     "nft_elements": sum(len(e) for e in desired.nft_elements.values())}
        else:
            raw_samples = raw_loads(desired, n)
            shape = {"filter_v4_chains": len(desired.chains[("filter", 4)]),
                     "filter_v4_rules": sum(len(r) for r in
                                            desired.chains[("filter", 4)].values())}
        return dict(shape, **{
            "dataplane": dataplane, "endpoints": n, "profiles": PROFILES,
            "populate_s": populate_s,
            # Medians of the fresh agents' cold starts, and every sample for the spread.
            "cold_start_s": statistics.median(c["cold_start_s"] for c in colds),
            "cold_start_samples": [c["cold_start_s"] for c in colds],
            "cold_dataplane_s": statistics.median(c["phases"]["dataplane_sync"] for c in colds),
            "cold_phases_s": {name: statistics.median(c["phases"][name] for c in colds)
                              for name in colds[0]["phases"]},
            "restart_samples": [c["cold_start_s"] for c in restarts],
            "new_endpoint_ms": summary(new_ep), "rule_change_ms": summary(rule),
            "tag_member_ms": summary(member), "idle": idle,
            # Medians (seconds) as in earlier runs, and every sample for the spread.
            "raw": {k: statistics.median(v) if v else None for k, v in raw_samples.items()},
            "raw_samples": raw_samples,
        })
    finally:
        server.stop()


def empty_ruleset():
    """This namespace's rules and sets gone, as on a host where no agent has run: iptables-nft's
    tables are nft tables too (the agent's iptables parts use that backend by default)."""
    subprocess.run(["nft", "flush", "ruleset"], check=True)
    subprocess.run(["ipset", "destroy"], check=True)


def cold_starts(dataplane, samples, restart=False):
    """`samples` cold starts, each by a fresh agent process (`--cold-child`) from an empty
    ruleset, as when a host's agent first starts: [{"cold_start_s", "phases"}].  restart: over
    the rules and sets the last agent left instead, as when the agent restarts on a running
    host (its table is replaced in the same one transaction)."""
    out = []
    for _ in range(samples):
        if not restart:
            empty_ruleset()
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--cold-child",
                               "--dataplane", dataplane], capture_output=True, text=True,
                              cwd=REPO)
        if proc.returncode != 0:
            raise RuntimeError("a cold start failed: %s" % proc.stderr[-3000:])
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def cold_child(dataplane):
    """One cold start in this fresh process: the agent's first resync, by phase."""
    from calicoctl.datastore.store import EtcdStore
    from calicoctl.felix.agent import Agent
    from calicoctl.felix.executor import AgentDataplane
    dp = AgentDataplane(dataplane=dataplane)
    agent = Agent(EtcdStore(timeout=10), HOST, dp, refresh_interval=3600)
    dp.prepare()
    # As Agent.run: the agent waits for etcd's Ready key before its first resync, so its
    # etcd client is imported and connected by then (python-etcd alone pulls in dnspython).
    if not agent.wait_ready():
        raise RuntimeError("the agent never saw /calico/v1/Ready")
    phases = time_phases(agent, dp)
    t = time.perf_counter()
    agent.resync()
    cold = time.perf_counter() - t
    phases["rest"] = cold - sum(phases.values())
    return {"cold_start_s": cold, "phases": phases}


def time_phases(agent, dp):
    """{phase: seconds} of the next resync, filled as it runs: the snapshot read, its parse,
    the desired state and the dataplane sync (the rest is what the caller finds left)."""
    phases = {}

    def timed(obj, name, phase):
        real = getattr(obj, name)

        def run(*args, **kwargs):
            t = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                phases.setdefault(phase, time.perf_counter() - t)    # the first call only
        setattr(obj, name, run)
    timed(agent.store, "snapshot", "snapshot_read")
    timed(agent.state, "load_snapshot", "state_parse")
    timed(dp, "sync", "dataplane_sync")
    real_desired_state = dp.desired_state

    def desired_state():
        desired = real_desired_state()
        timed(desired, "update", "desired_state")
        return desired
    dp.desired_state = desired_state
    return phases


def idle_cost(server, n, seconds, dataplane):
    """The real agent (`calicoctl felix serve --dataplane=<dataplane>`, as a user's host runs
    it, its periodic repair at the default interval included) at rest with these n endpoints
    programmed: its RSS and CPU seconds per minute, sampled every 5 s over `seconds`; the etcd
    server's CPU in the same minutes for scale."""
    env = dict(os.environ, CALICO_HOSTNAME=HOST, ETCD_AUTHORITY=server.authority)
    proc = subprocess.Popen([sys.executable, "-m", "calicoctl", "felix", "serve", "--no-bgp",
                             "--log-level=WARNING", "--dataplane=%s" % dataplane],
                            cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # The plugin beside it, on the same etcd with these n endpoints of its host.  No Docker
    # engine here: its only work at rest, following Docker's event stream, is a reconnect
    # every 5 s instead (and without a first listing it never reconciles, so it cannot remove
    # the bench's endpoints).  bench/container_start.py measures it beside a real engine.
    sock_dir = tempfile.mkdtemp(prefix="felix-bench-plugin-")
    plugin = subprocess.Popen([sys.executable, "-m", "calicoctl", "plugin", "serve",
                               "--socket=%s/calico.sock" % sock_dir, "--log-level=warning"],
                              cwd=REPO, env=dict(env, DOCKER_HOST="unix://%s/no-docker.sock"
                                                 % sock_dir),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import etcd
        client = etcd.Client(host="127.0.0.1", port=server.client_port)
        deadline = time.monotonic() + 600
        while True:       # polled: the liveness report is written after the first full sync
            try:
                alive = json.loads(client.read("/calico/felix/v1/host/%s/status" % HOST).value)
                break
            except etcd.EtcdKeyNotFound:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the agent never reported alive (exit %s)" % proc.poll())
                time.sleep(0.2)
        if alive.get("dataplane") != dataplane:
            raise RuntimeError("the agent at rest reports dataplane %r, not %r"
                               % (alive.get("dataplane"), dataplane))
        while not os.path.exists("%s/calico.sock" % sock_dir):   # polled: serving yet?
            if plugin.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the plugin never served its socket (exit %s)"
                                   % plugin.poll())
            time.sleep(0.1)
        start_cpu, _ = cpu_and_rss(proc.pid)
        plugin_start, _ = cpu_and_rss(plugin.pid)
        etcd_start, _ = cpu_and_rss(server.pid)
        started = time.monotonic()
        rss, plugin_rss = [], []
        while time.monotonic() - started < seconds:
            time.sleep(5)
            rss.append(cpu_and_rss(proc.pid)[1])
            plugin_rss.append(cpu_and_rss(plugin.pid)[1])
        elapsed = time.monotonic() - started
        cpu = cpu_and_rss(proc.pid)[0] - start_cpu
        plugin_cpu = cpu_and_rss(plugin.pid)[0] - plugin_start
        etcd_cpu = cpu_and_rss(server.pid)[0] - etcd_start
        return {"seconds": elapsed, "agent_cpu_per_min": cpu * 60 / elapsed,
                "agent_rss_mib": {"p50": statistics.median(rss), "max": max(rss),
                                  "n": len(rss)},
                "plugin_cpu_per_min": plugin_cpu * 60 / elapsed,
                "plugin_rss_mib": {"p50": statistics.median(plugin_rss),
                                   "max": max(plugin_rss), "n": len(plugin_rss)},
                "etcd_cpu_per_min": etcd_cpu * 60 / elapsed}
    finally:
        for p in (proc, plugin):
            p.terminate()
        for p in (proc, plugin):
            p.wait(30)
        shutil.rmtree(sock_dir, ignore_errors=True)


def summary(values):
    return {"p50": 1000 * statistics.median(values), "p99": 1000 * percentile(values, 99),
            "n": len(values)}


def raw_loads(desired, n):
    """The iptables dataplane's baselines, {name: [seconds]}: the final IPv4 filter ruleset
    loaded from empty with each kernel interface, each in a fresh namespace, plus one
    endpoint's chains on top with --noflush."""
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


def nft_raw_loads(desired, rounds):
    """The nftables dataplane's baselines, {name: [seconds]}, from its final desired state:
    its whole table (nft_policy.full_script, what the agent loads) from empty with `nft -f`;
    the same followed by the iptables parts it still loads (its fixed filter chains, nat and
    raw, with their top-level jumps: one restore per family, as fast as iptables allows); and
    one endpoint's set elements added with `nft -f` on top of the table without them
    (`rounds` times in one namespace, deleted again between rounds, untimed), with the
    iptables parts loaded too as on the agent's host, and without them: nft 1.0.6 reads the
    other tables of the namespace (iptables-nft's) before any change, which costs a few ms."""
    from calicoctl.felix import nft_policy
    from calicoctl.felix.executor import TOP_JUMPS, IptablesTable
    chains, sets, elements = desired.nft_chains, desired.nft_sets, desired.nft_elements
    full = nft_policy.full_script(chains, sets, elements)
    # One endpoint whose profile list others use too (with 100 profiles every list is
    # shared): its elements are all it adds, as in the agent's delta.
    key = next(k for k in sorted(desired.rendered)
               if len(desired.list_users.get(nft_policy.endpoint_list(desired.rendered[k]),
                                             ())) > 1)
    mine = nft_policy.endpoint_elements(desired.rendered[key])
    base = nft_policy.full_script(chains, sets, {name: set(items) - mine.get(name, set())
                                                 for name, items in elements.items()})
    one = [line for name in sorted(mine)
           for line in nft_policy.element_lines("add", name, mine[name])]
    undo = [line for name in sorted(mine)
            for line in nft_policy.element_lines("delete", name, mine[name])]
    # The same table as a skeleton (sets, chains and rules, no elements) and then each set's
    # elements in quarters, one transaction each: what loading the table while the agent still
    # computes the rest (one transaction per batch of endpoints) would cost the kernel and nft
    # at best.  Timed as separate `nft -f` processes (about 3 ms each of it is the process).
    ordered = {name: sorted(elements.get(name, ())) for name in sorted(sets)}
    quarters = []
    for q in range(QUARTERS):
        lines = []
        for name, items in ordered.items():
            part = items[q * len(items) // QUARTERS:(q + 1) * len(items) // QUARTERS]
            lines += nft_policy.element_lines("add", name, part) if part else []
        quarters.append("\n".join(lines) + "\n")
    skeleton = nft_policy.full_script(chains, sets, {})
    iptables = {}
    for v in (4, 6):
        text = ""
        for t, jumps in sorted(TOP_JUMPS.items()):
            ours = desired.chains[(t, v)]
            lines = ["-A %s -j %s" % (b, c) for b, c in sorted(jumps.items()) if c in ours]
            builtins = "".join(":%s ACCEPT [0:0]\n" % b for b in sorted(jumps))
            text += IptablesTable(t, v).restore_input(ours, lines).replace(
                "*%s\n" % t, "*%s\n%s" % (t, builtins), 1)
        iptables[v] = text
    # The sets the iptables rules match on (pools, hosts) are there first, untimed, as for
    # the iptables dataplane's baselines.
    ipsets = "".join("create %s %s family %s\n" % (name, spec[0], spec[1]) + "".join(
        "add %s %s\n" % (name, m) for m in sorted(spec[2])) for name, spec in desired.sets.items())
    with tempfile.TemporaryDirectory() as d:
        paths = {}
        for name, text in (("full", full), ("base", base), ("one", "\n".join(one) + "\n"),
                           ("undo", "\n".join(undo) + "\n"), ("v4", iptables[4]),
                           ("v6", iptables[6]), ("sets", ipsets), ("skeleton", skeleton)) + \
                tuple(("quarter%d" % q, text) for q, text in enumerate(quarters)):
            paths[name] = os.path.join(d, name)
            with open(paths[name], "w") as f:
                f.write(text)
        # No shell around the timed commands (argv, stdin): one endpoint takes a few ms.
        nft = {name: (["nft", "-f", path], None) for name, path in paths.items()
               if name not in ("v4", "v6", "sets")}
        in_parts = [nft["skeleton"]] + [nft["quarter%d" % q] for q in range(QUARTERS)]
        iptables_parts = [(["iptables-restore"], paths["v4"]), (["ip6tables-restore"], paths["v6"])]
        return {
            "nft_table_full_s": timed_in_netns([], [nft["full"]], repeat=5),
            "nft_table_in_%d_transactions_s" % (QUARTERS + 1): timed_in_netns(
                [], in_parts, repeat=5),
            "nft_table_plus_iptables_full_s": timed_in_netns(
                ["ipset restore < %s" % paths["sets"]],
                [nft["full"]] + iptables_parts, repeat=5),
            "nft_one_endpoint_s": timed_in_netns(
                ["ipset restore < %s" % paths["sets"], nft["base"]] + iptables_parts,
                [nft["one"]], repeat=1, rounds=rounds, undo=[nft["undo"]]),
            "nft_one_endpoint_table_only_s": timed_in_netns(
                [nft["base"]], [nft["one"]], repeat=1, rounds=rounds, undo=[nft["undo"]]),
        }


def timed_in_netns(setup, command, repeat=3, rounds=1, undo=()):
    """Seconds of `command` (one shell line, or a list of commands, each a shell line or
    (argv, stdin path), timed together), `rounds` times in each of `repeat` fresh namespaces
    after the setup commands, with `undo` run untimed after each round."""
    commands = [command] if isinstance(command, str) else list(command)
    script = ("import subprocess, time\n"
              "def run(c):\n"
              "    if isinstance(c, str):\n"
              "        return subprocess.run(c, shell=True, check=True)\n"
              "    stdin = open(c[1]) if c[1] else None\n"
              "    subprocess.run(c[0], stdin=stdin, check=True)\n"
              "for c in %r: run(c)\n"
              "for _ in range(%d):\n"
              "    t = time.perf_counter()\n"
              "    for c in %r: run(c)\n"
              "    print(time.perf_counter() - t)\n"
              "    for c in %r: run(c)\n" % (list(setup), rounds, commands, list(undo)))
    times = []
    for _ in range(repeat):
        out = subprocess.run(["unshare", "-n", sys.executable, "-c", script],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError("raw load %r failed: %s" % (commands, out.stderr[-2000:]))
        times += [float(line) for line in out.stdout.split()]
    return times


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
    parser.add_argument("--dataplanes", default=",".join(DATAPLANES),
                        help="policy dataplanes measured, each beside its own raw baselines "
                             "[default: %s]" % ",".join(DATAPLANES))
    parser.add_argument("--cold-samples", type=int, default=7,
                        help="cold starts, each by a fresh agent process [default: 7]")
    parser.add_argument("--json")
    parser.add_argument("--inner", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cold-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dataplane", choices=DATAPLANES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold_child:
        print(json.dumps(cold_child(args.dataplane)))
        return
    if args.inner:
        print(json.dumps(inner(args.inner, args.samples, args.idle, args.dataplane,
                               args.cold_samples)))
        return
    dataplanes = [d.strip() for d in args.dataplanes.split(",") if d.strip()]
    if not dataplanes or any(d not in DATAPLANES for d in dataplanes):
        sys.exit("--dataplanes: a comma-separated list of %s" % ", ".join(DATAPLANES))
    if os.geteuid() != 0:
        sys.exit("bench/felix.py needs root (it loads rules in throwaway namespaces)")
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    for n in sizes:
        for dataplane in dataplanes:
            proc = subprocess.run(["unshare", "-n", sys.executable, os.path.abspath(__file__),
                                   "--inner", str(n), "--samples", str(args.samples),
                                   "--idle", str(args.idle), "--dataplane", dataplane,
                                   "--cold-samples", str(args.cold_samples)],
                                  capture_output=True, text=True, cwd=REPO)
            if proc.returncode != 0:
                sys.exit("size %d, %s dataplane failed:\n%s" % (n, dataplane,
                                                                 proc.stderr[-3000:]))
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(r)
            report(r)
            sys.stdout.flush()
            if args.json:         # after every run, so a later failure keeps what was measured
                with open(args.json, "w") as f:
                    json.dump(results, f, indent=2)
    side_by_side(results, sizes, dataplanes)


def fastest_full(r):
    """(raw key, seconds) of the baseline cold start is compared with: the fastest full load
    of the dataplane's own policy ruleset (see the module docstring)."""
    raw = r["raw"]
    if r["dataplane"] == "nftables":
        return "nft_table_full_s", raw["nft_table_full_s"]
    return min(((k, v) for k, v in raw.items() if k.endswith("full_s") and v),
               key=lambda kv: kv[1])


def one_endpoint_key(r):
    return "nft_one_endpoint_s" if r["dataplane"] == "nftables" else "iptables_nft_one_endpoint_s"


def spread(values, scale=1000.0, unit="ms", digits=1):
    """'412.3 ms (p10-p90 400.1-430.0, n=3)': shorter than stats.summary, for the table."""
    v = [x * scale for x in values]
    return "%.*f %s (p10-p90 %.*f-%.*f, n=%d)" % (
        digits, statistics.median(v), unit, digits, stats.percentile(v, 10), digits,
        stats.percentile(v, 90), len(v))


def seconds_spread(r, key="cold_start_samples"):
    return spread(r[key], scale=1.0, unit="s", digits=2)


def incremental(figure):
    return "p50 %.1f ms (p99 %.1f, n=%d)" % (figure["p50"], figure["p99"], figure["n"])


def report(r):
    raw = r["raw"]
    samples = r.get("raw_samples", {})
    if r["dataplane"] == "nftables":
        print("== %d endpoints, %d profiles [nftables dataplane]: table inet calico %d chains / "
              "%d rules, %d sets / %d elements" % (
                  r["endpoints"], r["profiles"], r["nft_chains"], r["nft_rules"], r["nft_sets"],
                  r["nft_elements"]))
        print("cold start: %s (dataplane sync %.2fs: the nft table, iptables fixed chains, "
              "nat and raw in both families)" % (seconds_spread(r), r["cold_dataplane_s"]))
    else:
        print("== %d endpoints, %d profiles [iptables dataplane]: IPv4 filter %d chains / "
              "%d rules" % (r["endpoints"], r["profiles"], r["filter_v4_chains"],
                            r["filter_v4_rules"]))
        print("cold start: %s (dataplane sync %.2fs, both families + sets + nat)" % (
            seconds_spread(r), r["cold_dataplane_s"]))
    print("restart over the last agent's rules and sets: %s" % seconds_spread(
        r, "restart_samples"))
    if r.get("cold_phases_s"):
        print("cold start by phase (medians): " + ", ".join(
            "%s %.2fs" % (name.replace("_", " "), r["cold_phases_s"][name])
            for name in ("snapshot_read", "state_parse", "desired_state", "dataplane_sync",
                         "rest")))
    for name in ("new_endpoint_ms", "rule_change_ms", "tag_member_ms"):
        print("%-16s p50 %7.1f ms  p99 %7.1f ms  (n=%d)" % (
            name[:-3], r[name]["p50"], r[name]["p99"], r[name]["n"]))
    idle = r["idle"]
    print("at rest (real agent, %.0f s): CPU %.2f s/min, RSS median %.0f MiB (max %.0f, n=%d); "
          "etcd beside it %.2f s/min" % (
              idle["seconds"], idle["agent_cpu_per_min"], idle["agent_rss_mib"]["p50"],
              idle["agent_rss_mib"]["max"], idle["agent_rss_mib"]["n"],
              idle["etcd_cpu_per_min"]))
    print("plugin at rest beside it (no Docker engine): CPU %.2f s/min, RSS median %.0f MiB "
          "(max %.0f, n=%d)" % (idle["plugin_cpu_per_min"], idle["plugin_rss_mib"]["p50"],
                                idle["plugin_rss_mib"]["max"], idle["plugin_rss_mib"]["n"]))
    for k, v in sorted(raw.items()):
        print("raw %-32s %s" % (k, stats.summary(samples[k]) if samples.get(k) else
                                "%.3fs" % v if v is not None else "n/a"))
    key, fastest = fastest_full(r)
    if r["dataplane"] == "nftables":
        print("ratios: cold start / raw nft table full load = %.2f (with the iptables parts: "
              "%.2f); new endpoint p50 / raw nft one-endpoint = %.2f" % (
                  r["cold_start_s"] / fastest,
                  r["cold_start_s"] / raw["nft_table_plus_iptables_full_s"],
                  r["new_endpoint_ms"]["p50"] / 1000.0 / raw["nft_one_endpoint_s"]))
    else:
        print("ratios: cold start / fastest raw full load (%s) = %.2f; new endpoint p50 / raw "
              "nft one-endpoint = %.2f" % (key[:-2], r["cold_start_s"] / fastest,
                                           r["new_endpoint_ms"]["p50"] / 1000.0
                                           / raw["iptables_nft_one_endpoint_s"]))


def side_by_side(results, sizes, dataplanes, width=38):
    """One table, a column per dataplane: each figure as median, spread and n, then the
    growth from the smallest to the largest size and cold start against the raw full load."""
    by = {(r["endpoints"], r["dataplane"]): r for r in results}

    def row(label, cells):
        print(("  %-24s%s" % (label, "".join("%-*s" % (width, c) for c in cells))).rstrip())

    def per_dataplane(label, n, cell):
        row(label, [cell(by[(n, d)]) for d in dataplanes])
    print()
    print("== side by side (medians; spread p99 or p10-p90; n samples)")
    row("", [d + " dataplane" for d in dataplanes])
    for n in sizes:
        print("%d endpoints" % n)
        per_dataplane("cold start", n, seconds_spread)
        per_dataplane("restart over own rules", n, lambda r: seconds_spread(
            r, "restart_samples"))
        per_dataplane("raw full load (fastest)", n, lambda r: spread(
            r["raw_samples"][fastest_full(r)[0]], 1, "s", 3))
        per_dataplane("new endpoint", n, lambda r: incremental(r["new_endpoint_ms"]))
        per_dataplane("raw one endpoint", n, lambda r: spread(
            r["raw_samples"][one_endpoint_key(r)]))
        per_dataplane("rule change", n, lambda r: incremental(r["rule_change_ms"]))
        per_dataplane("tag member", n, lambda r: incremental(r["tag_member_ms"]))
        per_dataplane("at rest CPU, RSS", n, lambda r: "%.2f s/min, %.0f MiB (n=%d)" % (
            r["idle"]["agent_cpu_per_min"], r["idle"]["agent_rss_mib"]["p50"],
            r["idle"]["agent_rss_mib"]["n"]))
        per_dataplane("plugin at rest", n, lambda r: "%.2f s/min, %.0f MiB (n=%d)" % (
            r["idle"]["plugin_cpu_per_min"], r["idle"]["plugin_rss_mib"]["p50"],
            r["idle"]["plugin_rss_mib"]["n"]))
    lo, hi = min(sizes), max(sizes)
    if hi != lo:
        print("growth %d / %d endpoints, ratio of p50s (goal <= 1.5x)" % (hi, lo))
        for name in ("new_endpoint_ms", "rule_change_ms", "tag_member_ms"):
            row(name[:-3].replace("_", " "), ["%.2fx" % (by[(hi, d)][name]["p50"]
                                                         / by[(lo, d)][name]["p50"])
                                               for d in dataplanes])
    print("cold start / fastest raw full load (goal <= 1.5x)")
    for n in sizes:
        per_dataplane("%d endpoints" % n, n, lambda r: "%.2fx (%s)" % (
            r["cold_start_s"] / fastest_full(r)[1],
            "%.2fx with iptables parts" % (r["cold_start_s"]
                                           / r["raw"]["nft_table_plus_iptables_full_s"])
            if r["dataplane"] == "nftables" else fastest_full(r)[0][:-7]))


if __name__ == "__main__":
    main()

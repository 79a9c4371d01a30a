"""The seed's libnetwork demonstration, end to end, on two namespace hosts.

    python -m tests.st.demo            # what `make demo` runs (as root)
    KEEP=1 python -m tests.st.demo     # leave etcd and the hosts up afterwards
    ENGINE=forky python -m tests.st.demo   # hosts on Debian testing's root: Docker 28.5, BIRD 2
                                           # (bookworm: 20.10 + BIRD 1.6; trixie: 26.1 + BIRD 2)

It brings up etcd and the hosts calico-01 and calico-02 (each with its own dockerd), loads the
node images into both, and then does what a person following the seed would type, printing each
command (as `calico-01$ ...`) and its output:

  calicoctl node --libnetwork on each host, docker ps, calicoctl checksystem, then for every way of
  creating the networks (Docker's default IPAM and Calico IPAM, each without and with
  ipip/nat-outgoing) the three networks on each host, workloads A, B, C on calico-01 and D, E on
  calico-02, the pings that must work and those that must fail, docker network ls, and the walk
  docker network inspect -> calicoctl endpoint <ID> profile show -> calicoctl profile <name> rule
  show.  It ends with a table of which workload reached which (expected and seen) and exits 1 if
  any disagree.

One honest difference from the seed, explained where it happens: Docker 20.10 has no cluster
store, so every network is created on each host.  With Docker's default IPAM each host allocates
on its own, so each host gets its own --ip-range.  The seed's `docker exec workload-A ping -c 4
workload-E.net1` runs as written: Docker's embedded DNS knows only its own host's containers, and
calico-dns, a container `calicoctl node --libnetwork` starts, answers the other host's workloads'
names inside each workload (calicoctl/dnsproxy/).
The ipip variants need the kernel's ipip module; where it is missing they say so and are skipped.

calicoctl runs inside each host through nsenter: the venv's console script, or the one-file
binary with CALICOCTL=dist/calicoctl.
"""

import ipaddress
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.st.harness import Testbed, cleanup_stale, exclusive, wait_for  # noqa: E402
from tests.st.harness.procs import on_each  # noqa: E402
from tests.st.harness.errors import HarnessError  # noqa: E402

WORKLOADS = {"workload-A": ("calico-01", "net1"), "workload-B": ("calico-01", "net2"),
             "workload-C": ("calico-01", "net1"), "workload-D": ("calico-02", "net3"),
             "workload-E": ("calico-02", "net1")}
NETWORKS = ("net1", "net2", "net3")
SUBNETS = {"net1": "192.168.0.0/24", "net2": "192.168.1.0/24", "net3": "192.168.2.0/24"}
CALICO_POOL = "192.168.0.0/16"
ROUTE_TIMEOUT = 60          # BGP: a new workload's route reaches the other host within seconds
NAME_TIMEOUT = 30           # a new workload's name reaches the other host's calico-dns sooner


@dataclass
class Variant:
    title: str
    ipam: str               # "default" | "calico"
    cloud: bool             # ipip + nat-outgoing


VARIANTS = [
    Variant("Docker's default IPAM, non-cloud", "default", False),
    Variant("Docker's default IPAM, cloud (nat-outgoing + ipip)", "default", True),
    Variant("Calico IPAM, non-cloud", "calico", False),
    Variant("Calico IPAM, cloud (nat-outgoing + ipip)", "calico", True),
]


@dataclass
class Outcome:
    variant: str
    rows: list = field(default_factory=list)      # (source, target, expected, seen)
    failures: list = field(default_factory=list)  # seed steps that did not do what they should
    skipped: str = None


def default_calicoctl():
    chosen = os.environ.get("CALICOCTL")
    if chosen:
        return str(Path(chosen).resolve())
    return str(REPO / ".venv" / "bin" / "calicoctl")


class Demo:
    def __init__(self, bed, calicoctl=None, out=print, managed=False):
        """managed: the driver as the Docker managed plugin (`calicoctl node --libnetwork
        --managed-plugin`), which Docker names calico:latest; `MANAGED=1 make demo`."""
        self.managed = managed
        self.driver = "calico:latest" if managed else "calico"
        self.bed = bed
        self.hosts = {h.name: h for h in bed.hosts}
        self.calicoctl_path = calicoctl or default_calicoctl()
        self.etcd_authority = bed.etcd_url.split("//", 1)[1]
        self.out = out
        self.outcomes = []

    # ---- running things as a person would -------------------------------------------------

    def say(self, text=""):
        self.out(text)

    def sh(self, host, shown, argv, timeout=120):
        """Run argv in host, print `host$ shown` and the output; return the CompletedProcess."""
        result = self.hosts[host].run(argv, check=False, timeout=timeout)
        self._show(host, shown, result)
        return result

    def _show(self, host, shown, result):
        self.say("%s$ %s" % (host, shown))
        text = (result.stdout + result.stderr).rstrip()
        if text:
            self.say(text)

    def _calicoctl_argv(self, args):
        # Clean environment apart from etcd: the host's own hostname is the node name, and
        # Docker is the host's default socket.
        return ["env", "-u", "DOCKER_HOST", "-u", "CALICO_HOSTNAME", "-u", "ETCD_ENDPOINTS",
                "ETCD_AUTHORITY=" + self.etcd_authority, self.calicoctl_path, *args]

    def calicoctl(self, host, *args, timeout=180):
        return self.sh(host, "calicoctl " + shlex.join(args), self._calicoctl_argv(args),
                       timeout)

    def calicoctl_on_every_host(self, *args, timeout=180):
        """The same calicoctl command on every host at once, as each host's operator would run
        it; the transcript shows each host's command and output in host order.  Whether every
        one succeeded."""
        results = on_each(self.hosts.values(), lambda h: h.run(
            self._calicoctl_argv(args), check=False, timeout=timeout))
        for host, result in zip(self.hosts, results, strict=True):
            self._show(host, "calicoctl " + shlex.join(args), result)
        return all(r.returncode == 0 for r in results)

    def docker(self, host, *args, timeout=120):
        return self.sh(host, "docker " + " ".join(shlex.quote(a) for a in args),
                       ["/usr/bin/docker", *args], timeout)

    def quiet_docker(self, host, *args):
        return self.hosts[host].run(["/usr/bin/docker", *args], check=False, timeout=120)

    def section(self, title):
        self.say("")
        self.say("=" * 78)
        self.say(title)
        self.say("=" * 78)

    def note(self, text):
        self.say("# " + text)

    # ---- the demonstration ------------------------------------------------------------------

    def start_nodes(self):
        self.section("Starting Calico services")
        node = ("node", "--libnetwork") + (("--managed-plugin",) if self.managed else ())
        ok = self.calicoctl_on_every_host(*node)
        for host in self.hosts:
            self.docker(host, "ps")
            if self.managed:
                self.docker(host, "plugin", "ls")
        for host in self.hosts:     # which engine and BIRD this run is about
            self.docker(host, "version", "--format", "Docker engine {{.Server.Version}}")
            self.docker(host, "exec", "calico-node", "bird", "--version")
        self.calicoctl("calico-01", "status")
        self.calicoctl("calico-01", "node", "show")
        if not ok:
            raise HarnessError("calicoctl %s failed; see above" % " ".join(node))

    def ipip_available(self):
        result = self.calicoctl("calico-01", "checksystem")
        return "kernel: ipip" in result.stdout and not any(
            line.startswith("kernel: ipip") and "WARNING" in line
            for line in result.stdout.splitlines())

    def run_variant(self, variant, ipip):
        outcome = Outcome(variant.title)
        self.outcomes.append(outcome)
        self.section("Networks with " + variant.title)
        if variant.cloud and not ipip:
            outcome.skipped = "this kernel has no ipip module (calicoctl checksystem says so)"
            self.note("Skipped: %s. The commands would be:" % outcome.skipped)
            for line in self._network_commands(variant, "calico-01"):
                self.note("  " + line)
            return outcome
        try:
            self._create_networks(variant, outcome)
            addresses = self._run_workloads(outcome)
            if addresses:
                self._wait_for_routes(addresses)
                self._seed_pings(addresses, outcome)
                for host in self.hosts:
                    self.docker(host, "network", "ls")
                self._policy_walk(outcome)
                self._matrix(addresses, outcome)
        finally:
            self._clean_variant(variant)
        return outcome

    def _network_commands(self, variant, host):
        opts = "--opt nat-outgoing=true --opt ipip=true " if variant.cloud else ""
        if variant.ipam == "calico":
            lines = ["calicoctl pool add %s%s" % (CALICO_POOL,
                                                  " --ipip --nat-outgoing" if variant.cloud else "")]
            lines += ["docker network create --driver=%s --ipam-driver %s %s" % (
                self.driver, self.driver, n) for n in NETWORKS]
            return lines
        index = list(self.hosts).index(host)
        lines = []
        for net in NETWORKS:
            subnet = ipaddress.ip_network(SUBNETS[net])
            # Each host's Docker allocates on its own: give each a quarter of the subnet.
            ip_range = list(subnet.subnets(new_prefix=subnet.prefixlen + 2))[index]
            lines.append("docker network create --driver=%s %s--subnet=%s --ip-range=%s %s"
                         % (self.driver, opts, subnet, ip_range, net))
        return lines

    def _create_networks(self, variant, outcome):
        if variant.ipam == "default":
            self.note("Docker 20.10 has no cluster store: each network is created on each host. "
                      "Docker's default IPAM allocates per host, so each host gets its own "
                      "--ip-range inside the subnet.")
        else:
            self.note("Calico IPAM hands out addresses from the pool across hosts (blocks with "
                      "host affinity); the networks are still created on each host.")
        for host in self.hosts:
            for line in self._network_commands(variant, host):
                argv = shlex.split(line)
                if argv[0] == "calicoctl":
                    if host != "calico-01":
                        continue            # the pool lives in etcd: once is enough
                    result = self.calicoctl(host, *argv[1:])
                else:
                    result = self.docker(host, *argv[1:])
                if result.returncode != 0:
                    outcome.failures.append("%s: %s" % (host, line))

    def _run_workloads(self, outcome):
        self.section("Workloads")
        addresses = {}
        for name, (host, net) in WORKLOADS.items():
            result = self.docker(host, "run", "--net", net, "--name", name, "-tid", "busybox")
            if result.returncode != 0:
                outcome.failures.append("%s: docker run %s" % (host, name))
        for name, (host, net) in WORKLOADS.items():
            ip = self.quiet_docker(host, "inspect", "--format",
                                   "{{ .NetworkSettings.Networks.%s.IPAddress }}" % net,
                                   name).stdout.strip()
            if ip:
                addresses[name] = ip
        self.note("addresses: " + ", ".join("%s %s (%s)" % (n, a, WORKLOADS[n][0])
                                            for n, a in addresses.items()))
        if len(addresses) != len(WORKLOADS):
            outcome.failures.append("not every workload got an address")
            return None
        return addresses

    def _wait_for_routes(self, addresses):
        """Cross-host pings need the peer's route, which BGP carries within seconds.  One
        deadline for all of them; what is still missing is said, and the pings will show it."""
        t0 = time.monotonic()
        wanted = [(host, ip, self.hosts[WORKLOADS[name][0]].ip, name)
                  for name, ip in addresses.items() for host in self.hosts
                  if host != WORKLOADS[name][0]]

        def missing():
            return [(host, ip, via, name) for host, ip, via, name in wanted
                    if "via %s" % via not in self.hosts[host].run(
                        ["ip", "route", "get", ip], check=False).stdout]
        try:
            wait_for(lambda: not missing(), timeout=ROUTE_TIMEOUT, what="BGP routes")
            self.note("each host has learnt the other's workload routes over BGP (%.1f s)"
                      % (time.monotonic() - t0))
        except HarnessError:
            for host, ip, via, name in missing():
                self.note("after %d s %s still has no route to %s (%s) via %s" % (
                    ROUTE_TIMEOUT, host, name, ip, via))

    def _wait_for_name(self, source, name, address):
        """A new workload's name reaches the other host's calico-dns through etcd within a
        second or so of `docker run`; wait for that (quietly), as for the BGP routes."""
        t0 = time.monotonic()
        argv = ["/usr/bin/docker", "exec", source, "nslookup", name]
        try:
            wait_for(lambda: address in self.hosts["calico-01"].run(
                argv, check=False, timeout=30).stdout, timeout=NAME_TIMEOUT,
                what="%s to resolve in %s" % (name, source))
            self.note("%s resolves in %s (%.1f s)" % (name, source, time.monotonic() - t0))
        except HarnessError:
            self.note("after %d s %s still does not resolve %s" % (NAME_TIMEOUT, source, name))

    def _ping(self, host, source, target, count=4, shown_target=None):
        # busybox ping waits -W seconds (default 10) for a reply after the last packet whatever
        # the -w deadline; -W 1 keeps a ping that must fail from costing ten seconds.
        args = ["ping", "-c", str(count), "-W", "1", "-w", str(count + 1)]
        shown = "docker exec %s %s %s" % (source, " ".join(args), shown_target or target)
        return self.sh(host, shown, ["/usr/bin/docker", "exec", source, *args, target])

    def _seed_pings(self, addresses, outcome):
        self.section("Validation: the seed's pings")
        self.note("A can ping C (same network, same host) by name, as Docker's embedded DNS "
                  "answers:")
        if self.docker("calico-01", "exec", "workload-A", "ping", "-c", "4",
                       "workload-C.net1").returncode != 0:
            outcome.failures.append("A could not ping workload-C.net1")
        self._wait_for_name("workload-A", "workload-E.net1", addresses["workload-E"])
        self.note("E runs on calico-02, whose containers Docker's DNS on calico-01 does not "
                  "know; calico-dns answers the name inside A:")
        result = self.docker("calico-01", "exec", "workload-A", "ping", "-c", "4",
                             "workload-E.net1")
        if result.returncode != 0 or "(%s)" % addresses["workload-E"] not in result.stdout:
            outcome.failures.append("A could not ping workload-E.net1 across hosts")
        self.note("A cannot ping B (another network on the same host); these pings fail:")
        fmt = "{{ .NetworkSettings.Networks.net2.IPAddress }}"
        if self._ping("calico-01", "workload-A", addresses["workload-B"],
                      shown_target='`docker inspect --format "%s" workload-B`' % fmt
                      ).returncode == 0:
            outcome.failures.append("A reached B")
        self.note("A cannot ping D (another network on the other host); D's address from "
                  "calico-02:")
        self.docker("calico-02", "inspect", "--format",
                    "{{ .NetworkSettings.Networks.net3.IPAddress }}", "workload-D")
        if self._ping("calico-01", "workload-A", addresses["workload-D"]).returncode == 0:
            outcome.failures.append("A reached D")

    def _policy_walk(self, outcome):
        self.section("Policy: docker network inspect -> calicoctl endpoint -> calicoctl profile")
        result = self.docker("calico-01", "network", "inspect", "net1")
        try:
            info = json.loads(result.stdout)[0]
            endpoint_id = next(c["EndpointID"] for c in info["Containers"].values()
                               if c.get("Name") == "workload-A")
        except (ValueError, IndexError, KeyError, StopIteration):
            outcome.failures.append("docker network inspect net1 showed no endpoint for A")
            return
        result = self.calicoctl("calico-01", "endpoint", endpoint_id, "profile", "show")
        profiles = [line.strip("| ").strip() for line in result.stdout.splitlines()
                    if line.startswith("|")][1:]
        if result.returncode != 0 or not profiles:
            outcome.failures.append("calicoctl endpoint %s profile show" % endpoint_id)
            return
        self.note("the profile is named after the network, so the same-named network on the "
                  "other host shares it")
        if self.calicoctl("calico-01", "profile", profiles[0], "rule", "show").returncode != 0:
            outcome.failures.append("calicoctl profile %s rule show" % profiles[0])

    def _matrix(self, addresses, outcome):
        self.section("Who reaches whom (every pair: ping -c 1 -W 1 -w 2)")
        pairs = [(s, t) for s in WORKLOADS for t in WORKLOADS if s != t]

        def probe(pair):
            source, target = pair
            host = WORKLOADS[source][0]
            argv = ["/usr/bin/docker", "exec", source, "ping", "-c", "1", "-W", "1", "-w", "2",
                    addresses[target]]
            seen = self.hosts[host].run(argv, check=False, timeout=30).returncode == 0
            if not seen and WORKLOADS[source][1] == WORKLOADS[target][1]:
                # One more chance where a reply is expected: a lost first packet is not policy.
                seen = self.hosts[host].run(argv, check=False, timeout=30).returncode == 0
            return seen

        # The pairs are independent: probing them at once keeps the 14 that must time out
        # from costing 14 timeouts.
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=len(pairs)) as pool:
            seen_all = list(pool.map(probe, pairs))
        for (source, target), seen in zip(pairs, seen_all):
            expected = WORKLOADS[source][1] == WORKLOADS[target][1]
            outcome.rows.append((source, target, expected, seen))
            self.say("%s -> %s (%s): %s" % (source, target, addresses[target],
                                            "reached" if seen else "no reply"))

    def _clean_variant(self, variant):
        self.note("cleaning up this variant")
        for name, (host, _net) in WORKLOADS.items():
            self.quiet_docker(host, "rm", "-f", name)
        for host in self.hosts:
            for net in NETWORKS:
                self.quiet_docker(host, "network", "rm", net)
        argv = ["env", "ETCD_AUTHORITY=" + self.etcd_authority, self.calicoctl_path]
        shown = self.hosts["calico-01"].run(argv + ["pool", "show"], check=False).stdout
        for line in shown.splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells and cells[0].startswith("192.168."):
                self.hosts["calico-01"].run(argv + ["pool", "remove", cells[0], "--force"],
                                            check=False)

    def stop_nodes(self):
        on_each(self.hosts.values(), lambda h: h.run(
            ["env", "ETCD_AUTHORITY=" + self.etcd_authority, self.calicoctl_path, "node", "stop",
             "--force"], check=False, timeout=120))

    # ---- summary ----------------------------------------------------------------------------

    def summary(self):
        from prettytable import PrettyTable
        self.section("Summary")
        bad = 0
        for outcome in self.outcomes:
            if outcome.skipped:
                self.say("%s: skipped (%s)" % (outcome.variant, outcome.skipped))
                continue
            table = PrettyTable(["from", "to", "expected", "seen", ""])
            table.align = "l"
            for source, target, expected, seen in outcome.rows:
                agree = expected == seen
                bad += not agree
                table.add_row([source, target, "reach" if expected else "blocked",
                               "reach" if seen else "blocked", "" if agree else "MISMATCH"])
            self.say(outcome.variant)
            self.say(table.get_string())
            for failure in outcome.failures:
                bad += 1
                self.say("FAILED: " + failure)
        ran = [o for o in self.outcomes if not o.skipped]
        if not ran:
            self.say("No variant ran.")
            return 1
        self.say("All %d variant(s) run behaved as expected." % len(ran) if not bad else
                 "%d disagreement(s)." % bad)
        return 1 if bad else 0

    def run(self, variants=None):
        """variants: 1-based indexes into VARIANTS (default all; env DEMO_VARIANTS=1,3)."""
        chosen = variants or [int(v) for v in os.environ.get("DEMO_VARIANTS", "").split(",")
                              if v.strip()] or range(1, len(VARIANTS) + 1)
        self.start_nodes()
        ipip = self.ipip_available()
        for index in chosen:
            self.run_variant(VARIANTS[index - 1], ipip)
        return self.summary()


def enter_instructions(bed):
    lines = ["The testbed is still up (KEEP=1). Enter a host with:"]
    authority = bed.etcd_url.split("//", 1)[1]
    for h in bed.hosts:
        lines.append("  nsenter -t %d -n -u -m -- env ETCD_AUTHORITY=%s bash   # %s (%s)"
                     % (h.pid, authority, h.name, h.ip))
    lines.append("  or: python -m tests.st.harness shell calico-01")
    lines.append("Tear it down with: python -m tests.st.harness down")
    return "\n".join(lines)


def main(argv=None):
    keep = os.environ.get("KEEP", "") not in ("", "0")
    out = lambda text="": print(text, flush=True)  # noqa: E731
    progress = lambda text: print("[testbed] %s" % text, file=sys.stderr, flush=True)  # noqa
    from tests.st.harness.hosts import check_host_support
    reason = check_host_support()
    if reason:
        print("error: %s" % reason, file=sys.stderr)
        return 1
    from tests.st.harness.suites import ENGINE_SUITES, node_image_suite
    engine = os.environ.get("ENGINE", "host")
    if engine not in ENGINE_SUITES:
        print("error: ENGINE=%s is not one of %s" % (engine, ", ".join(ENGINE_SUITES)),
              file=sys.stderr)
        return 1
    with exclusive():
        cleanup_stale(progress=progress)
        bed = Testbed(suite=engine).up(n_hosts=2, progress=progress)
        code = 1
        try:
            from tests.st.harness.node_images import load_node_images
            load_node_images(bed.hosts, suite=node_image_suite(engine), progress=progress)
            managed = os.environ.get("MANAGED", "") not in ("", "0")
            code = Demo(bed, out=out, managed=managed).run()
        finally:
            if keep:
                out(enter_instructions(bed))
            else:
                bed.down(progress=progress)
    return code


if __name__ == "__main__":
    sys.exit(main())

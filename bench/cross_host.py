"""A new container on one host, reachable from a workload on the other: how long after
`docker run -d` returns, against the same container reached from its own host.

    .venv/bin/python bench/cross_host.py [--runs 20] [--first 10] [--deny 10]
                                                            [--engine host|trixie|forky]

Brings up a two-host testbed (tests/st/harness) on the chosen engine and runs on each host what a
user's host runs: the agent with BIRD (`calicoctl felix serve`, routes between the hosts from
BGP only) and the plugin.  Network net1 on both hosts, workload-A on calico-01.

For each sample a container starts on calico-02 with `docker run -d`; from the moment the command
returns (and `docker inspect` has named its address), two pingers probe it every 10 ms at once:
one in workload-A's namespace on calico-01 (cross-host: the route from BGP, the remote policy)
and one in calico-02's own namespace (same host: the local veth, route and policy only).  The
figure is the time to the first answer of each, the same container measured by both.

  later   --runs samples while calico-02's block is announced already (the common case).
  first   --first samples of the first container of a new block: before each, calico-02 has no
          containers and no block (its affinity released, the route gone from calico-01), so
          the start claims a block that BIRD must announce before calico-01 can answer.
  deny    --deny containers in net2, probed from workload-A (net1) for a second after `docker run`
          returns: any answer is a window where policy was open.  Goal: none.  Before each,
          a net1 container on calico-02 is pinged by A and removed with calico-02's block, so
          the net2 one may get its address while the kernel still tracks A's flow to it (the
          output says how often): the agent must forget that flow when the address leaves.

Each figure is a median with p10-p90 and the sample count; ratios are of medians, cross-host over
same-host from the same samples.
"""

import argparse
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import stats  # noqa: E402  (bench/stats.py, beside this script)
from container_start import _ping_until_answered  # noqa: E402
from calicoctl.dataplane.netlink import run_in_netns  # noqa: E402
from tests.st.calico_stack import learnt, store_for  # noqa: E402
from support import testbed  # noqa: E402  (bench/support.py)
from tests.st.harness import wait_for  # noqa: E402
from tests.st.plugin_helpers import PluginProcess, calicoctl, container_ip  # noqa: E402

POOL = "192.168.0.0/16"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--first", type=int, default=10)
    parser.add_argument("--deny", type=int, default=10)
    parser.add_argument("--engine", default="host")
    args = parser.parse_args()
    with testbed(2, args.engine) as bed:
        run(bed, args)


def register(bed):
    from calicoctl.datastore.globals import ensure_defaults
    from calicoctl.datastore.hosts import register_node
    from calicoctl.datastore.models import Node
    store = store_for(bed.etcd)
    ensure_defaults(store)
    for h in bed.hosts:
        # IPv4 only: one BIRD per host, as on a user's IPv4 underlay.
        register_node(store, Node(name=h.name, ipv4=h.ip), endpoint_to_host_action="RETURN")
    return store


def run(bed, args):
    h1, h2 = bed.hosts
    store = register(bed)
    calicoctl(h1, bed.etcd, "pool", "add", POOL)
    procs = [PluginProcess(h, bed.etcd, log_name="felix", args=("felix", "serve"))
             .start(wait=False) for h in bed.hosts]
    procs += [PluginProcess(h, bed.etcd).start() for h in bed.hosts]
    try:
        for h in bed.hosts:
            for net in ("net1", "net2"):
                h.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
                         net)
        h1.docker("run", "-d", "--net", "net1", "--name", "workload-A", "busybox", "sleep", "1d")
        a_netns = "/proc/%s/ns/net" % h1.docker("inspect", "--format", "{{.State.Pid}}",
                                               "workload-A").stdout.strip()
        h2_netns = "/proc/%d/ns/net" % h2.pid
        print("Docker %s on both hosts; BIRD %s" % (h1.engine_version(), bird_version(h1)))
        # The BGP session is up once calico-01 has learnt a route to a block of calico-02's.
        one_start(h2, "warm", a_netns, h2_netns, timeout=60)
        later = [one_start(h2, "later-%d" % i, a_netns, h2_netns) for i in range(args.runs)]
        first = []
        for i in range(args.first):
            forget_block(store, h1, h2)
            first.append(one_start(h2, "first-%d" % i, a_netns, h2_netns, remove=True))
        denied = [probe_denied(store, h1, h2, "deny-%d" % i, a_netns) for i in range(args.deny)]
    finally:
        for p in procs:
            p.stop()
    report(later, first, denied)


def bird_version(host):
    out = host.run(["bird", "--version"], check=False)
    return (out.stdout + out.stderr).strip().split()[-1] if out.returncode == 0 else "?"


def _pinger(netns, ip, timeout, result, key):
    answered = run_in_netns(netns, _ping_until_answered, ip, timeout)
    result[key] = time.monotonic() if answered else None


def one_start(h2, name, a_netns, h2_netns, timeout=10, remove=False):
    """(cross-host seconds, same-host seconds, `docker run -d` seconds) for a new container on
    calico-02."""
    invoked = time.monotonic()
    h2.docker("run", "-d", "--net", "net1", "--name", name, "busybox", "sleep", "1d")
    returned = time.monotonic()
    ip = container_ip(h2, name, "net1")
    found = {}
    threads = [threading.Thread(target=_pinger, args=(ns, ip, timeout, found, key))
               for key, ns in (("cross", a_netns), ("same", h2_netns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if remove:
        h2.docker("rm", "-f", name)
    if found["cross"] is None or found["same"] is None:
        raise RuntimeError("%s (%s) never answered a ping %s" % (
            name, ip, "from calico-01" if found["cross"] is None else "from its own host"))
    return found["cross"] - returned, found["same"] - returned, returned - invoked


def forget_block(store, h1, h2):
    """calico-02 with no containers and no block, and calico-01 with no route to it."""
    from calicoctl.ipam.allocator import IPAMClient
    leftover = h2.docker("ps", "-aq").stdout.split()
    if leftover:
        h2.docker("rm", "-f", *leftover)
    IPAMClient(store, host=h2.name).release_host_affinities(h2.name)
    wait_for(lambda: not learnt(h1), timeout=30,
             what="calico-01 to withdraw the route to calico-02's released block")
    # Without it calico-01's only way to the pool is its default route, which points at an
    # address nobody holds (tests/st/harness/network.py): no other path can answer.


def probe_denied(store, h1, h2, name, a_netns, window=1.0):
    """(answered, reused): whether a new net2 container answered any of a second's probes
    from workload-A (net1), and whether it got the address of a net1 container A had just been
    talking to.  That is the hard case: the kernel still tracks A's flow to the address, and a
    tracked flow is accepted before policy is looked at unless the agent forgot it."""
    forget_block(store, h1, h2)
    h2.docker("run", "-d", "--net", "net1", "--name", name + "-before", "busybox", "sleep", "1d")
    before = container_ip(h2, name + "-before", "net1")
    if not run_in_netns(a_netns, _ping_until_answered, before, 10):
        raise RuntimeError("%s (%s) never answered workload-A" % (name + "-before", before))
    # Removed, and calico-02's block with it: the next container gets the block's first
    # address again, the one A was pinging.
    forget_block(store, h1, h2)
    h2.docker("run", "-d", "--net", "net2", "--name", name, "busybox", "sleep", "1d")
    ip = container_ip(h2, name, "net2")
    answered = run_in_netns(a_netns, _ping_until_answered, ip, window)
    h2.docker("rm", "-f", name)
    return answered, ip == before


def report(later, first, denied):
    print("\n`docker run -d` on calico-02 returned -> first ping answered")
    for label, samples in (("block announced already", later),
                           ("first container of a new block", first)):
        cross = [c for c, _, _ in samples]
        same = [s for _, s, _ in samples]
        took = [t for _, _, t in samples]
        print("  %s:" % label)
        print("    from calico-01 (cross-host)  %s; p99 %.0f ms" % (
            stats.summary(cross, digits=0), stats.percentile(cross, 99) * 1000))
        print("    from calico-02 (same host)   %s; p99 %.0f ms" % (
            stats.summary(same, digits=0), stats.percentile(same, 99) * 1000))
        print("    ratio cross/same (medians): %.2fx (goal <= %s)" % (
            stats.ratio(cross, same), "1.2x" if samples is later else "1.5x"))
        print("    (`docker run -d` itself took %s)" % stats.summary(took, digits=0))
    print("\nA new net2 container probed from workload-A (net1) for 1 s after `docker run`,")
    print("given the address of a net1 container A was pinging until just before:")
    print("  answered in %d of %d starts (goal: 0); the address was reused in %d of them" % (
        sum(a for a, _ in denied), len(denied), sum(r for _, r in denied)))


if __name__ == "__main__":
    main()

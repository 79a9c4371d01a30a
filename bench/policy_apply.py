"""How fast a rule change reaches the dataplane: etcd write to traffic blocked, and back.

    .venv/bin/python bench/policy_apply.py [--runs 20]    (root; holds the testbed lock)

On a one-host testbed (tests/st/harness) with the plugin and the agent (`calicoctl felix serve
--no-bgp`), two workloads on one Calico network.  Each run:
  deny applied   from the start of the etcd write (read, compare-and-swap) that puts a
                 deny-icmp rule first in the network's profile, to the first probe from the
                 source workload to the other that goes unanswered;
  deny removed   the same for taking the rule out, to the first probe answered again.
Probes are ICMP echoes sent from inside the source's network namespace every 2 ms, each given
50 ms to be answered (a veth round trip is well under 1 ms); a figure is when the first probe
that saw the change was sent, so it carries up to 2 ms of probe granularity.  Each probe has an
identifier of its own, never reused within a run: conntrack would otherwise take it for the
flow of an earlier one, which the agent's chains accept as ESTABLISHED.
tests/st/test_policy.py used to assert the change within 3 s using 1 s pings; it now only waits
for it (bounded for a hang) and the time is this bench's figure.
"""

import argparse
import ipaddress
import itertools
import os
import select
import socket
import struct
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import stats  # noqa: E402  (bench/stats.py, beside this script)
from calicoctl.dataplane.netlink import run_in_netns  # noqa: E402
from tests.st.calico_stack import POOL, register, store_for  # noqa: E402
from support import testbed  # noqa: E402  (bench/support.py)
from tests.st.harness import wait_for  # noqa: E402
from tests.st.plugin_helpers import PluginProcess, container_ip  # noqa: E402

DENY = {"action": "deny", "protocol": "icmp"}
PROBE_INTERVAL = 0.002
PROBE_WAIT = 0.05
GOAL = 3.0        # seconds: what the system test asserted


def _checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


_idents = itertools.count(int.from_bytes(os.urandom(2), "big"))


def probe_until(ip, answered, timeout):
    """Send an echo request every PROBE_INTERVAL until one's fate (answered, or unanswered after
    PROBE_WAIT) equals `answered`; when (time.monotonic()) that probe was sent, or None at
    timeout.  Probes overlap, so the figure's granularity is PROBE_INTERVAL either way.
    Runs inside a network namespace."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        start = time.monotonic()
        pending = {}                                    # ident -> when sent
        next_send = start
        while True:
            now = time.monotonic()
            if now - start >= timeout:
                return None
            if now >= next_send:
                ident = next(_idents) & 0xFFFF
                header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
                sock.sendto(struct.pack("!BBHHH", 8, 0, _checksum(header + b"bench"), ident, 1)
                            + b"bench", (ip, 0))
                pending[ident] = now
                next_send = now + PROBE_INTERVAL
            if not answered:
                expired = [sent for sent in pending.values() if now - sent >= PROBE_WAIT]
                if expired:
                    return min(expired)
            if select.select([sock], [], [], max(0.0, next_send - time.monotonic()))[0]:
                data, addr = sock.recvfrom(2048)
                icmp = data[(data[0] & 0x0F) * 4:]
                ident = struct.unpack("!H", icmp[4:6])[0]
                if addr[0] == ip and icmp[0] == 0 and ident in pending:
                    sent = pending.pop(ident)
                    if answered:
                        return sent
    finally:
        sock.close()


def run(bed, runs):
    from calicoctl.datastore import pools, profiles
    from calicoctl.datastore.models import Pool
    host = bed.hosts[0]
    store = store_for(bed.etcd)
    register(store, [host])
    pools.add_pool(store, Pool(ipaddress.ip_network(POOL)))
    agent = PluginProcess(host, bed.etcd, log_name="felix",
                          args=("felix", "serve", "--no-bgp")).start(wait=False)
    plugin = PluginProcess(host, bed.etcd).start()
    try:
        host.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico", "net1")
        for name in ("src", "dst"):
            host.docker("run", "-d", "--net", "net1", "--name", name, "busybox", "sleep", "3600")
        dst = container_ip(host, "dst", "net1")
        netns = "/proc/%s/ns/net" % host.docker("inspect", "-f", "{{.State.Pid}}",
                                                "src").stdout.strip()
        wait_for(lambda: run_in_netns(netns, probe_until, dst, True, 1) is not None,
                 timeout=60, what="src to reach dst")

        def add(rules):
            rules.inbound.insert(0, dict(DENY))
            return rules

        def remove(rules):
            rules.inbound = [r for r in rules.inbound if r != DENY]
            return rules
        figures = {"deny applied": [], "deny removed": []}
        for _ in range(runs):
            for label, change, answered in (("deny applied", add, False),
                                            ("deny removed", remove, True)):
                started = time.monotonic()
                profiles.update_rules(store, "net1", change)
                seen = run_in_netns(netns, probe_until, dst, answered, 30)
                if seen is None:
                    raise SystemExit("%s: no change seen within 30 s" % label)
                figures[label].append(seen - started)
    finally:
        plugin.stop()
        agent.stop()
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--check", action="store_true", help="exit 1 if a median misses the goal")
    args = parser.parse_args()
    with testbed(1) as bed:
        figures = run(bed, args.runs)
    print("etcd write to the dataplane following it (a deny-icmp rule in the profile), with "
          "the agent")
    missed = False
    for label, values in figures.items():
        median = stats.percentile(values, 50)
        missed |= median >= GOAL
        print("  %-13s %s   goal < %.0f s: %s" % (label, stats.summary(values, digits=0), GOAL,
                                                  "met" if median < GOAL else "NOT met"))
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Names across hosts: how soon a new workload's name resolves on the other host, and what an
answer costs against Docker's embedded DNS.

    .venv/bin/python bench/dns_names.py [--runs 30] [--queries 3000]
                                                           [--engine host|trixie|forky]

Brings up a two-host testbed (tests/st/harness) on the chosen engine, runs the agent, the
plugin and `calicoctl dns serve` on both hosts (as host processes), an upstream DNS server of
the hosts' own on the bridge (tests/st/dns_helpers.py: it answers NXDOMAIN at once, so a name not known yet
costs no upstream timeout), net1 on both hosts with workload-A and workload-C on calico-01.

  propagation  --runs times: `docker run -d --net net1 --name bench-E<i>` on calico-02; from the
               moment it returns, A's namespace asks for bench-E<i>.net1 every 2 ms until the
               answer carries the new address.  Also the way back: `docker rm -f` returning
               until the name gets NXDOMAIN again.  p50 and p99.
  first        --first times, at each of a few pauses: a new container on calico-01 that looks
               up workload-E.net1 as it starts (its own namespace may not be taken over yet).
  latency      --queries queries of each kind, interleaved, from a client in A's namespace (one
               socket per kind, a query in flight at a time): a name on calico-02 (answered by
               calicoctl dns), a name on calico-01 asked of Docker's resolver alone (the
               client's packets carry our mark, so our rules pass them by: exactly what every
               query got before), and the same-host name through our forwarder (what Docker's
               own names cost now).  Ratio of medians; the goal is <= 1.5.

The clients run in this process, in a thread that entered A's namespace (no fork per query).
"""

import argparse
import socket
import struct
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import stats  # noqa: E402  (bench/stats.py, beside this script)
from calicoctl.dnsproxy import rules  # noqa: E402
from calicoctl.dnsproxy.sandboxes import SO_MARK, in_netns  # noqa: E402
from tests.st.dns_helpers import (UPSTREAM_IP, DnsProcess, Upstream, adopted,  # noqa: E402
                                  resolv_conf)
from support import testbed  # noqa: E402  (bench/support.py)
from tests.st.harness import wait_for  # noqa: E402
from tests.st.plugin_helpers import PluginProcess, calicoctl, container_ip  # noqa: E402


def query(name, qid):
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + b"\0\0\1\0\1"


def first_address(data):
    """The first A record's address in an answer, or None (NXDOMAIN, no records)."""
    if len(data) < 12 or data[3] & 0x0F or struct.unpack("!H", data[6:8])[0] == 0:
        return None
    pos = _skip_name(data, 12) + 4
    while pos < len(data):
        pos = _skip_name(data, pos)
        rtype, _, _, rdlength = struct.unpack("!HHIH", data[pos:pos + 10])
        if rtype == 1 and rdlength == 4:
            return socket.inet_ntoa(data[pos + 10:pos + 14])
        pos += 10 + rdlength
    return None


def _skip_name(data, pos):
    while data[pos] and not data[pos] & 0xC0:
        pos += data[pos] + 1
    return pos + (2 if data[pos] & 0xC0 else 1)


def _client(mark=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if mark is not None:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
    sock.connect(("127.0.0.11", 53))
    return sock


def _ask(sock, name, qid, timeout):
    sock.settimeout(timeout)
    sock.send(query(name, qid))
    while True:
        data = sock.recv(4096)
        if data[:2] == struct.pack("!H", qid):
            return data


def _poll_until(name, present, timeout, interval=0.002):
    """Inside the namespace: ask every `interval` until the answer has an address (present) or
    has none; (time.monotonic() then, the address or None), or None after timeout."""
    sock = _client()
    started = time.monotonic()
    qid = 0
    try:
        while time.monotonic() - started < timeout:
            qid = (qid + 1) & 0xFFFF
            try:
                address = first_address(_ask(sock, name, qid, 0.5))
                if (address is not None) == present:
                    return time.monotonic(), address
            except socket.timeout:
                pass
            time.sleep(interval)
        return None
    finally:
        sock.close()


def _latencies(kinds, count, gap=0.001):
    """Inside the namespace: {label: [seconds]} for `count` rounds of one query per kind, a
    round every `gap` seconds (a steady load, far below any limit: latency, not throughput)."""
    socks = {label: _client(mark) for label, (_, mark) in kinds.items()}
    found = {label: [] for label in kinds}
    try:
        for i in range(count + 50):               # 50 rounds of warm-up, not counted
            for label, (name, _) in kinds.items():
                started = time.perf_counter()
                data = _ask(socks[label], name, i & 0xFFFF, 2.0)
                took = time.perf_counter() - started
                if first_address(data) is None:
                    raise RuntimeError("%s: no address in the answer" % name)
                if i >= 50:
                    found[label].append(took)
            time.sleep(gap)
    finally:
        for sock in socks.values():
            sock.close()
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--first", type=int, default=10)
    parser.add_argument("--engine", default="host")
    args = parser.parse_args()
    with testbed(2, args.engine) as bed:
        with Upstream(bed.bridge), resolv_conf(bed.hosts, "nameserver %s\n" % UPSTREAM_IP):
            run(bed, args)


def run(bed, args):
    h1, h2 = bed.hosts
    # The agent, as on every user's host: Docker 20.10 and 26.1 forward a name they do not
    # know to the upstream from the workload's namespace, through policy and outgoing NAT.
    calicoctl(h1, bed.etcd, "pool", "add", "192.168.0.0/16", "--nat-outgoing")
    procs = [PluginProcess(h, bed.etcd, log_name="felix",
                           args=("felix", "serve", "--no-bgp")).start(wait=False)
             for h in bed.hosts]
    procs += [PluginProcess(h, bed.etcd).start() for h in bed.hosts]
    procs += [DnsProcess(h, bed.etcd).start() for h in bed.hosts]
    try:
        for h in bed.hosts:
            h.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
                     "net1")
        for name in ("workload-A", "workload-C"):
            h1.docker("run", "-d", "--net", "net1", "--name", name, "busybox", "sleep", "1d")
        h2.docker("run", "-d", "--net", "net1", "--name", "workload-E", "busybox", "sleep", "1d")
        wait_for(lambda: adopted(h1, "workload-A"), timeout=30, what="workload-A answered")
        netns = "/proc/%s/ns/net" % h1.docker("inspect", "--format", "{{.State.Pid}}",
                                             "workload-A").stdout.strip()
        print("Docker %s on both hosts" % h1.engine_version())
        propagation(h2, netns, args.runs)
        first_lookups(h1, args.first)
        latency(netns, args.queries)
    finally:
        for p in procs:
            p.stop()


def propagation(h2, netns, runs):
    appear, disappear = [], []
    for i in range(-1, runs):                     # one warm-up
        name = "bench-e%d" % (i + 1)
        h2.docker("run", "-d", "--net", "net1", "--name", name, "busybox", "sleep", "1d")
        returned = time.monotonic()
        seen = in_netns(netns, _poll_until, name + ".net1", True, 30)
        address = container_ip(h2, name, "net1")
        if seen is None or seen[1] != address:
            raise RuntimeError("%s.net1 never resolved to %s (%s)" % (name, address, seen))
        h2.docker("rm", "-f", name)
        removed = time.monotonic()
        gone = in_netns(netns, _poll_until, name + ".net1", False, 30)
        if gone is None:
            raise RuntimeError("%s.net1 still resolves after docker rm" % name)
        if i >= 0:
            appear.append(seen[0] - returned)
            disappear.append(gone[0] - removed)
    print("\nName of a new workload on calico-02, resolved from workload-A on calico-01")
    print("  `docker run -d` returned -> resolves:  %s; p50 %.0f ms, p99 %.0f ms" % (
        stats.summary(appear, digits=0), stats.percentile(appear, 50) * 1000,
        stats.percentile(appear, 99) * 1000))
    print("  `docker rm -f` returned -> NXDOMAIN:    %s; p50 %.0f ms, p99 %.0f ms" % (
        stats.summary(disappear, digits=0), stats.percentile(disappear, 50) * 1000,
        stats.percentile(disappear, 99) * 1000))


def first_lookups(h1, runs):
    """A new workload's own namespace is taken over a little after Docker has set it up, so a
    lookup in its first moments may get Docker's answer alone.  How often, at once and after a
    short pause."""
    print("\nA new workload on calico-01 looks up workload-E.net1 as it starts (%d each)" % runs)
    for pause in ("0", "0.05", "0.2", "1"):
        ok = 0
        for _ in range(runs):
            out = h1.docker("run", "--rm", "--net", "net1", "busybox", "sh", "-c",
                            "sleep %s; nslookup workload-E.net1" % pause, check=False).stdout
            ok += "Address" in out.split("workload-E.net1", 1)[-1]
        print("  after %4s s: %d of %d resolved" % (pause, ok, runs))


def latency(netns, count):
    kinds = {"calico name (calicoctl dns)": ("workload-e.net1", None),
             "same-host name, Docker alone": ("workload-c.net1", rules.MARK),
             "same-host name, through us": ("workload-c.net1", None)}
    found = in_netns(netns, _latencies, kinds, count)
    print("\nAnswer latency from a client in workload-A's namespace (%d queries each, "
          "interleaved)" % count)
    for label, values in found.items():
        print("  %-30s %s" % (label, stats.summary(values, scale=1e6, unit="us", digits=0)))
    print("  ratio calico name / Docker's same-host name (medians): %.2fx (goal <= 1.5x)" %
          stats.ratio(found["calico name (calicoctl dns)"],
                      found["same-host name, Docker alone"]))
    print("  ratio same-host name through us / Docker alone (medians): %.2fx" %
          stats.ratio(found["same-host name, through us"],
                      found["same-host name, Docker alone"]))


if __name__ == "__main__":
    main()

"""How fast a node comes up, and how much memory its agent needs with 100 workloads.

On the namespace testbed (etcd + calico-01 + calico-02 with the real node images):
  start-to-reachable  from `calicoctl node --libnetwork` on calico-01 (node containers absent) to
                      the first workload answering a ping from another workload on its network:
                      node ready, `docker network create`, two `docker run`s, first reply.
                      Median of --runs starts (each from a stopped, removed node).
  cross-host          the same first workload answering a workload on calico-02 (BGP included).
  memory              the calico-node container's peak (cgroup memory.max_usage_in_bytes, or
                      memory.peak on cgroup v2) and its RSS, before and after --workloads
                      workloads on one network on calico-01.

Usage: python bench/node.py [--runs N] [--workloads N]    (root; takes a few minutes)
"""

import argparse
import glob
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.st.demo import default_calicoctl  # noqa: E402
from support import progress, testbed  # noqa: E402  (bench/support.py)
from tests.st.harness import wait_for  # noqa: E402
from tests.st.harness.node_images import load_node_images  # noqa: E402

POOL = "192.168.0.0/16"


class Bench:
    def __init__(self, bed):
        self.bed = bed
        self.h1, self.h2 = bed.hosts
        self.calicoctl_path = default_calicoctl()
        self.authority = bed.etcd_url.split("//", 1)[1]

    def calicoctl(self, host, *args, check=True):
        return host.run(["env", "-u", "DOCKER_HOST", "-u", "CALICO_HOSTNAME",
                         "ETCD_AUTHORITY=" + self.authority, self.calicoctl_path, *args],
                        check=check, timeout=300)

    def ping_ok(self, host, source, ip):
        return host.docker("exec", source, "ping", "-c", "1", "-W", "1", "-w", "1", ip,
                           check=False, timeout=30).returncode == 0

    def address(self, host, name):
        return host.docker("inspect", "--format",
                           "{{ .NetworkSettings.Networks.benchnet.IPAddress }}", name
                           ).stdout.strip()

    def one_start(self):
        h1, h2 = self.h1, self.h2
        marks = {}
        t0 = time.monotonic()
        self.calicoctl(h1, "node", "--libnetwork")
        marks["node ready"] = time.monotonic() - t0
        h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
                  "benchnet")
        marks["network created"] = time.monotonic() - t0
        h1.docker("run", "-tid", "--net", "benchnet", "--name", "bench-a", "busybox")
        h1.docker("run", "-tid", "--net", "benchnet", "--name", "bench-b", "busybox")
        marks["two workloads run"] = time.monotonic() - t0
        ip = self.address(h1, "bench-a")
        wait_for(lambda: self.ping_ok(h1, "bench-b", ip), timeout=60, interval=0.05,
                 what="bench-b to reach bench-a")
        marks["first workload reachable"] = time.monotonic() - t0
        try:
            wait_for(lambda: self.ping_ok(h2, "bench-x", ip), timeout=60, interval=0.05,
                     what="calico-02's workload to reach bench-a")
            marks["reachable from calico-02"] = time.monotonic() - t0
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            marks["reachable from calico-02"] = None
            print("cross-host: %s" % exc, file=sys.stderr)
        return marks

    def reset_h1(self):
        self.h1.run("docker rm -f $(docker ps -aq --filter name=bench-) 2>/dev/null; "
                    "docker network rm benchnet 2>/dev/null; true", check=False)
        self.calicoctl(self.h1, "node", "stop", "--force")
        wait_for(lambda: self.calicoctl(self.h1, "node", "remove", "--remove-endpoints",
                                        check=False).returncode == 0,
                 timeout=60, what="node remove")

    def memory(self, host):
        cid = host.docker("inspect", "--format", "{{.Id}}", "calico-node").stdout.strip()
        found = {}
        for pattern, key in (("/sys/fs/cgroup/memory/**/%s/memory.max_usage_in_bytes", "peak"),
                             ("/sys/fs/cgroup/**/%s/memory.peak", "peak"),
                             ("/sys/fs/cgroup/memory/**/%s/memory.stat", "stat")):
            for path in glob.glob(pattern % cid, recursive=True):
                text = open(path).read()
                if key == "peak":
                    found["peak_mib"] = int(text) / 2 ** 20
                else:
                    stat = dict(line.split() for line in text.splitlines())
                    found["rss_mib"] = int(stat.get("total_rss", stat.get("rss", 0))) / 2 ** 20
                break
        return found

    def run(self, runs, workloads):
        self.calicoctl(self.h2, "node", "--libnetwork")
        self.calicoctl(self.h2, "pool", "add", POOL)
        self.h2.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
                       "benchnet")
        self.h2.docker("run", "-tid", "--net", "benchnet", "--name", "bench-x", "busybox")
        starts = []
        for i in range(runs):
            if i:
                self.reset_h1()
            marks = self.one_start()
            starts.append(marks)
            print("run %d: %s" % (i + 1, ", ".join(
                "%s %.2f s" % (k, v) for k, v in marks.items() if v is not None)),
                file=sys.stderr)
        before = self.memory(self.h1)
        t0 = time.monotonic()
        for n in range(workloads):
            self.h1.docker("run", "-tid", "--net", "benchnet", "--name", "bench-w%03d" % n,
                           "busybox")
        run_time = time.monotonic() - t0
        last = self.address(self.h1, "bench-w%03d" % (workloads - 1))
        wait_for(lambda: self.ping_ok(self.h1, "bench-b", last), timeout=60,
                 what="the last workload to answer")
        after = self.memory(self.h1)
        result = {"runs": runs, "workloads": workloads}
        for key in starts[0]:
            values = [m[key] for m in starts if m.get(key) is not None]
            result[key + " median s"] = round(statistics.median(values), 2) if values else None
        result["docker run per workload s"] = round(run_time / max(workloads, 1), 2)
        result["calico-node memory before"] = before
        result["calico-node memory with %d workloads" % workloads] = after
        return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workloads", type=int, default=100)
    args = parser.parse_args(argv)
    with testbed(2) as bed:
        load_node_images(bed.hosts, progress=progress)
        result = Bench(bed).run(args.runs, args.workloads)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

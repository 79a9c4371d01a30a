"""How long dockerd takes to serve its API again after a restart on a Calico node.

    .venv/bin/python bench/dockerd_restart.py [--runs 3]    (root; holds the testbed lock; minutes)

On a one-host testbed with the real node images, 3 networks and 5 workloads with
`--restart always`, dockerd is stopped and started again --runs times for each of:
  - baseline: the node running (`calicoctl node --libnetwork`) but the 3 networks are Docker
    bridge networks, so no Calico network at all;
  - container: the same on Calico networks, the plugin in the calico-libnetwork container;
  - managed: the same, the plugin as a Docker managed plugin
    (`calicoctl node --libnetwork --managed-plugin`, driver calico:latest);
  - container with --live-restore.
Each run is measured from the start to the API answering, and to every workload running again.

Without live restore, dockerd stops the plugin's container with the workloads and, before its
API answers, looks the driver up for every Calico network and restored endpoint (15 s of retries
each).  A managed plugin is started by dockerd itself before it restores networks.  The goal for
the managed plugin is "API back" within 2x the baseline's (medians).
"""

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import stats  # noqa: E402  (bench/stats.py, beside this script)
from tests.st.demo import default_calicoctl  # noqa: E402
from support import progress, testbed  # noqa: E402  (bench/support.py)
from tests.st.harness import wait_for  # noqa: E402
from tests.st.harness.node_images import load_node_images  # noqa: E402

NETWORKS = ("rnet1", "rnet2", "rnet3")
WORKLOADS = (("restart-a", "rnet1"), ("restart-b", "rnet1"), ("restart-c", "rnet2"),
             ("restart-d", "rnet2"), ("restart-e", "rnet3"))
DRIVERS = {"baseline": "bridge", "container": "calico", "managed": "calico:latest",
           "container, live-restore": "calico"}


def calicoctl(bed, host, *args):
    argv = ["env", "-u", "DOCKER_HOST", "-u", "CALICO_HOSTNAME", "-u", "ETCD_ENDPOINTS",
            "ETCD_AUTHORITY=" + bed.etcd_url.split("//", 1)[1], default_calicoctl(), *args]
    r = host.run(argv, check=False, timeout=300)
    if r.returncode != 0:
        raise SystemExit("calicoctl %s: %s" % (" ".join(args), r.stdout + r.stderr))
    return r


def restart_once(host, extra_args):
    host.stop_dockerd(timeout=60)
    start = time.monotonic()
    host.start_dockerd(extra_args=extra_args, timeout=300)
    api = time.monotonic() - start

    def running():
        out = host.docker("ps", "--format", "{{.Names}}", check=False).stdout.split()
        return {name for name, _ in WORKLOADS} <= set(out)
    wait_for(running, timeout=300, what="workloads running again")
    return api, time.monotonic() - start


def clear(bed, host):
    """No workload, no network of ours, no node: the next form starts from nothing."""
    host.docker("rm", "-f", *[name for name, _ in WORKLOADS], check=False, timeout=180)
    for net in NETWORKS:
        host.docker("network", "rm", net, check=False)
    calicoctl(bed, host, "node", "stop", "--force")


def run(bed, runs):
    host = bed.hosts[0]
    figures = {}
    calicoctl(bed, host, "pool", "add", "192.168.0.0/16")
    for form, driver in DRIVERS.items():
        extra = ("--live-restore",) if "live-restore" in form else ()
        host.stop_dockerd(timeout=60)
        host.start_dockerd(extra_args=extra, timeout=300)
        calicoctl(bed, host, "node", "--libnetwork", *(
            ("--managed-plugin",) if form == "managed" else ()))
        ipam = () if driver == "bridge" else ("--ipam-driver", driver)
        for net in NETWORKS:
            host.docker("network", "create", "--driver", driver, *ipam, net)
        for name, net in WORKLOADS:
            host.docker("run", "-d", "--restart", "always", "--net", net, "--name", name,
                        "busybox", "sleep", "1000000")
        api, running = [], []
        for i in range(runs):
            a, r = restart_once(host, extra)
            api.append(a)
            running.append(r)
            print("%s run %d: API back %.1f s, workloads running %.1f s" % (form, i + 1, a, r),
                  file=sys.stderr)
        figures[form] = (api, running)
        clear(bed, host)
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the managed plugin misses its goal")
    args = parser.parse_args()
    with testbed(1) as bed:
        load_node_images(bed.hosts, progress=progress)
        figures = run(bed, args.runs)
    print("dockerd restarted under a Calico node (%d networks, %d workloads), seconds from "
          "start" % (len(NETWORKS), len(WORKLOADS)))
    for form, (api, running) in figures.items():
        print("  %-24s API back %s" % (form, stats.summary(api, scale=1, unit="s")))
        print("  %-24s running  %s" % ("", stats.summary(running, scale=1, unit="s")))
    ratio = stats.ratio(figures["managed"][0], figures["baseline"][0])
    print("ratio managed plugin / no Calico networks, API back (medians): %.2fx (goal <= 2x)"
          % ratio)
    print("ratio container / no Calico networks, API back (medians): %.2fx"
          % stats.ratio(figures["container"][0], figures["baseline"][0]))
    return 1 if args.check and ratio > 2 else 0


if __name__ == "__main__":
    sys.exit(main())

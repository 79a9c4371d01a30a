"""Start-up cost of calicoctl commands next to the floor: Python importing the etcd client of
the API in use + one read, on each etcd API.

A command is a short-lived process, so its wall time is mostly interpreter start-up and imports.
For each API (v2: an etcd serving v2; v3: one with v2 off, which calicoctl detects with one
extra GET) this runs, side by side against a throwaway etcd it starts itself:
  floor      v2: python -c 'import etcd; etcd.Client(...).read(key)'      (the same interpreter)
             v3: python -c 'import etcd3gw; etcd3gw.Etcd3Client(...).get(key)'
  pool show  calicoctl pool show                                     (the installed console script)
  rule show  calicoctl profile bench rule show
interleaved in a shuffled order each round (so drift in machine load hits all alike), and prints
the median wall time of each with its spread and sample count, and its ratio to that API's
floor.  Goal: every command within 1.3x.

Usage: .venv/bin/python bench/cli.py [--runs N] [--api 2|3] [--check]
  --check  exit 1 if a command is above the goal (for CI).
"""

import argparse
import os
import random
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from stats import summary  # noqa: E402  (bench/stats.py, beside this script)
from tests.unit.etcd_server import EtcdServer  # noqa: E402  (needs ROOT on sys.path)

GOAL = 1.3
PROFILE = "bench"
WARMUP = 3        # the first runs pay for cold page cache and .pyc writes; not what we measure


def commands(python, calicoctl, server, api):
    key = "/calico/v1/policy/profile/%s/rules" % PROFILE
    if api == "2":
        floor = ("import etcd; etcd.Client(host='127.0.0.1', port=%d).read(%r)"
                 % (server.client_port, key))
    else:
        floor = ("import etcd3gw; etcd3gw.Etcd3Client(host='127.0.0.1', port=%d, "
                 "api_path='/v3/').get(%r)" % (server.client_port, key))
    return {
        "floor": [python, "-c", floor],
        "pool show": [calicoctl, "pool", "show"],
        "rule show": [calicoctl, "profile", PROFILE, "rule", "show"],
    }


def time_once(argv, env):
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit("%s failed: %s" % (" ".join(argv), result.stderr.decode().strip()))
    return elapsed


def measure(python, calicoctl, api, runs):
    """{name: [seconds]} for the floor and each command against an etcd serving api."""
    server = EtcdServer(name="bench-v%s" % api, enable_v2=api == "2").start()
    try:
        env = dict(os.environ, ETCD_AUTHORITY=server.authority)
        env.pop("ETCD_ENDPOINTS", None)
        env.pop("ETCD_API", None)          # detected, as users run it
        for setup in (["pool", "add", "192.168.0.0/16"], ["pool", "add", "fd80:24e2::/64"],
                      ["profile", "add", PROFILE],
                      ["profile", PROFILE, "rule", "add", "inbound", "allow", "tcp", "to",
                       "ports", "80,443"]):
            subprocess.run([calicoctl] + setup, env=env, check=True, capture_output=True)
        cmds = commands(python, calicoctl, server, api)
        samples = {name: [] for name in cmds}
        for round_no in range(WARMUP + runs):
            order = list(cmds)
            random.shuffle(order)
            for name in order:
                elapsed = time_once(cmds[name], env)
                if round_no >= WARMUP:
                    samples[name].append(elapsed)
        return samples
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--api", choices=("2", "3"), action="append",
                        help="only this etcd API (default: both)")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()

    python = sys.executable
    calicoctl = os.path.join(os.path.dirname(python), "calicoctl")
    if not os.access(calicoctl, os.X_OK):
        raise SystemExit("No calicoctl beside %s: pip install -e . first." % python)
    worst = 0.0
    for api in args.api or ["2", "3"]:
        samples = measure(python, calicoctl, api, args.runs)
        floor = statistics.median(samples["floor"])
        print("etcd v%s API: %d runs each, interleaved; wall time" % (api, args.runs))
        for name, values in samples.items():
            ratio = statistics.median(values) / floor
            if name != "floor":
                worst = max(worst, ratio)
            print("  %-10s %s  %5.2fx floor" % (name, summary(values), ratio))
    print("goal: within %.1fx of the floor: %s" % (GOAL, "met" if worst <= GOAL else "NOT met"))
    return 1 if args.check and worst > GOAL else 0


if __name__ == "__main__":
    sys.exit(main())

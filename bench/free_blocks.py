"""How long IPAM takes to find free blocks in an IPv6 /64 pool that already holds many blocks.

    .venv/bin/python bench/free_blocks.py [--runs N] [--existing N] [--check]

A /64 has 2^58 blocks of 64 addresses, so `calicoctl.ipam.block.free_blocks` must work out
the gaps between existing blocks arithmetically; a walk over the pool never ends.
tests/unit/test_ipam_block.py checks the answer; the time it takes (the unit test used to
assert < 1 s for the first three free blocks beside 2,000 existing ones) is measured here:
the median, p10-p90 and sample count of taking the first three free blocks, with --existing
blocks scattered through the pool (every other block from the start, and the pool's last).

  --check  exit 1 if the median misses the goal.
"""

import argparse
import ipaddress
import itertools
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import stats  # noqa: E402  (bench/stats.py, beside this script)
from calicoctl.ipam import block as blocks  # noqa: E402

GOAL = 1.0        # seconds for the median


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--existing", type=int, default=2000)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    pool = ipaddress.ip_network("fd80:24e2:f998:72d6::/64")
    existing = [ipaddress.ip_network((int(pool.network_address) + i * 64, 122))
                for i in range(0, 2 * args.existing, 2)]
    existing.append(ipaddress.ip_network((int(pool.broadcast_address) - 63, 122)))
    samples = []
    for _ in range(args.runs):
        start = time.perf_counter()
        first = list(itertools.islice(blocks.free_blocks(pool, existing), 3))
        samples.append(time.perf_counter() - start)
        assert len(first) == 3, first
    median = statistics.median(samples)
    print("first 3 free blocks of a /64 beside %d existing: %s; goal < %.0f ms: %s" % (
        len(existing), stats.summary(samples), GOAL * 1000, "met" if median < GOAL else "NOT met"))
    return 1 if args.check and median >= GOAL else 0


if __name__ == "__main__":
    sys.exit(main())

"""IPAM speed against the raw compare-and-swap speed of the same etcd, in one run.

    .venv/bin/python bench/ipam.py [--rounds 3] [--ops 1500]

Starts its own etcd (tests/unit/etcd_server.EtcdServer), then for 1 and for 8 concurrent
processes measures
  - raw CAS: each process compare-and-swaps its own key, reusing the modifiedIndex etcd returned
    (one round trip per operation: the floor for any correct allocator);
  - allocation: each process is a different host with its own IPAMClient calling auto_assign in
    a /12 pool (room to claim a block every 64 addresses), without a handle (Docker's IPAM
    RequestAddress carries no endpoint id) and with a fresh handle id per address (calicoctl
    container add), which costs a second etcd write (the handle record);
and prints operations/s and p50/p99 latency of each, and the ratios.  Every round uses a wiped
key space; the figures reported are the medians over the rounds.
"""

import argparse
import ipaddress
import multiprocessing
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.unit.etcd_server import EtcdServer  # noqa: E402


def raw_cas_worker(authority, worker, ops, start, results):
    import etcd
    host, port = authority.split(":")
    client = etcd.Client(host=host, port=int(port))
    key = "/bench/cas/%d" % worker
    index = client.write(key, "0").modifiedIndex
    start.wait()
    latencies = []
    begin = time.perf_counter()
    for i in range(ops):
        t = time.perf_counter()
        index = client.write(key, str(i), prevIndex=index).modifiedIndex
        latencies.append(time.perf_counter() - t)
    results.put((begin, time.perf_counter(), latencies))


def allocation_worker(authority, worker, ops, start, results, with_handle):
    os.environ["ETCD_AUTHORITY"] = authority
    os.environ.pop("ETCD_ENDPOINTS", None)
    from calicoctl.datastore import open_store
    from calicoctl.ipam.allocator import IPAMClient
    ipam = IPAMClient(open_store(), host="bench-host-%d" % worker)
    start.wait()
    latencies = []
    begin = time.perf_counter()
    for i in range(ops):
        handle = "bench-%d-%d" % (worker, i) if with_handle else None
        t = time.perf_counter()
        ipam.auto_assign(4, handle_id=handle)
        latencies.append(time.perf_counter() - t)
    results.put((begin, time.perf_counter(), latencies))


def guarded(target, args):
    """Run a worker; a failure is reported on the results queue instead of hanging the run."""
    results = args[4]
    try:
        target(*args)
    except BaseException:
        import traceback
        results.put(traceback.format_exc())


def run_workers(target, args, workers, ops):
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=guarded,
                         args=(target, (args[0], w, ops, start, results) + args[1:]))
             for w in range(workers)]
    for p in procs:
        p.start()
    # Give every process time to import and connect before the common start.
    time.sleep(1.0 + 0.2 * workers)
    start.set()
    outs = [results.get(timeout=300) for _ in procs]
    for o in outs:
        if isinstance(o, str):
            raise SystemExit("a benchmark worker failed:\n" + o)
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit("a benchmark worker failed (exit %s)" % p.exitcode)
    begin = min(o[0] for o in outs)
    end = max(o[1] for o in outs)
    latencies = sorted(x for o in outs for x in o[2])
    return {"rate": len(latencies) / (end - begin),
            "p50": latencies[len(latencies) // 2] * 1000,
            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000}


def reset(server):
    import etcd
    client = etcd.Client(host="127.0.0.1", port=server.client_port)
    for top in ("/calico", "/bench"):
        try:
            client.delete(top, recursive=True, dir=True)
        except etcd.EtcdKeyNotFound:
            pass
    os.environ["ETCD_AUTHORITY"] = server.authority
    from calicoctl.datastore import open_store, pools
    from calicoctl.datastore.models import Pool
    pools.add_pool(open_store(), Pool(cidr=ipaddress.ip_network("10.0.0.0/12")))


MODES = (("cas", "raw CAS"), ("alloc", "allocation, no handle"),
         ("handle", "allocation + handle"))


def measure(server, workers, ops):
    reset(server)
    result = {"cas": run_workers(raw_cas_worker, (server.authority,), workers, ops)}
    reset(server)
    result["alloc"] = run_workers(allocation_worker, (server.authority, False), workers, ops)
    reset(server)
    result["handle"] = run_workers(allocation_worker, (server.authority, True), workers, ops)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ops", type=int, default=1500, help="operations per process")
    options = parser.parse_args()
    server = EtcdServer(name="bench").start()
    figures = {}
    try:
        for rnd in range(options.rounds):
            for workers in (1, 8):
                ops = options.ops if workers == 1 else max(100, options.ops // 4)
                result = measure(server, workers, ops)
                for mode, value in result.items():
                    for k, v in value.items():
                        figures.setdefault((workers, mode, k), []).append(v)
                print("round %d, %d process%s: " % (rnd + 1, workers, "" if workers == 1 else
                                                    "es") +
                      " | ".join("%s %.0f/s p50 %.2f ms p99 %.2f ms" % (
                          label, result[m]["rate"], result[m]["p50"], result[m]["p99"])
                          for m, label in MODES), flush=True)
    finally:
        server.stop()
    med = {k: statistics.median(v) for k, v in figures.items()}
    print("\nmedians over %d rounds:" % options.rounds)
    for workers in (1, 8):
        for mode, label in MODES:
            ratio = "" if mode == "cas" else "   = %3.0f%% of the raw CAS rate" % (
                100 * med[(workers, mode, "rate")] / med[(workers, "cas", "rate")])
            print("  %d proc  %-22s %6.0f/s  p50 %6.2f ms  p99 %7.2f ms%s" % (
                workers, label, med[(workers, mode, "rate")], med[(workers, mode, "p50")],
                med[(workers, mode, "p99")], ratio))
    for mode, label in MODES:
        print("  p50 per operation at 8 vs 1, %-22s %.2fx" % (
            label + ":", med[(8, mode, "p50")] / med[(1, mode, "p50")]))


if __name__ == "__main__":
    main()

"""IPAM speed against the raw write speed of the same etcd, on each etcd API, in one run.

    .venv/bin/python bench/ipam.py [--rounds 5] [--ops 600] [--api 2|3]

For each API (v2: an etcd serving v2, which calicoctl detects; v3: an etcd with v2 off) it starts
its own etcd (tests/unit/etcd_server.EtcdServer) and, for 1 and for 8 concurrent processes,
measures
  - the raw floor: each process rewrites its own key conditionally, reusing the index etcd
    returned: v2 one compare-and-swap (python-etcd), v3 one single-key transaction comparing
    mod_revision (etcd3gw): one round trip, what any correct allocator needs at least;
  - allocation: each process is a different host with its own IPAMClient calling auto_assign in
    a /12 pool (a block claimed every 64 addresses), without a handle (Docker's IPAM
    RequestAddress) and with a fresh handle per address (calicoctl container add): on v2 the
    handle is a second write, on v3 it is in the block's transaction.
Every round uses a wiped key space.  Each figure is the median over the rounds with its spread
(p10-p90) and the number of rounds; ratios are of medians against the same API's floor.
Goals (v3): with a handle >= 0.6 of the floor, without >= 0.7.
"""

import argparse
import ipaddress
import multiprocessing
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from stats import percentile  # noqa: E402  (bench/stats.py, beside this script)
from tests.unit.etcd_direct import DirectEtcd  # noqa: E402
from tests.unit.etcd_server import EtcdServer  # noqa: E402

GOALS = {"alloc": 0.7, "handle": 0.6}      # of the v3 floor


def raw_v2_worker(url, worker, ops, start, results):
    import etcd
    host, port = url.split("//")[1].split(":")
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


def raw_v3_worker(url, worker, ops, start, results):
    import base64

    import etcd3gw
    host, port = url.split("//")[1].split(":")
    client = etcd3gw.Etcd3Client(host=host, port=int(port), api_path="/v3/")
    key = base64.b64encode(b"/bench/cas/%d" % worker).decode()
    txn_url = client.get_url("/kv/txn")
    index = int(client.post(client.get_url("/kv/put"), json={
        "key": key, "value": base64.b64encode(b"0").decode()})["header"]["revision"])
    start.wait()
    latencies = []
    begin = time.perf_counter()
    for i in range(ops):
        t = time.perf_counter()
        answer = client.post(txn_url, json={
            "compare": [{"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": index}],
            "success": [{"request_put": {"key": key,
                                         "value": base64.b64encode(str(i).encode()).decode()}}]})
        if not answer.get("succeeded"):
            raise RuntimeError("raw txn lost its own key")
        index = int(answer["header"]["revision"])
        latencies.append(time.perf_counter() - t)
    results.put((begin, time.perf_counter(), latencies))


def allocation_worker(url, worker, ops, start, results, with_handle):
    os.environ["ETCD_ENDPOINTS"] = url
    os.environ.pop("ETCD_API", None)      # detected, as users run it
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
    outs = [results.get(timeout=600) for _ in procs]
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


def reset(server, api):
    direct = DirectEtcd(server.url, api)
    for top in ("/calico", "/bench"):
        direct.delete(top, recursive=True)
    os.environ["ETCD_ENDPOINTS"] = server.url
    os.environ.pop("ETCD_API", None)
    from calicoctl.datastore import pools
    from calicoctl.datastore.models import Pool
    from calicoctl.datastore.store import EtcdStore
    store = EtcdStore()
    if store.api != api:
        raise SystemExit("calicoctl detected API %s on an etcd serving %s" % (store.api, api))
    pools.add_pool(store, Pool(cidr=ipaddress.ip_network("10.0.0.0/12")))


MODES = (("raw", "raw floor"), ("alloc", "allocation, no handle"),
         ("handle", "allocation + handle"))
FLOORS = {"2": ("one CAS", raw_v2_worker), "3": ("one single-key txn", raw_v3_worker)}


def measure(server, api, workers, ops):
    result = {}
    reset(server, api)
    result["raw"] = run_workers(FLOORS[api][1], (server.url,), workers, ops)
    reset(server, api)
    result["alloc"] = run_workers(allocation_worker, (server.url, False), workers, ops)
    reset(server, api)
    result["handle"] = run_workers(allocation_worker, (server.url, True), workers, ops)
    return result


def spread(values):
    return "p10-p90 %.0f-%.0f, n=%d" % (percentile(values, 10), percentile(values, 90),
                                       len(values))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=600, help="operations per process")
    parser.add_argument("--api", choices=("2", "3"), action="append",
                        help="only this etcd API (default: both)")
    options = parser.parse_args()
    apis = options.api or ["2", "3"]
    figures = {}
    for api in apis:
        server = EtcdServer(name="bench-v%s" % api, enable_v2=api == "2").start()
        try:
            for rnd in range(options.rounds):
                for workers in (1, 8):
                    ops = options.ops if workers == 1 else max(100, options.ops // 4)
                    result = measure(server, api, workers, ops)
                    for mode, value in result.items():
                        for k, v in value.items():
                            figures.setdefault((api, workers, mode, k), []).append(v)
                    print("v%s round %d, %d process%s: " % (
                        api, rnd + 1, workers, "" if workers == 1 else "es") +
                        " | ".join("%s %.0f/s p50 %.2f ms" % (
                            label, result[m]["rate"], result[m]["p50"]) for m, label in MODES),
                        flush=True)
        finally:
            server.stop()
    med = {k: statistics.median(v) for k, v in figures.items()}
    print("\nper etcd API: operations/s, median over rounds (spread over rounds), latency "
          "medians; ratio = median / the same API's floor")
    verdicts = []
    for workers in (1, 8):
        for api in apis:
            print("  v%s, %d process%s (floor: %s)" % (api, workers, "" if workers == 1 else "es",
                                                       FLOORS[api][0]))
            for mode, label in MODES:
                rates = figures[(api, workers, mode, "rate")]
                ratio = med[(api, workers, mode, "rate")] / med[(api, workers, "raw", "rate")]
                print("    %-22s %6.0f/s (%s)  p50 %5.2f ms  p99 %6.2f ms%s" % (
                    label, med[(api, workers, mode, "rate")], spread(rates),
                    med[(api, workers, mode, "p50")], med[(api, workers, mode, "p99")],
                    "" if mode == "raw" else "   %.2f of the floor" % ratio))
                if api == "3" and mode in GOALS:
                    verdicts.append((ratio >= GOALS[mode], "v3 %s, %d proc: %.2f (goal %.1f)" % (
                        label, workers, ratio, GOALS[mode])))
    for ok, text in verdicts:
        print("  %s %s" % ("met    " if ok else "NOT met", text))


if __name__ == "__main__":
    main()

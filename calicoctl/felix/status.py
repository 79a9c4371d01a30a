"""What the agent reports in etcd, and the reading side `calicoctl status` uses.

- /calico/felix/v1/host/<host>/status: {"time", "uptime"} with a TTL (liveness: it vanishes
  when the agent stops refreshing it), plus last_reported_status without a TTL.
- /calico/felix/v1/host/<host>/workload/<orch>/<workload>/endpoint/<id>: {"status": "up"} once
  the endpoint's policy, route and tag sets are programmed; deleted with the endpoint.
"""

import datetime
import json
import logging
import subprocess

from calicoctl.datastore import keys
from calicoctl.felix.bird import bgp_peer_states

log = logging.getLogger(__name__)

# Liveness TTL and refresh period: the key outlives one missed refresh, and a dead agent is
# noticed within 30 s.
STATUS_TTL = 30
STATUS_INTERVAL = 10


def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def report_alive(store, host, uptime):
    data = {"time": _now(), "uptime": round(uptime, 1)}
    store.set_json(keys.felix_status(host), data, ttl=STATUS_TTL)
    store.set_json(keys.felix_last_reported_status(host), data)


def report_endpoint(store, host, endpoint_key, status="up"):
    _, orch, workload, endpoint_id = endpoint_key
    store.set_json(keys.felix_endpoint_status(host, orch, workload, endpoint_id),
                   {"status": status})


def clear_endpoint(store, host, endpoint_key):
    _, orch, workload, endpoint_id = endpoint_key
    store.delete(keys.felix_endpoint_status(host, orch, workload, endpoint_id))


def read_status(store, host):
    """{"alive": bool, "time": str|None, "uptime": float|None,
        "endpoints": {"up": n, "down": n, "error": n}} for one host."""
    status = store.get(keys.felix_status(host))
    result = {"alive": status is not None, "time": None, "uptime": None,
              "endpoints": {"up": 0, "down": 0, "error": 0}}
    if status:
        try:
            data = json.loads(status)
            result["time"], result["uptime"] = data.get("time"), data.get("uptime")
        except ValueError:
            pass
    for key, value, _ in store.children(keys.felix_host_dir(host)):
        kind, _c = keys.match_key(key)
        if kind != "felix_endpoint_status":
            continue
        try:
            state = json.loads(value).get("status")
        except (ValueError, AttributeError):
            continue
        if state in result["endpoints"]:
            result["endpoints"][state] += 1
    return result


def bird_peers(ctl_socket="/var/run/calico/bird.ctl", birdc="birdc"):
    """BGP sessions as BIRD reports them: [{"peer", "state", "since", "info"}], or None when
    BIRD is not running (no control socket answering)."""
    try:
        proc = subprocess.run([birdc, "-s", ctl_socket, "show", "protocols"],
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return bgp_peer_states(proc.stdout)

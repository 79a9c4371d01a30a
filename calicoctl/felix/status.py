"""What the agent reports in etcd, and the one reading side: whether an agent is alive and
whether an endpoint is up are answered here for `calicoctl node`/`status` and the plugin too.

- /calico/felix/v1/host/<host>/status: {"time", "uptime", "dataplane"} with a TTL (liveness: it
  vanishes when the agent stops refreshing it), plus last_reported_status without a TTL.
- /calico/felix/v1/host/<host>/workload/<orch>/<workload>/endpoint/<id>: {"status": "up"} once
  the endpoint's policy, route and tag sets are programmed; deleted with the endpoint.
"""

import datetime
import json
import logging

from calicoctl.datastore import keys
from calicoctl.datastore.result import Write
from calicoctl.datastore.store import dump_json
from calicoctl.errors import DatastoreError

log = logging.getLogger(__name__)

# Liveness TTL and refresh period: the key outlives one missed refresh, and a dead agent is
# noticed within 30 s.
STATUS_TTL = 30
STATUS_INTERVAL = 10
# endpoint_state() of a report that is not {"status": ...} JSON.
MALFORMED = "malformed"
# Endpoint reports per v3 transaction (unconditional, one op each): below etcd's default
# --max-txn-ops of 128.
REPORT_BATCH = 100


def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def report_alive(store, host, uptime, dataplane=None):
    data = {"time": _now(), "uptime": round(uptime, 1)}
    if dataplane:
        data["dataplane"] = dataplane         # for `calicoctl status`: where policy lives
    store.set_json(keys.felix_status(host), data, ttl=STATUS_TTL)
    store.set_json(keys.felix_last_reported_status(host), data)


def agent_alive(store, host):
    """Whether the agent on host is alive: its liveness report exists (the TTL removes it once
    the agent stops refreshing it)."""
    return store.get(keys.felix_status(host)) is not None


def agent_dataplane(store, host):
    """The policy dataplane (nftables, iptables) the host's live agent reports, or None."""
    value = store.get(keys.felix_status(host))
    try:
        return json.loads(value).get("dataplane") if value else None
    except (ValueError, AttributeError):
        return None


def alive_hosts(store):
    """The hosts whose agent is alive, from one read of the agents' directory."""
    return {c["host"] for k, _, _ in store.children(keys.FELIX_HOSTS_DIR)
            for kind, c in [keys.match_key(k)] if kind == "felix_status"}


def clear_alive(store, host):
    """Forget an agent's liveness, so that only a new agent's report counts."""
    store.delete(keys.felix_status(host))


def endpoint_state(value):
    """What an endpoint report's stored text says: its status ("up", ...), None for no report
    (or one without a status), MALFORMED for text that is no report."""
    if value is None:
        return None
    try:
        return json.loads(value).get("status")
    except (ValueError, AttributeError):
        return MALFORMED


def endpoint_up(value):
    """Whether an endpoint report's stored text (None: no report) says the endpoint is up."""
    return endpoint_state(value) == "up"


def _report_write(host, endpoint_key, state):
    """The write of one endpoint report: {"status": state}, or its deletion (state None)."""
    _, orch, workload, endpoint_id = endpoint_key
    return Write(keys.felix_endpoint_status(host, orch, workload, endpoint_id),
                 None if state is None else dump_json({"status": state}))


def write_endpoint_reports(store, host, reports):
    """Apply {endpoint key: status, or None to clear its report}; returns the keys whose
    write failed (logged).  Over v3, REPORT_BATCH writes a transaction: a first start with
    10,000 endpoints up is 100 requests, not 10,000.  v2 has no such thing: one by one."""
    failed = []
    items = list(reports.items())
    if not store.atomic_writes:
        for key, state in items:
            write = _report_write(host, key, state)
            try:
                if write.value is None:
                    store.delete(write.key)
                else:
                    store.set(write.key, write.value)
            except DatastoreError as exc:
                log.warning("Cannot report endpoint %s: %s", key[3], exc)
                failed.append(key)
        return failed
    for start in range(0, len(items), REPORT_BATCH):
        batch = items[start:start + REPORT_BATCH]
        try:
            store.write_all([_report_write(host, key, state) for key, state in batch])
        except DatastoreError as exc:
            log.warning("Cannot report %d endpoint(s) (%s...): %s", len(batch), batch[0][0][3],
                        exc)
            failed += [key for key, _ in batch]
    return failed


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
        state = endpoint_state(value)
        if state in result["endpoints"]:
            result["endpoints"][state] += 1
    return result

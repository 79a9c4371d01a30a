"""Workload endpoints: /calico/v1/host/<host>/workload/<orch>/<workload>/endpoint/<id>."""

import json
import logging

from calicoctl.datastore import keys
from calicoctl.datastore.models import Endpoint
from calicoctl.datastore.store import dump_json
from calicoctl.errors import NotFoundError, ValidationError

log = logging.getLogger(__name__)


def _scan_root(host=None, orchestrator=None, workload=None):
    """The narrowest directory that holds every endpoint matching the filters."""
    if host and orchestrator and workload:
        return keys.workload_dir(host, orchestrator, workload)
    if host:
        return keys.host_workloads_dir(host)
    return keys.HOSTS_DIR


def list_endpoints(store, host=None, orchestrator=None, workload=None, endpoint_id=None,
                   quorum=False, mentions=None):
    """Endpoints matching every filter given; malformed records are logged and skipped.

    mentions: only records whose key or stored text contains one of these strings are parsed:
    a cheap first cut for a caller that then checks the fields itself (parsing every record of
    a busy host is most of what a scan costs)."""
    found = []
    for key, value, index in store.children(_scan_root(host, orchestrator, workload),
                                            quorum=quorum):
        if mentions is not None and not any(m in key or m in value for m in mentions):
            continue
        kind, c = keys.match_key(key)
        if kind != "endpoint":
            continue
        if (host and c["host"] != host) or (orchestrator and c["orchestrator"] != orchestrator) \
                or (workload and c["workload"] != workload) \
                or (endpoint_id and c["endpoint_id"] != endpoint_id):
            continue
        ep = _parse(key, c, value, index)
        if ep is not None:
            found.append(ep)
    return found


def read_endpoint(store, host, orchestrator, workload, endpoint_id):
    """One endpoint by its full identity (one read, whatever else the host holds), or None if
    it is absent or malformed (logged, as list_endpoints does)."""
    key = keys.endpoint(host, orchestrator, workload, endpoint_id)
    node = store.read(key)
    if node is None or node.is_dir:
        return None
    return _parse(key, {"host": host, "orchestrator": orchestrator, "workload": workload,
                        "endpoint_id": endpoint_id}, node.value, node.modified_index)


def _parse(key, c, value, index):
    """A stored record -> Endpoint carrying the index it was read at (for compare-and-swap)."""
    try:
        ep = Endpoint.from_json(c["host"], c["orchestrator"], c["workload"],
                                c["endpoint_id"], json.loads(value))
    except (ValueError, ValidationError) as exc:
        log.warning("Skipping malformed endpoint at %s: %s", key, exc)
        return None
    ep.extra["_index"] = index
    return ep


def get_endpoint(store, endpoint_id, host=None, orchestrator=None, workload=None):
    matches = list_endpoints(store, host, orchestrator, workload, endpoint_id)
    if not matches:
        raise NotFoundError("Endpoint %s does not exist; 'calicoctl endpoint show' lists them."
                            % endpoint_id)
    if len(matches) > 1:
        raise ValidationError("Endpoint id %s is ambiguous; narrow it with --host, "
                              "--orchestrator and --workload." % endpoint_id)
    return matches[0]


def endpoint_key(ep):
    return keys.endpoint(ep.host, ep.orchestrator, ep.workload, ep.endpoint_id)


def _clean(ep):
    data = ep.to_json()
    data.pop("_index", None)
    return data


def write_endpoint(store, ep):
    """Write the record whole; its new modified index."""
    return store.set(endpoint_key(ep), dump_json(_clean(ep)))


def create_endpoint(store, ep):
    """Create only if absent: True if created."""
    return store.create(endpoint_key(ep), dump_json(_clean(ep)))


def update_endpoint(store, ep, mutate):
    """Compare-and-swap edit of one endpoint; mutate(Endpoint) -> Endpoint."""
    def apply(old):
        if old is None:
            raise NotFoundError("Endpoint %s no longer exists." % ep.endpoint_id)
        current = Endpoint.from_json(ep.host, ep.orchestrator, ep.workload, ep.endpoint_id,
                                     json.loads(old))
        return dump_json(_clean(mutate(current)))
    value = store.update(endpoint_key(ep), apply)
    return Endpoint.from_json(ep.host, ep.orchestrator, ep.workload, ep.endpoint_id,
                              json.loads(value))


def delete_endpoint(store, ep):
    """Delete the endpoint and the workload directories it leaves empty."""
    deleted = store.delete(endpoint_key(ep))
    store.delete_empty_dirs(keys.workload_dir(ep.host, ep.orchestrator, ep.workload) + "/endpoint",
                            keys.host_workloads_dir(ep.host))
    return deleted


def endpoints_using_profile(store, profile):
    return [ep for ep in list_endpoints(store) if profile in ep.profile_ids]

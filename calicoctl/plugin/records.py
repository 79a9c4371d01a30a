"""What the plugin remembers in etcd beside its network records (those are
calicoctl/datastore/networks.py): its endpoints' extra fields, and claims on addresses Docker's
own IPAM handed out (/calico/libnetwork/v1/address/<ip>)."""

import json
import logging

from calicoctl.datastore import endpoints, keys
from calicoctl.datastore.models import Endpoint
from calicoctl.datastore.store import dump_json
from calicoctl.errors import NotFoundError

log = logging.getLogger(__name__)


# --- endpoints ----------------------------------------------------------------------------------

def endpoint_of(store, host, endpoint_id):
    ep = endpoints.read_endpoint(store, host, keys.LIBNETWORK_ORCHESTRATOR,
                                 keys.LIBNETWORK_WORKLOAD, endpoint_id)
    if ep is None:
        raise NotFoundError("Endpoint %s is not known to Calico on %s." % (endpoint_id[:12], host))
    return ep


def host_endpoints(store, host):
    return endpoints.list_endpoints(store, host, keys.LIBNETWORK_ORCHESTRATOR,
                                    keys.LIBNETWORK_WORKLOAD)


def sandbox_endpoints(store, host, sandbox, endpoint_id):
    """(this endpoint or None, this host's other endpoints in `sandbox`), from one read that
    parses only the records naming the sandbox or this endpoint."""
    mine, others = None, []
    # The sandbox as it appears inside a stored record (records are dump_json's text).
    mark = dump_json(sandbox)
    for ep in endpoints.list_endpoints(store, host, keys.LIBNETWORK_ORCHESTRATOR,
                                       keys.LIBNETWORK_WORKLOAD, mentions=(mark, endpoint_id)):
        if ep.endpoint_id == endpoint_id:
            mine = ep
        elif ep.extra.get("sandbox") == sandbox:
            others.append(ep)
    return mine, others


def update_endpoint_fields(store, ep, profile_ids=None, ipv4_gateway=None, **extra):
    """CAS-update the profile list, the IPv4 gateway and/or extra fields of a libnetwork
    endpoint."""
    def mutate(current):
        if profile_ids is not None:
            current.profile_ids = list(profile_ids)
        if ipv4_gateway is not None:
            current.ipv4_gateway = ipv4_gateway
        current.extra.update(extra)
        return current
    try:
        return endpoints.update_endpoint(store, ep, mutate)
    except NotFoundError:
        return None


def set_endpoint_fields(store, ep, ipv4_gateway=None, **extra):
    """Like update_endpoint_fields, but first tries one compare-and-swap against the index the
    endpoint was listed at (one round trip on the hot path); re-reads only on a conflict."""
    index = ep.extra.get("_index")
    if index is not None:
        current = Endpoint.from_json(ep.host, ep.orchestrator, ep.workload, ep.endpoint_id,
                                     ep.to_json())
        current.extra.pop("_index", None)
        if ipv4_gateway is not None:
            current.ipv4_gateway = ipv4_gateway
        current.extra.update(extra)
        if store.cas(endpoints.endpoint_key(ep), dump_json(current.to_json()), index):
            return current
    return update_endpoint_fields(store, ep, ipv4_gateway=ipv4_gateway, **extra)


# --- address claims (Docker's default IPAM) ----------------------------------------------------

def claim_address(store, ip, host, endpoint_id):
    """Claim ip for this endpoint; returns None on success, else the holder's record."""
    key = keys.libnetwork_address(ip)
    mine = {"host": host, "endpoint_id": endpoint_id}
    if store.create(key, dump_json(mine)):
        return None
    holder = store.get_json(key) or {}
    if holder == mine:
        return None          # a repeated CreateEndpoint
    return holder


def release_claim(store, ip, endpoint_id=None):
    key = keys.libnetwork_address(ip)
    result = store.read(key)
    if result is None:
        return False
    if endpoint_id is not None:
        try:
            holder = json.loads(result.value)
        except ValueError:
            holder = {}
        if holder.get("endpoint_id") != endpoint_id:
            return False     # someone else's claim
    return store.delete(key, prev_index=result.modified_index)


def list_claims(store):
    """{ip: holder} of every claim."""
    found = {}
    for key, value, _ in store.children(keys.libnetwork_addresses_dir()):
        kind, captures = keys.match_key(key)
        if kind == "libnetwork_address":
            try:
                found[captures["ip"]] = json.loads(value)
            except ValueError:
                found[captures["ip"]] = {}
    return found


def is_libnetwork_endpoint(ep):
    return isinstance(ep, Endpoint) and ep.orchestrator == keys.LIBNETWORK_ORCHESTRATOR

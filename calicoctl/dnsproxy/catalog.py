"""Who may resolve which name to what: etcd's records in, answers out (pure).

The records are the plugin's own (calicoctl/plugin/network_driver.py, names.py, read through
calicoctl/datastore/networks.py for the networks):
  - each endpoint record (/calico/v1/host/<host>/workload/libnetwork/libnetwork/endpoint/<id>)
    has the workload's addresses, and in its extra fields the Docker network's id
    (`network_id`, at CreateEndpoint), the sandbox's netns path (`sandbox`, at Join) and the
    container's name (`container_name`, learnt from Docker's events just after);
  - each network record (/calico/libnetwork/v1/<network-id>) has the network's name.  Network
    ids differ per host, names do not: a name is one Calico network across hosts.

Scoping follows Docker's own resolver (libnetwork sandbox.ResolveName): a name is tried whole
as a container name in every network the asker is in, then split at each dot from the right into
`<container>.<network>` for a network the asker is in; the first candidate that names a
workload decides.  Only workloads on *other* hosts are answered here: where a candidate names a
workload of this host, Docker knows it (and its aliases) and answers as it always has.
"""

import ipaddress
import json
import logging
import socket
from dataclasses import dataclass

from calicoctl.datastore import keys, networks
from calicoctl.datastore.models import Endpoint
from calicoctl.dnsproxy.wire import TYPE_A, TYPE_AAAA, TYPE_MX
from calicoctl.errors import ValidationError

log = logging.getLogger(__name__)

# Seconds a client may keep an answer.  Docker's resolver says 600 for its own names; a name of
# another host must disappear soon after `docker rm` there and come back after a new `docker
# run` (possibly with another address), so it is kept short.
TTL = 5


@dataclass(frozen=True)
class Workload:
    host: str
    endpoint_id: str
    network_id: str
    container: str          # lower case; None until learnt from Docker's events
    ipv4: tuple             # packed addresses
    ipv6: tuple
    sandbox: str            # netns path; None before Join


def workload_from_record(host, endpoint_id, value):
    """The Workload in an endpoint record's JSON, or None when it is not a usable libnetwork
    endpoint (never an exception: a bad record must not stop the answerer)."""
    try:
        ep = Endpoint.from_json(host, keys.LIBNETWORK_ORCHESTRATOR, keys.LIBNETWORK_WORKLOAD,
                                endpoint_id, json.loads(value))
    except (ValueError, TypeError, ValidationError) as exc:
        log.warning("Skipping endpoint record %s: %s", endpoint_id[:12], exc)
        return None
    network_id = ep.extra.get("network_id")
    if not isinstance(network_id, str):
        return None
    container = ep.extra.get("container_name")
    sandbox = ep.extra.get("sandbox")
    return Workload(host, endpoint_id, network_id,
                    container.lower() if isinstance(container, str) and container else None,
                    tuple(_packed(n, socket.AF_INET) for n in ep.ipv4_nets),
                    tuple(_packed(n, socket.AF_INET6) for n in ep.ipv6_nets),
                    sandbox if isinstance(sandbox, str) and sandbox else None)


def _packed(net, family):
    return socket.inet_pton(family, str(ipaddress.ip_network(net).network_address))


class Records:
    """The records that matter, by etcd key, as a snapshot and then a watch deliver them."""

    def __init__(self, host):
        self.host = host
        self.workloads = {}     # endpoint key -> Workload
        self.networks = {}      # network record key -> (network id, name)

    def load(self, items):
        self.workloads.clear()
        self.networks.clear()
        for key, value in items:
            self.apply(key, value)

    def apply(self, key, value):
        """One key's new value (None: deleted).  True if it may change an answer."""
        kind, captures = keys.match_key(key)
        if kind == "endpoint" and captures["orchestrator"] == keys.LIBNETWORK_ORCHESTRATOR:
            old = self.workloads.pop(key, None)
            new = None if value is None else workload_from_record(
                captures["host"], captures["endpoint_id"], value)
            if new is not None:
                self.workloads[key] = new
            return old != new
        if kind == "libnetwork_network":
            old = self.networks.pop(key, None)
            new = None if value is None else _network_name(captures["network_id"], value)
            if new is not None:
                self.networks[key] = new
            return old != new
        if value is None and kind is None:
            # A directory went (a host removed, the plugin's records wiped): all below it too.
            prefix = key.rstrip("/") + "/"
            gone = [k for k in list(self.workloads) + list(self.networks) if k.startswith(prefix)]
            for k in gone:
                self.workloads.pop(k, None)
                self.networks.pop(k, None)
            return bool(gone)
        return False

    def view(self):
        return View(self.host, dict(self.networks.values()), list(self.workloads.values()))


def _network_name(network_id, value):
    try:
        name = networks.parse_network(network_id, value).name
    except (ValueError, ValidationError):
        return None
    return (network_id, name) if isinstance(name, str) and name else None


class View:
    """An immutable lookup table, rebuilt after every batch of changes and swapped in whole, so
    the answering thread never sees one half-applied.

    sandboxes: {netns path: frozenset of network names} of this host's workloads: which
    namespaces to answer in, and what each may resolve.
    """

    def __init__(self, host, network_names, workloads):
        self.host = host
        remote, local, sandboxes = {}, set(), {}
        for w in sorted(workloads, key=lambda w: (w.host, w.endpoint_id)):
            network = network_names.get(w.network_id)
            if network is None:
                continue        # its name is not known yet: neither askable nor answerable
            network = network.lower()
            if w.host == host:
                if w.sandbox:
                    sandboxes.setdefault(w.sandbox, set()).add(network)
                if w.container:
                    local.add((network, w.container))
            elif w.container:
                remote.setdefault((network, w.container), []).append(w)
        self.sandboxes = {k: frozenset(v) for k, v in sandboxes.items()}
        self._remote = {k: tuple(v) for k, v in remote.items()}
        self._local = frozenset(local)

    def lookup(self, sandbox, name, qtype):
        """Packed addresses to answer `name` with (an empty list: the name is known, without an
        address of that family), or None: Docker's resolver answers."""
        networks = self.sandboxes.get(sandbox)
        if not networks or qtype not in (TYPE_A, TYPE_AAAA, TYPE_MX):
            return None
        for container, network in candidates(name):
            if network is not None and network not in networks:
                continue
            scope = sorted(networks) if network is None else [network]
            if any((n, container) in self._local for n in scope):
                return None
            found = [w for n in scope for w in self._remote.get((n, container), ())]
            if not found:
                continue
            if qtype == TYPE_MX:
                return []       # as Docker: the name exists, so a mailer may use its A/AAAA
            addresses = []
            for w in found:
                for address in (w.ipv4 if qtype == TYPE_A else w.ipv6):
                    if address not in addresses:
                        addresses.append(address)
            return addresses
        return None


def candidates(name):
    """(container, network or None) readings of a queried name, in Docker's order: the whole
    name in any network, then `<container>.<network>` splitting at each dot from the right
    (container and network names may both hold dots)."""
    found = [(name, None)]
    cut = len(name)
    while True:
        cut = name.rfind(".", 0, cut)
        if cut <= 0:
            return found
        if cut < len(name) - 1:
            found.append((name[:cut], name[cut + 1:]))

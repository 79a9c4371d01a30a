"""The libnetwork plugin's network records: /calico/libnetwork/v1/<network-id>, one per Docker
network per host (models.Network, docs/datamodel.md).

Network ids differ per host (Docker has no cluster store), so the same-named networks of several
hosts are several records with one name: one Calico network, one profile.
"""

import json
import logging

from calicoctl.datastore import keys
from calicoctl.datastore.models import Network
from calicoctl.datastore.store import dump_json
from calicoctl.errors import NotFoundError, ValidationError

log = logging.getLogger(__name__)


def parse_network(network_id, value):
    """A stored value -> Network; ValueError if not JSON, ValidationError if not an object."""
    return Network.from_json(network_id, json.loads(value))


def read_network(store, network_id):
    """The record, or None if there is none."""
    value = store.get(keys.libnetwork_network(network_id))
    return None if value is None else parse_network(network_id, value)


def get_network(store, network_id):
    """The record, or raise NotFoundError with a sentence Docker shows the user."""
    network = read_network(store, network_id)
    if network is None:
        raise NotFoundError(
            "Network %s is not known to Calico (was it created while the plugin could not "
            "reach etcd?); remove it with 'docker network rm' and create it again."
            % network_id[:12])
    return network


def write_network(store, network):
    store.set(keys.libnetwork_network(network.network_id), dump_json(network.to_json()))


def delete_network(store, network_id):
    return store.delete(keys.libnetwork_network(network_id))


def list_networks(store, quorum=False):
    """{network_id: Network} for every host; malformed records are logged and skipped."""
    found = {}
    for key, value, _ in store.children(keys.LIBNETWORK_DIR, quorum=quorum):
        kind, captures = keys.match_key(key)
        if kind != "libnetwork_network":
            continue
        try:
            found[captures["network_id"]] = parse_network(captures["network_id"], value)
        except (ValueError, ValidationError):
            log.warning("Skipping malformed network record %s", key)
    return found


def set_network_name(store, network_id, name):
    """Record the learned name; returns the record (None if the network is not ours)."""
    def apply(old):
        if old is None:
            return None
        network = parse_network(network_id, old)
        network.name = name
        return dump_json(network.to_json())
    value = store.update(keys.libnetwork_network(network_id), apply)
    return None if value is None else parse_network(network_id, value)

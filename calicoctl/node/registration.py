"""A node's record in etcd: registering it, listing every node, removing one (alive or dead)."""

import logging

from calicoctl.datastore import bgp, endpoints, hosts, networks
from calicoctl.datastore.globals import ensure_defaults
from calicoctl.datastore.models import Node
from calicoctl.errors import ValidationError
from calicoctl.felix.status import alive_hosts

log = logging.getLogger(__name__)


def check_address_free(store, name, ip):
    """Two nodes with one BGP address would peer with themselves and black-hole routes."""
    for node in hosts.list_nodes(store):
        if node.name != name and str(ip) in (node.ipv4, node.ipv6):
            raise ValidationError(
                "%s is already the address of node %s; give this host its own with --ip, or "
                "remove the other node with 'calicoctl node remove --hostname=%s'." % (
                    ip, node.name, node.name))


def register(store, name, ipv4, ipv6=None, as_num=None):
    """Write the node's keys and any missing global defaults."""
    check_address_free(store, name, ipv4)
    if ipv6:
        check_address_free(store, name, ipv6)
    ensure_defaults(store)
    hosts.register_node(store, Node(name=name, ipv4=str(ipv4),
                                    ipv6=str(ipv6) if ipv6 else None,
                                    as_num=str(as_num) if as_num else None))


def node_rows(store):
    """[(name, ipv4, ipv6, AS, agent alive)] for every registered node."""
    default_as = bgp.get_default_as(store)
    alive = alive_hosts(store)
    return [(n.name, n.ipv4 or "", n.ipv6 or "", n.as_num or "(%s)" % default_as,
             "yes" if n.name in alive else "no") for n in hosts.list_nodes(store)]


def remove(store, name, remove_endpoints=False, ipam=None):
    """Delete the node's keys, its IPAM block affinities and (if asked) its endpoints.

    Refuses while the node still has endpoints, unless remove_endpoints; those endpoints' addresses
    are released, so nothing leaks: by address (the plugin's handles are its own,
    plugin/ipam_driver.new_handle) and by the endpoint id (`calicoctl container`'s handle).
    """
    eps = endpoints.list_endpoints(store, host=name)
    if eps and not remove_endpoints:
        raise ValidationError(
            "Node %s still has %d endpoint%s; remove the workloads first or use "
            "--remove-endpoints." % (name, len(eps), "" if len(eps) == 1 else "s"))
    if ipam is None:
        from calicoctl.ipam.allocator import IPAMClient
        ipam = IPAMClient(store, host=name)
    for ep in eps:
        ipam.release(ep.addresses())
        ipam.release_by_handle(ep.endpoint_id)
        endpoints.delete_endpoint(store, ep)
    ipam.release_host_affinities(name)
    _remove_libnetwork_records(store, name)
    hosts.remove_node(store, name)
    return len(eps)


def _remove_libnetwork_records(store, name):
    """The plugin's network records made on that host (Docker networks are per host today)."""
    for network_id, network in networks.list_networks(store).items():   # skips malformed ones
        if network.host == name:
            networks.delete_network(store, network_id)

"""Nodes (hosts): registration keys under /calico/v1/host and /calico/bgp/v1/host."""

from calicoctl.datastore import keys
from calicoctl.datastore.models import Node


def register_node(store, node, endpoint_to_host_action="RETURN"):
    """Write a node's addresses, BGP settings and per-host agent config."""
    if node.ipv4:
        store.set(keys.host_bird_ip(node.name), str(node.ipv4))
        store.set(keys.bgp_host_ip(node.name, 4), str(node.ipv4))
    if node.ipv6:
        store.set(keys.host_bird6_ip(node.name), str(node.ipv6))
        store.set(keys.bgp_host_ip(node.name, 6), str(node.ipv6))
    else:
        # Written empty, not deleted: the original plugin and BIRD templates read ip_addr_v6 of
        # every host and took "" for "no IPv6 address" (every reader here does the same).
        store.set(keys.bgp_host_ip(node.name, 6), "")
    if node.as_num:
        store.set(keys.bgp_host_as(node.name), str(node.as_num))
    else:
        store.delete(keys.bgp_host_as(node.name))
    store.set(keys.host_config(node.name, "DefaultEndpointToHostAction"), endpoint_to_host_action)


def list_nodes(store):
    """Every registered node with its BGP address and AS."""
    nodes = {}
    for name, is_dir in store.list_dir(keys.BGP_HOSTS_DIR):
        if is_dir:
            nodes[name] = Node(name=name)
    for key, value, _ in store.children(keys.BGP_HOSTS_DIR):
        kind, c = keys.match_key(key)
        if kind == "bgp_host_ip" and c["host"] in nodes:
            setattr(nodes[c["host"]], "ipv%d" % c["version"], value or None)
        elif kind == "bgp_host_as" and c["host"] in nodes:
            nodes[c["host"]].as_num = value or None
    return [nodes[n] for n in sorted(nodes)]


def remove_node(store, name):
    """Delete every key of the node: host, BGP, agent status and its IPAM affinities."""
    for key in (keys.host_dir(name), keys.bgp_host_dir(name), keys.felix_host_dir(name),
                keys.ipam_host_dir(name)):
        store.delete(key, recursive=True)

"""BGP configuration: /calico/bgp/v1 (global and per-node AS, mesh, peers, log level)."""

import ipaddress
import json

from calicoctl.datastore import keys
from calicoctl.datastore.globals import DEFAULT_AS
from calicoctl.datastore.models import BGPPeer
from calicoctl.datastore.store import dump_json
from calicoctl.errors import NotFoundError


def get_default_as(store):
    return store.get(keys.bgp_global_as()) or DEFAULT_AS


def set_default_as(store, as_num):
    store.set(keys.bgp_global_as(), str(as_num))


def get_node_mesh(store):
    value = store.get(keys.bgp_node_mesh())
    if value is None:
        return True
    try:
        return json.loads(value).get("enabled", True) is not False
    except (ValueError, AttributeError):
        return True


def set_node_mesh(store, enabled):
    store.set(keys.bgp_node_mesh(), dump_json({"enabled": bool(enabled)}))


def _peer_dir(version, host):
    return keys.bgp_host_peers_dir(host, version) if host else keys.bgp_global_peers_dir(version)


def _peer_key(ip, host):
    if host:
        return keys.bgp_host_peer(host, ip, ip.version)
    return keys.bgp_global_peer(ip, ip.version)


def list_peers(store, version=None, host=None):
    peers = []
    for v in ((version,) if version else (4, 6)):
        for _, value, _ in store.children(_peer_dir(v, host)):
            try:
                peers.append(BGPPeer.from_json(json.loads(value)))
            except (ValueError, KeyError, TypeError):
                continue
    return sorted(peers, key=lambda p: (p.ip.version, p.ip))


def add_peer(store, peer, host=None):
    store.set(_peer_key(peer.ip, host), dump_json(peer.to_json()))


def remove_peer(store, ip, host=None):
    if not store.delete(_peer_key(ip, host)):
        if host:
            raise NotFoundError("%s is not a BGP peer of node %s." % (ip, host))
        raise NotFoundError("%s is not a globally configured peer." % ip)


def get_node_as(store, host):
    return store.get(keys.bgp_host_as(host))


def set_node_as(store, host, as_num):
    if as_num is None:
        store.delete(keys.bgp_host_as(host))
    else:
        store.set(keys.bgp_host_as(host), str(as_num))


def get_loglevel(store, host=None):
    return store.get(keys.bgp_host_loglevel(host) if host else keys.bgp_global_loglevel())


def set_loglevel(store, level, host=None):
    key = keys.bgp_host_loglevel(host) if host else keys.bgp_global_loglevel()
    if level is None:
        store.delete(key)
    else:
        store.set(key, level)


def parse_peer_ip(text):
    return ipaddress.ip_address(text)

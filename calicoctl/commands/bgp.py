"""Configure global BGP: peers every node speaks to, the node-to-node mesh, the default AS.

Usage:
  calicoctl bgp peer add <PEER_IP> as <AS_NUM>
  calicoctl bgp peer remove <PEER_IP>
  calicoctl bgp peer show [--ipv4 | --ipv6]
  calicoctl bgp node-mesh [on|off]
  calicoctl bgp default-node-as [<AS_NUM>]

Description:
  Configure default global BGP settings for all nodes. Note: per-node settings
  will override these globals for that node.  Without a value, node-mesh and
  default-node-as show the current setting.

Options:
 --ipv4    Show IPv4 information only.
 --ipv6    Show IPv6 information only.
"""

from calicoctl.datastore import bgp, open_store
from calicoctl.datastore.models import BGPPeer
from calicoctl.output import msg, out, table
from calicoctl.validation import parse_as, parse_ip


def run(arguments):
    # Convert (and so validate) every argument before touching etcd.
    as_num = parse_as(arguments["<AS_NUM>"]) if arguments["<AS_NUM>"] is not None else None
    peer_ip = parse_ip(arguments["<PEER_IP>"], what="peer address") \
        if arguments["<PEER_IP>"] is not None else None
    store = open_store()
    if arguments["peer"]:
        if arguments["add"]:
            return peer_add(store, BGPPeer(ip=peer_ip, as_num=as_num))
        if arguments["remove"]:
            return peer_remove(store, peer_ip)
        version = 4 if arguments["--ipv4"] else 6 if arguments["--ipv6"] else None
        return peer_show(store, version)
    if arguments["node-mesh"]:
        if arguments["on"] or arguments["off"]:
            return node_mesh_set(store, arguments["on"])
        out("on" if bgp.get_node_mesh(store) else "off")
        return None
    if as_num is not None:
        return default_as_set(store, as_num)
    out(bgp.get_default_as(store))
    return None


def peer_add(store, peer):
    from calicoctl.datastore.globals import ensure_defaults
    ensure_defaults(store)
    bgp.add_peer(store, peer)


def peer_remove(store, ip):
    bgp.remove_peer(store, ip)
    msg("BGP peer removed from global configuration")


def peer_show(store, version):
    for v in ((version,) if version else (4, 6)):
        peers = bgp.list_peers(store, v)
        if not peers:
            out("No global IPv%d BGP Peers defined.\n" % v)
            continue
        out(table(["Global IPv%d BGP Peer" % v, "AS Num"],
                  [[str(p.ip), p.as_num] for p in peers]))


def node_mesh_set(store, enabled):
    from calicoctl.datastore.globals import ensure_defaults
    ensure_defaults(store)
    bgp.set_node_mesh(store, enabled)


def default_as_set(store, as_num):
    from calicoctl.datastore.globals import ensure_defaults
    ensure_defaults(store)
    bgp.set_default_as(store, as_num)

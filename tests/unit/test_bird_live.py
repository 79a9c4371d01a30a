"""Two real BIRDs configured by our renderer, in two scratch network namespaces joined by a veth:
they establish BGP over IPv4 and IPv6, each learns the other's blocks and the workload routes
it learnt from its kernel, IPIP pools stay out of the kernel, `persist` keeps the routes when a
BIRD stops, and `calicoctl status`'s parser reads every session as Established from the real
`birdc show protocols all`.  Pairs cover BIRD 1.6 with BIRD 2 (either side), and each major
version with itself.  Addresses: 198.18.0.0/15 and fd00::/8 only, inside our namespaces."""

import contextlib
import ipaddress

import pytest

from calicoctl.datastore.models import Pool
from calicoctl.felix.bird import BgpView, render_config
from calicoctl.node import status
from tests.st.harness.procs import wait_for
from tests.unit import bird_support

# The underlay: A and B on one link.
ADDR = {"a": ("198.18.7.1", "fd00:7::1"), "b": ("198.18.7.2", "fd00:7::2")}
POOLS = [Pool(ipaddress.ip_network("198.19.0.0/17")),                   # Calico IPAM
         Pool(ipaddress.ip_network("198.19.200.0/24"), ipam=False),     # Docker IPAM
         Pool(ipaddress.ip_network("198.19.128.0/18"), ipip="tunl0"),
         Pool(ipaddress.ip_network("fd00:99::/64")),
         Pool(ipaddress.ip_network("fd00:98::/64"), ipam=False)]
BLOCKS = {"a": {"198.19.1.0/26", "198.19.128.0/26", "fd00:99::/122"},
          "b": {"198.19.2.0/26", "fd00:99::40/122"}}
# A's workloads: one inside its block (covered by the block) and one in each Docker-IPAM pool,
# whose /32 and /128 routes on a cali interface BIRD must learn from the kernel.
A_WORKLOADS = ["198.19.1.3/32", "198.19.200.5/32", "fd00:98::5/128"]
A_AS, B_AS, GLOBAL_AS = "64512", "64513", "64511"
PEER_TYPE = {"mesh": "node-to-node mesh", "global peers": "global", "node peers": "node specific"}


def views(scenario):
    """(A's view, B's view, {node: [protocol names it must have Established]})."""
    nodes = {"a": {"ip4": ADDR["a"][0], "ip6": ADDR["a"][1]},
             "b": {"ip4": ADDR["b"][0], "ip6": ADDR["b"][1]}}
    common = dict(nodes=nodes, pools=POOLS, global_as=GLOBAL_AS)
    if scenario == "mesh":        # iBGP: both in the default AS
        kw = {"a": {}, "b": {}}
        kind = "Mesh"
    elif scenario == "global peers":   # eBGP: each node in its own AS, peered by global peers
        nodes["a"]["as"], nodes["b"]["as"] = A_AS, B_AS
        peers = {4: {ADDR["a"][0]: A_AS, ADDR["b"][0]: B_AS},
                 6: {ADDR["a"][1]: A_AS, ADDR["b"][1]: B_AS}}
        kw = {"a": dict(mesh=False, global_peers=peers), "b": dict(mesh=False,
                                                                   global_peers=peers)}
        kind = "Global"
    else:                         # eBGP, per-node peers; B in the default AS
        nodes["a"]["as"] = A_AS
        kw = {"a": dict(mesh=False, node_peers={4: {ADDR["b"][0]: GLOBAL_AS},
                                                6: {ADDR["b"][1]: GLOBAL_AS}}),
              "b": dict(mesh=False, node_peers={4: {ADDR["a"][0]: A_AS},
                                                6: {ADDR["a"][1]: A_AS}})}
        kind = "Node"
    va = BgpView(me="a", blocks=BLOCKS["a"], endpoint_nets=set(A_WORKLOADS), **common,
                 **kw["a"])
    vb = BgpView(me="b", blocks=BLOCKS["b"], **common, **kw["b"])
    names = {n: ["%s_%s" % (kind, ip.replace(".", "_").replace(":", "_"))
                 for ip in ADDR["b" if n == "a" else "a"]] for n in "ab"}
    return va, vb, names


PAIRS = [("mesh", 0, 1), ("mesh", 1, 0), ("global peers", 0, 1), ("node peers", 1, 0),
         ("mesh", 0, 0), ("node peers", 1, 1)]


def routes(ns, version):
    return ns.ip("-%d" % version, "route", "show", "proto", "bird")


def learnt(ns, version, prefix):
    """Whether ns's kernel has prefix from BIRD as a route via a next hop (not a blackhole)."""
    net = ipaddress.ip_network(prefix)
    short = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
    return any(line.split()[0] == short and " via " in line
               for line in routes(ns, version).splitlines())


@pytest.mark.parametrize("scenario,a_index,b_index", PAIRS,
                         ids=["%s, A %s B %s" % (s, "host other".split()[a],
                                                  "host other".split()[b])
                              for s, a, b in PAIRS])
def test_two_birds_peer_and_exchange_routes(scenario, a_index, b_index):
    birds = bird_support.real_birds()
    bird = {"a": birds[a_index], "b": birds[b_index]}
    va, vb, expected = views(scenario)
    view = {"a": va, "b": vb}
    ns, daemons = {}, {"a": [], "b": []}
    scratches = contextlib.ExitStack()
    try:
        for n in "ab":
            ns[n] = bird_support.Namespace(bird_support.ns_name(n))
        bird_support.veth(ns["a"], ns["b"], "vtha", "vthb")
        for n, dev in (("a", "vtha"), ("b", "vthb")):
            ns[n].ip("addr", "add", ADDR[n][0] + "/24", "dev", dev)
            ns[n].ip("-6", "addr", "add", ADDR[n][1] + "/64", "dev", dev, "nodad")
        # A workload's veth, as the agent leaves it: up, no address, routes to it (its other
        # end stays in A too: no workload needs to answer).
        ns["a"].ip("link", "add", "cali0a", "type", "veth", "peer", "name", "cali0w")
        for dev in ("cali0a", "cali0w"):
            ns["a"].ip("link", "set", dev, "up")
        for net in A_WORKLOADS:
            version = ipaddress.ip_network(net).version
            ns["a"].ip("-%d" % version, "route", "add", net, "dev", "cali0a", "proto", "static")
        for n in "ab":
            here, inside = scratches.enter_context(bird[n].scratch())
            for family, (daemon, client) in bird[n].daemons().items():
                text = render_config(view[n], bird[n].major, family)
                assert text is not None
                daemons[n].append(bird_support.Daemon(bird[n], ns[n], daemon, client, text,
                                                      here, inside))

        def sessions(n):
            """What `calicoctl status` would list for node n (every daemon of its BIRD)."""
            found = []
            for d in daemons[n]:
                found += status.parse_bird_protocols(d.birdc("show", "protocols", "all"))
            return found

        def all_established():
            return all(sorted(s.name for s in sessions(n) if s.established) == sorted(
                expected[n]) for n in "ab")

        try:
            wait_for(all_established, timeout=90, what="BGP sessions Established")
        except Exception:
            raise AssertionError("sessions: %r\nlogs: %s" % (
                {n: sessions(n) for n in "ab"},
                {d.name + "@" + n: d.log_text()[-2000:] for n in "ab" for d in daemons[n]}))
        for n in "ab":
            for s in sessions(n):
                other = "b" if n == "a" else "a"
                assert s.peer in ADDR[other]                       # from "Neighbor address:"
                assert status.peer_type(s.name) == PEER_TYPE[scenario]
            # The short table (no neighbour addresses: sessions go by name) agrees.
            short = [p for d in daemons[n]
                     for p in status.parse_bird_protocols(d.birdc("show", "protocols"))]
            assert sorted(p.name for p in short if p.info == "Established") == \
                sorted(expected[n])

        # Each side learns the other's blocks (not IPIP ones) and A's Docker-IPAM workloads;
        # A's workload inside its own block travels inside the block only.
        b_wants = [("198.19.1.0/26", 4), ("fd00:99::/122", 6), ("198.19.200.5/32", 4),
                   ("fd00:98::5/128", 6)]
        a_wants = [("198.19.2.0/26", 4), ("fd00:99::40/122", 6)]
        try:
            wait_for(lambda: all(learnt(ns["b"], v, p) for p, v in b_wants) and
                     all(learnt(ns["a"], v, p) for p, v in a_wants), timeout=60,
                     what="routes learnt over BGP")
        except Exception:
            raise AssertionError("B wants %s, A wants %s; their kernels have:\n%s" % (
                b_wants, a_wants, {n: routes(ns[n], 4) + routes(ns[n], 6) for n in "ab"}))
        assert "198.19.1.3" not in routes(ns["b"], 4)
        # Own blocks are blackholed locally.
        assert "blackhole 198.19.1.0/26" in routes(ns["a"], 4)
        assert "blackhole fd00:99::40/122" in routes(ns["b"], 6)
        # The IPIP pool's block reaches B's BIRD but not B's kernel (the agent routes it).
        assert "198.19.128.0/26" in daemons["b"][0].birdc("show", "route", "all")
        assert "198.19.128.0" not in routes(ns["b"], 4)

        # persist: B's BIRD stopping leaves what it installed (an agent restart keeps traffic).
        for d in daemons["b"]:
            d.stop()
        assert all(learnt(ns["b"], v, p) for p, v in b_wants)
    finally:
        for n in daemons:
            for d in daemons[n]:
                d.stop()
        scratches.close()
        for n in ns.values():
            n.close()

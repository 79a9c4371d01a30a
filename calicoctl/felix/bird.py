"""BIRD configuration from /calico/bgp/v1, the pools and this host's blocks (pure), for BIRD 1.x
and BIRD 2, and the reading of what BIRD prints.

What the rendered config does, the same on both:
- one BGP session to every other node (full mesh) unless the mesh is off, plus global and
  per-node peers; the local AS is the node's own or the global default;
- router id and source address from the node's address;
- exports only this host's blocks (blackhole statics, so they aggregate its workloads) and, for
  pools Calico IPAM does not allocate from, this host's workload addresses; nothing outside the
  pools is exported or imported;
- installs learnt routes into the kernel (except IPIP pools: the agent routes those via tunl0).

BIRD 1.x runs one daemon per family (bird for IPv4, bird6 for IPv6), each with its own config
(render_bird_config).  BIRD 2 has no bird6 (Debian 13 ships only BIRD 2 and 3): one daemon holds
a table per family, every protocol that carries routes says which family with a channel block
(`ipv4 { import ...; export ...; }`), and a BGP session carries the channel of its neighbour's
family, so an IPv4 and an IPv6 peer are two protocols, with the same names as on 1.x
(render_bird2_config).  render_config() picks by the major version the agent found.
"""

import ipaddress
import re
from dataclasses import dataclass, field

BIRD_LOG_LEVELS = {
    "none": "{ fatal, bug }",
    "info": "{ info, remote, warning, error, auth, fatal, bug }",
    "debug": "all",
}


@dataclass
class BgpView:
    """Everything BIRD's config depends on (built by state.py from etcd)."""
    me: str
    nodes: dict = field(default_factory=dict)          # host -> {"ip4", "ip6", "as"}
    global_as: str = "64511"
    mesh: bool = True
    global_peers: dict = field(default_factory=dict)   # version -> {ip: as}
    node_peers: dict = field(default_factory=dict)     # version -> {ip: as} (this node's)
    loglevel: str = None
    pools: list = field(default_factory=list)          # models.Pool
    blocks: set = field(default_factory=set)           # this host's affine block cidrs
    endpoint_nets: set = field(default_factory=set)    # this host's workload /32s and /128s
    iface_prefix: str = "cali"


def render_config(view, major, daemon):
    """The config of the daemon the agent runs for `daemon` (4: bird, 6: bird6) when BIRD's
    major version is `major`, or None when that daemon must not run.  BIRD 2's bird serves
    both families, so there is no daemon 6 on BIRD 2."""
    if major < 2:
        return render_bird_config(view, daemon)
    return render_bird2_config(view) if daemon == 4 else None


# --- what both majors share -------------------------------------------------------------------

@dataclass
class _Family:
    """One address family's part of the config."""
    version: int
    my_ip: str
    pools: list           # cidrs of this family's pools
    tunnelled: list       # of those, the IPIP ones
    blocks: list          # this host's blocks inside a pool (announced)
    nets: list            # workload nets announced one by one


def _protocol_name(kind, ip):
    return "%s_%s" % (kind, re.sub(r"[^0-9A-Za-z]", "_", str(ip)))


def _prefix_set(nets):
    return "[ %s ]" % ", ".join("%s+" % n for n in nets)


def _exact_set(nets):
    return "[ %s ]" % ", ".join(str(n) for n in nets)


def _in_pools(net, pools):
    return any(net.version == p.version and net.subnet_of(p.cidr) for p in pools)


def exported_routes(view, version):
    """(blocks, endpoint nets) this host announces: blocks inside a pool, and workload addresses
    inside a pool that are not already covered by one of this host's blocks."""
    pools = [p for p in view.pools if p.version == version]
    blocks = sorted({ipaddress.ip_network(b) for b in view.blocks}, key=str)
    blocks = [b for b in blocks if b.version == version and _in_pools(b, pools)]
    nets = []
    for n in sorted(view.endpoint_nets):
        net = ipaddress.ip_network(n, strict=False)
        if net.version == version and _in_pools(net, pools) \
                and not any(net.subnet_of(b) for b in blocks):
            nets.append(net)
    return blocks, nets


def _family(view, version):
    """This node's family `version`, or None when the node has no address of it."""
    my_ip = view.nodes.get(view.me, {}).get("ip%d" % version)
    if not my_ip:
        return None
    blocks, nets = exported_routes(view, version)
    return _Family(version, my_ip, [p.cidr for p in view.pools if p.version == version],
                   [p.cidr for p in view.pools if p.version == version and p.ipip],
                   blocks, nets)


def _router_id(node):
    """The node's IPv4 address; BIRD needs a router id and finds none by itself on a node
    without IPv4, so an IPv6-only node uses the low 32 bits of its address (unique among
    nodes of one /96, where a fixed value would make iBGP refuse every session)."""
    if node.get("ip4"):
        return str(node["ip4"])
    low = int(ipaddress.ip_address(node["ip6"])) & 0xFFFFFFFF if node.get("ip6") else 0
    return str(ipaddress.IPv4Address(low or 1))


def _header(view, flavour):
    node = view.nodes.get(view.me, {})
    level = BIRD_LOG_LEVELS.get((view.loglevel or "info").lower(), BIRD_LOG_LEVELS["info"])
    return [
        "# Generated by calicoctl felix for %s (%s): rewritten on every change, do not edit."
        % (view.me, flavour),
        "router id %s;" % _router_id(node),
        "log stderr %s;" % level,
        "debug protocols %s;" % ("all" if (view.loglevel or "") == "debug" else "off"),
        "",
    ]


# Why calico_learn, and the kernel protocols' `learn`.
LEARN = [
    "# Workload addresses outside this host's blocks (Docker-IPAM pools, borrowed addresses)",
    "# are announced one by one.  BIRD learns them from the /32 (/128) routes the agent puts",
    "# on each cali interface (calico_learn): a static 'via \"cali...\"' route would never",
    "# come up on BIRD 1.x, which only counts an interface as up once it has an address (ours",
    "# have none); learning works the same on BIRD 2.",
]


def _filters(fam, suffix, blocks_proto):
    """The four filters of one family.  On BIRD 2 a prefix set is typed by its family and a
    filter may meet only its own channel's family, so each family gets its own (suffix)."""
    out = []
    if fam.pools:
        out += [
            "filter calico_pools_only%s {" % suffix,
            "  if ( net ~ %s ) then accept;" % _prefix_set(fam.pools),
            "  reject;",
            "}",
            "filter calico_export%s {" % suffix,
            '  if ( proto = "%s" ) && ( net ~ %s ) then accept;'
            % (blocks_proto, _prefix_set(fam.pools)),
        ]
        if fam.nets:
            # Kernel routes BIRD learnt (calico_learn) have source RTS_INHERIT on 1.x and 2.
            out.append("  if ( source = RTS_INHERIT ) && ( net ~ %s ) then accept;"
                       % _exact_set(fam.nets))
        out += ["  reject;", "}"]
    else:
        out += ["filter calico_pools_only%s { reject; }" % suffix,
                "filter calico_export%s { reject; }" % suffix]
    out += [
        "filter calico_kernel%s {" % suffix,
        '  if ( proto = "%s" ) then accept;' % blocks_proto,
    ]
    if fam.tunnelled:
        out.append("  if ( net ~ %s ) then reject;  # the agent routes these via the tunnel"
                   % _prefix_set(fam.tunnelled))
    out += [
        "  if ( source = RTS_BGP ) then accept;",
        "  reject;",
        "}",
        "filter calico_learn%s {" % suffix,
    ]
    if fam.nets:
        out.append("  if ( net ~ %s ) then accept;" % _exact_set(fam.nets))
    out += ["  reject;", "}", ""]
    return out


def _direct(view, channels):
    return [
        "# Lets BIRD resolve the peers' next hops as directly connected; without it learnt routes",
        "# stay unreachable.  Workload interfaces are left out.",
        "protocol direct {",
    ] + ["  %s;" % c for c in channels] + [
        '  interface -"%s*", "*";' % view.iface_prefix,
        "}",
        "",
    ]


KERNEL_OPTIONS = [
    "  persist;          # keep routes while BIRD restarts (agent restarts keep traffic)",
    "  scan time 2;",
    "  learn;            # workload routes outside our blocks: see the top",
]
# connect delay: a quick first attempt; retry and error wait: a peer that is down or refuses is
# retried within seconds, backing off to 30 s when it keeps failing.
BGP_TIMERS = [
    "  graceful restart;",
    "  connect delay time 2;",
    "  connect retry time 5;",
    "  error wait time 5,30;",
]


def _peers(view, version, my_ip, template):
    lines = []
    seen = {str(my_ip)}
    wanted = []
    if view.mesh:
        for host in sorted(view.nodes):
            ip = view.nodes[host].get("ip%d" % version)
            if host == view.me or not ip or str(ip) in seen:
                continue
            seen.add(str(ip))
            wanted.append(("Mesh", ip, view.nodes[host].get("as") or view.global_as))
    for kind, peers in (("Global", view.global_peers.get(version, {})),
                        ("Node", view.node_peers.get(version, {}))):
        for ip in sorted(peers, key=ipaddress.ip_address):
            if str(ip) in seen:
                continue
            seen.add(str(ip))
            wanted.append((kind, ip, peers[ip]))
    for kind, ip, peer_as in wanted:
        name = _protocol_name(kind, ip)
        if ipaddress.ip_address(ip).is_link_local:
            # BIRD needs the interface of a link-local neighbour, which etcd does not say;
            # rendering it would make BIRD reject the whole config.
            lines.append("# %s: a link-local neighbour needs an interface; not peered" % name)
            continue
        lines.append("protocol bgp %s from %s { neighbor %s as %s; }" % (
            name, template, ip, peer_as))
    return lines


# --- BIRD 1.x ---------------------------------------------------------------------------------

def render_bird_config(view, version):
    """The BIRD 1.x config text for bird (version 4) or bird6 (version 6), or None when this
    node has no address of that family (then that daemon is not run)."""
    fam = _family(view, version)
    if fam is None:
        return None
    node = view.nodes.get(view.me, {})
    out = _header(view, "BIRD 1.x, IPv%d" % version) + LEARN
    out += _filters(fam, "", "calico_blocks")
    out += ["protocol device { scan time 2; }", ""]
    out += _direct(view, [])
    out += ["protocol kernel {"] + KERNEL_OPTIONS + [
        "  import filter calico_learn;",
        "  export filter calico_kernel;",
        "  graceful restart;",
        "}",
        "",
        "# This host's blocks: announced as aggregates, blackholed for addresses not in use.",
        "protocol static calico_blocks {",
    ]
    out += ["  route %s blackhole;" % b for b in fam.blocks]
    out += ["}", ""]
    out += [
        "template bgp calico_peer {",
        "  local as %s;" % (node.get("as") or view.global_as),
        "  source address %s;" % fam.my_ip,
        "  import filter calico_pools_only;",
        "  export filter calico_export;",
        "  next hop self;",
    ] + BGP_TIMERS + ["}", ""]
    out += _peers(view, version, fam.my_ip, "calico_peer")
    return "\n".join(out) + "\n"


# --- BIRD 2 -----------------------------------------------------------------------------------

def render_bird2_config(view):
    """The one BIRD 2 config text for both families, or None when this node has no address
    (then BIRD is not run).  A family the node has no address of is left out entirely, as
    BIRD 1.x's bird6 is not run then."""
    fams = [f for f in (_family(view, 4), _family(view, 6)) if f is not None]
    if not fams:
        return None
    node = view.nodes.get(view.me, {})
    out = _header(view, "BIRD 2") + LEARN
    for fam in fams:
        out += _filters(fam, str(fam.version), "calico_blocks%d" % fam.version)
    out += ["protocol device { scan time 2; }", ""]
    out += _direct(view, ["ipv%d" % f.version for f in fams])
    for fam in fams:
        v = fam.version
        out += ["protocol kernel kernel%d {" % v,
                "  ipv%d { import filter calico_learn%d; export filter calico_kernel%d; };"
                % (v, v, v)] + KERNEL_OPTIONS + ["  graceful restart;", "}", ""]
    out.append("# This host's blocks: announced as aggregates, blackholed for addresses not "
               "in use.")
    for fam in fams:
        v = fam.version
        out += ["protocol static calico_blocks%d {" % v, "  ipv%d;" % v]
        out += ["  route %s blackhole;" % b for b in fam.blocks]
        out += ["}"]
    out.append("")
    for fam in fams:
        v = fam.version
        out += [
            "template bgp calico_peer%d {" % v,
            "  local as %s;" % (node.get("as") or view.global_as),
            "  source address %s;" % fam.my_ip,
            "  ipv%d {" % v,
            "    import filter calico_pools_only%d;" % v,
            "    export filter calico_export%d;" % v,
            "    next hop self;   # a channel option on BIRD 2",
            "  };",
        ] + BGP_TIMERS + ["}", ""]
    for fam in fams:
        out += _peers(view, fam.version, fam.my_ip, "calico_peer%d" % fam.version)
    return "\n".join(out) + "\n"


# --- what BIRD prints -------------------------------------------------------------------------

def bird_version(text):
    """(major, minor, ...) from `bird --version` ("BIRD version 2.17.6") or from birdc's
    greeting ("BIRD 1.6.8 ready."), or None when text names no version."""
    m = re.search(r"\bBIRD (?:version )?(\d+(?:\.\d+)+)", text or "")
    return tuple(int(p) for p in m.group(1).split(".")) if m else None


def parse_protocols(text):
    """`birdc show protocols [all]` of BIRD 1.x or 2 -> [{"name", "proto", "table", "state",
    "since", "info", "neighbor"}] (neighbor: a BGP session's address, from `all`, else "").

    One row per protocol: BIRD 1.6 heads the table "name proto table state since info",
    BIRD 2 "Name Proto Table State Since Info" and shows "---" as a BGP session's table;
    `all` indents each protocol's details under its row."""
    rows, current = [], None
    for raw in text.splitlines():
        line = re.sub(r"^\d{4}[- ]", "", raw).rstrip()    # reply codes, when birdc shows them
        if not line.strip() or line.startswith("BIRD "):
            continue
        if line[0].isspace():
            key, _, value = line.strip().partition(":")
            if current is not None and key == "Neighbor address":
                current["neighbor"] = value.strip()
            continue
        parts = line.split()
        if len(parts) < 4 or [p.lower() for p in parts[:2]] == ["name", "proto"]:
            current = None
            continue
        # "since" is one word in both majors' default time formats (12:00:01, 12:00:01.123,
        # or a date for older times), which our configs keep.
        info = line.split(None, 5)[5:]
        current = {"name": parts[0], "proto": parts[1], "table": parts[2], "state": parts[3],
                   "since": parts[4] if len(parts) > 4 else "",
                   "info": info[0].strip() if info else "", "neighbor": ""}
        rows.append(current)
    return rows

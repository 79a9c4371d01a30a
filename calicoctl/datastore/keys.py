"""The etcd key layout (Calico v1), in one place.

Every module that needs a key calls a builder here; every module that needs to know what a key
means matches it against PATTERNS here.  Nothing else concatenates or splits keys.  The layout,
with each key's value, writers and readers, is described in docs/datamodel.md; it follows what
the v0.12.0-era code really wrote.

Each path is written once, as a template over the directory constants below (`{host}` and the
like name its variable parts): the builders fill templates in, and PATTERNS are compiled from
the same templates, so a builder and its pattern cannot disagree.
"""

import re
import string

ROOT = "/calico"
V1 = "/calico/v1"
READY = "/calico/v1/Ready"
CONFIG_DIR = "/calico/v1/config"
HOSTS_DIR = "/calico/v1/host"
PROFILES_DIR = "/calico/v1/policy/profile"
POOLS_DIR = "/calico/v1/ipam"          # + /v4/pool/<cidr> and /v6/pool/<cidr>
IPAM_DIR = "/calico/ipam/v2"
IPAM_HANDLES_DIR = "/calico/ipam/v2/handle"
IPAM_HOSTS_DIR = "/calico/ipam/v2/host"     # + /<host>/ipv4/block/<cidr>: block affinities
BGP_DIR = "/calico/bgp/v1"
BGP_GLOBAL_DIR = "/calico/bgp/v1/global"
BGP_HOSTS_DIR = "/calico/bgp/v1/host"
FELIX_DIR = "/calico/felix/v1"
FELIX_HOSTS_DIR = "/calico/felix/v1/host"
LIBNETWORK_DIR = "/calico/libnetwork/v1"

# Orchestrator/workload names of endpoints the libnetwork plugin creates (docs/datamodel.md).
LIBNETWORK_ORCHESTRATOR = "libnetwork"
LIBNETWORK_WORKLOAD = "libnetwork"
DOCKER_ORCHESTRATOR = "docker"


def cidr_to_key(cidr):
    """192.168.0.0/16 -> 192.168.0.0-16 (etcd keys cannot hold a '/')."""
    return str(cidr).replace("/", "-")


def key_to_cidr(part):
    # Only the last '-' separates the prefix length; IPv6 addresses hold no '-'.
    net, _, length = part.rpartition("-")
    return "%s/%s" % (net, length)


def _family(version):
    if version not in (4, 6):
        raise ValueError("IP version must be 4 or 6, not %r" % (version,))
    return int(version)    # as "%d" would print it


# --- templates --------------------------------------------------------------------------------
# Directories first; the keys match_key() knows are in TEMPLATES (and only those: other keys,
# such as last_reported_status, are built but never classified).

_HOST = HOSTS_DIR + "/{host}"
_HOST_CONFIG = _HOST + "/config"
_HOST_WORKLOADS = _HOST + "/workload"
_WORKLOAD = _HOST_WORKLOADS + "/{orchestrator}/{workload}"
_PROFILE = PROFILES_DIR + "/{profile}"
_POOLS = POOLS_DIR + "/v{version}/pool"
_BLOCKS = IPAM_DIR + "/assignment/ipv{version}/block"
_IPAM_HOST = IPAM_HOSTS_DIR + "/{host}"
_AFFINITIES = _IPAM_HOST + "/ipv{version}/block"
_BGP_GLOBAL_PEERS = BGP_GLOBAL_DIR + "/peer_v{version}"
_BGP_HOST = BGP_HOSTS_DIR + "/{host}"
_BGP_HOST_PEERS = _BGP_HOST + "/peer_v{version}"
_FELIX_HOST = FELIX_HOSTS_DIR + "/{host}"
_LIBNETWORK_ADDRESSES = LIBNETWORK_DIR + "/address"

# In match_key()'s order.
TEMPLATES = {
    "ready": READY,
    "config": CONFIG_DIR + "/{name}",
    "host_bird_ip": _HOST + "/bird_ip",
    "host_bird6_ip": _HOST + "/bird6_ip",
    "host_config": _HOST_CONFIG + "/{name}",
    "endpoint": _WORKLOAD + "/endpoint/{endpoint_id}",
    "profile_tags": _PROFILE + "/tags",
    "profile_rules": _PROFILE + "/rules",
    "pool": _POOLS + "/{cidr}",
    "block": _BLOCKS + "/{cidr}",
    "host_affinity": _AFFINITIES + "/{cidr}",
    "handle": IPAM_HANDLES_DIR + "/{handle_id}",
    "bgp_global_as": BGP_GLOBAL_DIR + "/as_num",
    "bgp_node_mesh": BGP_GLOBAL_DIR + "/node_mesh",
    "bgp_global_loglevel": BGP_GLOBAL_DIR + "/loglevel",
    "bgp_global_peer": _BGP_GLOBAL_PEERS + "/{ip}",
    "bgp_host_ip": _BGP_HOST + "/ip_addr_v{version}",
    "bgp_host_as": _BGP_HOST + "/as_num",
    "bgp_host_loglevel": _BGP_HOST + "/loglevel",
    "bgp_host_peer": _BGP_HOST_PEERS + "/{ip}",
    "felix_status": _FELIX_HOST + "/status",
    "felix_endpoint_status": _FELIX_HOST + "/workload/{orchestrator}/{workload}"
                                           "/endpoint/{endpoint_id}",
    "libnetwork_network": LIBNETWORK_DIR + "/{network_id}",
    "libnetwork_address": _LIBNETWORK_ADDRESSES + "/{ip}",
}


def _fill(template, **parts):
    return template.format(**parts)


# --- global config ----------------------------------------------------------------------------

def config(name):
    return _fill(TEMPLATES["config"], name=name)


# --- hosts ------------------------------------------------------------------------------------

def host_dir(host):
    return _fill(_HOST, host=host)


def host_bird_ip(host):
    return _fill(TEMPLATES["host_bird_ip"], host=host)


def host_bird6_ip(host):
    return _fill(TEMPLATES["host_bird6_ip"], host=host)


def host_config_dir(host):
    return _fill(_HOST_CONFIG, host=host)


def host_config(host, name):
    return _fill(TEMPLATES["host_config"], host=host, name=name)


def host_workloads_dir(host):
    return _fill(_HOST_WORKLOADS, host=host)


def workload_dir(host, orchestrator, workload):
    return _fill(_WORKLOAD, host=host, orchestrator=orchestrator, workload=workload)


def endpoint(host, orchestrator, workload, endpoint_id):
    return _fill(TEMPLATES["endpoint"], host=host, orchestrator=orchestrator, workload=workload,
                 endpoint_id=endpoint_id)


# --- profiles ---------------------------------------------------------------------------------

def profile_dir(name):
    return _fill(_PROFILE, profile=name)


def profile_tags(name):
    return _fill(TEMPLATES["profile_tags"], profile=name)


def profile_rules(name):
    return _fill(TEMPLATES["profile_rules"], profile=name)


# --- pools ------------------------------------------------------------------------------------

def pools_dir(version):
    return _fill(_POOLS, version=_family(version))


def pool(cidr, version):
    return _fill(TEMPLATES["pool"], version=_family(version), cidr=cidr_to_key(cidr))


# --- IPAM -------------------------------------------------------------------------------------

def blocks_dir(version):
    return _fill(_BLOCKS, version=_family(version))


def block(cidr, version):
    return _fill(TEMPLATES["block"], version=_family(version), cidr=cidr_to_key(cidr))


def host_affinity_dir(host, version):
    return _fill(_AFFINITIES, host=host, version=_family(version))


def host_affinity(host, cidr, version):
    return _fill(TEMPLATES["host_affinity"], host=host, version=_family(version),
                 cidr=cidr_to_key(cidr))


def ipam_host_dir(host):
    return _fill(_IPAM_HOST, host=host)


def handle(handle_id):
    return _fill(TEMPLATES["handle"], handle_id=handle_id)


# --- BGP --------------------------------------------------------------------------------------

def bgp_global_as():
    return TEMPLATES["bgp_global_as"]


def bgp_node_mesh():
    return TEMPLATES["bgp_node_mesh"]


def bgp_global_loglevel():
    return TEMPLATES["bgp_global_loglevel"]


def bgp_global_peers_dir(version):
    return _fill(_BGP_GLOBAL_PEERS, version=_family(version))


def bgp_global_peer(ip, version):
    return _fill(TEMPLATES["bgp_global_peer"], version=_family(version), ip=ip)


def bgp_host_dir(host):
    return _fill(_BGP_HOST, host=host)


def bgp_host_ip(host, version):
    return _fill(TEMPLATES["bgp_host_ip"], host=host, version=_family(version))


def bgp_host_as(host):
    return _fill(TEMPLATES["bgp_host_as"], host=host)


def bgp_host_loglevel(host):
    return _fill(TEMPLATES["bgp_host_loglevel"], host=host)


def bgp_host_peers_dir(host, version):
    return _fill(_BGP_HOST_PEERS, host=host, version=_family(version))


def bgp_host_peer(host, ip, version):
    return _fill(TEMPLATES["bgp_host_peer"], host=host, version=_family(version), ip=ip)


def bgp_global_config(name):
    """Any global BGP setting by name (`calicoctl config bgp <NAME> --force`)."""
    return "%s/%s" % (BGP_GLOBAL_DIR, name)


def bgp_host_config(host, name):
    """Any per-node BGP setting by name (`calicoctl config node bgp <NAME> --force`)."""
    return "%s/%s" % (bgp_host_dir(host), name)


# --- agent status -----------------------------------------------------------------------------

def felix_host_dir(host):
    return _fill(_FELIX_HOST, host=host)


def felix_status(host):
    return _fill(TEMPLATES["felix_status"], host=host)


def felix_last_reported_status(host):
    return _fill(_FELIX_HOST + "/last_reported_status", host=host)


def felix_endpoint_status(host, orchestrator, workload, endpoint_id):
    return _fill(TEMPLATES["felix_endpoint_status"], host=host, orchestrator=orchestrator,
                 workload=workload, endpoint_id=endpoint_id)


# --- libnetwork plugin records ----------------------------------------------------------------

def libnetwork_network(network_id):
    return _fill(TEMPLATES["libnetwork_network"], network_id=network_id)


def libnetwork_addresses_dir():
    return _LIBNETWORK_ADDRESSES


def libnetwork_address(ip):
    """Claim on an address handed out by Docker's own IPAM (one per address, cluster-wide): each
    host's Docker allocates on its own, so a create-if-absent here is what detects a clash."""
    return _fill(TEMPLATES["libnetwork_address"], ip=ip)


# --- parsing ----------------------------------------------------------------------------------
# Each pattern names its captures; callers use match_key() and never split keys by position.

_SEG = r"[^/]+"
# What a capture may hold when not any one path segment.
_CAPTURES = {"version": "[46]"}


def _pattern(template):
    """The template as an anchored regex: literal text escaped, each {name} a named capture."""
    regex = "".join(re.escape(literal) + (
        "(?P<%s>%s)" % (name, _CAPTURES.get(name, _SEG)) if name is not None else "")
        for literal, name, _spec, _conv in string.Formatter().parse(template))
    return re.compile("^%s$" % regex)


PATTERNS = {kind: _pattern(template) for kind, template in TEMPLATES.items()}

_CIDR_CAPTURES = ("cidr",)
_INT_CAPTURES = ("version",)


def match_key(key):
    """Return (kind, captures) for a known key, or (None, None).

    CIDR captures come back with their '/' restored and versions as ints.
    """
    for kind, pattern in PATTERNS.items():
        m = pattern.match(key)
        if m:
            captures = m.groupdict()
            for name in _CIDR_CAPTURES:
                if name in captures:
                    captures[name] = key_to_cidr(captures[name])
            for name in _INT_CAPTURES:
                if name in captures:
                    captures[name] = int(captures[name])
            return kind, captures
    return None, None

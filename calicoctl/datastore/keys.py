"""The etcd key layout (Calico v1), in one place.

Every module that needs a key calls a builder here; every module that needs to know what a key
means matches it against PATTERNS here.  Nothing else concatenates or splits keys.  The layout,
with each key's value, writers and readers, is described in docs/datamodel.md; it follows what
the v0.12.0-era code really wrote.
"""

import re

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
    return version


# --- global config ----------------------------------------------------------------------------

def config(name):
    return "%s/%s" % (CONFIG_DIR, name)


# --- hosts ------------------------------------------------------------------------------------

def host_dir(host):
    return "%s/%s" % (HOSTS_DIR, host)


def host_bird_ip(host):
    return "%s/%s/bird_ip" % (HOSTS_DIR, host)


def host_bird6_ip(host):
    return "%s/%s/bird6_ip" % (HOSTS_DIR, host)


def host_config_dir(host):
    return "%s/%s/config" % (HOSTS_DIR, host)


def host_config(host, name):
    return "%s/%s/config/%s" % (HOSTS_DIR, host, name)


def host_workloads_dir(host):
    return "%s/%s/workload" % (HOSTS_DIR, host)


def workload_dir(host, orchestrator, workload):
    return "%s/%s/workload/%s/%s" % (HOSTS_DIR, host, orchestrator, workload)


def endpoint(host, orchestrator, workload, endpoint_id):
    return "%s/%s/workload/%s/%s/endpoint/%s" % (
        HOSTS_DIR, host, orchestrator, workload, endpoint_id)


# --- profiles ---------------------------------------------------------------------------------

def profile_dir(name):
    return "%s/%s" % (PROFILES_DIR, name)


def profile_tags(name):
    return "%s/%s/tags" % (PROFILES_DIR, name)


def profile_rules(name):
    return "%s/%s/rules" % (PROFILES_DIR, name)


# --- pools ------------------------------------------------------------------------------------

def pools_dir(version):
    return "%s/v%d/pool" % (POOLS_DIR, _family(version))


def pool(cidr, version):
    return "%s/%s" % (pools_dir(version), cidr_to_key(cidr))


# --- IPAM -------------------------------------------------------------------------------------

def _ipam_family(version):
    return "ipv%d" % _family(version)


def blocks_dir(version):
    return "%s/assignment/%s/block" % (IPAM_DIR, _ipam_family(version))


def block(cidr, version):
    return "%s/%s" % (blocks_dir(version), cidr_to_key(cidr))


def host_affinity_dir(host, version):
    return "%s/%s/%s/block" % (IPAM_HOSTS_DIR, host, _ipam_family(version))


def host_affinity(host, cidr, version):
    return "%s/%s" % (host_affinity_dir(host, version), cidr_to_key(cidr))


def ipam_host_dir(host):
    return "%s/%s" % (IPAM_HOSTS_DIR, host)


def handle(handle_id):
    return "%s/%s" % (IPAM_HANDLES_DIR, handle_id)


# --- BGP --------------------------------------------------------------------------------------

def _peer_family(version):
    return "peer_v%d" % _family(version)


def bgp_global_as():
    return BGP_GLOBAL_DIR + "/as_num"


def bgp_node_mesh():
    return BGP_GLOBAL_DIR + "/node_mesh"


def bgp_global_loglevel():
    return BGP_GLOBAL_DIR + "/loglevel"


def bgp_global_peers_dir(version):
    return "%s/%s" % (BGP_GLOBAL_DIR, _peer_family(version))


def bgp_global_peer(ip, version):
    return "%s/%s" % (bgp_global_peers_dir(version), ip)


def bgp_host_dir(host):
    return "%s/%s" % (BGP_HOSTS_DIR, host)


def bgp_host_ip(host, version):
    return "%s/%s/ip_addr_v%d" % (BGP_HOSTS_DIR, host, _family(version))


def bgp_host_as(host):
    return "%s/%s/as_num" % (BGP_HOSTS_DIR, host)


def bgp_host_loglevel(host):
    return "%s/%s/loglevel" % (BGP_HOSTS_DIR, host)


def bgp_host_peers_dir(host, version):
    return "%s/%s/%s" % (BGP_HOSTS_DIR, host, _peer_family(version))


def bgp_host_peer(host, ip, version):
    return "%s/%s" % (bgp_host_peers_dir(host, version), ip)


def bgp_global_config(name):
    """Any global BGP setting by name (`calicoctl config bgp <NAME> --force`)."""
    return "%s/%s" % (BGP_GLOBAL_DIR, name)


def bgp_host_config(host, name):
    """Any per-node BGP setting by name (`calicoctl config node bgp <NAME> --force`)."""
    return "%s/%s/%s" % (BGP_HOSTS_DIR, host, name)


# --- agent status -----------------------------------------------------------------------------

def felix_host_dir(host):
    return "%s/%s" % (FELIX_HOSTS_DIR, host)


def felix_status(host):
    return "%s/%s/status" % (FELIX_HOSTS_DIR, host)


def felix_last_reported_status(host):
    return "%s/%s/last_reported_status" % (FELIX_HOSTS_DIR, host)


def felix_endpoint_status(host, orchestrator, workload, endpoint_id):
    return "%s/%s/workload/%s/%s/endpoint/%s" % (
        FELIX_HOSTS_DIR, host, orchestrator, workload, endpoint_id)


# --- libnetwork plugin records ----------------------------------------------------------------

def libnetwork_network(network_id):
    return "%s/%s" % (LIBNETWORK_DIR, network_id)


def libnetwork_addresses_dir():
    return "%s/address" % LIBNETWORK_DIR


def libnetwork_address(ip):
    """Claim on an address handed out by Docker's own IPAM (one per address, cluster-wide): each
    host's Docker allocates on its own, so a create-if-absent here is what detects a clash."""
    return "%s/address/%s" % (LIBNETWORK_DIR, ip)


# --- parsing ----------------------------------------------------------------------------------
# Each pattern names its captures; callers use match_key() and never split keys by position.

_SEG = r"[^/]+"
PATTERNS = {
    "ready": re.compile(r"^/calico/v1/Ready$"),
    "config": re.compile(r"^/calico/v1/config/(?P<name>%s)$" % _SEG),
    "host_bird_ip": re.compile(r"^/calico/v1/host/(?P<host>%s)/bird_ip$" % _SEG),
    "host_bird6_ip": re.compile(r"^/calico/v1/host/(?P<host>%s)/bird6_ip$" % _SEG),
    "host_config": re.compile(
        r"^/calico/v1/host/(?P<host>%s)/config/(?P<name>%s)$" % (_SEG, _SEG)),
    "endpoint": re.compile(
        r"^/calico/v1/host/(?P<host>%s)/workload/(?P<orchestrator>%s)/(?P<workload>%s)"
        r"/endpoint/(?P<endpoint_id>%s)$" % (_SEG, _SEG, _SEG, _SEG)),
    "profile_tags": re.compile(r"^/calico/v1/policy/profile/(?P<profile>%s)/tags$" % _SEG),
    "profile_rules": re.compile(r"^/calico/v1/policy/profile/(?P<profile>%s)/rules$" % _SEG),
    "pool": re.compile(r"^/calico/v1/ipam/v(?P<version>[46])/pool/(?P<cidr>%s)$" % _SEG),
    "block": re.compile(
        r"^/calico/ipam/v2/assignment/ipv(?P<version>[46])/block/(?P<cidr>%s)$" % _SEG),
    "host_affinity": re.compile(
        r"^/calico/ipam/v2/host/(?P<host>%s)/ipv(?P<version>[46])/block/(?P<cidr>%s)$"
        % (_SEG, _SEG)),
    "handle": re.compile(r"^/calico/ipam/v2/handle/(?P<handle_id>%s)$" % _SEG),
    "bgp_global_as": re.compile(r"^/calico/bgp/v1/global/as_num$"),
    "bgp_node_mesh": re.compile(r"^/calico/bgp/v1/global/node_mesh$"),
    "bgp_global_loglevel": re.compile(r"^/calico/bgp/v1/global/loglevel$"),
    "bgp_global_peer": re.compile(
        r"^/calico/bgp/v1/global/peer_v(?P<version>[46])/(?P<ip>%s)$" % _SEG),
    "bgp_host_ip": re.compile(
        r"^/calico/bgp/v1/host/(?P<host>%s)/ip_addr_v(?P<version>[46])$" % _SEG),
    "bgp_host_as": re.compile(r"^/calico/bgp/v1/host/(?P<host>%s)/as_num$" % _SEG),
    "bgp_host_loglevel": re.compile(r"^/calico/bgp/v1/host/(?P<host>%s)/loglevel$" % _SEG),
    "bgp_host_peer": re.compile(
        r"^/calico/bgp/v1/host/(?P<host>%s)/peer_v(?P<version>[46])/(?P<ip>%s)$"
        % (_SEG, _SEG)),
    "felix_status": re.compile(r"^/calico/felix/v1/host/(?P<host>%s)/status$" % _SEG),
    "felix_endpoint_status": re.compile(
        r"^/calico/felix/v1/host/(?P<host>%s)/workload/(?P<orchestrator>%s)/(?P<workload>%s)"
        r"/endpoint/(?P<endpoint_id>%s)$" % (_SEG, _SEG, _SEG, _SEG)),
    "libnetwork_network": re.compile(r"^/calico/libnetwork/v1/(?P<network_id>%s)$" % _SEG),
    "libnetwork_address": re.compile(r"^/calico/libnetwork/v1/address/(?P<ip>%s)$" % _SEG),
}

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

"""What must hold on a Calico system at rest, read from etcd and the hosts: used by the churn and
restart tests.  Each check returns a list of problems (empty when all is well), so a test can
poll until the system converges and then report exactly what is still wrong.

Every check compares two sides both ways (records against the dataplane and back), so with
live workloads an empty listing on either side is itself a problem: a check cannot pass because
a read came back empty.  Reads that fail raise."""

import ipaddress
import json

import pytest

from tests.st.harness import wait_for
from tests.st.plugin_helpers import host_links

POOL = ipaddress.ip_network("192.168.0.0/16")
NETWORKS = ("churn1", "churn2", "churn3")
PREFIX = "churn-"              # the names of the churn and restart tests' containers


@pytest.fixture(scope="module")
def stack(calico_stack):
    """The shared agent+plugin stack with the churn networks created on both hosts (removed
    with every container by calico_stack's teardown)."""
    for h in calico_stack["hosts"]:
        for net in NETWORKS:
            h.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico", net)
    return calico_stack


def running_containers(host, prefix=""):
    """{name: {network: (endpoint id, ip)}} of the host's running containers."""
    ids = host.docker("ps", "-q", "--filter", "name=" + prefix if prefix else "status=running",
                      timeout=60).stdout.split()
    if not ids:
        return {}
    out = json.loads(host.docker("inspect", *ids, timeout=60).stdout)
    found = {}
    for info in out:
        if not info["State"]["Running"]:
            continue
        nets = info["NetworkSettings"]["Networks"] or {}
        found[info["Name"].lstrip("/")] = {n: (v["EndpointID"], v["IPAddress"])
                                           for n, v in nets.items()}
    return found


def endpoint_records(store, host=None):
    from calicoctl.datastore import endpoints
    return endpoints.list_endpoints(store, host=host, quorum=True)


def allocated_addresses(store, version=4):
    """{address: handle id} of every allocation in every IPAM block."""
    from calicoctl.ipam import block, records
    found = {}
    for cidr, (data, _) in records.list_blocks(store, version).items():
        if data is None:
            continue
        for ordinal, attr in enumerate(data["allocations"]):
            if attr is not None:
                handle = (data["attributes"][attr] or {}).get("handle_id")
                found[str(block.address_at(cidr, ordinal))] = handle
    return found


def ipam_problems(store):
    """Allocated addresses that no endpoint holds (leaks) and endpoint addresses that are not
    allocated; returns (problems, leaked addresses)."""
    allocated = allocated_addresses(store)
    held = {str(a) for ep in endpoint_records(store) for a in ep.addresses() if a.version == 4}
    leaked = sorted(set(allocated) - held)
    problems = ["address %s allocated (handle %s) but held by no endpoint" % (a, allocated[a])
                for a in leaked]
    problems += ["endpoint address %s is not allocated" % a for a in sorted(held - set(allocated))]
    return problems, leaked


def endpoint_problems(store, host, containers):
    """Endpoint records of this host vs the running containers' endpoints."""
    live = {ep_id for nets in containers.values() for ep_id, _ in nets.values()}
    recorded = {ep.endpoint_id for ep in endpoint_records(store, host.name)}
    return (["%s: endpoint record %s without a running container" % (host.name, e[:12])
             for e in sorted(recorded - live)]
            + ["%s: running container endpoint %s has no record" % (host.name, e[:12])
               for e in sorted(live - recorded)])


def dataplane_problems(store, host):
    """veths, routes, felix endpoint chains and tag ipset members vs this host's endpoints."""
    from calicoctl.felix.policy import endpoint_chain
    eps = endpoint_records(store, host.name)
    problems = []
    want_links = {ep.name for ep in eps}
    links = set(host_links(host))
    problems += ["%s: veth %s without an endpoint" % (host.name, l)
                 for l in sorted(links - want_links)]
    problems += ["%s: endpoint veth %s missing" % (host.name, l)
                 for l in sorted(want_links - links)]
    want_routes = {str(a) for ep in eps for a in ep.addresses() if a.version == 4}
    routes = set()
    for line in host.run(["ip", "-4", "route", "show"]).stdout.splitlines():
        parts = line.split()
        if "dev" in parts and parts[parts.index("dev") + 1].startswith("cali"):
            routes.add(parts[0].split("/")[0])
    problems += ["%s: route to %s without an endpoint" % (host.name, r)
                 for r in sorted(routes - want_routes)]
    problems += ["%s: endpoint route to %s missing" % (host.name, r)
                 for r in sorted(want_routes - routes)]
    if agent_dataplane(store, host) == "nftables":
        # An endpoint's policy is its interface in its profile list's set (nft_policy).
        from calicoctl.felix import nft_policy
        want = {(nft_policy.list_set(nft_policy.endpoint_list(ep), 4), ep.name)
                for ep in eps if ep.ipv4_nets and nft_policy.endpoint_list(ep) is not None}
        have = {(name, member) for name, members in nft_table(host).items()
                if name.startswith("e4-") for member in members}
        problems += ["%s: nft set %s sends %s without an endpoint" % (host.name, name, k)
                     for name, k in sorted(have - want)]
        problems += ["%s: nft set %s lacks endpoint %s" % (host.name, name, k)
                     for name, k in sorted(want - have)]
        return problems
    want_chains = {endpoint_chain(ep.name, d) for ep in eps for d in ("from", "to")}
    chains = {line[1:].split()[0] for line in
              host.run(["iptables-save", "-t", "filter"]).stdout.splitlines()
              if line.startswith((":felix-from-", ":felix-to-"))}
    problems += ["%s: chain %s without an endpoint" % (host.name, c)
                 for c in sorted(chains - want_chains)]
    problems += ["%s: endpoint chain %s missing" % (host.name, c)
                 for c in sorted(want_chains - chains)]
    return problems


def agent_dataplane(store, host):
    """The policy dataplane the host's agent reports it runs; raises when it reports none."""
    from calicoctl.felix.status import agent_dataplane as reported
    name = reported(store, host.name)
    if name not in ("nftables", "iptables"):
        raise AssertionError("%s: the agent reports no policy dataplane (%r)" % (host.name, name))
    return name


def nft_table(host):
    """{set or map name: [element]} of the agent's nft table (an element: a string, or a
    list for a map's key and verdict).  Raises when the table cannot be read.

    Read with the agent's own nft: inside calico-node when it runs there.  Debian 12's nft
    (1.0.6) crashes listing sets that Debian 13's (1.1.3, in the default node image) wrote."""
    from calicoctl.felix import nft_policy
    argv = ["nft", "-j", "list", "table", nft_policy.FAMILY, nft_policy.TABLE]
    if host.docker("ps", "-q", "--filter", "name=^calico-node$").stdout.strip():
        out = host.docker("exec", "calico-node", *argv).stdout
    else:
        out = host.run(argv).stdout
    sets = {}
    for item in json.loads(out)["nftables"]:
        for word in ("set", "map"):
            if word in item:
                sets[item[word]["name"]] = item[word].get("elem", [])
    return sets


def ipset_problems(store, host, networks):
    """Each network's tag set on this host holds exactly the addresses of its endpoints (all
    hosts): no member without an endpoint."""
    from calicoctl.felix import nft_policy
    from calicoctl.felix.ipsets import tag_set as ipset_name
    members = {}
    if agent_dataplane(store, host) == "nftables":
        tag_set = nft_policy.tag_set
        for name, elements in nft_table(host).items():
            if name.startswith("t4-"):
                members[name] = {str(e) for e in elements}
    else:
        tag_set = ipset_name
        for line in host.run(["ipset", "save"]).stdout.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "add" and parts[1].startswith("felix-v4-"):
                members.setdefault(parts[1], set()).add(parts[2])
    problems = []
    eps = endpoint_records(store)
    for net in networks:
        want = {str(a) for ep in eps if net in ep.profile_ids for a in ep.addresses()
                if a.version == 4}
        have = members.get(tag_set(net, 4), set())
        problems += ["%s: tag set %s holds %s without an endpoint" % (host.name, tag_set(net, 4), m)
                     for m in sorted(have - want)]
        problems += ["%s: tag set %s lacks endpoint %s" % (host.name, tag_set(net, 4), m)
                     for m in sorted(want - have)]
    return problems


def all_problems(store, hosts, networks, prefix=""):
    """(problems, leaked addresses, {host name: running containers}).  Leaked: allocated
    addresses held by no endpoint, or only by an endpoint record whose container is gone."""
    problems, leaked = ipam_problems(store)
    containers = {}
    live = set()
    for h in hosts:
        containers[h.name] = running_containers(h, prefix)
        live |= {ep_id for nets in containers[h.name].values() for ep_id, _ in nets.values()}
        problems += endpoint_problems(store, h, containers[h.name])
        problems += dataplane_problems(store, h)
        problems += ipset_problems(store, h, networks)
    allocated = allocated_addresses(store)
    for ep in endpoint_records(store):
        if ep.endpoint_id not in live:
            leaked += [str(a) for a in ep.addresses() if str(a) in allocated]
    return problems, sorted(set(leaked)), containers


def settle(store, hosts, networks, prefix=PREFIX, timeout=90):
    """The problems left once the system is at rest, polling up to timeout seconds: [] when it
    converged.  A read that fails raises; it never counts as "no problems"."""
    problems = []

    def at_rest():
        problems[:] = all_problems(store, hosts, networks, prefix)[0]
        return not problems
    # Not settling is no error here: the caller asserts on the problems left.
    wait_for(at_rest, timeout=timeout, interval=0.5, retry_on=(), raise_on_timeout=False,
             what="the system to come to rest")
    return problems


def report(request, line):
    """Print a test's summary line past pytest's capture (it is the test's figure)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + line)

"""Isolation as a property: random networks, profiles, tags and rules (changed through the real
CLI), and every (source, destination, protocol, port) pair checked on the live system against a
small model of Calico's policy semantics written here, independently of the agent's code.

The model (Calico v1 profiles, as Felix 1.x enforced them):
  - a packet leaves its source only if the source endpoint's profiles, in order, allow it
    outbound, and enters its destination only if the destination's profiles allow it inbound;
  - within one profile the first matching rule decides: allow -> allowed (later profiles are
    not consulted), deny -> dropped (later profiles are not consulted either);
  - a profile with no matching rule passes the decision to the endpoint's next profile;
  - nothing matched in any profile: dropped.
  Tags: an endpoint carries every tag of every one of its profiles, on whichever host it is.

Run with CALICO_ST_SEED=<n> to replay a seed; the seed is printed (and in any failure).
"""

import ipaddress
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from tests.st.harness import wait_for
from tests.st.plugin_helpers import calicoctl, clean_docker, container_ip, endpoint_id
from tests.st.calico_stack import calico_stack, learnt  # noqa: F401 - the fixture

# Policy must mean the same on both of the agent's dataplanes.
pytestmark = pytest.mark.dataplanes("nftables", "iptables")

NETWORKS = ("iso1", "iso2", "iso3", "iso4")
EXTRA_TAGS = ("web", "db")
# Sized for about two minutes: 12 workloads give 132 ordered pairs, 396 checks a round, and a
# round (changes, then one matrix) takes about 2.5 s.
WORKLOADS = 12
ROUNDS = int(os.environ.get("CALICO_ST_ISOLATION_ROUNDS", "60"))
PORTS = (80, 8080)
CHECKS = (("icmp", None),) + tuple(("tcp", p) for p in PORTS)
CONVERGE = 10          # seconds a change may take to be enforced everywhere
WWW = "/www"           # busybox httpd's document root in each workload


@dataclass
class Workload:
    name: str
    host: object
    net: str
    ip: str = None
    eid: str = None
    profiles: list = field(default_factory=list)


# --- the model --------------------------------------------------------------------------------

def _port_in(port, ports):
    for p in ports:
        if isinstance(p, str) and ":" in p:
            lo, hi = (int(x) for x in p.split(":"))
            if lo <= port <= hi:
                return True
        elif int(p) == port:
            return True
    return False


def rule_matches(rule, src, dst, proto, port, tags_of):
    """Whether one stored rule matches an IPv4 packet src -> dst (proto, dst port)."""
    if rule.get("ip_version", 4) != 4:
        return False
    if "protocol" in rule and rule["protocol"] != proto:
        return False
    if "dst_ports" in rule and (port is None or not _port_in(port, rule["dst_ports"])):
        return False
    if "src_ports" in rule:
        return False        # never generated: clients use ephemeral ports
    if "icmp_type" in rule:
        # An echo request is type 8, code 0.
        if proto != "icmp" or rule["icmp_type"] != 8 or rule.get("icmp_code", 0) != 0:
            return False
    if "src_tag" in rule and rule["src_tag"] not in tags_of(src):
        return False
    if "dst_tag" in rule and rule["dst_tag"] not in tags_of(dst):
        return False
    if "src_net" in rule and ipaddress.ip_address(src.ip) not in ipaddress.ip_network(
            rule["src_net"]):
        return False
    if "dst_net" in rule and ipaddress.ip_address(dst.ip) not in ipaddress.ip_network(
            rule["dst_net"]):
        return False
    return True


def endpoint_allows(ep, direction, src, dst, proto, port, rules, tags_of):
    """direction 'inbound_rules' | 'outbound_rules'; rules: {profile: rules json}."""
    for profile in ep.profiles:
        for rule in (rules.get(profile) or {}).get(direction, []):
            if rule_matches(rule, src, dst, proto, port, tags_of):
                return rule.get("action", "allow") == "allow"
    return False


def expected(workloads, rules, tags):
    """{(src, dst, proto, port): allowed} for every ordered pair of distinct workloads."""
    def tags_of(ep):
        return {t for p in ep.profiles for t in tags.get(p, ())}
    out = {}
    for src in workloads:
        for dst in workloads:
            if src is dst:
                continue
            for proto, port in CHECKS:
                out[(src.name, dst.name, proto, port)] = (
                    endpoint_allows(src, "outbound_rules", src, dst, proto, port, rules, tags_of)
                    and endpoint_allows(dst, "inbound_rules", src, dst, proto, port, rules,
                                        tags_of))
    return out


# --- the live system --------------------------------------------------------------------------

PROBE_FUNCS = (
    # busybox ping waits 10 s for a reply without -W; nc -w 1 gives up connecting after 1 s.
    "p() { if ping -c 1 -W 1 $1 >/dev/null 2>&1; then echo \"$2 icmp - 1\"; "
    "else echo \"$2 icmp - 0\"; fi; }; "
    "t() { if printf 'GET /ok HTTP/1.0\\r\\n\\r\\n' | nc -w 1 $1 $3 2>/dev/null | grep -qx ok; "
    "then echo \"$2 tcp $3 1\"; else echo \"$2 tcp $3 0\"; fi; }; ")


def probe_from(src, workloads):
    """Every check from src, all at once inside it: {(src, dst, proto, port): reached}."""
    calls = []
    for dst in workloads:
        if dst is src:
            continue
        for proto, port in CHECKS:
            calls.append("p %s %s &" % (dst.ip, dst.name) if proto == "icmp"
                         else "t %s %s %d &" % (dst.ip, dst.name, port))
    script = PROBE_FUNCS + " ".join(calls) + " wait"
    out = src.host.docker("exec", src.name, "sh", "-c", script, timeout=60).stdout
    result = {}
    for line in out.split("\n"):
        words = line.split()
        if len(words) == 4:
            dst, proto, port, ok = words
            result[(src.name, dst, proto, None if port == "-" else int(port))] = ok == "1"
    return result


def measure(workloads):
    with ThreadPoolExecutor(max_workers=len(workloads)) as pool:
        parts = list(pool.map(lambda w: probe_from(w, workloads), workloads))
    live = {}
    for p in parts:
        live.update(p)
    return live


def converge(workloads, want):
    """Measure until the live system agrees with want or CONVERGE seconds pass; return the
    last measurement and the pairs still wrong."""
    last = {}

    def agrees():
        last["live"] = measure(workloads)
        last["wrong"] = sorted((k for k in want if last["live"].get(k) != want[k]), key=str)
        return not last["wrong"]
    # Still disagreeing is no error here: the caller reports each wrong pair.
    wait_for(agrees, timeout=CONVERGE, retry_on=(), raise_on_timeout=False,
             what="the live system to agree with the policy")
    return last["live"], last["wrong"]


# --- random changes through the CLI -----------------------------------------------------------

def _peer(rng, workloads):
    """Words selecting the other side of a rule: a tag, a /32, a /26 around a workload, or
    nothing."""
    kind = rng.choice(("tag", "tag", "cidr32", "cidr26", "none"))
    if kind == "tag":
        return ["tag", rng.choice(NETWORKS + EXTRA_TAGS)]
    if kind == "none":
        return []
    w = rng.choice(workloads)
    net = ipaddress.ip_network("%s/%d" % (w.ip, 32 if kind == "cidr32" else 26), strict=False)
    return ["cidr", str(net)]


def random_rule(rng, workloads, direction):
    """Words after 'rule add <direction>' (without --at)."""
    action = rng.choice(("allow", "deny"))
    side = "from" if direction == "inbound" else "to"
    peer = _peer(rng, workloads)
    proto = rng.choice(("any", "icmp", "tcp", "tcp-port", "tcp-port"))
    if proto == "any":
        return [action] + ([side] + peer if peer else [])
    if proto == "icmp":
        return [action, "icmp"] + ([side] + peer if peer else [])
    if proto == "tcp":
        return [action, "tcp"] + ([side] + peer if peer else [])
    ports = rng.choice(("80", "8080", "80,8080", "8000:8100", "22"))
    # The grammar: tcp [from [ports] [tag] [cidr]] [to [ports] [tag] [cidr]].
    if direction == "inbound":
        return [action, "tcp"] + (["from"] + peer if peer else []) + ["to", "ports", ports]
    return [action, "tcp", "to", "ports", ports] + peer


def random_change(rng, workloads, store):
    """One change, as calicoctl argv."""
    from calicoctl.datastore import profiles
    kind = rng.choices(("tag", "inbound", "outbound", "remove", "append"),
                       weights=(2, 5, 2, 2, 2))[0]
    profile = rng.choice(NETWORKS)
    if kind == "tag":
        tag = rng.choice(NETWORKS + EXTRA_TAGS)
        have = profiles.get_tags(store, profile)
        verb = "remove" if tag in have and tag != profile else "add"
        if tag == profile and tag in have:
            tag = rng.choice(EXTRA_TAGS)
            verb = "remove" if tag in have else "add"
        return ["profile", profile, "tag", verb, tag]
    if kind in ("inbound", "outbound"):
        at = ["--at=1"] if rng.random() < 0.6 else []
        return ["profile", profile, "rule", "add", kind] + at + random_rule(rng, workloads, kind)
    if kind == "remove":
        rules = profiles.get_rules(store, profile)
        for direction in ("inbound", "outbound"):
            # Never remove a profile's last rule of a direction in this test: keeps the
            # matrix from drifting to "everything closed" too fast.
            if len(rules.direction(direction)) > 1:
                return ["profile", profile, "rule", "remove", direction, "--at=1"]
        return random_change(rng, workloads, store)
    from calicoctl.datastore import endpoints
    w = rng.choice(workloads)
    current = endpoints.get_endpoint(store, w.eid).profile_ids
    others = [n for n in NETWORKS if n not in current]
    if not others:
        return random_change(rng, workloads, store)
    return ["endpoint", w.eid, "profile", "append", rng.choice(others)]


def read_policy(store, workloads):
    """(rules, tags) of every profile in use, and each workload's profile list, from etcd."""
    from calicoctl.datastore import endpoints, profiles
    for w in workloads:
        w.profiles = list(endpoints.get_endpoint(store, w.eid).profile_ids)
    used = {p for w in workloads for p in w.profiles}
    rules = {p: profiles.get_rules(store, p).to_json() for p in used}
    tags = {p: profiles.get_tags(store, p) for p in used}
    return rules, tags


def describe(key, workloads, rules, tags, want, live):
    src, dst, proto, port = key
    by = {w.name: w for w in workloads}
    s, d = by[src], by[dst]
    lines = ["%s (%s, %s, profiles %s) -> %s (%s, %s, profiles %s) %s%s: expected %s, got %s"
             % (src, s.ip, s.host.name, s.profiles, dst, d.ip, d.host.name, d.profiles, proto,
                "" if port is None else "/%d" % port,
                "pass" if want[key] else "drop", "pass" if live.get(key) else "drop")]
    for p in sorted(set(s.profiles) | set(d.profiles)):
        lines.append("    profile %s tags %s inbound %s outbound %s" % (
            p, tags.get(p), rules[p]["inbound_rules"], rules[p]["outbound_rules"]))
    return "\n".join(lines)


# --- the test ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workloads(calico_stack):
    h1, h2 = calico_stack["hosts"]
    etcd = calico_stack["etcd"]
    seed = int(os.environ.get("CALICO_ST_SEED") or random.SystemRandom().randrange(2 ** 32))
    rng = random.Random(seed)
    for h in (h1, h2):
        for net in NETWORKS:
            h.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico", net)
    # Every network gets a workload; the rest are spread at random; both hosts get some.
    nets = list(NETWORKS) + [rng.choice(NETWORKS) for _ in range(WORKLOADS - len(NETWORKS))]
    hosts = [h1, h2] + [rng.choice((h1, h2)) for _ in range(WORKLOADS - 2)]
    rng.shuffle(hosts)
    wls = [Workload("iso-w%d" % i, hosts[i], nets[i]) for i in range(WORKLOADS)]

    def start(w):
        w.host.docker("run", "--net", w.net, "--name", w.name, "-tid", "busybox")
        w.host.docker("exec", w.name, "sh", "-c",
                      "mkdir -p {0} && echo ok > {0}/ok && httpd -p 80 -h {0} && "
                      "httpd -p 8080 -h {0}".format(WWW))
        w.ip = container_ip(w.host, w.name, w.net)
        w.eid = endpoint_id(w.host, w.name, w.net)
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(start, wls))
    for w in wls:
        other = h2 if w.host is h1 else h1
        wait_for(lambda w=w, other=other: ipaddress.ip_address(w.ip) in learnt(other), timeout=60,
                 what="a BGP route to %s on %s" % (w.name, other.name))
    yield {"seed": seed, "rng": rng, "workloads": wls, "store": calico_stack["store"],
           "host": h1, "etcd": etcd}
    for h in (h1, h2):
        clean_docker(h)


def test_random_policy_matches_the_model_on_every_pair(workloads):
    seed, rng, wls = workloads["seed"], workloads["rng"], workloads["workloads"]
    store, host, etcd = workloads["store"], workloads["host"], workloads["etcd"]
    print("isolation seed %d (replay: CALICO_ST_SEED=%d)" % (seed, seed), file=sys.stderr)
    checked, failures, history = 0, [], []
    for round_ in range(ROUNDS + 1):
        if round_:
            for _ in range(rng.randint(1, 3)):
                argv = random_change(rng, wls, store)
                result = calicoctl(host, etcd, *argv, check=False)
                history.append("round %d: calicoctl %s -> %d %s" % (
                    round_, " ".join(argv), result.returncode, result.stderr.strip()))
                assert result.returncode == 0, history[-1]
        rules, tags = read_policy(store, wls)
        want = expected(wls, rules, tags)
        t0 = time.monotonic()
        live, wrong = converge(wls, want)
        checked += len(want)
        allowed = sum(want.values())
        print("round %d: %d checks, %d expected to pass, %d wrong (%.1fs)"
              % (round_, len(want), allowed, len(wrong), time.monotonic() - t0),
              file=sys.stderr)
        for key in wrong:
            failures.append("round %d: %s" % (round_, describe(key, wls, rules, tags, want,
                                                                live)))
    print("isolation seed %d: %d (source, destination, protocol, port) checks, %d wrong"
          % (seed, checked, len(failures)), file=sys.stderr)
    assert not failures, "seed %d: %d of %d checks wrong\n%s\nchanges:\n%s" % (
        seed, len(failures), checked, "\n".join(failures[:40]), "\n".join(history))

"""The agent's in-memory model of etcd: built from one snapshot, then kept current by watch events.

Every key is classified with keys.match_key (never split by position).  A malformed value is
logged with its key and treated as absent, and an invalid rule is skipped if it allows and
replaced by "deny everything" if it denies: bad data can only ever close the host, never open it.

apply() returns a Changes record saying what the event touched, so the agent recomputes only
that part of the desired state.
"""

import ipaddress
import json
import logging
from dataclasses import dataclass, field

from calicoctl.datastore import keys
from calicoctl.datastore.models import Endpoint, Pool, interface_name
from calicoctl.datastore.rules import Rules, normalise_rule
from calicoctl.errors import ValidationError
from calicoctl.felix.bird import BgpView
from calicoctl.felix import status
from calicoctl.felix.config import build_config

log = logging.getLogger(__name__)

# Kinds of key the agent reads; everything else under /calico is ignored.
WATCHED = {"ready", "config", "host_bird_ip", "host_config", "endpoint", "profile_tags",
           "profile_rules", "pool", "host_affinity", "bgp_global_as", "bgp_node_mesh",
           "bgp_global_loglevel", "bgp_global_peer", "bgp_host_ip", "bgp_host_as",
           "bgp_host_loglevel", "bgp_host_peer", "felix_endpoint_status"}
_BGP_KINDS = {"bgp_global_as", "bgp_node_mesh", "bgp_global_loglevel", "bgp_global_peer",
              "bgp_host_ip", "bgp_host_as", "bgp_host_loglevel", "bgp_host_peer"}


@dataclass
class Changes:
    """What a batch of events touched."""
    local_endpoints: set = field(default_factory=set)    # endpoint keys (tuples) of this host
    member_endpoints: set = field(default_factory=set)   # endpoint keys of any host
    profile_rules: set = field(default_factory=set)
    profile_tags: set = field(default_factory=set)
    pools: bool = False
    bgp: bool = False
    config: bool = False
    affinities: bool = False
    hosts: bool = False
    ready: bool = False

    def merge(self, other):
        for name in ("local_endpoints", "member_endpoints", "profile_rules", "profile_tags"):
            getattr(self, name).update(getattr(other, name))
        for name in ("pools", "bgp", "config", "affinities", "hosts", "ready"):
            setattr(self, name, getattr(self, name) or getattr(other, name))
        return self

    def __bool__(self):
        return any((self.local_endpoints, self.member_endpoints, self.profile_rules,
                    self.profile_tags, self.pools, self.bgp, self.config, self.affinities,
                    self.hosts, self.ready))


def parse_rules(key, profile, value):
    """Stored rules -> Rules, failing closed (see module doc)."""
    try:
        data = json.loads(value)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        log.error("Malformed rules at %s (%s): profile %s allows nothing", key, exc, profile)
        return Rules(profile)
    lists = {}
    for direction in ("inbound_rules", "outbound_rules"):
        raw = data.get(direction) or []
        if not isinstance(raw, list):
            log.error("Malformed %s at %s: profile %s allows nothing that way", direction, key,
                      profile)
            raw = []
        rules = []
        for i, r in enumerate(raw):
            try:
                rules.append(normalise_rule(r))
            except ValidationError as exc:
                if isinstance(r, dict) and r.get("action", "allow") == "allow":
                    log.error("Skipping invalid rule %d of %s at %s: %s", i + 1, direction, key,
                              exc)
                else:
                    log.error("Invalid deny rule %d of %s at %s (%s): denying everything there",
                              i + 1, direction, key, exc)
                    rules.append({"action": "deny"})
        lists[direction] = rules
    return Rules(profile, lists["inbound_rules"], lists["outbound_rules"])


class FelixState:
    def __init__(self, host):
        self.host = host
        self.reset()

    def reset(self):
        self.raw = {}                  # key -> value of every watched key
        self.ready = False
        self.global_config = {}
        self.host_config = {}
        self.endpoints = {}            # (host, orch, workload, id) -> Endpoint
        self.profile_tags = {}         # profile -> [tags]
        self.profile_rules = {}        # profile -> Rules
        self.pools = {}                # cidr string -> Pool
        self.affinities = {}           # host -> {version: set(block cidr)}
        self.host_ips = {}             # host -> bird_ip (underlay IPv4)
        self.bgp = {"global_as": None, "mesh": True, "loglevel": None, "peers": {},
                    "host_ip": {}, "host_as": {}, "host_loglevel": {}, "host_peers": {}}
        self.config = build_config({}, {})
        self.reported = {}             # this host's endpoint key -> status we reported

    # -- loading ---------------------------------------------------------------------------

    def load_snapshot(self, items):
        """Replace everything with (key, value) pairs of one consistent read."""
        self.reset()
        # One record for the whole snapshot: a Changes per key, merged, was a quarter of the
        # parse at 10,000 endpoints.
        changes = Changes()
        for key, value in items:
            self.apply(key, value, changes)
        return changes

    def apply(self, key, value, changes=None):
        """One set (value = string) or delete (value = None) of a key; a deleted directory is
        passed as its key with value None and removes everything below it.  Returns what it
        touched: changes, when given, with this key's added."""
        changes = Changes() if changes is None else changes
        kind, c = keys.match_key(key)
        if kind in WATCHED:
            self._apply_one(kind, c, key, value, changes)
        elif value is None:
            below = [k for k in self.raw if k.startswith(key.rstrip("/") + "/")]
            for k in below:
                k_kind, k_c = keys.match_key(k)
                self._apply_one(k_kind, k_c, k, None, changes)
        return changes

    def _apply_one(self, kind, c, key, value, changes):
        if value is None:
            self.raw.pop(key, None)
        else:
            self.raw[key] = value
        handler = getattr(self, "_on_" + kind, None)
        if handler is None and kind in _BGP_KINDS:
            handler = self._on_bgp
        handler(c, key, value, changes)

    # -- handlers (one per kind of key) ----------------------------------------------------

    def _on_ready(self, c, key, value, changes):
        self.ready = value == "true"
        changes.ready = True

    def _on_config(self, c, key, value, changes):
        _set_or_pop(self.global_config, c["name"], value)
        self._rebuild_config(changes)

    def _on_host_config(self, c, key, value, changes):
        if c["host"] == self.host:
            _set_or_pop(self.host_config, c["name"], value)
            self._rebuild_config(changes)

    def _rebuild_config(self, changes):
        self.config = build_config(self.global_config, self.host_config)
        changes.config = True

    def _on_host_bird_ip(self, c, key, value, changes):
        ip = _address(key, value, 4) if value is not None else None
        _set_or_pop(self.host_ips, c["host"], ip)
        changes.hosts = True

    def _on_endpoint(self, c, key, value, changes):
        ep_key = (c["host"], c["orchestrator"], c["workload"], c["endpoint_id"])
        ep = None
        if value is not None:
            try:
                ep = Endpoint.from_json(*ep_key, json.loads(value))
                if not ep.name:
                    ep.name = interface_name(ep.endpoint_id, self.config.interface_prefix)
                if ep.state not in ("active", "inactive"):
                    raise ValidationError("unknown state %r" % ep.state)
            except (ValueError, TypeError, ValidationError) as exc:
                log.error("Ignoring malformed endpoint at %s: %s", key, exc)
                ep = None
        _set_or_pop(self.endpoints, ep_key, ep)
        changes.member_endpoints.add(ep_key)
        if c["host"] == self.host:
            changes.local_endpoints.add(ep_key)

    def _on_profile_tags(self, c, key, value, changes):
        tags = None
        if value is not None:
            try:
                tags = json.loads(value)
                if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                    raise ValueError("not a list of names")
            except ValueError as exc:
                log.error("Ignoring malformed tags at %s: %s", key, exc)
                tags = None
        _set_or_pop(self.profile_tags, c["profile"], tags)
        changes.profile_tags.add(c["profile"])

    def _on_profile_rules(self, c, key, value, changes):
        rules = parse_rules(key, c["profile"], value) if value is not None else None
        _set_or_pop(self.profile_rules, c["profile"], rules)
        changes.profile_rules.add(c["profile"])

    def _on_pool(self, c, key, value, changes):
        pool = None
        if value is not None:
            try:
                pool = Pool.from_json(json.loads(value))
            except (ValueError, ValidationError) as exc:
                log.error("Ignoring malformed pool at %s: %s", key, exc)
        _set_or_pop(self.pools, c["cidr"], pool)
        changes.pools = True

    def _on_host_affinity(self, c, key, value, changes):
        blocks = self.affinities.setdefault(c["host"], {4: set(), 6: set()})
        blocks[c["version"]].discard(c["cidr"])
        if value is not None:
            blocks[c["version"]].add(c["cidr"])
        changes.affinities = True

    def _on_felix_endpoint_status(self, c, key, value, changes):
        if c["host"] == self.host:
            ep_key = (c["host"], c["orchestrator"], c["workload"], c["endpoint_id"])
            _set_or_pop(self.reported, ep_key, status.endpoint_state(value))

    def _on_bgp(self, c, key, value, changes):
        kind, _ = keys.match_key(key)
        b = self.bgp
        if kind == "bgp_global_as":
            b["global_as"] = value
        elif kind == "bgp_node_mesh":
            b["mesh"] = _mesh_enabled(key, value)
        elif kind == "bgp_global_loglevel":
            b["loglevel"] = value
        elif kind == "bgp_global_peer":
            _set_or_pop(b["peers"].setdefault(c["version"], {}), c["ip"],
                        _peer_as(key, value))
        elif kind == "bgp_host_ip":
            _set_or_pop(b["host_ip"].setdefault(c["version"], {}), c["host"],
                        _address(key, value, c["version"]) if value else None)
        elif kind == "bgp_host_as":
            _set_or_pop(b["host_as"], c["host"], value or None)
        elif kind == "bgp_host_loglevel":
            _set_or_pop(b["host_loglevel"], c["host"], value or None)
        elif kind == "bgp_host_peer":
            peers = b["host_peers"].setdefault(c["host"], {}).setdefault(c["version"], {})
            _set_or_pop(peers, c["ip"], _peer_as(key, value))
        changes.bgp = True

    # -- views -----------------------------------------------------------------------------

    def local_endpoints(self):
        return [ep for k, ep in self.endpoints.items() if k[0] == self.host]

    def pool_list(self):
        return sorted(self.pools.values(), key=lambda p: (p.version, str(p.cidr)))

    def bgp_view(self):
        b = self.bgp
        nodes = {}
        for version, ips in b["host_ip"].items():
            for host, ip in ips.items():
                nodes.setdefault(host, {})["ip%d" % version] = ip
        for host in nodes:
            nodes[host]["as"] = b["host_as"].get(host)
        mine = self.affinities.get(self.host, {4: set(), 6: set()})
        nets = {n for ep in self.local_endpoints() if ep.state == "active"
                for n in ep.ipv4_nets + ep.ipv6_nets}
        return BgpView(me=self.host, nodes=nodes, global_as=b["global_as"] or "64511",
                       mesh=b["mesh"], global_peers=b["peers"],
                       node_peers=b["host_peers"].get(self.host, {}),
                       loglevel=b["host_loglevel"].get(self.host) or b["loglevel"],
                       pools=self.pool_list(), blocks=set(mine[4]) | set(mine[6]),
                       endpoint_nets=nets, iface_prefix=self.config.interface_prefix)


def _set_or_pop(d, k, v):
    if v is None:
        d.pop(k, None)
    else:
        d[k] = v


def _address(key, value, version):
    try:
        ip = ipaddress.ip_address(str(value).strip())
        if ip.version != version:
            raise ValueError("IPv%d expected" % version)
        return str(ip)
    except ValueError as exc:
        log.error("Ignoring malformed address at %s: %r (%s)", key, value, exc)
        return None


def _peer_as(key, value):
    if value is None:
        return None
    try:
        data = json.loads(value)
        return str(int(str(data["as_num"])))
    except (ValueError, KeyError, TypeError) as exc:
        log.error("Ignoring malformed BGP peer at %s: %s", key, exc)
        return None


def _mesh_enabled(key, value):
    if value is None:
        return True
    try:
        return json.loads(value).get("enabled", True) is not False
    except (ValueError, AttributeError):
        log.error("Malformed node_mesh at %s: %r; keeping the mesh on", key, value)
        return True

"""Desired dataplane state, kept up to date incrementally from the state model's Changes.

No side effects: update() returns a Delta (chains and ipsets to write or remove) that the
executor applies.  Recomputing only what a change touched (one endpoint's chains, one dispatch
bucket, the tags of one profile) is what keeps an incremental change's cost independent of the
number of endpoints.
"""

import logging
from dataclasses import dataclass, field

from calicoctl.felix import ipsets, nat, policy, raw
from calicoctl.felix.routes import ipip_pools

log = logging.getLogger(__name__)
VERSIONS = (4, 6)
TABLES = ("filter", "nat", "raw")


@dataclass
class Delta:
    """{(table, version): {chain: rules or None}} and {set name: spec or None}; with the
    nftables dataplane also the nft table's changes (felix/nft_calc.py): chains {name: rules or
    None}, sets {name: kind or None} and elements added and removed {set name: set(text)}."""
    chains: dict = field(default_factory=dict)
    sets: dict = field(default_factory=dict)
    endpoints: set = field(default_factory=set)      # local endpoint keys whose policy changed
    nft_chains: dict = field(default_factory=dict)
    nft_sets: dict = field(default_factory=dict)
    nft_added: dict = field(default_factory=dict)
    nft_removed: dict = field(default_factory=dict)

    def set_chain(self, table, version, chain, rules):
        self.chains.setdefault((table, version), {})[chain] = rules

    def __bool__(self):
        return bool(any(self.chains.values()) or self.sets or self.nft_chains or self.nft_sets
                    or any(self.nft_added.values()) or any(self.nft_removed.values()))


class DesiredState:
    def __init__(self):
        self.chains = {(t, v): {} for t in TABLES for v in VERSIONS}
        self.sets = {}
        self.config = None
        self.rendered = {}              # local endpoint key -> Endpoint as last rendered
        self.profile_users = {}         # profile -> local endpoint keys using it
        # version -> bucket -> local interface names with an address of that family: an
        # endpoint gets no chains in a family it has no address in (the dispatch drops it).
        self.buckets = {v: {} for v in VERSIONS}
        self.ep_tags = {}               # any endpoint key -> frozenset(tags)
        self.tag_eps = {}               # tag -> endpoint keys carrying it
        self.profile_eps = {}           # profile -> endpoint keys (any host)
        self.ep_profiles = {}           # endpoint key (any host) -> its profile ids

    # -- helpers ---------------------------------------------------------------------------

    def _put(self, delta, table, version, chain, rules):
        current = self.chains[(table, version)]
        if rules is None:
            if chain in current:
                del current[chain]
                delta.set_chain(table, version, chain, None)
        elif current.get(chain) != rules:
            current[chain] = rules
            delta.set_chain(table, version, chain, rules)

    def _put_set(self, delta, name, spec):
        if spec is None:
            if name in self.sets:
                del self.sets[name]
                delta.sets[name] = None
        elif self.sets.get(name) != spec:
            self.sets[name] = spec
            delta.sets[name] = spec

    @staticmethod
    def _bad_rule(profile, direction, rule, exc):
        log.error("Profile %s: skipping %s rule %r: %s", profile, direction, rule, exc)

    # -- the whole picture -----------------------------------------------------------------

    def update(self, state, changes, full=False):
        delta = Delta()
        if full or changes.config or self.config is None:
            full = True
            self.config = state.config
        cfg = self.config
        if full or changes.pools or changes.hosts:
            self._update_globals(state, delta)
        # Tag membership (every host's endpoints).
        member_keys = set(state.endpoints) | set(self.ep_tags) if full \
            else set(changes.member_endpoints)
        tags_dirty = set()
        profiles_retagged = set(state.profile_tags) | set(self.profile_eps) if full \
            else set(changes.profile_tags)
        for profile in profiles_retagged:
            member_keys |= self.profile_eps.get(profile, set())
        for key in member_keys:
            tags_dirty |= self._retag(state, key)
        if full:
            tags_dirty |= {t for tags in state.profile_tags.values() for t in tags}
            tags_dirty |= set(self.tag_eps)
        for tag in tags_dirty:
            self._update_tag(state, tag, delta)
        # Local endpoints and the profiles they use.
        local_keys = {k for k in state.endpoints if k[0] == state.host} | set(self.rendered) \
            if full else set(changes.local_endpoints)
        profiles_dirty = set(changes.profile_rules)
        buckets_dirty = set()
        profiles_dirty |= self._update_endpoints(state, local_keys, delta, buckets_dirty)
        if full:
            profiles_dirty |= set(self.profile_users)
        for profile in profiles_dirty:
            self._update_profile(state, profile, delta)
        if buckets_dirty or full:
            self._update_dispatch(buckets_dirty, cfg.interface_prefix, delta, full)
        return delta

    def _update_globals(self, state, delta):
        pools = state.pool_list()
        tunnelled = bool(ipip_pools(pools))
        for v in VERSIONS:
            hosts_set = ipsets.CALICO_HOSTS if tunnelled and v == 4 else None
            for chain, rules in self._filter_top(v, hosts_set).items():
                self._put(delta, "filter", v, chain, rules)
            for chain, rules in nat.nat_chains(pools, v).items():
                self._put(delta, "nat", v, chain, rules)
            for chain, rules in raw.raw_chains(self.config.interface_prefix).items():
                self._put(delta, "raw", v, chain, rules)
            for name, spec in ipsets.pool_sets(pools, v).items():
                self._put_set(delta, name, spec)
        for name, spec in ipsets.hosts_set(state.host_ips.values()).items():
            self._put_set(delta, name, spec)

    def _filter_top(self, version, hosts_set):
        """The filter table's fixed chains (the nftables dataplane keeps fewer)."""
        return policy.top_chains(version, self.config.interface_prefix,
                                 self.config.endpoint_to_host_action, hosts_set)

    def _retag(self, state, key):
        """Recompute one endpoint's tags; return the tags whose membership may have changed."""
        ep = state.endpoints.get(key)
        old_tags = self.ep_tags.pop(key, frozenset())
        for profile in self.ep_profiles.pop(key, ()):
            self.profile_eps.get(profile, set()).discard(key)
        new_tags = frozenset()
        if ep is not None:
            self.ep_profiles[key] = tuple(ep.profile_ids)
            for profile in ep.profile_ids:
                self.profile_eps.setdefault(profile, set()).add(key)
            if ep.state == "active":
                new_tags = frozenset(t for p in ep.profile_ids
                                     for t in state.profile_tags.get(p, ()))
            self.ep_tags[key] = new_tags
        for tag in old_tags - new_tags:
            self.tag_eps.get(tag, set()).discard(key)
        for tag in new_tags:
            self.tag_eps.setdefault(tag, set()).add(key)
        # An address change keeps the tags but changes their members.
        return old_tags | new_tags

    def _update_tag(self, state, tag, delta):
        keys_ = self.tag_eps.get(tag, set())
        declared = any(tag in tags for tags in state.profile_tags.values())
        for v in VERSIONS:
            if not keys_ and not declared and not self._tag_referenced(tag):
                self._put_tag_set(delta, tag, v, None)
                continue
            members = set()
            for key in keys_:
                ep = state.endpoints.get(key)
                if ep is not None:
                    members |= ipsets.endpoint_addresses(ep, v)
            self._put_tag_set(delta, tag, v, members)
        if not keys_:
            self.tag_eps.pop(tag, None)

    def _put_tag_set(self, delta, tag, version, members):
        """A tag's set in one family holds exactly members (None: the set goes)."""
        name = ipsets.tag_set(tag, version)
        family = "inet" if version == 4 else "inet6"
        self._put_set(delta, name, None if members is None else
                      ("hash:ip", family, frozenset(members)))

    def _tag_referenced(self, tag):
        needle = " %s " % ipsets.tag_set(tag, 4)
        needle6 = " %s " % ipsets.tag_set(tag, 6)
        for (table, v), chains in self.chains.items():
            if table != "filter":
                continue
            for chain, rules in chains.items():
                if chain.startswith("felix-p-") and any(needle in r or needle6 in r
                                                        for r in rules):
                    return True
        return False

    def _update_endpoints(self, state, keys_, delta, buckets_dirty):
        """(Re)render these local endpoints; return profiles whose use count changed."""
        touched = set()
        for key in keys_:
            touched |= self._update_endpoint(state, key, delta, buckets_dirty)
        return touched

    def _update_endpoint(self, state, key, delta, buckets_dirty):
        """(Re)render one local endpoint; return profiles whose use count changed."""
        old = self.rendered.pop(key, None)
        ep = state.endpoints.get(key)
        prefix = self.config.interface_prefix
        touched = set()
        if old is not None:
            for profile in old.profile_ids:
                self.profile_users.get(profile, set()).discard(key)
                touched.add(profile)
        if ep is not None:
            self.rendered[key] = ep
            for profile in ep.profile_ids:
                self.profile_users.setdefault(profile, set()).add(key)
                touched.add(profile)
        for v in VERSIONS:
            old_chains = set(policy.endpoint_chains(old, v)) if old is not None else set()
            new_chains = policy.endpoint_chains(ep, v) if ep is not None else {}
            for chain in old_chains - set(new_chains):
                self._put(delta, "filter", v, chain, None)
            for chain, rules in new_chains.items():
                self._put(delta, "filter", v, chain, rules)
            buckets = self.buckets[v]
            if old_chains and (not new_chains or ep.name != old.name):
                bucket = policy.bucket_of(old.name, prefix)
                buckets.get(bucket, set()).discard(old.name)
                buckets_dirty.add((v, bucket))
            if new_chains:
                bucket = policy.bucket_of(ep.name, prefix)
                if ep.name not in buckets.get(bucket, set()):
                    buckets.setdefault(bucket, set()).add(ep.name)
                    buckets_dirty.add((v, bucket))
        delta.endpoints.add(key)
        return touched

    def _update_profile(self, state, profile, delta):
        users = self.profile_users.get(profile)
        for v in VERSIONS:
            if users:
                chains = policy.profile_chains(profile, state.profile_rules.get(profile), v,
                                               ipsets.tag_set, self._bad_rule)
            else:
                chains = {policy.profile_chain(profile, d): None for d in ("inbound", "outbound")}
            for chain, rules in chains.items():
                self._put(delta, "filter", v, chain, rules)
            if users:
                # A rule may name a tag no profile carries: it still needs an (empty) set.
                for rules in chains.values():
                    for tag in _tags_in(rules):
                        if tag not in self.sets:
                            self._put_set(delta, tag, ("hash:ip", "inet" if v == 4 else "inet6",
                                                       frozenset()))
        if not users:
            self.profile_users.pop(profile, None)

    def _update_dispatch(self, buckets_dirty, prefix, delta, full):
        if full:
            buckets_dirty = buckets_dirty | {(v, b) for v in VERSIONS for b in self.buckets[v]}
        for v, bucket in buckets_dirty:
            members = self.buckets[v].get(bucket, set())
            for direction in ("from", "to"):
                chain = policy.bucket_chain(direction, bucket)
                rules = policy.dispatch_bucket(direction, members) if members else None
                self._put(delta, "filter", v, chain, rules)
            if not members:
                self.buckets[v].pop(bucket, None)
        for v in VERSIONS:
            for direction, root in (("from", policy.FROM_ENDPOINT),
                                    ("to", policy.TO_ENDPOINT)):
                self._put(delta, "filter", v, root,
                          policy.dispatch_root(direction, self.buckets[v], prefix))


def _tags_in(rules):
    out = set()
    for r in rules:
        parts = r.split()
        for i, word in enumerate(parts):
            if word == "--match-set" and i + 1 < len(parts):
                out.add(parts[i + 1])
    return out

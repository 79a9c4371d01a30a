"""Desired state for the nftables dataplane (felix/nft_policy.py), kept up to date incrementally.

The same bookkeeping as calc.DesiredState (tag membership, which endpoints use which profile),
with different output: a local endpoint becomes set elements, its interface among them in the
set of its profile list (whose chains and dispatch rules exist while an endpoint uses it), a
tag a pair of nft sets.  The iptables tables keep only their fixed chains
(nft_policy.iptables_chains), nat and raw, and the pool and host ipsets.

Pure, like calc.py: update() returns a Delta; nft changes are in its nft_* fields.
"""

from calicoctl.felix import nft_policy
from calicoctl.felix.calc import VERSIONS, DesiredState


class NftDesiredState(DesiredState):
    def __init__(self):
        super().__init__()
        self.nft_chains = {}            # name -> rules
        self.nft_sets = {}              # name -> kind
        self.nft_elements = {}          # set name -> set(element text)
        self.list_users = {}            # profile id tuple -> local endpoint keys using it
        self.profile_tag_sets = {}      # profile -> tag sets its chains look up

    # -- helpers ---------------------------------------------------------------------------

    def _put_chain(self, delta, name, rules):
        if rules is None:
            if name in self.nft_chains:
                del self.nft_chains[name]
                delta.nft_chains[name] = None
        elif self.nft_chains.get(name) != rules:
            self.nft_chains[name] = rules
            delta.nft_chains[name] = rules

    def _declare(self, delta, name, kind):
        if kind is None:
            if name in self.nft_sets:
                # Its elements count as removed: if the set is declared again within this
                # delta, the kernel's copy (never deleted) must lose them.
                self._change_elements(delta, name, (), set(self.nft_elements.get(name, ())))
                del self.nft_sets[name]
                self.nft_elements.pop(name, None)
                delta.nft_sets[name] = None
        elif self.nft_sets.get(name) != kind:
            self.nft_sets[name] = kind
            self.nft_elements.setdefault(name, set())
            delta.nft_sets[name] = kind

    def _change_elements(self, delta, name, add=(), remove=()):
        """Record elements added to and removed from a declared set, cancelling out a removal
        and an addition of the same element within one delta."""
        have = self.nft_elements.setdefault(name, set())
        added = delta.nft_added.setdefault(name, set())
        removed = delta.nft_removed.setdefault(name, set())
        # Set operations, not a loop per element: a cold start adds 10,000s at once.
        if remove:
            gone = have.intersection(remove)
            have -= gone
            back = gone & added
            added -= back
            removed |= gone - back
        if add:
            new = set(add) - have
            have |= new
            again = new & removed
            removed -= again
            added |= new - again

    # -- overrides of calc.DesiredState ----------------------------------------------------

    def _filter_top(self, version, hosts_set):
        return nft_policy.iptables_chains(version, self.config.interface_prefix,
                                          self.config.endpoint_to_host_action, hosts_set)

    def _update_globals(self, state, delta):
        super()._update_globals(state, delta)
        for name, kind in nft_policy.fixed_sets().items():
            self._declare(delta, name, kind)
        for name, rules in nft_policy.base_chains(
                self.config.interface_prefix, self.config.endpoint_to_host_action,
                self.list_users).items():
            self._put_chain(delta, name, rules)

    def _use_list(self, delta, ids, key):
        """key's endpoint uses profile list ids: the list's chains and interface sets exist,
        and the dispatch rules go to them (set up by the first user)."""
        users = self.list_users.setdefault(ids, set())
        first = not users
        users.add(key)
        if first:
            self._put_list(delta, ids, present=True)

    def _leave_list(self, delta, ids, key):
        users = self.list_users.get(ids, set())
        users.discard(key)
        if not users:
            self.list_users.pop(ids, None)
            self._put_list(delta, ids, present=False)

    def _put_list(self, delta, ids, present, dispatch=True):
        chains, sets = nft_policy.list_parts(ids)
        for name, rules in chains.items():
            self._put_chain(delta, name, rules if present else None)
        for name, kind in sets.items():
            self._declare(delta, name, kind if present else None)
        if dispatch:
            self._put_dispatch(delta)

    def _put_dispatch(self, delta):
        for name, rules in nft_policy.dispatch_chains(self.list_users).items():
            self._put_chain(delta, name, rules)

    def _put_tag_set(self, delta, tag, version, members):
        name = nft_policy.tag_set(tag, version)
        if members is None:
            self._declare(delta, name, None)
            return
        self._declare(delta, name, nft_policy.ADDR_TYPE[version])
        have = self.nft_elements[name]
        self._change_elements(delta, name, members - have, have - members)

    def _tag_referenced(self, tag):
        names = {nft_policy.tag_set(tag, v) for v in VERSIONS}
        return any(names & used for used in self.profile_tag_sets.values())

    def _update_endpoints(self, state, keys_, delta, buckets_dirty):
        if self.rendered:
            return super()._update_endpoints(state, keys_, delta, buckets_dirty)
        # Nothing rendered yet (a cold start): every endpoint only adds, so each set's elements
        # go in at once, as _update_endpoint would add them one endpoint at a time.  Per
        # endpoint, that bookkeeping was half the desired state at 10,000 endpoints.
        touched = set()
        elements = {}
        for key in keys_:
            ep = state.endpoints.get(key)
            delta.endpoints.add(key)
            if ep is None:
                continue
            self.rendered[key] = ep
            for profile in ep.profile_ids:
                self.profile_users.setdefault(profile, set()).add(key)
                touched.add(profile)
            ids = nft_policy.endpoint_list(ep)
            if ids is not None:
                self.list_users.setdefault(ids, set()).add(key)
            for name, items in nft_policy.endpoint_elements(ep).items():
                elements.setdefault(name, set()).update(items)
        for ids in self.list_users:
            self._put_list(delta, ids, present=True, dispatch=False)
        self._put_dispatch(delta)       # once, for every list
        for name, items in elements.items():
            self._change_elements(delta, name, items)
        return touched

    def _update_endpoint(self, state, key, delta, buckets_dirty):
        old = self.rendered.pop(key, None)
        ep = state.endpoints.get(key)
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
        old_ids = nft_policy.endpoint_list(old) if old is not None else None
        new_ids = nft_policy.endpoint_list(ep) if ep is not None else None
        # A new list's chains and sets before the elements that go to them (the executor
        # declares them first within one transaction); an unused one goes after.
        if new_ids is not None:
            self._use_list(delta, new_ids, key)
        old_elements = nft_policy.endpoint_elements(old) if old is not None else {}
        new_elements = nft_policy.endpoint_elements(ep) if ep is not None else {}
        for name in set(old_elements) | set(new_elements):
            self._change_elements(delta, name, new_elements.get(name, set()),
                                  old_elements.get(name, set()) - new_elements.get(name, set()))
        if old_ids is not None and old_ids != new_ids:
            self._leave_list(delta, old_ids, key)
        delta.endpoints.add(key)
        return touched

    def _update_profile(self, state, profile, delta):
        users = self.profile_users.get(profile)
        if users:
            chains = nft_policy.profile_chains(profile, state.profile_rules.get(profile),
                                               self._bad_rule)
            used = nft_policy.tags_of(r for rules in chains.values() for r in rules)
            # A rule may name a tag no profile carries: its set must still exist (empty).
            for name in used:
                if name not in self.nft_sets:
                    self._declare(delta, name, nft_policy.ADDR_TYPE[int(name[1])])
            self.profile_tag_sets[profile] = used
        else:
            chains = {nft_policy.profile_chain(profile, d): None
                      for d in ("inbound", "outbound")}
            self.profile_tag_sets.pop(profile, None)
            self.profile_users.pop(profile, None)
        for chain, rules in chains.items():
            self._put_chain(delta, chain, rules)

    def _update_dispatch(self, buckets_dirty, prefix, delta, full):
        """Nothing to do: dispatch is the maps' elements, changed with each endpoint."""

"""Outgoing NAT (nat table), computed by a pure function.

Traffic from a pool with `masquerade` to anywhere outside every pool leaves with the host's
address.  Pools are matched through ipsets (felix-masq-v4 / felix-pools-v4), so adding a pool
changes a set, not a rule.
"""

from calicoctl.felix.ipsets import ALL_POOLS, MASQ_POOLS

POSTROUTING_CHAIN = "felix-POSTROUTING"
TOP_JUMPS = {"POSTROUTING": POSTROUTING_CHAIN}


def nat_chains(pools, version):
    """{felix-POSTROUTING: rules}; empty when no pool of this family masquerades."""
    rules = []
    if any(p.masquerade and p.version == version for p in pools):
        rules.append("-m set --match-set %s src -m set ! --match-set %s dst -j MASQUERADE"
                     % (MASQ_POOLS % version, ALL_POOLS % version))
    return {POSTROUTING_CHAIN: rules}

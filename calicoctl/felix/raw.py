"""Anti-spoofing before connection tracking (raw table), computed by a pure function.

The per-endpoint chains check a workload's source address and MAC, but only for packets that
start something: packets of flows conntrack already knows are accepted at the top of
felix-FORWARD and felix-INPUT, before any per-endpoint rule.  A workload that takes another
workload's address could otherwise send into that workload's existing flows (UDP and ICMP have
no sequence numbers to guess; tests/st/test_security.py shows it).

The raw table sees every packet before conntrack does.  rpfilter drops a packet whose source
address would not be routed back out of the interface it came in on; every workload address is
routed to its own veth, so a workload can only send from its own addresses.  One rule per family
whatever the number of endpoints, and the same for IPv4 and IPv6 (which has no rp_filter sysctl).
"""

PREROUTING_CHAIN = "felix-PREROUTING"
TOP_JUMPS = {"PREROUTING": PREROUTING_CHAIN}


def raw_chains(prefix):
    """{felix-PREROUTING: rules} for workload interfaces named prefix*."""
    # Written as iptables-save prints it, so an unchanged chain compares equal on read-back.
    return {PREROUTING_CHAIN: ["-i %s+ -m rpfilter --invert -j DROP" % prefix]}

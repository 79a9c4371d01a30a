"""Forgetting the connection-tracking entries of addresses a workload gave up.

Policy accepts packets of a tracked connection before it looks at rules (ESTABLISHED), so an
entry left behind by a removed workload lets the old peer reach whichever workload gets the same
address next, whatever that workload's policy says, for as long as the entry lives (30 s for
ping, days for TCP).  The agent deletes those entries when an address leaves a local endpoint.

Each address is looked up with the kernel's own dump filter (CTA_FILTER, kernel 5.8 and later;
pyroute2 checks every answer again, so a kernel that ignores the filter is slower but still
exact), as source and as destination of the original direction.  Reading the whole table at
every removal cost the agent more CPU than programming the endpoint (bench/container_start.py),
and a busy host tracks far more connections than any one workload has.  The original direction
holds the workload's address for every flow on a Calico host: nothing here DNATs to a workload.

A conntrack netlink socket speaks one address family (pyroute2 puts the socket's family in
every request, and an IPv6 tuple on an IPv4 socket is EINVAL), so each family has its own.
IPv6 entries are read unfiltered and matched here: with an IPv6 tuple the kernel's filter
answers nothing at all, even for entries that match (tests/unit/test_felix_kernel.py would
fail), and IPv6 tables on Calico hosts are small.
"""

import errno
import ipaddress
import logging
import socket

from pyroute2 import Conntrack
from pyroute2.conntrack import NFCTAttrTuple
from pyroute2.netlink.exceptions import NetlinkError

from calicoctl.errors import DataplaneError

log = logging.getLogger(__name__)


def forget_flows(cidrs):
    """Delete the tracked connections to or from each address (CIDRs such as "10.0.0.5/32"
    are taken as their address); returns how many were deleted."""
    addresses = {ipaddress.ip_interface(text).ip for text in cidrs}
    deleted = 0
    for version, family in ((4, socket.AF_INET), (6, socket.AF_INET6)):
        wanted = sorted(a for a in addresses if a.version == version)
        if wanted:
            deleted += _forget(family, wanted)
    log.debug("Forgot %d tracked connections of %s", deleted,
              ", ".join(sorted(map(str, addresses))))
    return deleted


def _forget(family, addresses):
    try:
        ct = Conntrack(nfgen_family=family)
    except (OSError, NetlinkError) as exc:
        raise DataplaneError(["conntrack"], -1, "", "cannot open conntrack netlink: %s" % exc)
    deleted = 0
    try:
        if family == socket.AF_INET:
            doomed = [entry for ip in addresses for field in ("saddr", "daddr")
                      for entry in ct.dump_entries(
                          tuple_orig=NFCTAttrTuple(family=family, **{field: str(ip)}))]
        else:
            wanted = set(addresses)
            doomed = [entry for entry in ct.dump_entries()
                      if any(ipaddress.ip_address(a) in wanted
                             for a in (entry.tuple_orig.saddr, entry.tuple_orig.daddr))]
        for entry in doomed:
            try:
                ct.delete(entry)
                deleted += 1
            except NetlinkError as exc:
                # ENOENT: it timed out meanwhile, or it went already as the other address's.
                if exc.code != errno.ENOENT:
                    raise
    except (OSError, NetlinkError) as exc:
        raise DataplaneError(["conntrack"], -1, "", "conntrack: %s" % exc)
    finally:
        ct.close()
    return deleted

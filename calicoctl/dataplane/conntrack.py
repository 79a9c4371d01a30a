"""Forgetting the connection-tracking entries of addresses a workload gave up.

Policy accepts packets of a tracked connection before it looks at rules (ESTABLISHED), so an
entry left behind by a removed workload lets the old peer reach whichever workload gets the same
address next, whatever that workload's policy says, for as long as the entry lives (30 s for
ping, days for TCP).  The agent deletes those entries when an address leaves a local endpoint.

Reading the table is what costs: every dump walks the kernel's whole connection hash, which
all namespaces share (262,144 buckets here, about 10 ms whatever this namespace holds), and
pyroute2 then parses each entry of ours (about 60 us each).  So while this namespace tracks
few connections, one unfiltered dump per family is read and matched here; past FILTER_FROM
entries, IPv4 asks the kernel's own filter (CTA_FILTER, kernel 5.8 and later; pyroute2 checks
every answer again) for the address as source and as destination of the original direction,
which holds the workload's address for every flow on a Calico host (nothing here DNATs to a
workload).  The kernel's filter answers nothing for an IPv6 tuple, even for entries that match,
so IPv6 is always read whole (IPv6 tables on Calico hosts are small).

A conntrack netlink socket speaks one address family (pyroute2 puts the socket's family in
every request, and an IPv6 tuple on an IPv4 socket is EINVAL), so each family has its own.
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
# One dump's walk of the shared hash costs about as much as parsing this many entries.
WALK_ENTRIES = 150
COUNT_PATH = "/proc/sys/net/netfilter/nf_conntrack_count"    # this namespace's entries


def _tracked():
    try:
        with open(COUNT_PATH) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0        # no conntrack module loaded: nothing tracked, nothing to forget


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
        if family == socket.AF_INET and len(addresses) * 2 * WALK_ENTRIES < _tracked():
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

"""Forgetting the connection-tracking entries of addresses a workload gave up.

Policy accepts packets of a tracked connection before it looks at rules (ESTABLISHED), so an
entry left behind by a removed workload lets the old peer reach whichever workload gets the same
address next, whatever that workload's policy says, for as long as the entry lives (30 s for
ping, days for TCP).  The agent deletes those entries when an address leaves a local endpoint.

A conntrack netlink socket speaks one address family (pyroute2 puts the socket's family in
every request, and an IPv6 tuple on an IPv4 socket is EINVAL), so each family present gets its
own socket and one dump, matched here in both directions.
"""

import errno
import ipaddress
import logging
import socket

from pyroute2 import Conntrack
from pyroute2.netlink.exceptions import NetlinkError

from calicoctl.errors import DataplaneError

log = logging.getLogger(__name__)


def _touches(entry, addresses):
    """Whether either direction of a tracked connection has one of the addresses at an end.
    The reply direction counts too: after DNAT the workload is only in the reply tuple."""
    for tup in (entry.tuple_orig, entry.tuple_reply):
        for text in (tup.saddr, tup.daddr):
            if text is not None and ipaddress.ip_address(text) in addresses:
                return True
    return False


def forget_flows(cidrs):
    """Delete the tracked connections to or from each address (CIDRs such as "10.0.0.5/32"
    are taken as their address); returns how many were deleted."""
    addresses = {ipaddress.ip_interface(text).ip for text in cidrs}
    if not addresses:
        return 0
    deleted = 0
    for version, family in ((4, socket.AF_INET), (6, socket.AF_INET6)):
        wanted = {a for a in addresses if a.version == version}
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
        doomed = [e for e in ct.dump_entries() if _touches(e, addresses)]
        for entry in doomed:
            try:
                ct.delete(entry)
                deleted += 1
            except NetlinkError as exc:
                if exc.code != errno.ENOENT:      # ENOENT: it timed out meanwhile
                    raise
    except (OSError, NetlinkError) as exc:
        raise DataplaneError(["conntrack"], -1, "", "conntrack: %s" % exc)
    finally:
        ct.close()
    return deleted

"""Forgetting the connection-tracking entries of addresses a workload gave up.

Policy accepts packets of a tracked connection before it looks at rules (ESTABLISHED), so an
entry left behind by a removed workload lets the old peer reach whichever workload gets the same
address next, whatever that workload's policy says, for as long as the entry lives (30 s for
ping, days for TCP).  The agent deletes those entries when an address leaves a local endpoint.
"""

import ipaddress
import logging
import socket

from calicoctl.errors import DataplaneError

log = logging.getLogger(__name__)


def forget_flows(addresses):
    """Delete the tracked connections to or from each address (CIDRs such as "10.0.0.5/32"
    are taken as their address); returns how many were deleted."""
    from pyroute2 import Conntrack
    from pyroute2.conntrack import NFCTAttrTuple
    try:
        ct = Conntrack()
    except OSError as exc:
        raise DataplaneError(["conntrack"], -1, "", "cannot open conntrack netlink: %s" % exc)
    deleted = 0
    try:
        for text in sorted(addresses):
            ip = ipaddress.ip_interface(text).ip
            family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
            for field in ("saddr", "daddr"):
                wanted = NFCTAttrTuple(family=family, **{field: str(ip)})
                for entry in list(ct.dump_entries(tuple_orig=wanted)):
                    try:
                        ct.delete(entry)
                        deleted += 1
                    except OSError:
                        pass      # gone meanwhile (timed out, or deleted as the other side)
    except OSError as exc:
        raise DataplaneError(["conntrack"], -1, "", str(exc))
    finally:
        ct.close()
    return deleted

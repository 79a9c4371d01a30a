"""Configure IP pools: the address ranges containers get addresses from.

Usage:
  calicoctl pool add <CIDRS>... [--ipip] [--nat-outgoing]
  calicoctl pool remove <CIDRS>... [--force]
  calicoctl pool range add <START_IP> <END_IP> [--ipip] [--nat-outgoing]
  calicoctl pool show [--ipv4 | --ipv6]

Description:
  Add or remove CIDR pools of IPv4 or IPv6 addresses.  A range of addresses is stored as the
  smallest set of CIDRs that covers it exactly.

Options:
  --ipip          Use IP-in-IP encapsulation between hosts for this pool (IPv4 only).
  --nat-outgoing  NAT traffic from this pool to destinations outside every pool.
  --force         Remove the pool even though addresses in it are still allocated.
  --ipv4          Show only IPv4 pools.
  --ipv6          Show only IPv6 pools.
"""

import ipaddress

from calicoctl.datastore import open_store, pools
from calicoctl.datastore.globals import ensure_defaults
from calicoctl.datastore.models import Pool
from calicoctl.errors import ValidationError
from calicoctl.output import out, table
from calicoctl.validation import parse_cidr, parse_ip


def run(arguments):
    if arguments["show"]:
        version = 4 if arguments["--ipv4"] else 6 if arguments["--ipv6"] else None
        return pool_show(open_store(), version)
    if arguments["range"]:
        start = parse_ip(arguments["<START_IP>"], what="start address")
        end = parse_ip(arguments["<END_IP>"], version=start.version, what="end address")
        if end < start:
            raise ValidationError("The end of the range (%s) is below its start (%s)." % (
                end, start))
        cidrs = list(ipaddress.summarize_address_range(start, end))
        return pool_add(open_store(), cidrs, arguments["--ipip"], arguments["--nat-outgoing"])
    cidrs = [parse_cidr(c) for c in arguments["<CIDRS>"]]
    if arguments["add"]:
        return pool_add(open_store(), cidrs, arguments["--ipip"], arguments["--nat-outgoing"])
    return pool_remove(open_store(), cidrs, arguments["--force"])


def pool_add(store, cidrs, ipip, nat_outgoing):
    new = [Pool(cidr=c, ipip=pools.default_ipip(ipip), masquerade=nat_outgoing) for c in cidrs]
    # Check every pool, against the store and each other, before writing any.
    existing = pools.list_pools(store)
    for i, pool in enumerate(new):
        pools.check_new_pool(pool, existing + new[:i])
    ensure_defaults(store)
    for pool in new:
        pools.add_pool(store, pool)


def pool_remove(store, cidrs, force):
    from calicoctl.ipam.usage import count_allocated
    for cidr in cidrs:
        pools.get_pool(store, cidr)   # refuses unknown pools before anything is removed
        if not force:
            used = count_allocated(store, cidr)
            if used:
                raise ValidationError(
                    "Pool %s still has %d allocated address%s; remove the workloads first or "
                    "use --force." % (cidr, used, "" if used == 1 else "es"))
    for cidr in cidrs:
        pools.remove_pool(store, cidr)


def pool_show(store, version):
    for v in ((version,) if version else (4, 6)):
        rows = []
        for pool in pools.list_pools(store, v):
            options = []
            if pool.ipip:
                options.append("ipip")
            if pool.masquerade:
                options.append("nat-outgoing")
            if not pool.ipam:
                options.append("docker-ipam")
            rows.append([str(pool.cidr), ",".join(options)])
        out(table(["IPv%d CIDR" % v, "Options"], rows))

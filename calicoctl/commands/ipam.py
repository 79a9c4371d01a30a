"""Inspect and release addresses assigned by Calico IPAM.

Usage:
  calicoctl ipam info <IP>
  calicoctl ipam release <IP>
  calicoctl ipam show [--host=<HOST>]

Description:
  info     Whether <IP> is assigned; its pool and block, the host the block is affine to, and
           the handle and attributes of the allocation.
  release  Release <IP> so Calico IPAM can assign it again.
  show     Per pool and per block: addresses used and free, and the host each block is affine
           to, so you can see where the address space went.

Options:
  --host=<HOST>  Show only the blocks affine to this host.

Warnings:
  -  Releasing an in-use IP address can result in it being assigned to multiple workloads.
"""

import json

from calicoctl.datastore import open_store
from calicoctl.errors import NotFoundError
from calicoctl.ipam.allocator import IPAMClient
from calicoctl.ipam.usage import usage_report
from calicoctl.output import msg, out, table
from calicoctl.validation import parse_ip

RELEASE_WARNING = ("Warning: releasing an IP address that is still in use can result in it "
                   "being assigned to multiple workloads.")


def run(arguments):
    if arguments["show"]:
        return ipam_show(open_store(), arguments["--host"])
    ip = parse_ip(arguments["<IP>"])
    if arguments["info"]:
        return ipam_info(IPAMClient(open_store()), ip)
    return ipam_release(IPAMClient(open_store()), ip)


def ipam_info(ipam, ip):
    assignment = ipam.get_assignment(ip)
    if assignment is None:
        out("IP %s is not assigned." % ip)
        return
    rows = [("Pool", assignment["pool"] or "(removed)"),
            ("Block", assignment["block"]),
            ("Host", assignment["host"] or "(none)"),
            ("Handle", assignment["handle_id"] or "(none)"),
            ("Attributes", json.dumps(assignment["attributes"], sort_keys=True))]
    out("IP %s is assigned." % ip)
    for name, value in rows:
        out("%-11s %s" % (name + ":", value))


def ipam_release(ipam, ip):
    if ipam.release([ip]):
        raise NotFoundError("IP %s is not assigned; nothing was released." % ip)
    out("Released %s." % ip)
    msg(RELEASE_WARNING)


def ipam_show(store, host):
    rows = []
    for pool in usage_report(store, host=host):
        if pool.cidr is None:
            name = "(pool removed)"
        else:
            name = str(pool.cidr) + ("" if pool.ipam else " (docker-ipam)")
            if host is None or pool.blocks:
                rows.append([name, "", "", pool.used, pool.size - pool.used])
        if pool.cidr is None or pool.blocks:
            for b in pool.blocks:
                rows.append([name if pool.cidr is None else "", str(b.cidr), b.host or "",
                             b.used, b.free])
    out(table(["Pool", "Block", "Host", "Used", "Free"], rows))

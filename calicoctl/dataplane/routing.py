"""Routes to workloads and the IPIP tunnel device, as the agent keeps them.

Endpoint routes are scope link via the workload's veth, with proxy ARP/NDP on that veth so the
workload's gateway answers; tunnel routes go onlink via tunl0.  The plugin and `calicoctl
container` make the veths (veth.py); the agent routes to them (felix/executor.py drives this).
"""

import logging
import os

from calicoctl.dataplane import sysctl
from calicoctl.dataplane.commands import run_command
from calicoctl.dataplane.netlink import if_index
from calicoctl.errors import DataplaneError

log = logging.getLogger(__name__)


def best_effort(set_sysctls, *args):
    """Set a sysctl through `sysctl.py`, carrying on without one that cannot be set (the agent's
    way: the interface went with its workload, the host has no IPv6).  The agent
    logs that and leaves the rest to the next route sync or restart."""
    try:
        set_sysctls(*args)
    except DataplaneError as exc:
        log.debug("Cannot set a sysctl: %s", exc)


def present_interfaces(prefix):
    """Names of this namespace's interfaces starting with prefix (cheap: one listdir)."""
    try:
        return {n for n in os.listdir("/sys/class/net") if n.startswith(prefix)}
    except OSError:
        return set()


class RouteManager:
    """Endpoint routes (scope link via the veth) and tunnel routes (onlink via tunl0)."""

    def __init__(self):
        self._ipr = None
        self.programmed = set()

    @property
    def ipr(self):
        if self._ipr is None:
            from pyroute2 import IPRoute   # deferred: netlink socket only when needed
            self._ipr = IPRoute()
        return self._ipr

    def _args(self, route):
        # One ioctl: pyroute2's link_lookup dumps and parses every link of the host, a cost
        # that grew with the host's workloads on every route of every new endpoint.
        index = if_index(route.dev)
        if index is None:
            return None
        args = {"dst": route.dst, "oif": index}
        if route.gateway:
            args.update(gateway=route.gateway, flags=4 if route.onlink else 0)  # RTNH_F_ONLINK
        else:
            args["scope"] = 253        # RT_SCOPE_LINK: the workload is on the veth
        return args

    def set_routes(self, desired):
        """Install routes in desired not yet programmed and remove ones no longer desired."""
        self.update(desired, self.programmed - desired)

    def update(self, add, remove):
        """Install the routes in `add` not yet programmed and remove those in `remove`: the
        work of one change, without looking at every route (set_routes passes all of them)."""
        if not (add - self.programmed or remove & self.programmed):
            return            # before importing pyroute2, which costs ~80 ms the first time
        from pyroute2.netlink.exceptions import NetlinkError
        for route in sorted(add - self.programmed, key=str):
            args = self._args(route)
            if args is None:
                continue
            try:
                self.ipr.route("replace", **args)
            except NetlinkError as exc:
                log.error("Cannot add route %s dev %s: %s", route.dst, route.dev, exc)
                continue
            self.programmed.add(route)
            self._interface_sysctls(route)
        for route in remove & self.programmed:
            args = self._args(route)
            if args is not None:
                try:
                    self.ipr.route("del", **args)
                except NetlinkError:
                    pass     # already gone (e.g. with its interface)
            self.programmed.discard(route)

    @staticmethod
    def forget_flows(addresses):
        """Delete the tracked connections of addresses that left this host's workloads
        (conntrack.py says why)."""
        from calicoctl.dataplane.conntrack import forget_flows
        return forget_flows(addresses)

    def repair(self, desired):
        """Re-add any desired route the kernel lost (periodic refresh)."""
        have = set()
        for family in (2, 10):
            for r in self.ipr.get_routes(family=family):
                dst = r.get_attr("RTA_DST")
                if dst is not None:
                    have.add("%s/%d" % (dst, r["dst_len"]))
        missing = {r for r in desired if r.dst not in have}
        if missing:
            log.warning("Restoring %d route(s) removed behind our back", len(missing))
            self.programmed -= missing
        self.set_routes(desired)

    @staticmethod
    def _interface_sysctls(route):
        if route.gateway:
            return
        if ":" in route.dst:
            best_effort(sysctl.enable_proxy_ndp, route.dev)
        else:
            best_effort(sysctl.enable_proxy_arp, route.dev)

    def close(self):
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None


def ensure_tunnel(device, runner=run_command):
    """True if the IPIP device exists (loading the module if we can); False if this kernel
    has no ipip support."""
    if os.path.exists("/sys/class/net/%s" % device):
        return True
    for cmd in (["modprobe", "ipip"], ["ip", "link", "add", "name", device, "type", "ipip"]):
        try:
            runner(cmd)
        except DataplaneError:
            pass
        if os.path.exists("/sys/class/net/%s" % device):
            break
    if not os.path.exists("/sys/class/net/%s" % device):
        return False
    run_command(["ip", "link", "set", device, "up"])
    return True

"""Every sysctl this project reads or writes, through one reader and one writer.

The plugin, `calicoctl container`, `calicoctl node` and the agent all use these, so a failed
write reads the same everywhere: a DataplaneError naming the sysctl as `sysctl -w` would.  A
caller that can live without a value (the agent, on an interface that may already be gone)
catches that error itself.

Paths are relative to /proc/sys with slashes (`net/ipv4/ip_forward`): interface names may hold
dots, so the dotted form would be ambiguous.  /proc/sys/net shows the network namespace of the
thread that opens it, which `netlink.run_in_netns` relies on.
"""

import os

from calicoctl.errors import DataplaneError

# Where sysctls live; tests point this at a directory of plain files.  A Docker managed plugin
# sees /proc/sys read-only (Docker gives plugins no way to change that), so its config.json
# mounts the host's /proc/sys elsewhere and names it here (plugin/managed.py).
PROC_SYS = os.environ.get("CALICO_PROC_SYS") or "/proc/sys"

FORWARDING = {4: "net/ipv4/ip_forward", 6: "net/ipv6/conf/all/forwarding"}


def write(path, value):
    """Write one value; raises DataplaneError naming the sysctl."""
    try:
        with open(os.path.join(PROC_SYS, path), "w") as f:
            f.write(str(value))
    except OSError as exc:
        raise DataplaneError(["sysctl", "-w", "%s=%s" % (path.replace("/", "."), value)],
                             exc.errno or 1, stderr=exc.strerror or str(exc))


def read(path):
    """The value, stripped; None if the sysctl does not exist (or cannot be read)."""
    try:
        with open(os.path.join(PROC_SYS, path)) as f:
            return f.read().strip()
    except OSError:
        return None


def enable_forwarding(ipv6=False):
    """A Calico host routes its workloads' traffic, so forwarding must be on."""
    write(FORWARDING[4], 1)
    if ipv6:
        write(FORWARDING[6], 1)


def enable_proxy_arp(ifname):
    """The workload's IPv4 gateway 169.254.1.1 exists nowhere: the host answers for it on the
    workload's veth."""
    write("net/ipv4/conf/%s/proxy_arp" % ifname, 1)
    # Proxy ARP replies are delayed by a random 0-0.8 s by default (proxy_delay, meant for
    # shared segments); on a point-to-point veth that only slows the workload's first packet.
    write("net/ipv4/neigh/%s/proxy_delay" % ifname, 0)


def enable_ipv6(ifname):
    """Docker turns IPv6 off on interfaces of networks without it (and a host may have it off by
    default); the kernel then refuses IPv6 addresses there (EACCES).  Written only when off."""
    path = "net/ipv6/conf/%s/disable_ipv6" % ifname
    if read(path) == "1":
        write(path, 0)


def enable_proxy_ndp(ifname):
    write("net/ipv6/conf/%s/proxy_ndp" % ifname, 1)

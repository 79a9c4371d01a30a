"""The underlay: a bridge in the root namespace joining the hosts through veth pairs.

Addresses come from 198.18.0.0/15 (RFC 2544 benchmarking range) so they can never clash with a
real network, and the hosts' default route points at an address nobody holds, so nothing is ever
routed off the machine.
"""

import ipaddress
import shutil
from dataclasses import dataclass

from . import procs

IPTABLES_COMMENT = "calico-testbed"
VETH_PREFIX = "tb-"            # root-side veths: cleanup finds leftovers by this prefix


@dataclass(frozen=True)
class Underlay:
    """The bridge and subnet joining one testbed's hosts. The default is what `make demo` and
    the system tests use; a second testbed (e.g. the teardown test) picks another bridge/subnet."""

    bridge: str = "calibr0"
    subnet: ipaddress.IPv4Network = ipaddress.ip_network("198.18.0.0/24")

    @property
    def bridge_ip(self):
        return self.subnet[1]           # the root namespace's side; etcd listens here

    @property
    def bridge_mac(self):
        """A fixed, locally administered address made from the bridge's IP (02:00 + its four
        bytes), so two testbeds differ.  A bridge whose address was never set takes the lowest
        address among its ports, so attaching a port (a test's extra namespace) could change
        it; the hosts' ARP entries for the bridge IP (etcd) then name an address the bridge no
        longer receives for, and the hosts lose etcd for the seconds until the entry is
        probed again.  An address set by hand stays put."""
        return "02:00:" + ":".join("%02x" % b for b in self.bridge_ip.packed)

    @property
    def gateway(self):
        # Hosts need *a* default route so proxy ARP (169.254.1.1) answers; .254 is never
        # assigned, so anything sent to it dies on the bridge instead of leaving the machine.
        return self.subnet[254]

    def host_ip(self, index):
        """Underlay address of the index-th host (0-based): calico-01 is .11, calico-02 .12."""
        return self.subnet[11 + index]


DEFAULT_UNDERLAY = Underlay()


def root_veth_name(host_name):
    return (VETH_PREFIX + host_name)[:15]   # IFNAMSIZ - 1


def link_exists(name):
    return procs.run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def list_links(prefix):
    out = procs.run(["ip", "-o", "link", "show"]).stdout
    names = []
    for line in out.splitlines():
        # "12: tb-calico-01@if3: <...>" -> "tb-calico-01"
        name = line.split(":", 2)[1].strip().split("@", 1)[0]
        if name.startswith(prefix):
            names.append(name)
    return names


def create_bridge(underlay=DEFAULT_UNDERLAY):
    name = underlay.bridge
    procs.run(["ip", "link", "add", name, "address", underlay.bridge_mac, "type", "bridge"])
    procs.run(["ip", "addr", "add", f"{underlay.bridge_ip}/{underlay.subnet.prefixlen}",
               "dev", name])
    procs.run(["ip", "link", "set", name, "up"])
    guard_root_forwarding(name)


def delete_link(name):
    if link_exists(name):
        procs.run(["ip", "link", "del", name], check=False)


def connect_host(host, underlay=DEFAULT_UNDERLAY):
    """veth pair: root side on the bridge, `eth0` with the host's address in the host."""
    root_side = root_veth_name(host.name)
    procs.run(["ip", "link", "add", root_side, "type", "veth",
               "peer", "name", "eth0", "netns", str(host.pid)])
    procs.run(["ip", "link", "set", root_side, "master", underlay.bridge, "up"])
    host.run(["ip", "addr", "add", f"{host.ip}/{underlay.subnet.prefixlen}", "dev", "eth0"])
    host.run(["ip", "link", "set", "eth0", "up"])
    host.run(["ip", "route", "add", "default", "via", str(underlay.gateway), "dev", "eth0"])
    # Hosts route for their containers (calico's whole point); the root namespace never does.
    host.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    return root_side


def _iptables_binaries():
    return [b for b in ("iptables", "ip6tables") if shutil.which(b)]


def guard_root_forwarding(bridge):
    """Let the bridge carry the hosts' traffic, and drop anything the root namespace would
    forward between the bridge and another interface.

    A Docker engine running on this machine itself (the normal case: installing docker.io starts
    it) sets the FORWARD policy to DROP and turns on bridge-nf-call-iptables, which sends frames
    bridged between two ports of calibr0 through FORWARD too: without the ACCEPT the hosts could
    not reach each other or etcd's peers. The DROPs keep the testbed sealed even though such an
    engine also turns on ip_forward here.
    """
    for binary in _iptables_binaries():
        for direction, verdict in ((["-i", bridge, "!", "-o", bridge], "DROP"),
                                   (["-o", bridge, "!", "-i", bridge], "DROP"),
                                   (["-i", bridge, "-o", bridge], "ACCEPT")):
            procs.run([binary, "-w", "-I", "FORWARD", "1", *direction,
                       "-m", "comment", "--comment", IPTABLES_COMMENT, "-j", verdict])


def remove_root_rules(bridge=None):
    """Delete the root-namespace FORWARD rules the harness added (found by their comment), for
    one bridge or for all."""
    for binary in _iptables_binaries():
        rules = procs.run([binary, "-w", "-S", "FORWARD"], check=False).stdout.splitlines()
        for rule in rules:
            if bridge is not None and f" {bridge} " not in rule:
                continue
            if f"--comment {IPTABLES_COMMENT}" in rule and rule.startswith("-A "):
                procs.run([binary, "-w", "-D", *rule.split()[1:]], check=False)


def root_rules(bridge=None):
    """The harness's rules still present (for tests of teardown)."""
    found = []
    for binary in _iptables_binaries():
        rules = procs.run([binary, "-w", "-S", "FORWARD"], check=False).stdout.splitlines()
        found += [f"{binary} {r}" for r in rules
                  if IPTABLES_COMMENT in r and (bridge is None or f" {bridge} " in r)]
    return found

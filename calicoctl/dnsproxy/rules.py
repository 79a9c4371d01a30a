"""The nat OUTPUT rules that bring a workload's DNS queries to us first.

Docker's resolver listens on 127.0.0.11 at a random port inside each container's namespace;
its rules there (libnetwork resolver_unix.go, the same on 20.10, 26.1 and 28.5 unless 28's
opt-in nftables firewall backend is on) are

    -A OUTPUT -d 127.0.0.11/32 -j DOCKER_OUTPUT
    -A DOCKER_OUTPUT -d 127.0.0.11/32 -p tcp --dport 53 -j DNAT --to-destination 127.0.0.11:<t>
    -A DOCKER_OUTPUT -d 127.0.0.11/32 -p udp --dport 53 -j DNAT --to-destination 127.0.0.11:<u>
    -A DOCKER_POSTROUTING ... two SNAT rules back to :53

We insert two rules above Docker's jump that DNAT port 53 to our sockets instead, except for
packets carrying MARK: our own forwards to Docker, which then take Docker's rules as every query
did before.  Docker inserts its jump only when it is missing (at the namespace's first resolver
set-up), so once Docker's rules are complete ours stay first; a live-restored dockerd only
flushes and refills DOCKER_OUTPUT.  We wait for Docker's four rules before adding ours, and
re-check the order on every refresh.

The rules go in with one `iptables-restore --noflush` (atomic per table), through the same
iptables flavour (nft or legacy) that holds Docker's rules: two flavours' nat chains at one
hook run in an order nobody chooses.  Text is computed here (pure); `apply` runs it.
"""

import re

from calicoctl.errors import DataplaneError
from calicoctl.dataplane.commands import run_command
from calicoctl.felix.executor import parse_save

RESOLVER_IP = "127.0.0.11"
# Any value does: nothing else in a container's namespace marks packets (Docker's rules there
# match none).  It only has to differ from 0.
MARK = 0xCA1D05
COMMENT = "calico-dns"
DOCKER_JUMP = "-d 127.0.0.11/32 -j DOCKER_OUTPUT"
FLAVOURS = {"nft": ("iptables-nft-save", "iptables-nft-restore"),
            "legacy": ("iptables-legacy-save", "iptables-legacy-restore")}
_OURS = re.compile(r'--comment "?%s"?( |$)' % COMMENT)
_TARGET = re.compile(r"-p (udp|tcp) .*--to-destination 127\.0\.0\.11:(\d+)")


def wanted(udp_port, tcp_port):
    """Our two rules, as given to iptables (UDP first, as Docker's answer is over UDP)."""
    return ["-d %s/32 -p %s -m %s --dport 53 -m mark ! --mark 0x%x -m comment --comment %s "
            "-j DNAT --to-destination %s:%d" % (RESOLVER_IP, proto, proto, MARK, COMMENT,
                                                 RESOLVER_IP, port)
            for proto, port in (("udp", udp_port), ("tcp", tcp_port))]


def docker_ready(chains):
    """Docker's resolver rules are all there: its jump, both DNATs and both SNATs."""
    return DOCKER_JUMP in chains.get("OUTPUT", ()) and \
        len(chains.get("DOCKER_OUTPUT", ())) >= 2 and len(chains.get("DOCKER_POSTROUTING", ())) >= 2


def docker_ports(chains):
    """{"udp": port, "tcp": port} Docker's resolver listens on (its DNAT targets)."""
    found = {}
    for rule in chains.get("DOCKER_OUTPUT", ()):
        match = _TARGET.search(rule)
        if match:
            found[match.group(1)] = int(match.group(2))
    return found


def ours(chains):
    return [r for r in chains.get("OUTPUT", ()) if _OURS.search(r)]


def in_place(chains, udp_port, tcp_port):
    """Our rules are the first two of OUTPUT, to our ports, and there are no others."""
    output = chains.get("OUTPUT", [])
    if len(ours(chains)) != 2 or len(output) < 2:
        return False
    return [_target(output[0]), _target(output[1])] == [("udp", udp_port), ("tcp", tcp_port)] \
        and all(_OURS.search(r) for r in output[:2])


def _target(rule):
    match = _TARGET.search(rule)
    return (match.group(1), int(match.group(2))) if match else None


def install_text(chains, udp_port, tcp_port):
    """iptables-restore input that leaves exactly our two rules at the top of OUTPUT."""
    lines = ["*nat"] + ["-D OUTPUT %s" % r for r in ours(chains)]
    udp, tcp = wanted(udp_port, tcp_port)
    lines += ["-I OUTPUT 1 %s" % tcp, "-I OUTPUT 1 %s" % udp, "COMMIT", ""]
    return "\n".join(lines)


def removal_text(chains):
    """iptables-restore input removing our rules, or None when there are none."""
    found = ours(chains)
    if not found:
        return None
    return "\n".join(["*nat"] + ["-D OUTPUT %s" % r for r in found] + ["COMMIT", ""])


# --- applying them: call inside the namespace (sandboxes.in_netns) -----------------------------

def read_nat(flavour, runner=run_command):
    return parse_save(runner([FLAVOURS[flavour][0], "-t", "nat"]))


def find_docker_rules(runner=run_command):
    """(flavour, chains) of the iptables flavour holding Docker's complete resolver rules, or
    (None, None) while they are not (yet) there."""
    for flavour in FLAVOURS:
        try:
            chains = read_nat(flavour, runner)
        except DataplaneError:      # a flavour this kernel or image lacks is no answer
            continue
        if docker_ready(chains):
            return flavour, chains
    return None, None


def apply(flavour, text, runner=run_command):
    runner([FLAVOURS[flavour][1], "--noflush"], text)

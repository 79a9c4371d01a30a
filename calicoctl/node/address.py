"""The host's own addresses: finding the one BGP should speak from, and checking a given one.

Reading uses `ip -j -d addr show` (JSON, with each link's kind), so the choice itself is a pure
function over plain data (`choose_address`) that unit tests drive with made-up interfaces.
"""

import ipaddress
import json
import re
import subprocess

from calicoctl.errors import DataplaneError, ValidationError

# Interfaces whose addresses are never the host's own: loopback, Docker's bridge(s), Calico's
# workload veths and IP-in-IP tunnel.  Docker names the bridge of a user-defined bridge network
# "br-" + the first 12 hex digits of the network id.
EXCLUDED_PREFIXES = ("lo", "docker", "cali", "tunl")
_DOCKER_BRIDGE = re.compile(r"^br-[0-9a-f]{12}$")


def read_interfaces():
    """[{"name", "kind", "addresses": [ipaddress interface objects], "mtu"}] in kernel order."""
    cmd = ["ip", "-j", "-d", "addr", "show"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DataplaneError(cmd, proc.returncode, proc.stdout, proc.stderr)
    links = []
    for link in json.loads(proc.stdout or "[]"):
        addresses = []
        for a in link.get("addr_info", []):
            if a.get("family") in ("inet", "inet6") and a.get("scope") == "global":
                addresses.append(ipaddress.ip_interface("%s/%s" % (a["local"], a["prefixlen"])))
        links.append({"name": link["ifname"], "kind": (link.get("linkinfo") or {}).get("info_kind"),
                      "addresses": addresses, "mtu": link.get("mtu")})
    return links


def docker_bridge_names(docker_client):
    """Names of the bridges Docker made for its networks (docker0 and any custom-named ones)."""
    names = {"docker0"}
    if docker_client is None:
        return names
    try:
        for net in docker_client.api.networks():
            if net.get("Driver") == "bridge":
                options = net.get("Options") or {}
                names.add(options.get("com.docker.network.bridge.name") or
                          "br-" + net["Id"][:12])
    except Exception:  # noqa: BLE001 - Docker is optional here; the name patterns still apply
        pass
    return names


def excluded(link, docker_bridges=frozenset()):
    name = link["name"]
    if name.startswith(EXCLUDED_PREFIXES) or name in docker_bridges:
        return True
    return link.get("kind") == "bridge" and bool(_DOCKER_BRIDGE.match(name))


def choose_address(links, version=4, docker_bridges=frozenset()):
    """The first global address of the given family on an interface that is the host's own."""
    for link in links:
        if excluded(link, docker_bridges):
            continue
        for iface in link["addresses"]:
            if iface.version == version:
                return iface.ip
    return None


def autodetect(version=4, docker_client=None, links=None):
    links = read_interfaces() if links is None else links
    ip = choose_address(links, version, docker_bridge_names(docker_client))
    if ip is None and version == 4:
        raise ValidationError(
            "Could not find an IPv4 address for this host (no global address outside lo, "
            "docker*, cali*, tunl* and Docker's bridges); give one with --ip.")
    return ip


def check_on_host(ip, links=None):
    """Raise unless ip is assigned to one of this host's interfaces."""
    links = read_interfaces() if links is None else links
    for link in links:
        if any(iface.ip == ip for iface in link["addresses"]):
            return link["name"]
    raise ValidationError("%s is not an address of this host; --ip%s must be one of its own "
                          "(see 'ip addr')." % (ip, "6" if ip.version == 6 else ""))


def interface_of(ip, links=None):
    """The link holding ip, or None."""
    links = read_interfaces() if links is None else links
    for link in links:
        if any(iface.ip == ip for iface in link["addresses"]):
            return link
    return None

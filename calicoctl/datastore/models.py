"""Typed objects for what Calico stores, converting to and from the stored JSON.

Unknown fields in stored endpoints are kept (in `extra`) so data written by other Calico tools
round-trips unchanged.
"""

import ipaddress
import re
from dataclasses import dataclass, field

from calicoctl.errors import ValidationError

# libnetwork endpoints all carry this MAC on the container side: the host routes (not bridges)
# every packet, so the MAC never needs to be unique, and a fixed one lets anti-spoofing match it.
WORKLOAD_MAC = "ee:ee:ee:ee:ee:ee"
# The workloads' next hop.  Link-local, so it never clashes with a pool; the host answers ARP for
# it by proxy ARP on each workload's veth.
IPV4_GATEWAY = "169.254.1.1"
IPIP_DEVICE = "tunl0"
# Pools are carved into blocks of 64 addresses (/26, /122): small enough to spread across many
# hosts, large enough that a host claims a block rarely.
BLOCK_PREFIX = {4: 26, 6: 122}
# An IPv4 /32 already in the form ipaddress prints (octets 0-255, no leading zeros): what
# endpoints hold nearly always, so canonical_net need not parse it (parsing 10,000 of them
# was a sixth of a cold start, bench/felix.py).
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_V4_HOST = re.compile(r"\.".join([_OCTET] * 4) + "/32")


def is_canonical_v4_host(text):
    """Whether text is an IPv4 /32 exactly as canonical_net would print it."""
    return isinstance(text, str) and _CANONICAL_V4_HOST.fullmatch(text) is not None


def canonical_net(text):
    """A network as ipaddress prints it ("10.0.0.1" -> "10.0.0.1/32"); ValueError if it is
    none."""
    if is_canonical_v4_host(text):
        return text
    return str(ipaddress.ip_network(text, strict=False))


def interface_name(endpoint_id, prefix="cali"):
    """Host-side veth name: prefix + first 11 characters of the id (15 = IFNAMSIZ - 1)."""
    return (prefix + endpoint_id)[:15]


@dataclass
class Pool:
    cidr: object                      # ipaddress network
    ipip: str = None                  # tunnel device when IPIP is on
    masquerade: bool = False
    ipam: bool = True                 # False: a Docker-default-IPAM subnet we route but never hand out

    @property
    def version(self):
        return self.cidr.version

    def to_json(self):
        data = {"cidr": str(self.cidr)}
        if self.ipip:
            data["ipip"] = self.ipip
        if self.masquerade:
            data["masquerade"] = True
        if not self.ipam:
            data["ipam"] = False
        return data

    @classmethod
    def from_json(cls, data):
        if not isinstance(data, dict) or "cidr" not in data:
            raise ValidationError("A pool must be a JSON object with a cidr.")
        try:
            cidr = ipaddress.ip_network(data["cidr"], strict=False)
        except (ValueError, TypeError):
            raise ValidationError("Invalid pool cidr %r." % (data.get("cidr"),))
        ipip = data.get("ipip") or None
        return cls(cidr=cidr, ipip=ipip if isinstance(ipip, str) else None,
                   masquerade=data.get("masquerade") is True, ipam=data.get("ipam") is not False)


@dataclass
class Endpoint:
    host: str
    orchestrator: str
    workload: str
    endpoint_id: str
    name: str = None                  # host-side interface name
    mac: str = None
    state: str = "active"
    profile_ids: list = field(default_factory=list)
    ipv4_nets: list = field(default_factory=list)
    ipv6_nets: list = field(default_factory=list)
    ipv4_gateway: str = None
    ipv6_gateway: str = None
    extra: dict = field(default_factory=dict)   # fields we do not model (kept on write)

    _FIELDS = ("state", "name", "mac", "profile_ids", "ipv4_nets", "ipv6_nets", "ipv4_gateway",
               "ipv6_gateway")

    def to_json(self):
        data = dict(self.extra)
        data.update({"state": self.state, "name": self.name, "mac": self.mac,
                     "profile_ids": list(self.profile_ids), "ipv4_nets": list(self.ipv4_nets),
                     "ipv6_nets": list(self.ipv6_nets), "ipv4_gateway": self.ipv4_gateway,
                     "ipv6_gateway": self.ipv6_gateway})
        data.pop("profile_id", None)
        return data

    @classmethod
    def from_json(cls, host, orchestrator, workload, endpoint_id, data):
        if not isinstance(data, dict):
            raise ValidationError("Endpoint %s is not a JSON object." % endpoint_id)
        profile_ids = data.get("profile_ids")
        if profile_ids is None and data.get("profile_id"):
            profile_ids = [data["profile_id"]]          # old single-profile data
        if not isinstance(profile_ids or [], list):
            raise ValidationError("Endpoint %s: profile_ids must be a list." % endpoint_id)
        nets = {}
        for name in ("ipv4_nets", "ipv6_nets"):
            value = data.get(name) or []
            if not isinstance(value, list):
                raise ValidationError("Endpoint %s: %s must be a list." % (endpoint_id, name))
            nets[name] = [canonical_net(n) for n in value]
        extra = {k: v for k, v in data.items() if k not in cls._FIELDS and k != "profile_id"}
        return cls(host=host, orchestrator=orchestrator, workload=workload,
                   endpoint_id=endpoint_id, name=data.get("name"), mac=data.get("mac"),
                   state=data.get("state", "active"), profile_ids=list(profile_ids or []),
                   ipv4_nets=nets["ipv4_nets"], ipv6_nets=nets["ipv6_nets"],
                   ipv4_gateway=data.get("ipv4_gateway"), ipv6_gateway=data.get("ipv6_gateway"),
                   extra=extra)

    def addresses(self):
        """Every address of the endpoint (ipaddress objects)."""
        return [ipaddress.ip_network(n).network_address
                for n in list(self.ipv4_nets) + list(self.ipv6_nets)]


@dataclass
class BGPPeer:
    ip: object                        # ipaddress address
    as_num: str

    def to_json(self):
        return {"ip": str(self.ip), "as_num": str(self.as_num)}

    @classmethod
    def from_json(cls, data):
        return cls(ip=ipaddress.ip_address(data["ip"]), as_num=str(data["as_num"]))


@dataclass
class Node:
    name: str
    ipv4: str = None
    ipv6: str = None
    as_num: str = None                # None: inherits the global AS


@dataclass
class Network:
    """The libnetwork plugin's record of one Docker network on one host
    (/calico/libnetwork/v1/<network-id>, docs/datamodel.md).  Values are kept as stored, never
    coerced, and a field absent from a stored record stays absent when it is written back, so
    a record round-trips byte for byte."""
    network_id: str
    name: str = None                  # None until learned from Docker's events (plugin/names.py)
    ipam: str = None                  # "calico" or "default" (Docker's own IPAM)
    pool: str = None                  # IPv4 cidr, None for "calico" IPAM without --subnet
    pool_v6: str = None
    ipv6: bool = None
    mtu: object = None                # the --opt mtu value, or None
    options: dict = None              # the parsed --opt values
    host: str = None                  # the node whose Docker made it
    extra: dict = field(default_factory=dict)   # fields we do not model (kept on write)
    absent: frozenset = frozenset()   # modelled fields the stored record did not have

    _FIELDS = ("name", "ipam", "pool", "pool_v6", "ipv6", "mtu", "options", "host")

    def to_json(self):
        data = dict(self.extra)
        for name in self._FIELDS:
            value = getattr(self, name)
            if name not in self.absent or value is not None:
                data[name] = value
        return data

    @classmethod
    def from_json(cls, network_id, data):
        if not isinstance(data, dict):
            raise ValidationError("Network record %s is not a JSON object." % network_id)
        extra = {k: v for k, v in data.items() if k not in cls._FIELDS}
        return cls(network_id=network_id, extra=extra,
                   absent=frozenset(n for n in cls._FIELDS if n not in data),
                   **{n: data[n] for n in cls._FIELDS if n in data})

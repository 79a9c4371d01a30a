"""Request schemas, checked before any work: field -> (accepted types, required).

Docker sends null for empty maps and lists, so optional containers accept None.
"""

import re

from calicoctl.errors import ValidationError

_MAC = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]{0,127}$")   # ids end up in etcd keys: no '/'
_STR, _DICT, _LIST, _BOOL = (str,), (dict, type(None)), (list, type(None)), (bool, type(None))

_NET = {"NetworkID": ("id", True)}
_EP = {"NetworkID": ("id", True), "EndpointID": ("id", True)}

SCHEMAS = {
    "Plugin.Activate": {},
    "NetworkDriver.GetCapabilities": {},
    "NetworkDriver.GwAllocCheck": {"Options": (_DICT, False)},
    "NetworkDriver.CreateNetwork": {**_NET, "Options": (_DICT, False),
                                    "IPv4Data": (_LIST, False), "IPv6Data": (_LIST, False)},
    "NetworkDriver.DeleteNetwork": _NET,
    "NetworkDriver.CreateEndpoint": {**_EP, "Interface": (_DICT, False),
                                     "Options": (_DICT, False)},
    "NetworkDriver.DeleteEndpoint": _EP,
    "NetworkDriver.EndpointOperInfo": _EP,
    "NetworkDriver.Join": {**_EP, "SandboxKey": (_STR, True), "Options": (_DICT, False)},
    "NetworkDriver.Leave": _EP,
    "NetworkDriver.ProgramExternalConnectivity": {**_EP, "Options": (_DICT, False)},
    "NetworkDriver.RevokeExternalConnectivity": _EP,
    "NetworkDriver.DiscoverNew": {},
    "NetworkDriver.DiscoverDelete": {},
    "NetworkDriver.AllocateNetwork": {},
    "NetworkDriver.FreeNetwork": {},
    "IpamDriver.GetCapabilities": {},
    "IpamDriver.GetDefaultAddressSpaces": {},
    "IpamDriver.RequestPool": {"AddressSpace": (_STR, False), "Pool": (_STR, False),
                               "SubPool": (_STR, False), "Options": (_DICT, False),
                               "V6": (_BOOL, False)},
    "IpamDriver.ReleasePool": {"PoolID": (_STR, True)},
    "IpamDriver.RequestAddress": {"PoolID": (_STR, True), "Address": (_STR, False),
                                  "Options": (_DICT, False)},
    "IpamDriver.ReleaseAddress": {"PoolID": (_STR, True), "Address": (_STR, True)},
}

_LIST_ITEMS = {"IPv4Data", "IPv6Data"}
# Values from a request are quoted in error messages, which Docker shows the user on one line;
# a 20 kB id must not turn the sentence into a page.
SHOWN_MAX = 60


def shown(value):
    """repr(value), cut to SHOWN_MAX characters."""
    text = repr(value)
    return text if len(text) <= SHOWN_MAX else text[:SHOWN_MAX - 3] + "..."


def validate(call, body):
    """Raise ValidationError (one sentence) unless body fits the call's schema."""
    if not isinstance(body, dict):
        raise ValidationError("%s expects a JSON object, not %s." % (call, type(body).__name__))
    for name, (kind, required) in SCHEMAS[call].items():
        value = body.get(name)
        if value is None or value == "":
            if required:
                raise ValidationError("%s is missing %s." % (call, name))
            continue
        if kind == "id":
            if not isinstance(value, str) or not _ID.match(value):
                raise ValidationError("%s: %s %s is not a valid id." % (call, name, shown(value)))
        elif not isinstance(value, kind):
            raise ValidationError("%s: %s has the wrong type (%s)." % (
                call, name, type(value).__name__))
        if name in _LIST_ITEMS:
            for item in value:
                _check_ip_data(call, name, item)
        if name == "Interface":
            _check_interface(call, value)
    return body


def _check_interface(call, iface):
    """CreateEndpoint's Interface: string addresses and a unicast MAC (the kernel refuses a
    multicast one on the veth, half-way through creating it)."""
    for field in ("Address", "AddressIPv6", "MacAddress"):
        if not isinstance(iface.get(field) or "", str):
            raise ValidationError("%s: Interface %s must be a string, not %s." % (
                call, field, shown(iface.get(field))))
    mac = iface.get("MacAddress") or ""
    if mac and (not _MAC.match(mac) or int(mac[:2], 16) & 1):
        raise ValidationError("%s: Interface MacAddress %s is not a unicast MAC address such as "
                              "ee:ee:ee:ee:ee:ee." % (call, shown(mac)))


def _check_ip_data(call, name, item):
    """One IPv4Data/IPv6Data entry: an object whose Pool is a CIDR of the list's family (the
    driver reads the first entry's Pool unguarded)."""
    import ipaddress
    version = 4 if name == "IPv4Data" else 6
    pool = item.get("Pool") if isinstance(item, dict) else None
    try:
        ok = isinstance(pool, str) and ipaddress.ip_network(pool, strict=False).version == version
    except ValueError:
        ok = False
    if not ok:
        raise ValidationError("%s: each %s entry must be an object whose Pool is an IPv%d CIDR, "
                              "not %s." % (call, name, version, shown(pool)))
    for field in ("AddressSpace", "Gateway"):
        if not isinstance(item.get(field) or "", str):
            raise ValidationError("%s: %s %s must be a string." % (call, name, field))

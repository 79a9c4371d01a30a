"""Request schemas, checked before any work: field -> (accepted types, required).

Docker sends null for empty maps and lists, so optional containers accept None.
"""

import re

from calicoctl.errors import ValidationError

_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]{0,127}$")   # ids end up in etcd keys: no '/'
_STR, _DICT, _LIST, _BOOL = (str,), (dict, type(None)), (list, type(None)), (bool, type(None))

_NET = {"NetworkID": ("id", True)}
_EP = {"NetworkID": ("id", True), "EndpointID": ("id", True)}

SCHEMAS = {
    "Plugin.Activate": {},
    "NetworkDriver.GetCapabilities": {},
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
                raise ValidationError("%s: %s %r is not a valid id." % (call, name, value))
        elif not isinstance(value, kind):
            raise ValidationError("%s: %s has the wrong type (%s)." % (
                call, name, type(value).__name__))
        if name in _LIST_ITEMS:
            for item in value:
                if not isinstance(item, dict) or not isinstance(item.get("Pool", ""), str):
                    raise ValidationError("%s: each %s entry must be an object with a Pool."
                                          % (call, name))
    return body

"""Conversions from user text to typed values, shared by the CLI and the plugin.

Each raises ValidationError with one sentence that says what is wrong and what to write instead.
"""

import ipaddress
import re

from calicoctl.errors import ValidationError

_AS_DOTTED = re.compile(r"^([0-9]+)\.([0-9]+)\Z")


def parse_ip(text, version=None, what="address"):
    try:
        ip = ipaddress.ip_address(str(text).strip())
    except ValueError:
        raise ValidationError("Invalid IP %s %r." % (what, text))
    if version and ip.version != version:
        raise ValidationError("%s is not an IPv%d %s." % (text, version, what))
    return ip


def parse_cidr(text, version=None, strict=False):
    try:
        net = ipaddress.ip_network(str(text).strip(), strict=strict)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            raise ValidationError("Invalid CIDR %s: host bits are set; did you mean %s?" % (
                text, ipaddress.ip_network(str(text).strip(), strict=False)))
        raise ValidationError("Invalid CIDR %r: use e.g. 192.168.0.0/16 or fd80:24e2::/64."
                              % (text,))
    if version and net.version != version:
        raise ValidationError("%s is not an IPv%d CIDR." % (text, version))
    return net


def parse_as(text):
    """AS numbers: 1-4294967295, or the dotted a.b form (a, b 0-65535).  Returns the plain
    decimal string, which is what is stored: the original calicoctl turned a.b into
    65536 * a + b (asplain, RFC 5396) before writing it, so 1.10 is stored as 65546."""
    s = str(text).strip()
    m = _AS_DOTTED.match(s)
    if m:
        hi, lo = int(m.group(1)), int(m.group(2))
        if hi <= 65535 and lo <= 65535 and (hi, lo) != (0, 0):
            return str(65536 * hi + lo)
    elif s.isascii() and s.isdigit() and 1 <= int(s) <= 4294967295:
        return str(int(s))
    raise ValidationError("Invalid AS number %r: use 1-4294967295 or the dotted form a.b."
                          % (text,))


def parse_position(text, length, inserting):
    """A 1-based rule position; inserting allows one past the end (and negatives from the end)."""
    try:
        pos = int(text)
    except (TypeError, ValueError):
        raise ValidationError("Invalid position %r: use a number." % (text,))
    upper = length + 1 if inserting else length
    if pos < 0:
        pos = upper + pos + 1
    if not 1 <= pos <= upper:
        raise ValidationError("Position %s is out of range: use 1 to %d." % (text, upper)
                              if upper else "There are no rules at position %s." % text)
    return pos

"""Policy rules: validation, the stored JSON form, and the one-line form `rule show` prints.

A rule is stored as a JSON object with only the keys that are set (docs/datamodel.md).  The same
validation runs on CLI input, on `rule update` JSON and on values the agent reads back from etcd,
so a hand-edited rule can never become broader than it says.

In memory (normalise_rule) a rule carries `ip_version` beside a CIDR, and ICMP over IPv6 is
`icmpv6` (rule_versions derives the family of the rest).  Stored (stored_rule) it takes the
original calicoctl's form, whose Rule had neither an `ip_version` key nor an `icmpv6` protocol
and refused to load a rule with either: the family is left to the CIDR, and ICMP with an IPv6
CIDR is written `icmp`.  Only a rule the original had no words for (ICMPv6 or one family with no
CIDR to say which) keeps `icmpv6` or `ip_version`, the agent's own names for them.
"""

import ipaddress
import re

from calicoctl.errors import ValidationError

ACTIONS = ("allow", "deny")
NAMED_PROTOCOLS = ("tcp", "udp", "icmp", "icmpv6", "sctp", "udplite")
PORT_PROTOCOLS = ("tcp", "udp")
# Felix's name alphabet.  \Z (not $) so a trailing newline cannot slip into an etcd key.
NAME_RE = re.compile(r"^[a-zA-Z0-9_.\-]+\Z")
KNOWN_KEYS = ("action", "protocol", "src_net", "dst_net", "src_tag", "dst_tag", "src_ports",
              "dst_ports", "icmp_type", "icmp_code", "ip_version")
# ASCII digits only; a range is lo:hi, and the original CLI also took lo-hi (stored as lo:hi).
_PORT_RE = re.compile(r"^([0-9]+)(?:[:-]([0-9]+))?\Z")


def validate_name(name, what="profile"):
    # "." and ".." are path steps to etcd, not names: /calico/v1/config/.. is /calico/v1.
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise ValidationError(
            "Invalid %s name %r: use only letters, digits, '_', '.' and '-'." % (what, name))
    return name


def parse_port(text):
    """'80' -> 80; '1000:2000' -> '1000:2000' (the stored forms)."""
    s = str(text).strip()
    m = _PORT_RE.match(s)
    if not m:
        raise ValidationError("Invalid port %r: use a number 0-65535 or a range lo:hi." % text)
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else None
    for p in (lo, hi):
        if p is not None and not 0 <= p <= 65535:
            raise ValidationError("Invalid port %r: ports are 0-65535." % text)
    if hi is None:
        return lo
    if lo > hi:
        raise ValidationError("Invalid port range %r: the low port must not exceed the high."
                              % text)
    return "%d:%d" % (lo, hi)


def parse_ports(text):
    """'80,443,1000:2000' -> [80, 443, '1000:2000']."""
    parts = [p for p in str(text).split(",")]
    if not parts or any(not p.strip() for p in parts):
        raise ValidationError("Invalid port list %r: use comma-separated ports or lo:hi ranges."
                              % text)
    return [parse_port(p) for p in parts]


def parse_cidr(text):
    try:
        return ipaddress.ip_network(str(text).strip(), strict=False)
    except ValueError:
        raise ValidationError("Invalid CIDR %r: use an address with a prefix length, "
                              "e.g. 10.0.0.0/8 or fd00::/64." % (text,))


def _is_ascii_number(value):
    # str.isdigit() is also true for '²', which int() rejects: check ASCII digits only.
    return isinstance(value, str) and value.isascii() and value.isdigit()


def _int_field(rule, name, lo, hi):
    value = rule[name]
    if isinstance(value, bool) or not isinstance(value, int):
        if _is_ascii_number(value):
            value = int(value)
        else:
            raise ValidationError("Invalid %s %r: must be a number %d-%d." % (name, value, lo, hi))
    if not lo <= value <= hi:
        raise ValidationError("Invalid %s %r: must be %d-%d." % (name, value, lo, hi))
    return value


def normalise_rule(raw):
    """Validate a rule (dict) and return its canonical stored form.  Raises ValidationError."""
    if not isinstance(raw, dict):
        raise ValidationError("A rule must be a JSON object, not %r." % (raw,))
    unknown = sorted(set(raw) - set(KNOWN_KEYS))
    if unknown:
        raise ValidationError("Unknown rule field(s) %s; known fields: %s." % (
            ", ".join(unknown), ", ".join(KNOWN_KEYS)))
    rule = {k: v for k, v in raw.items() if v is not None}
    out = {}
    action = rule.get("action", "allow")
    if action not in ACTIONS:
        raise ValidationError("Invalid action %r: use allow or deny." % (action,))
    out["action"] = action

    protocol = rule.get("protocol")
    if protocol is not None:
        if _is_ascii_number(protocol):
            protocol = int(protocol)
        if isinstance(protocol, bool) or not (
                protocol in NAMED_PROTOCOLS or (isinstance(protocol, int) and 1 <= protocol <= 255)):
            raise ValidationError("Invalid protocol %r: use tcp, udp, icmp, icmpv6 or a number "
                                  "1-255." % (protocol,))
        out["protocol"] = protocol

    versions = set()
    for name in ("src_net", "dst_net"):
        if name in rule:
            net = parse_cidr(rule[name])
            versions.add(net.version)
            out[name] = str(net)
    if protocol == "icmp" and versions == {6}:
        # The stored form of an ICMPv6 rule (stored_rule): `icmp` with an IPv6 CIDR.
        protocol = out["protocol"] = "icmpv6"
    for name in ("src_tag", "dst_tag"):
        if name in rule:
            out[name] = validate_name(rule[name], "tag")
    for name in ("src_ports", "dst_ports"):
        if name in rule:
            if protocol not in PORT_PROTOCOLS:
                raise ValidationError("Ports are only allowed with protocol tcp or udp.")
            ports = rule[name]
            if not isinstance(ports, list) or not ports:
                raise ValidationError("Invalid %s %r: must be a non-empty list." % (name, ports))
            out[name] = [parse_port(p) if not isinstance(p, bool) else _bad_port(p)
                         for p in ports]
    if "icmp_code" in rule and "icmp_type" not in rule:
        raise ValidationError("An ICMP code needs an ICMP type.")
    for name in ("icmp_type", "icmp_code"):
        if name in rule:
            if protocol not in ("icmp", "icmpv6"):
                raise ValidationError("ICMP type and code are only allowed with protocol icmp "
                                      "or icmpv6.")
            out[name] = _int_field(rule, name, 0, 255)
    if protocol == "icmp":
        versions.add(4)
    elif protocol == "icmpv6":
        versions.add(6)
    if "ip_version" in rule:
        v = rule["ip_version"]
        if isinstance(v, bool) or not isinstance(v, int) or v not in (4, 6):   # 4.0 == 4
            raise ValidationError("Invalid ip_version %r: use 4 or 6." % (v,))
        versions.add(v)
        out["ip_version"] = v
    if len(versions) > 1:
        raise ValidationError("The rule mixes IPv4 and IPv6 (CIDRs, icmp/icmpv6, ip_version); "
                              "use one family per rule.")
    if versions and "ip_version" not in out and ("src_net" in out or "dst_net" in out):
        out["ip_version"] = versions.pop()
    return out


def _bad_port(p):
    raise ValidationError("Invalid port %r." % (p,))


def rule_versions(rule):
    """The IP families a (normalised) rule applies to: a subset of {4, 6}."""
    if "ip_version" in rule:
        return {rule["ip_version"]}
    if rule.get("protocol") == "icmp":
        return {4}
    if rule.get("protocol") == "icmpv6":
        return {6}
    return {4, 6}


def _cidr_versions(rule):
    return {ipaddress.ip_network(rule[n]).version for n in ("src_net", "dst_net") if n in rule}


def stored_rule(rule):
    """A normalised rule in the original's stored form (module docstring): no `ip_version` where
    a CIDR or the protocol says the family, and ICMPv6 with an IPv6 CIDR as `icmp`.
    normalise_rule(stored_rule(r)) == r."""
    out = dict(rule)
    nets = _cidr_versions(out)
    if out.get("protocol") == "icmpv6" and nets == {6}:
        out["protocol"] = "icmp"
    implied = nets or {"icmp": {4}, "icmpv6": {6}}.get(out.get("protocol"), set())
    if "ip_version" in out and implied == {out["ip_version"]}:
        del out["ip_version"]
    return out


def format_rule(rule):
    """One line, in the words `rule add` takes, e.g. 'allow tcp from ports 80 tag web'."""
    rule = stored_rule(rule)
    out = [rule.get("action", "allow")]
    if "protocol" in rule:
        out.append(str(rule["protocol"]))
    if "icmp_type" in rule:
        out.extend(["type", str(rule["icmp_type"])])
    if "icmp_code" in rule:
        out.extend(["code", str(rule["icmp_code"])])
    for side, word in (("src", "from"), ("dst", "to")):
        parts = []
        if "%s_ports" % side in rule:
            parts.extend(["ports", ",".join(str(p) for p in rule["%s_ports" % side])])
        if "%s_tag" % side in rule:
            parts.extend(["tag", rule["%s_tag" % side]])
        if "%s_net" % side in rule:
            parts.extend(["cidr", rule["%s_net" % side]])
        if parts:
            out.append(word)
            out.extend(parts)
    return " ".join(out)


class Rules:
    """A profile's inbound and outbound rule lists (stored as one JSON document)."""

    def __init__(self, profile, inbound=None, outbound=None):
        self.profile = profile
        self.inbound = list(inbound or [])
        self.outbound = list(outbound or [])

    @classmethod
    def default(cls, profile):
        """A new profile: members reach each other, everything outbound is allowed."""
        return cls(profile, [{"action": "allow", "src_tag": profile}], [{"action": "allow"}])

    @classmethod
    def from_json(cls, profile, data, strict=True):
        """From the stored dict.  strict=False drops (rather than raises on) invalid rules: the
        agent must skip a bad rule, never widen it, and report it."""
        if not isinstance(data, dict):
            raise ValidationError("Rules for profile %s must be a JSON object." % profile)
        lists = {}
        for direction in ("inbound_rules", "outbound_rules"):
            raw = data.get(direction, [])
            if not isinstance(raw, list):
                raise ValidationError("%s of profile %s must be a list." % (direction, profile))
            rules = []
            for i, r in enumerate(raw):
                try:
                    rules.append(normalise_rule(r))
                except ValidationError as exc:
                    if strict:
                        raise ValidationError("%s rule %d: %s" % (direction, i + 1, exc))
            lists[direction] = rules
        extra = set(data) - {"id", "inbound_rules", "outbound_rules"}
        if extra and strict:
            raise ValidationError("Unknown field(s) in rules: %s; expected id, inbound_rules, "
                                  "outbound_rules." % ", ".join(sorted(extra)))
        return cls(profile, lists["inbound_rules"], lists["outbound_rules"])

    def to_json(self):
        return {"id": self.profile, "inbound_rules": [stored_rule(r) for r in self.inbound],
                "outbound_rules": [stored_rule(r) for r in self.outbound]}

    def direction(self, name):
        if name == "inbound":
            return self.inbound
        if name == "outbound":
            return self.outbound
        raise ValueError(name)

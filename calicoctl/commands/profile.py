"""Configure profiles: the policy (tags and rules) applied to the endpoints that use them.

Usage:
  calicoctl profile show [--detailed]
  calicoctl profile add <PROFILE>
  calicoctl profile remove <PROFILE> [--no-check]
  calicoctl profile <PROFILE> tag show
  calicoctl profile <PROFILE> tag (add|remove) <TAG>
  calicoctl profile <PROFILE> rule add (inbound|outbound) [--at=<POSITION>]
    (allow|deny) [(
      (tcp|udp) [(from [(ports <SRCPORTS>)] [(tag <SRCTAG>)] [(cidr <SRCCIDR>)])]
                [(to   [(ports <DSTPORTS>)] [(tag <DSTTAG>)] [(cidr <DSTCIDR>)])] |
      icmp [(type <ICMPTYPE> [(code <ICMPCODE>)])]
           [(from [(tag <SRCTAG>)] [(cidr <SRCCIDR>)])]
           [(to   [(tag <DSTTAG>)] [(cidr <DSTCIDR>)])] |
      [(from [(tag <SRCTAG>)] [(cidr <SRCCIDR>)])]
      [(to   [(tag <DSTTAG>)] [(cidr <DSTCIDR>)])]
    )]
  calicoctl profile <PROFILE> rule remove (inbound|outbound) (--at=<POSITION>|
    (allow|deny) [(
      (tcp|udp) [(from [(ports <SRCPORTS>)] [(tag <SRCTAG>)] [(cidr <SRCCIDR>)])]
                [(to   [(ports <DSTPORTS>)] [(tag <DSTTAG>)] [(cidr <DSTCIDR>)])] |
      icmp [(type <ICMPTYPE> [(code <ICMPCODE>)])]
           [(from [(tag <SRCTAG>)] [(cidr <SRCCIDR>)])]
           [(to   [(tag <DSTTAG>)] [(cidr <DSTCIDR>)])] |
      [(from [(tag <SRCTAG>)] [(cidr <SRCCIDR>)])]
      [(to   [(tag <DSTTAG>)] [(cidr <DSTCIDR>)])]
    )])
  calicoctl profile <PROFILE> rule show
  calicoctl profile <PROFILE> rule json
  calicoctl profile <PROFILE> rule update

Description:
  Modify available profiles and configure rules or tags.  A new profile allows inbound traffic
  from endpoints carrying its own tag and all outbound traffic.  Rule positions start at 1.
  'rule update' reads the rules JSON (as 'rule json' prints it) on standard input.

Options:
  --detailed        Show additional information.
  --no-check        Remove a profile without checking if there are endpoints
                    associated with the profile.
  --at=<POSITION>   Specify the position in the chain where the rule should
                    be placed. Default: append at end.

Examples:
  Add and set up a rule to prevent all inbound traffic except pings from the 192.168/16 subnet
  $ calicoctl profile add only-local-pings
  $ calicoctl profile only-local-pings rule add inbound deny icmp
  $ calicoctl profile only-local-pings rule add inbound --at=1 allow icmp from cidr 192.168.0.0/16
"""

import json
import sys

from calicoctl.datastore import open_store, profiles
from calicoctl.datastore.rules import Rules, format_rule, normalise_rule, parse_cidr, \
    parse_ports, validate_name
from calicoctl.errors import NotFoundError, ValidationError
from calicoctl.output import msg, out, table
from calicoctl.validation import parse_position


def run(arguments):
    if arguments["rule"]:
        return _run_rule(arguments)
    if arguments["tag"]:
        return _run_tag(arguments)
    if arguments["add"]:
        return profile_add(open_store(), validate_name(arguments["<PROFILE>"]))
    if arguments["remove"]:
        return profile_remove(open_store(), validate_name(arguments["<PROFILE>"]),
                              arguments["--no-check"])
    return profile_show(open_store(), arguments["--detailed"])


def _run_tag(arguments):
    name = validate_name(arguments["<PROFILE>"])
    if arguments["show"]:
        return tag_show(open_store(), name)
    tag = validate_name(arguments["<TAG>"], "tag")
    if arguments["add"]:
        return tag_add(open_store(), name, tag)
    return tag_remove(open_store(), name, tag)


def _run_rule(arguments):
    name = validate_name(arguments["<PROFILE>"])
    if arguments["show"]:
        return rule_show(open_store(), name)
    if arguments["json"]:
        return rule_json(open_store(), name)
    if arguments["update"]:
        return rule_update(open_store(), name, sys.stdin.read())
    direction = "inbound" if arguments["inbound"] else "outbound"
    position = arguments["--at"]
    rule = None if position is not None and not (arguments["allow"] or arguments["deny"]) \
        else rule_from_arguments(arguments)
    if arguments["add"]:
        return rule_add(open_store(), name, direction, rule, position)
    return rule_remove(open_store(), name, direction, rule, position)


def rule_from_arguments(arguments):
    """The rule the (allow|deny) ... words describe, normalised as it will be stored."""
    raw = {"action": "allow" if arguments["allow"] else "deny"}
    protocol = next((p for p in ("tcp", "udp", "icmp") if arguments[p]), None)
    for field, arg in (("src_tag", "<SRCTAG>"), ("dst_tag", "<DSTTAG>")):
        if arguments[arg] is not None:
            raw[field] = validate_name(arguments[arg], "tag")
    for field, arg in (("src_net", "<SRCCIDR>"), ("dst_net", "<DSTCIDR>")):
        if arguments[arg] is not None:
            raw[field] = str(parse_cidr(arguments[arg]))
    for field, arg in (("src_ports", "<SRCPORTS>"), ("dst_ports", "<DSTPORTS>")):
        if arguments[arg] is not None:
            raw[field] = parse_ports(arguments[arg])
    for field, arg in (("icmp_type", "<ICMPTYPE>"), ("icmp_code", "<ICMPCODE>")):
        if arguments[arg] is not None:
            raw[field] = arguments[arg]
    # The grammar has one word for ICMP, as the original's had: with an IPv6 CIDR it means
    # ICMPv6 (normalise_rule); a rule naming both families is refused there.
    if protocol:
        raw["protocol"] = protocol
    return normalise_rule(raw)


# --- profiles ---------------------------------------------------------------------------------

def profile_add(store, name):
    from calicoctl.datastore.globals import ensure_defaults
    ensure_defaults(store)
    if profiles.create_profile(store, name, exist_ok=True):
        msg("Created profile %s" % name)
    else:
        msg("Profile %s already exists." % name)


def profile_remove(store, name, no_check):
    from calicoctl.datastore.endpoints import endpoints_using_profile
    if not profiles.profile_exists(store, name):
        raise NotFoundError("Profile %s not found." % name)
    if not no_check and endpoints_using_profile(store, name):
        raise ValidationError("Cannot remove profile %s - profile in use by endpoint(s). "
                              "Use the '--no-check' flag to remove the profile anyway." % name)
    profiles.remove_profile(store, name)
    msg("Deleted profile %s" % name)


def profile_show(store, detailed):
    names = profiles.list_profiles(store)
    if not detailed:
        out(table(["Name"], [[n] for n in names], align="c"))
        return
    from calicoctl.datastore.endpoints import list_endpoints
    members = {}
    for ep in list_endpoints(store):
        for name in ep.profile_ids:
            members.setdefault(name, []).append(ep)
    rows = []
    for name in names:
        eps = sorted(members.get(name, []), key=lambda e: (e.host, e.orchestrator, e.workload,
                                                           e.endpoint_id))
        if not eps:
            rows.append([name, "None", "None", "None", "None", "None"])
        rows.extend([name, e.host, e.orchestrator, e.workload, e.endpoint_id, e.state]
                    for e in eps)
    out(table(["Name", "Host", "Orchestrator ID", "Workload ID", "Endpoint ID", "State"], rows,
              align="c"))


# --- tags -------------------------------------------------------------------------------------

def tag_show(store, name):
    for tag in profiles.get_tags(store, name):
        out(tag)


def tag_add(store, name, tag):
    profiles.update_tags(store, name, lambda tags: tags if tag in tags else tags + [tag])
    msg("Tag %s added to profile %s" % (tag, name))


def tag_remove(store, name, tag):
    def remove(tags):
        if tag not in tags:
            raise NotFoundError("Tag %s is not on profile %s" % (tag, name))
        return [t for t in tags if t != tag]
    profiles.update_tags(store, name, remove)
    msg("Tag %s removed from profile %s" % (tag, name))


# --- rules ------------------------------------------------------------------------------------

def rule_show(store, name):
    rules = profiles.get_rules(store, name)
    for title, direction in (("Inbound rules:", rules.inbound),
                             ("Outbound rules:", rules.outbound)):
        out(title)
        for i, rule in enumerate(direction, start=1):
            out(" %3d %s" % (i, format_rule(rule)))


def rule_json(store, name):
    out(json.dumps(profiles.get_rules(store, name).to_json(), indent=2, sort_keys=True))


def parse_rules_json(name, text):
    """The rules document `rule update` reads: checked completely before anything is written."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValidationError("The rules are not valid JSON: %s." % exc)
    if not isinstance(data, dict):
        raise ValidationError("The rules must be a JSON object with id, inbound_rules and "
                              "outbound_rules.")
    if data.get("id") != name:
        raise ValidationError('Rules JSON "id"=%s doesn\'t match profile name %s.' % (
            json.dumps(data.get("id")), name))
    return Rules.from_json(name, data, strict=True)


def rule_update(store, name, text):
    rules = parse_rules_json(name, text)
    # A whole replacement, not an edit of what is there: nothing to compare-and-swap against.
    profiles.set_rules(store, name, rules)
    msg("Successfully updated rules on profile %s" % name)


def rule_add(store, name, direction, rule, position):
    outcome = {}

    def insert(rules):
        chain = rules.direction(direction)
        index = len(chain) + 1 if position is None else parse_position(position, len(chain), True)
        # Set on every attempt: a compare-and-swap retry sees the rules afresh.
        outcome["skipped"] = rule in chain
        if outcome["skipped"]:
            return rules
        chain.insert(index - 1, rule)
        return rules
    profiles.update_rules(store, name, insert)
    if outcome.get("skipped"):
        msg("Rule already present, skipping.")


def rule_remove(store, name, direction, rule, position):
    def remove(rules):
        chain = rules.direction(direction)
        if rule is None:
            del chain[parse_position(position, len(chain), False) - 1]
        elif rule in chain:
            chain.remove(rule)
        else:
            raise NotFoundError("Rule not found: %s." % format_rule(rule))
        return rules
    profiles.update_rules(store, name, remove)

"""`calicoctl profile`: profiles, tags and rules, against a real etcd."""

import json
import threading

import pytest

from calicoctl.datastore.endpoints import create_endpoint
from calicoctl.datastore.models import Endpoint
from tests.unit.cli_support import assert_fails_cleanly

PROFILE = "/calico/v1/policy/profile"


def rules_of(etcd_dump, name):
    return json.loads(etcd_dump()["%s/%s/rules" % (PROFILE, name)])


def test_profile_add_writes_default_policy(cli, etcd_dump):
    r = cli("profile", "add", "web")
    assert r.code == 0, r
    assert "Created profile web" in r.err
    data = etcd_dump()
    assert json.loads(data[PROFILE + "/web/tags"]) == ["web"]
    assert json.loads(data[PROFILE + "/web/rules"]) == {
        "id": "web", "inbound_rules": [{"action": "allow", "src_tag": "web"}],
        "outbound_rules": [{"action": "allow"}]}
    assert data["/calico/v1/Ready"] == "true"
    again = cli("profile", "add", "web")
    assert again.code == 0 and "Profile web already exists." in again.err
    assert etcd_dump() == data


def test_profile_show(cli):
    for name in ("web", "db"):
        assert cli("profile", "add", name).code == 0
    r = cli("profile", "show")
    assert r.code == 0
    lines = r.out.splitlines()
    assert "Name" in lines[1]
    assert [l.strip("| ") for l in lines[3:5]] == ["db", "web"]


def test_profile_show_detailed_lists_members(cli, store):
    cli("profile", "add", "web")
    cli("profile", "add", "db")
    create_endpoint(store, Endpoint("h1", "docker", "w1", "e1", name="calie1", profile_ids=["web"]))
    r = cli("profile", "show", "--detailed")
    assert r.code == 0, r
    rows = [[c.strip() for c in l.strip("|").split("|")] for l in r.out.splitlines()[3:-1]]
    assert rows == [["db", "None", "None", "None", "None", "None"],
                    ["web", "h1", "docker", "w1", "e1", "active"]]


def test_profile_remove_refuses_while_in_use(cli, store, etcd_dump):
    cli("profile", "add", "web")
    create_endpoint(store, Endpoint("h1", "docker", "w1", "e1", profile_ids=["web"]))
    r = assert_fails_cleanly(cli, etcd_dump, ("profile", "remove", "web"), contains="--no-check")
    assert "in use" in r.err
    assert cli("profile", "remove", "web", "--no-check").code == 0
    assert not any(k.startswith(PROFILE + "/web") for k in etcd_dump())


def test_profile_remove(cli, etcd_dump):
    cli("profile", "add", "web")
    r = cli("profile", "remove", "web")
    assert r.code == 0 and "Deleted profile web" in r.err
    assert not any(k.startswith(PROFILE) for k in etcd_dump())
    assert_fails_cleanly(cli, etcd_dump, ("profile", "remove", "web"), contains="not found")


def test_tags(cli, etcd_dump):
    cli("profile", "add", "web")
    assert cli("profile", "web", "tag", "add", "frontend").code == 0
    assert cli("profile", "web", "tag", "add", "frontend").code == 0    # already there: no dup
    assert json.loads(etcd_dump()[PROFILE + "/web/tags"]) == ["web", "frontend"]
    assert cli("profile", "web", "tag", "show").out == "web\nfrontend\n"
    r = cli("profile", "web", "tag", "remove", "web")
    assert r.code == 0 and "Tag web removed from profile web" in r.err
    assert cli("profile", "web", "tag", "show").out == "frontend\n"
    assert_fails_cleanly(cli, etcd_dump, ("profile", "web", "tag", "remove", "nope"),
                         contains="Tag nope is not on profile web")


def test_rule_show_matches_the_original_shape(cli):
    cli("profile", "add", "net1")
    r = cli("profile", "net1", "rule", "show")
    assert r.code == 0
    assert r.out == "Inbound rules:\n   1 allow from tag net1\nOutbound rules:\n   1 allow\n"


def test_rule_add_full_grammar(cli, etcd_dump):
    cli("profile", "add", "p")
    adds = [
        ("inbound", "allow", "tcp", "from", "ports", "80,443,1000:2000", "tag", "web", "cidr",
         "10.0.0.0/8", "to", "ports", "8080", "tag", "db", "cidr", "10.1.0.0/16"),
        ("inbound", "deny", "udp", "to", "ports", "53"),
        ("inbound", "allow", "icmp", "type", "8", "code", "0", "from", "tag", "ping"),
        ("inbound", "deny", "icmp", "type", "128", "to", "cidr", "fd00::/64"),
        ("outbound", "deny", "to", "cidr", "192.168.0.0/16"),
        ("outbound", "allow", "from", "tag", "a", "to", "tag", "b"),
    ]
    for words in adds:
        r = cli("profile", "p", "rule", "add", *words)
        assert r.code == 0, (words, r)
    rules = rules_of(etcd_dump, "p")
    assert rules["inbound_rules"][1] == {
        "action": "allow", "protocol": "tcp", "src_ports": [80, 443, "1000:2000"],
        "src_tag": "web", "src_net": "10.0.0.0/8", "dst_ports": [8080], "dst_tag": "db",
        "dst_net": "10.1.0.0/16"}
    assert rules["inbound_rules"][3] == {"action": "allow", "protocol": "icmp", "icmp_type": 8,
                                         "icmp_code": 0, "src_tag": "ping"}
    # `icmp` with an IPv6 CIDR means ICMPv6, stored as the original stored it: `icmp`.
    assert rules["inbound_rules"][4] == {"action": "deny", "protocol": "icmp", "icmp_type": 128,
                                         "dst_net": "fd00::/64"}
    show = cli("profile", "p", "rule", "show").out.splitlines()
    assert show[2] == ("   2 allow tcp from ports 80,443,1000:2000 tag web cidr 10.0.0.0/8 "
                       "to ports 8080 tag db cidr 10.1.0.0/16")
    assert show[5] == "   5 deny icmp type 128 to cidr fd00::/64"
    # The rule as shown is the rule as typed: removing it by those words finds it.
    assert cli("profile", "p", "rule", "remove", "inbound", "deny", "icmp", "type", "128", "to",
               "cidr", "fd00::/64").code == 0
    assert show[6] == "Outbound rules:"


def test_rule_add_at_position_and_duplicates(cli, etcd_dump):
    cli("profile", "add", "p")
    assert cli("profile", "p", "rule", "add", "inbound", "--at=1", "deny", "tcp").code == 0
    assert cli("profile", "p", "rule", "add", "inbound", "--at=3", "deny", "udp").code == 0
    assert cli("profile", "p", "rule", "add", "inbound", "--at=-1", "deny", "icmp").code == 0
    assert [r.get("protocol") for r in rules_of(etcd_dump, "p")["inbound_rules"]] == [
        "tcp", None, "udp", "icmp"]
    before = etcd_dump()
    r = cli("profile", "p", "rule", "add", "inbound", "deny", "tcp")
    assert r.code == 0 and "Rule already present, skipping." in r.err
    assert etcd_dump() == before


def test_rule_remove_by_position_and_by_text(cli, etcd_dump):
    cli("profile", "add", "p")
    cli("profile", "p", "rule", "add", "outbound", "deny", "tcp", "to", "ports", "25")
    cli("profile", "p", "rule", "add", "outbound", "deny", "udp")
    assert cli("profile", "p", "rule", "remove", "outbound", "--at=1").code == 0
    assert rules_of(etcd_dump, "p")["outbound_rules"] == [
        {"action": "deny", "protocol": "tcp", "dst_ports": [25]},
        {"action": "deny", "protocol": "udp"}]
    assert cli("profile", "p", "rule", "remove", "outbound", "deny", "tcp", "to", "ports",
               "25").code == 0
    assert rules_of(etcd_dump, "p")["outbound_rules"] == [{"action": "deny", "protocol": "udp"}]
    assert_fails_cleanly(cli, etcd_dump, ("profile", "p", "rule", "remove", "outbound", "allow",
                                          "tcp"), contains="Rule not found")


def test_rule_json_and_update_round_trip(cli, etcd_dump):
    cli("profile", "add", "p")
    cli("profile", "p", "rule", "add", "inbound", "allow", "tcp", "from", "ports", "1:2")
    text = cli("profile", "p", "rule", "json").out
    doc = json.loads(text)
    assert doc["id"] == "p" and len(doc["inbound_rules"]) == 2
    doc["outbound_rules"] = [{"action": "deny", "protocol": "udp", "dst_ports": ["53"]}]
    r = cli("profile", "p", "rule", "update", stdin=json.dumps(doc))
    assert r.code == 0 and "Successfully updated rules on profile p" in r.err
    # Stored in canonical form: the port "53" becomes the number 53.
    assert rules_of(etcd_dump, "p")["outbound_rules"] == [
        {"action": "deny", "protocol": "udp", "dst_ports": [53]}]


# The original calicoctl's Rule took only action, protocol (tcp, udp or icmp), src/dst tag, net
# and ports, icmp_type and icmp_code: it refused to load a rule with ip_version or icmpv6.
ORIGINAL_RULE_KEYS = {"action", "protocol", "src_tag", "src_ports", "src_net", "dst_tag",
                      "dst_ports", "dst_net", "icmp_type", "icmp_code"}


def test_rules_are_written_in_the_original_form_and_our_older_form_still_reads(cli, etcd_dump,
                                                                              store):
    cli("profile", "add", "p")
    older = {"id": "p", "outbound_rules": [], "inbound_rules": [
        {"action": "allow", "protocol": "icmpv6", "icmp_type": 128, "src_net": "fd00::/64",
         "ip_version": 6},
        {"action": "allow", "protocol": "tcp", "dst_net": "10.0.0.0/8", "ip_version": 4},
        {"action": "deny", "protocol": "icmp", "ip_version": 4},
        {"action": "allow", "protocol": "icmp", "dst_net": "fd00::/64"}]}
    r = cli("profile", "p", "rule", "update", stdin=json.dumps(older))
    assert r.code == 0, r
    assert rules_of(etcd_dump, "p")["inbound_rules"] == [
        {"action": "allow", "protocol": "icmp", "icmp_type": 128, "src_net": "fd00::/64"},
        {"action": "allow", "protocol": "tcp", "dst_net": "10.0.0.0/8"},
        {"action": "deny", "protocol": "icmp"},
        {"action": "allow", "protocol": "icmp", "dst_net": "fd00::/64"}]
    for rule in rules_of(etcd_dump, "p")["inbound_rules"]:
        assert set(rule) <= ORIGINAL_RULE_KEYS and rule["protocol"] in ("tcp", "udp", "icmp")
    # Read back, `icmp` with an IPv6 CIDR is ICMPv6 to the agent, and only IPv6.
    from calicoctl.datastore import profiles
    from calicoctl.datastore.rules import rule_versions
    inbound = profiles.get_rules(store, "p").inbound
    assert inbound[0]["protocol"] == "icmpv6" and rule_versions(inbound[0]) == {6}
    assert rule_versions(inbound[1]) == {4} and rule_versions(inbound[2]) == {4}
    # Only what the original had no words for keeps the agent's own names for it.
    assert cli("profile", "p", "rule", "update", stdin=json.dumps({
        "id": "p", "outbound_rules": [], "inbound_rules": [
            {"action": "allow", "protocol": "icmpv6", "icmp_type": 128, "ip_version": 6},
            {"action": "deny", "ip_version": 6}]})).code == 0
    assert rules_of(etcd_dump, "p")["inbound_rules"] == [
        {"action": "allow", "protocol": "icmpv6", "icmp_type": 128},
        {"action": "deny", "ip_version": 6}]


@pytest.mark.parametrize("argv, contains", [
    (("profile", "add", "a/b"), "Invalid profile name"),
    (("profile", "add", "has space"), "Invalid profile name"),
    (("profile", "add", ".."), "Invalid profile name"),
    (("profile", "add", "p\n"), "Invalid profile name"),
    (("profile", "bad!", "rule", "show"), "Invalid profile name"),
    (("profile", "nope", "rule", "show"), "does not exist"),
    (("profile", "nope", "rule", "add", "inbound", "allow"), "does not exist"),
    (("profile", "p", "tag", "add", "a:b"), "Invalid tag name"),
    (("profile", "p", "rule", "add", "inbound", "allow", "from", "tag", "a/b"), "Invalid tag"),
    # CIDRs
    (("profile", "p", "rule", "add", "inbound", "allow", "from", "cidr", "10.0.0.0/33"), "CIDR"),
    (("profile", "p", "rule", "add", "inbound", "allow", "to", "cidr", "nonsense"), "CIDR"),
    (("profile", "p", "rule", "add", "inbound", "allow", "tcp", "from", "cidr", "1.2.3.4/8",
      "to", "cidr", "fd00::/64"), "mixes IPv4 and IPv6"),
    (("profile", "p", "rule", "add", "inbound", "allow", "icmp", "from", "cidr", "10.0.0.0/8",
      "to", "cidr", "fd00::/8"), "mixes IPv4 and IPv6"),
    # ports
    (("profile", "p", "rule", "add", "inbound", "allow", "tcp", "from", "ports", "65536"),
     "0-65535"),
    (("profile", "p", "rule", "add", "inbound", "allow", "udp", "to", "ports", "200:100"),
     "low port"),
    (("profile", "p", "rule", "add", "inbound", "allow", "tcp", "to", "ports", "80,,81"),
     "port"),
    (("profile", "p", "rule", "add", "inbound", "allow", "tcp", "to", "ports", "http"), "port"),
    (("profile", "p", "rule", "add", "inbound", "allow", "tcp", "to", "ports", "1:70000"),
     "0-65535"),
    # ICMP
    (("profile", "p", "rule", "add", "inbound", "allow", "icmp", "type", "256"), "icmp_type"),
    (("profile", "p", "rule", "add", "inbound", "allow", "icmp", "type", "8", "code", "300"),
     "icmp_code"),
    (("profile", "p", "rule", "add", "inbound", "allow", "icmp", "type", "echo"), "icmp_type"),
    # positions
    (("profile", "p", "rule", "add", "inbound", "--at=0", "allow", "udp"), "out of range"),
    (("profile", "p", "rule", "add", "inbound", "--at=3", "allow", "udp"), "out of range"),
    (("profile", "p", "rule", "add", "inbound", "--at=x", "allow", "udp"), "position"),
    (("profile", "p", "rule", "remove", "inbound", "--at=2"), "out of range"),
    (("profile", "p", "rule", "remove", "outbound", "--at=-2"), "out of range"),
])
def test_bad_input_one_line_nothing_written(cli, etcd_dump, argv, contains):
    assert cli("profile", "add", "p").code == 0
    assert_fails_cleanly(cli, etcd_dump, argv, contains=contains)


@pytest.mark.parametrize("doc, contains", [
    ("not json", "not valid JSON"),
    ("[]", "JSON object"),
    ({"id": "other", "inbound_rules": [], "outbound_rules": []}, "doesn't match profile name p"),
    ({"inbound_rules": [], "outbound_rules": []}, "doesn't match"),
    ({"id": "p", "inbound_rules": [{"action": "maybe"}], "outbound_rules": []}, "action"),
    ({"id": "p", "inbound_rules": [{"protocol": "icmp", "src_ports": [80]}]}, "tcp or udp"),
    ({"id": "p", "inbound_rules": [{"protocol": "icmp", "icmp_code": 1}]}, "needs an ICMP type"),
    ({"id": "p", "inbound_rules": [{"protocol": "icmp", "icmp_type": 256}]}, "0-255"),
    ({"id": "p", "inbound_rules": [{"src_net": "10.0.0.0/8", "dst_net": "::/0"}]}, "mixes"),
    ({"id": "p", "inbound_rules": [{"src_tag": "a b"}]}, "Invalid tag"),
    ({"id": "p", "inbound_rules": [{"dst_ports": [1]}]}, "tcp or udp"),
    ({"id": "p", "inbound_rules": [{"colour": "red"}]}, "Unknown rule field"),
    ({"id": "p", "inbound_rules": {}}, "must be a list"),
    ({"id": "p", "inbound_rules": [], "extra": 1}, "Unknown field"),
    ({"id": "p", "outbound_rules": [{"protocol": "tcp", "dst_ports": ["2:1"]}]}, "low port"),
])
def test_rule_update_validates_before_writing(cli, etcd_dump, doc, contains):
    assert cli("profile", "add", "p").code == 0
    text = doc if isinstance(doc, str) else json.dumps(doc)
    assert_fails_cleanly(cli, etcd_dump, ("profile", "p", "rule", "update"), stdin=text,
                         contains=contains)


def test_ungrammatical_rule_refused_without_traceback(cli, etcd_dump):
    """Ports with icmp, or a code without a type, are outside the grammar: usage, exit 1."""
    cli("profile", "add", "p")
    before = etcd_dump()
    for words in (("allow", "icmp", "from", "ports", "80"), ("allow", "icmp", "code", "1"),
                  ("allow", "from", "ports", "80")):
        r = cli("profile", "p", "rule", "add", "inbound", *words)
        assert r.code == 1 and "Traceback" not in r.err, (words, r)
        assert r.err.startswith("Invalid arguments for 'calicoctl profile'")
    assert etcd_dump() == before


def test_concurrent_rule_adds_lose_nothing(etcd_env, cli, etcd_dump):
    """Two writers adding different rules to one profile at once: every rule lands."""
    from calicoctl.commands.profile import rule_add
    from calicoctl.datastore.rules import normalise_rule
    from calicoctl.datastore.store import EtcdStore
    assert cli("profile", "add", "p").code == 0
    per_writer = 25
    errors = []
    start = threading.Barrier(2)

    def writer(base):
        store = EtcdStore()
        start.wait()
        try:
            for i in range(per_writer):
                rule = normalise_rule({"action": "allow", "protocol": "tcp",
                                       "dst_ports": [base + i]})
                rule_add(store, "p", "inbound", rule, None)
        except Exception as exc:   # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)
    threads = [threading.Thread(target=writer, args=(base,)) for base in (1000, 2000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ports = sorted(r["dst_ports"][0] for r in rules_of(etcd_dump, "p")["inbound_rules"]
                   if "dst_ports" in r)
    assert ports == list(range(1000, 1000 + per_writer)) + list(range(2000, 2000 + per_writer))

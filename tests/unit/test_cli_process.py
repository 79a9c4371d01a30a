"""The installed `calicoctl` console script, run as a real process against the test etcd."""

import json
import os
import subprocess
import sys

import pytest

CALICOCTL = os.path.join(os.path.dirname(sys.executable), "calicoctl")


@pytest.fixture
def calicoctl(etcd_env):
    if not os.access(CALICOCTL, os.X_OK):
        pytest.skip("calicoctl is not installed beside %s (pip install -e .)" % sys.executable)

    def run(*argv, stdin=None, env=None):
        return subprocess.run([CALICOCTL, *argv], input=stdin, capture_output=True, text=True,
                              timeout=60, env=dict(os.environ, **(env or {})))
    return run


def test_pool_add_and_show(calicoctl, etcd_dump):
    r = calicoctl("pool", "add", "192.168.0.0/16", "--nat-outgoing")
    assert r.returncode == 0, r
    assert json.loads(etcd_dump()["/calico/v1/ipam/v4/pool/192.168.0.0-16"]) == {
        "cidr": "192.168.0.0/16", "masquerade": True}
    r = calicoctl("pool", "show")
    assert r.returncode == 0 and "192.168.0.0/16" in r.stdout and "nat-outgoing" in r.stdout


def test_profile_add_and_rule_show(calicoctl):
    assert calicoctl("profile", "add", "net1").returncode == 0
    r = calicoctl("profile", "net1", "rule", "add", "inbound", "allow", "tcp", "to", "ports", "80")
    assert r.returncode == 0, r
    r = calicoctl("profile", "net1", "rule", "show")
    assert r.returncode == 0
    assert r.stdout == ("Inbound rules:\n   1 allow from tag net1\n   2 allow tcp to ports 80\n"
                        "Outbound rules:\n   1 allow\n")


def test_rule_json_update_through_pipes(calicoctl):
    assert calicoctl("profile", "add", "net1").returncode == 0
    exported = calicoctl("profile", "net1", "rule", "json").stdout
    doc = json.loads(exported)
    doc["outbound_rules"] = [{"action": "deny"}]
    r = calicoctl("profile", "net1", "rule", "update", stdin=json.dumps(doc))
    assert r.returncode == 0, r
    assert "deny" in calicoctl("profile", "net1", "rule", "show").stdout


def test_bad_input_is_one_line_exit_1(calicoctl, etcd_dump):
    assert calicoctl("profile", "add", "net1").returncode == 0
    before = etcd_dump()
    r = calicoctl("profile", "net1", "rule", "add", "inbound", "allow", "tcp", "to", "ports",
                  "99999")
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r
    assert r.stdout == ""
    assert etcd_dump() == before


def test_unreachable_etcd_fails_fast_without_traceback(calicoctl):
    r = calicoctl("profile", "show", env={"ETCD_AUTHORITY": "127.0.0.1:1"})
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "127.0.0.1:1" in r.stderr.strip().splitlines()[-1], r


def test_unreachable_etcd_is_one_line(calicoctl):
    r = calicoctl("profile", "show", env={"ETCD_AUTHORITY": "127.0.0.1:1"})
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1, r


def test_concurrent_processes_lose_no_rule(calicoctl, etcd_env, etcd_dump):
    """Two operators' processes add different rules to one profile at the same moment."""
    assert calicoctl("profile", "add", "net1").returncode == 0
    procs = []
    for port in range(7000, 7006):
        procs.append(subprocess.Popen(
            [CALICOCTL, "profile", "net1", "rule", "add", "inbound", "allow", "tcp", "to",
             "ports", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for p in procs:
        p.communicate(timeout=60)
        assert p.returncode == 0
    rules = json.loads(etcd_dump()["/calico/v1/policy/profile/net1/rules"])["inbound_rules"]
    assert sorted(r["dst_ports"][0] for r in rules if "dst_ports" in r) == list(range(7000, 7006))


@pytest.mark.parametrize("module", ["profile", "endpoint", "bgp", "config", "pool"])
def test_narrowed_usage_parses_exactly_as_the_full_usage(module):
    """cli._parse tries only the usage lines that can match (start-up cost); never a different
    answer from docopt on the whole usage, for right and wrong command lines alike."""
    import importlib
    import random
    from docopt import DocoptExit, docopt
    from calicoctl.cli import _parse
    doc = importlib.import_module("calicoctl.commands." + module).__doc__
    words = ["show", "add", "remove", "rule", "tag", "inbound", "outbound", "allow", "deny",
             "tcp", "udp", "icmp", "from", "to", "ports", "80", "cidr", "10.0.0.0/8", "type",
             "code", "json", "update", "x", "--detailed", "--no-check", "--at=1", "--ipv4",
             "peer", "as", "1.2.3.4", "node-mesh", "on", "default-node-as", "felix", "bgp",
             "node", "loglevel", "--remove", "--force", "profile", "append", "set", "--host=h",
             "range", "--ipip", "-5"]
    rng = random.Random(module)      # the same command lines every run
    for _ in range(150):
        argv = [module] + [rng.choice(words) for _ in range(rng.randint(0, 9))]
        try:
            expected = dict(docopt(doc, argv=argv, help=False))
        except DocoptExit:
            expected = None
        got = _parse(doc, argv)
        assert (None if got is None else dict(got)) == expected, argv

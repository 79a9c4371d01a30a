"""`calicoctl bgp`: global peers, node mesh and default AS, against a real etcd."""

import json

import pytest

from tests.unit.cli_support import assert_fails_cleanly

GLOBAL = "/calico/bgp/v1/global"


def test_peer_add_show_remove(cli, etcd_dump):
    assert cli("bgp", "peer", "add", "198.18.0.200", "as", "64513").code == 0
    assert cli("bgp", "peer", "add", "fd00::c8", "as", "1.10").code == 0
    data = etcd_dump()
    assert json.loads(data[GLOBAL + "/peer_v4/198.18.0.200"]) == {"ip": "198.18.0.200",
                                                                  "as_num": "64513"}
    # Dotted (asdot) on input, stored plain as the original stored it: 65536 * 1 + 10.
    assert json.loads(data[GLOBAL + "/peer_v6/fd00::c8"]) == {"ip": "fd00::c8", "as_num": "65546"}
    assert data["/calico/v1/Ready"] == "true"
    r = cli("bgp", "peer", "show")
    assert r.code == 0
    assert "Global IPv4 BGP Peer" in r.out and "| 198.18.0.200         | 64513  |" in r.out
    assert "Global IPv6 BGP Peer" in r.out and "fd00::c8" in r.out
    v4 = cli("bgp", "peer", "show", "--ipv4").out
    assert "198.18.0.200" in v4 and "fd00::c8" not in v4
    r = cli("bgp", "peer", "remove", "198.18.0.200")
    assert r.code == 0 and "BGP peer removed from global configuration" in r.err
    assert cli("bgp", "peer", "show", "--ipv4").out == "No global IPv4 BGP Peers defined.\n\n"
    assert cli("bgp", "peer", "remove", "fd00:0::c8").code == 0    # any spelling of the address
    assert not [k for k in etcd_dump() if "/peer_v" in k]


def test_node_mesh(cli, etcd_dump):
    assert cli("bgp", "node-mesh").out == "on\n"      # the default when never set
    assert cli("bgp", "node-mesh", "off").code == 0
    assert json.loads(etcd_dump()[GLOBAL + "/node_mesh"]) == {"enabled": False}
    assert cli("bgp", "node-mesh").out == "off\n"
    assert cli("bgp", "node-mesh", "on").code == 0
    assert cli("bgp", "node-mesh").out == "on\n"


def test_default_node_as(cli, etcd_dump):
    assert cli("bgp", "default-node-as").out == "64511\n"
    assert cli("bgp", "default-node-as", "65000").code == 0
    assert etcd_dump()[GLOBAL + "/as_num"] == "65000"
    assert cli("bgp", "default-node-as").out == "65000\n"
    assert cli("bgp", "default-node-as", "4294967295").code == 0
    assert cli("bgp", "default-node-as", "01.02").code == 0
    assert etcd_dump()[GLOBAL + "/as_num"] == "65538"
    assert cli("bgp", "default-node-as").out == "65538\n"


@pytest.mark.parametrize("dotted, plain", [
    ("1.10", "65546"), ("0.1", "1"), ("0.65535", "65535"), ("1.0", "65536"),
    ("65535.65535", "4294967295")])
def test_dotted_as_numbers_are_stored_plain(cli, etcd_dump, dotted, plain):
    # The original converted a.b to asplain (65536 * a + b) before writing; so do we, everywhere
    # an AS is given: global peers, the default node AS, this node's peers.
    assert cli("bgp", "peer", "add", "198.18.0.200", "as", dotted).code == 0
    assert cli("bgp", "default-node-as", dotted).code == 0
    assert cli("node", "bgp", "peer", "add", "198.18.0.201", "as", dotted).code == 0
    data = etcd_dump()
    assert json.loads(data[GLOBAL + "/peer_v4/198.18.0.200"])["as_num"] == plain
    assert data[GLOBAL + "/as_num"] == plain
    assert json.loads(data["/calico/bgp/v1/host/testhost/peer_v4/198.18.0.201"])["as_num"] == plain
    assert "| %s " % plain in cli("bgp", "peer", "show", "--ipv4").out


@pytest.mark.parametrize("argv, contains", [
    (("bgp", "peer", "add", "1.2.3", "as", "64512"), "Invalid IP"),
    (("bgp", "peer", "add", "10.0.0.0/8", "as", "64512"), "Invalid IP"),
    (("bgp", "peer", "add", "1.2.3.4", "as", "0"), "Invalid AS number"),
    (("bgp", "peer", "add", "1.2.3.4", "as", "4294967296"), "Invalid AS number"),
    (("bgp", "peer", "add", "1.2.3.4", "as", "65536.1"), "Invalid AS number"),
    (("bgp", "peer", "add", "1.2.3.4", "as", "1.2.3"), "Invalid AS number"),
    (("bgp", "peer", "add", "1.2.3.4", "as", "asn"), "Invalid AS number"),
    (("bgp", "peer", "add", "1.2.3.4", "as", "\u00b2"), "Invalid AS number"),
    (("bgp", "peer", "remove", "9.9.9.9"), "not a globally configured peer"),
    (("bgp", "peer", "remove", "nonsense"), "Invalid IP"),
    (("bgp", "default-node-as", "0"), "Invalid AS number"),
    (("bgp", "default-node-as", "-5"), None),
])
def test_bad_input_one_line_nothing_written(cli, etcd_dump, argv, contains):
    assert cli("bgp", "peer", "add", "198.18.0.1", "as", "64512").code == 0
    if contains is None:      # looks like an option to docopt: a usage error, still exit 1
        before = etcd_dump()
        r = cli(*argv)
        assert r.code == 1 and "Traceback" not in r.err and etcd_dump() == before
        return
    assert_fails_cleanly(cli, etcd_dump, argv, contains=contains)

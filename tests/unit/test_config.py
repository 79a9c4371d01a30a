"""`calicoctl config`: Felix and BGP settings, global and per node, against a real etcd."""

import pytest

from tests.unit.cli_support import assert_fails_cleanly

FELIX = "/calico/v1/config"
BGP = "/calico/bgp/v1"


def test_felix_loglevel(cli, etcd_dump):
    assert cli("config", "felix", "loglevel").out == "No value configured\n"
    assert cli("config", "felix", "loglevel", "debug").code == 0
    data = etcd_dump()
    # Felix reads upper case, like the INFO default written beside it.
    assert data[FELIX + "/LogSeverityScreen"] == "DEBUG"
    assert data[FELIX + "/LogSeverityFile"] == "INFO"        # defaults written, not overwritten
    assert cli("config", "felix", "loglevel").out == "DEBUG\n"
    assert cli("config", "felix", "loglevel", "NONE").code == 0
    assert etcd_dump()[FELIX + "/LogSeverityScreen"] == "NONE"
    r = cli("config", "felix", "loglevel", "--remove")
    assert r.code == 0 and r.err == "Value removed\n"
    assert FELIX + "/LogSeverityScreen" not in etcd_dump()
    assert cli("config", "felix", "loglevel", "--remove").err == "No value configured\n"


def test_bgp_loglevel_global_and_node(cli, etcd_dump):
    assert cli("config", "bgp", "loglevel", "info").code == 0
    assert etcd_dump()[BGP + "/global/loglevel"] == "info"
    assert cli("config", "node", "bgp", "loglevel", "DEBUG").code == 0
    # CALICO_HOSTNAME=testhost (the fixture) names this node.
    assert etcd_dump()[BGP + "/host/testhost/loglevel"] == "debug"
    assert cli("config", "node", "bgp", "loglevel").out == "debug\n"
    assert cli("config", "bgp", "loglevel").out == "info\n"
    assert cli("config", "node", "bgp", "loglevel", "--remove").code == 0
    assert BGP + "/host/testhost/loglevel" not in etcd_dump()


def test_force_writes_other_names_and_values(cli, etcd_dump):
    assert cli("config", "felix", "ReportingIntervalSecs", "60", "--force").code == 0
    assert cli("config", "bgp", "loglevel", "verbose", "--force").code == 0
    assert cli("config", "node", "bgp", "custom", "x", "--force").code == 0
    data = etcd_dump()
    assert data[FELIX + "/ReportingIntervalSecs"] == "60"
    assert data[BGP + "/global/loglevel"] == "verbose"
    assert data[BGP + "/host/testhost/custom"] == "x"
    assert cli("config", "felix", "ReportingIntervalSecs", "--force").out == "60\n"


@pytest.mark.parametrize("argv, contains", [
    (("config", "felix", "loglevel", "loud"), "not recognized as a valid value"),
    (("config", "bgp", "loglevel", "warning"), "not recognized as a valid value"),
    (("config", "node", "bgp", "loglevel", "critical"), "not recognized as a valid value"),
    (("config", "felix", "Unknown", "1"), "Use the --force option"),
    (("config", "bgp", "as_num", "1"), "Use the --force option"),
    (("config", "felix", "Unknown", "--remove"), "Use the --force option"),
    (("config", "felix", "a/b", "1", "--force"), "Invalid configuration name"),
    (("config", "bgp", "x y", "1", "--force"), "Invalid configuration name"),
    (("config", "felix", "Name", " ", "--force"), "non-empty"),
    (("config", "felix", "..", "--remove", "--force"), "Invalid configuration name"),
    (("config", "felix", "web\n"), "not recognized"),
    (("config", "felix", "loglevel", "info\nx"), "not recognized"),
])
def test_bad_input_one_line_nothing_written(cli, etcd_dump, argv, contains):
    assert cli("config", "felix", "loglevel", "info").code == 0
    assert_fails_cleanly(cli, etcd_dump, argv, contains=contains)

"""`calicoctl node` options a user may pass, on a namespace host with the real node images:
plain `calicoctl node` (the agent without the plugin) with a valid --ip6 and --log-dir, and
--libnetwork-image; `calicoctl checksystem` without --libnetwork. Every test starts from a host
with no node and leaves none behind, so each passes alone and in any order."""

import pytest

from tests.st.node_helpers import calicoctl, env, store  # noqa: F401 (fixtures)
from tests.st.harness import wait_for

IP6 = "fd00:198:18::21"


@pytest.fixture
def host(two_hosts, env):
    host = two_hosts[0]

    def clean():
        r = calicoctl(host, env, "node", "stop", "--force")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: calicoctl(host, env, "node", "remove").returncode == 0, timeout=60,
                 what="node remove on %s" % host.name)
        assert host.docker("ps", "-aq", "--filter", "name=calico-").stdout.strip() == ""

    clean()
    try:
        yield host
    finally:
        clean()


def _containers(host):
    """{name: image} of the host's running containers."""
    out = host.docker("ps", "--format", "{{.Names}} {{.Image}}").stdout.split("\n")
    return dict(line.split(" ", 1) for line in out if line.strip())


def test_plain_node_with_ip6_and_log_dir(host, node_images, env, store):
    host.run(["ip", "-6", "addr", "add", IP6 + "/64", "dev", "eth0", "nodad"], check=False)
    r = calicoctl(host, env, "node", "--ip6=" + IP6, "--log-dir=/var/log/calico-st")
    assert r.returncode == 0, r.stdout + r.stderr
    running = _containers(host)
    assert running.get("calico-node", "").startswith("calico/node:"), running
    assert "calico-libnetwork" not in running, running       # only asked for with --libnetwork
    assert store.get("/calico/bgp/v1/host/%s/ip_addr_v6" % host.name) == IP6
    assert store.get("/calico/v1/host/%s/bird6_ip" % host.name) == IP6
    # The agent's log lands in the folder given, on the host.
    wait_for(lambda: host.run(["sh", "-c", "ls /var/log/calico-st"]).stdout.strip(),
             timeout=60, what="the agent's log in --log-dir")
    mounts = host.docker("inspect", "--format",
                         "{{range .Mounts}}{{.Source}}:{{.Destination}} {{end}}",
                         "calico-node").stdout
    assert "/var/log/calico-st:" in mounts, mounts


def test_libnetwork_image_is_the_one_started(host, node_images, env):
    host.docker("tag", node_images[1], "calico/custom-libnetwork:st")
    try:
        r = calicoctl(host, env, "node", "--libnetwork",
                      "--libnetwork-image=calico/custom-libnetwork:st")
        assert r.returncode == 0, r.stdout + r.stderr
        assert _containers(host).get("calico-libnetwork") == "calico/custom-libnetwork:st"
    finally:
        calicoctl(host, env, "node", "stop", "--force")
        host.docker("rmi", "calico/custom-libnetwork:st", check=False)


def test_checksystem_without_libnetwork(two_hosts, env):
    r = calicoctl(two_hosts[0], env, "checksystem")
    lines = r.stdout.splitlines()
    assert r.returncode == 0, r.stdout + r.stderr
    assert any(line.startswith("Docker version") and " OK " in line for line in lines), r.stdout
    assert any(line.startswith("kernel: ipset match") and " OK " in line for line in lines)
    # The plugin's own needs (Docker's live-restore advice) are checked only with --libnetwork.
    with_plugin = calicoctl(two_hosts[0], env, "checksystem", "--libnetwork").stdout
    assert len(with_plugin.splitlines()) > len(lines), (with_plugin, r.stdout)

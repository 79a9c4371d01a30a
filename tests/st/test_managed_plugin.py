"""The driver as a Docker managed plugin (`calicoctl node --libnetwork --managed-plugin`), on
both hosts with the real node images, on every engine: networks made with its driver name
(calico:latest) carry policy across hosts like the container form's; `calicoctl node stop` says
which networks keep Docker from disabling it and takes it away once they are gone; and a
dockerd restart without live-restore brings the API, the workloads and their reachability back
with the plugin started by dockerd itself (bench/dockerd_restart.py has the times, beside the
container form's).
"""

import ipaddress
import time

import pytest

from tests.st.calico_stack import learnt
from tests.st.harness import wait_for
from tests.st.harness.procs import on_each
from tests.st.node_helpers import calicoctl, env  # noqa: F401 (fixture)
from tests.st.plugin_helpers import answers_within, clean_docker, container_ip, \
    ping_answered, restart_dockerd_timed, wipe_etcd

# Debian 13's engine (Docker 26.1) here; the demonstration runs with the managed plugin on
# every engine (tests/st/test_demo.py).
pytestmark = pytest.mark.engines("trixie")

DRIVER = "calico:latest"
ROUTES = 60                 # seconds for BGP to carry a new workload's route


def plugins(host):
    out = host.docker("plugin", "ls", "--format", "{{.Name}} {{.Enabled}}").stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


@pytest.fixture
def managed(testbed, two_hosts, node_images, env):  # noqa: F811
    for h in two_hosts:
        clean_docker(h)
    wipe_etcd(testbed.etcd)

    def node(host, *args):
        r = calicoctl(host, env, *args)
        assert r.returncode == 0, "%s on %s: %s" % (" ".join(args), host.name,
                                                     r.stdout + r.stderr)
        return r
    def stop(h):
        clean_docker(h)
        calicoctl(h, env, "node", "stop", "--force")
    try:
        # Both hosts at once, as their operators would (Docker builds the plugin ~20 s each).
        on_each(two_hosts, lambda h: node(h, "node", "--libnetwork", "--managed-plugin"))
        yield node
    finally:
        on_each(two_hosts, stop)
        for h in two_hosts:
            wait_for(lambda h=h: calicoctl(h, env, "node", "remove", "--remove-endpoints")
                     .returncode == 0, timeout=60, what="node remove on %s" % h.name)
        wipe_etcd(testbed.etcd)


def _networks(host, *names):
    for name in names:
        host.docker("network", "create", "--driver", DRIVER, "--ipam-driver", DRIVER, name)


def test_networks_policy_and_stop_with_the_managed_plugin(two_hosts, managed, env):  # noqa: F811
    h1, h2 = two_hosts
    assert plugins(h1) == {DRIVER: "true"} and plugins(h2) == {DRIVER: "true"}
    running = h1.docker("ps", "--format", "{{.Names}}").stdout.split()
    assert "calico-libnetwork" not in running and {"calico-node", "calico-dns"} <= set(running)
    r = calicoctl(h1, env, "status")
    assert r.returncode == 0 and "managed plugin calico:latest" in r.stdout, r.stdout + r.stderr
    managed(h1, "pool", "add", "192.168.0.0/16")
    for h in (h1, h2):
        _networks(h, "mnet1", "mnet2")
    # The plain name is not the managed plugin's: Docker says so, and nothing is made.
    r = h1.docker("network", "create", "--driver", "calico", "mnet3", check=False)
    assert r.returncode != 0 and "calico" in r.stderr
    h1.docker("run", "-d", "--net", "mnet1", "--name", "m-a", "busybox", "sleep", "1000000")
    h1.docker("run", "-d", "--net", "mnet2", "--name", "m-b", "busybox", "sleep", "1000000")
    h2.docker("run", "-d", "--net", "mnet1", "--name", "m-e", "busybox", "sleep", "1000000")
    ip_b, ip_e = container_ip(h1, "m-b", "mnet2"), container_ip(h2, "m-e", "mnet1")
    wait_for(lambda: ipaddress.ip_address(ip_e) in learnt(h1), timeout=ROUTES,
             what="calico-01's route to m-e")
    assert ping_answered(h1, "m-a", ip_e), "mnet1 across hosts"
    assert not ping_answered(h1, "m-a", ip_b, count=3), "mnet1 reached mnet2"
    # Networks still use it: Docker itself refuses to disable it, and stop says which
    # networks hold it, and stops nothing.
    h1.docker("rm", "-f", "m-a", "m-b")
    r = h1.docker("plugin", "disable", DRIVER, check=False)
    assert r.returncode != 0 and "in use" in r.stderr, r.stderr
    r = calicoctl(h1, env, "node", "stop")
    assert r.returncode == 1 and "mnet1" in r.stderr and "mnet2" in r.stderr, r.stderr
    assert plugins(h1) == {DRIVER: "true"}
    assert "calico-node" in h1.docker("ps", "--format", "{{.Names}}").stdout
    # Once they are gone, stop takes the plugin away with the containers.
    h1.docker("network", "rm", "mnet1", "mnet2")
    managed(h1, "node", "stop")
    assert plugins(h1) == {}
    assert h1.docker("ps", "-q").stdout.strip() == ""


def test_dockerd_restart_with_the_managed_plugin(two_hosts, managed, request):
    """3 Calico networks and 5 workloads (restart policy) on calico-01, one more on calico-02;
    dockerd restarted with its defaults (no live-restore)."""
    h1, h2 = two_hosts
    managed(h1, "pool", "add", "192.168.0.0/16")
    nets = ["rnet1", "rnet2", "rnet3"]
    for h in (h1, h2):
        _networks(h, *nets)
    placed = [("r-a", "rnet1"), ("r-b", "rnet1"), ("r-c", "rnet2"), ("r-d", "rnet2"),
              ("r-e", "rnet3")]
    for name, net in placed:
        h1.docker("run", "-d", "--restart", "always", "--net", net, "--name", name, "busybox",
                  "sleep", "1000000")
    h2.docker("run", "-d", "--restart", "always", "--net", "rnet1", "--name", "r-x", "busybox",
              "sleep", "1000000")
    ip_x = container_ip(h2, "r-x", "rnet1")
    assert answers_within(h1, "r-a", container_ip(h1, "r-b", "rnet1"), 30)
    assert answers_within(h1, "r-a", ip_x, ROUTES)

    _, api, t0 = restart_dockerd_timed(h1)

    def all_running():
        out = h1.docker("ps", "--format", "{{.Names}}", check=False).stdout.split()
        return {n for n, _ in placed} <= set(out)
    wait_for(all_running, timeout=120, what="the workloads running again")
    assert plugins(h1) == {DRIVER: "true"}
    ip_a = container_ip(h1, "r-a", "rnet1")
    assert answers_within(h1, "r-a", container_ip(h1, "r-b", "rnet1"), 60)
    assert answers_within(h2, "r-x", ip_a, ROUTES)
    assert not ping_answered(h1, "r-a", container_ip(h1, "r-c", "rnet2"), count=2)
    print("dockerd restart with the managed plugin: API back %.1f s, reachable %.1f s" % (
        api, time.monotonic() - t0))

"""dockerd restarted on a host whose plugin runs in its node container, as `calicoctl node
--libnetwork` starts it, with Calico workloads (restart policy) on both hosts: the daemon comes
back, the workloads come back reachable, nothing leaks.

Without --live-restore dockerd stops the plugin's container with the workloads and, before it
serves its API, looks the driver up (15 s of retries each) for every Calico network and every
endpoint it restores: bounded, but long.  With --live-restore the plugin keeps serving across the
restart.  How long each takes is bench/dockerd_restart.py's figure; here a restart only has to
finish within a bound that catches a hang.
"""

import time

import pytest

from tests.st.calico_stack import store_for
from tests.st.churn_checks import PREFIX, report, settle
from tests.st.demo import default_calicoctl
from tests.st.harness import wait_for
from tests.st.plugin_helpers import (DOCKERD_HANG, answers_within, clean_docker, container_ip,
                                     restart_dockerd_timed, wipe_etcd)

SETTLE = 90                   # seconds for the system to reach rest after a restart


@pytest.fixture
def nodes(testbed, two_hosts, node_images):
    """`calicoctl node --libnetwork` on both hosts (etcd wiped, no container); returns a runner
    of the node's calicoctl binary on a host.  Stops and removes both nodes afterwards."""
    env = {"authority": testbed.etcd_url.split("//", 1)[1], "calicoctl": default_calicoctl()}

    def node_cmd(host, *args, check=True):
        argv = ["env", "-u", "DOCKER_HOST", "-u", "CALICO_HOSTNAME", "-u", "ETCD_ENDPOINTS",
                "ETCD_AUTHORITY=" + env["authority"], env["calicoctl"], *args]
        r = host.run(argv, check=False, timeout=240)
        if check:
            assert r.returncode == 0, "%s on %s: %s" % (" ".join(args), host.name,
                                                         r.stdout + r.stderr)
        return r
    for h in two_hosts:
        clean_docker(h)
    wipe_etcd(testbed.etcd)
    try:
        for h in two_hosts:
            node_cmd(h, "node", "--libnetwork")
        yield node_cmd
    finally:
        for h in two_hosts:
            h.run("docker rm -f $(docker ps -aq --filter name=%s) 2>/dev/null; true" % PREFIX,
                  check=False, timeout=120)
            h.docker("network", "rm", "rnet", check=False)
            node_cmd(h, "node", "stop", "--force", check=False)
        for h in two_hosts:
            wait_for(lambda h=h: node_cmd(h, "node", "remove", "--remove-endpoints",
                                          check=False).returncode == 0,
                     timeout=60, what="node remove on %s" % h.name)
        wipe_etcd(testbed.etcd)


@pytest.mark.parametrize("live_restore", [False, True], ids=["default", "live-restore"])
def test_dockerd_restart_with_the_plugin_in_its_container(testbed, two_hosts, nodes, request,
                                                          live_restore):
    h1, h2 = two_hosts
    if live_restore:
        h1.stop_dockerd(timeout=60)
        h1.start_dockerd(extra_args=["--live-restore"], timeout=120)
        nodes(h1, "node", "--libnetwork")

        def back_to_default():
            # Empty the host first: a daemon started without live restore would otherwise
            # tear the surviving containers down through the (stopped) plugin.
            h1.run("docker rm -f $(docker ps -aq --filter name=%s) 2>/dev/null; true" % PREFIX,
                   check=False, timeout=120)
            h1.docker("network", "rm", "rnet", check=False)
            nodes(h1, "node", "stop", "--force", check=False)
            h1.stop_dockerd(timeout=60)
            h1.start_dockerd(timeout=DOCKERD_HANG)
        request.addfinalizer(back_to_default)
    store = store_for(testbed.etcd)
    nodes(h1, "pool", "add", "192.168.0.0/16")
    for h in two_hosts:
        h.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico", "rnet")
    names = {h1: [PREFIX + "a", PREFIX + "b"], h2: [PREFIX + "c"]}
    for h, ns in names.items():
        for n in ns:
            h.docker("run", "-d", "--restart", "always", "--net", "rnet", "--name", n,
                     "busybox", "sleep", "1000000")
    ip_b, ip_c = container_ip(h1, PREFIX + "b", "rnet"), container_ip(h2, PREFIX + "c", "rnet")
    assert answers_within(h1, PREFIX + "a", ip_b, 30)
    assert answers_within(h1, PREFIX + "a", ip_c, 60)

    stopped, api, t1 = restart_dockerd_timed(h1, ["--live-restore"] if live_restore else ())

    def all_running():
        out = h1.docker("ps", "--format", "{{.Names}}", check=False).stdout.split()
        return set(names[h1]) <= set(out) and "calico-libnetwork" in out
    wait_for(all_running, timeout=120, what="workloads and plugin running again")
    running = time.monotonic() - t1
    ip_b = container_ip(h1, PREFIX + "b", "rnet")
    ip_a = container_ip(h1, PREFIX + "a", "rnet")
    ok_local = answers_within(h1, PREFIX + "a", ip_b, 60)
    ok_cross = answers_within(h2, PREFIX + "c", ip_a, 60)
    reachable = time.monotonic() - t1
    problems = settle(store, two_hosts, ["rnet"], timeout=SETTLE)
    report(request, "dockerd restart with Calico workloads (%s): stop %.1f s, API back %.1f s, "
                    "workloads running %.1f s, reachable %.1f s after start; %d problems at rest"
           % ("live-restore" if live_restore else "default", stopped, api, running, reachable,
              len(problems)))
    assert ok_local and ok_cross
    assert not problems, "\n".join(problems)

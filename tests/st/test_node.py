"""`calicoctl node`, `status`, `diags` and `checksystem` run inside the namespace hosts, against
the testbed's etcd and each host's own dockerd, with the real node images.

Tests run in file order and share the hosts; each leaves the nodes stopped and removed.
"""

import json
import time

import pytest

from tests.st.node_helpers import calicoctl, env, store  # noqa: F401 (fixtures)
from tests.st.harness import wait_for


def _clean(hosts, env):
    for host in hosts:
        host.run("docker rm -f $(docker ps -aq --filter label=calico-st) 2>/dev/null; "
                 "docker network rm stnet 2>/dev/null; true", check=False)
        calicoctl(host, env, "node", "stop", "--force")
    for host in hosts:
        wait_for(lambda h=host: calicoctl(h, env, "node", "remove", "--remove-endpoints")
                 .returncode == 0, timeout=60, what="node remove on %s" % host.name)


def test_runtime_none_registers_the_host_and_turns_forwarding_on(two_hosts, env, store):
    host = two_hosts[0]
    host.run(["sysctl", "-qw", "net.ipv4.ip_forward=0"])
    r = calicoctl(host, env, "node", "--runtime=none")
    assert r.returncode == 0, r.stderr
    assert store.get("/calico/v1/host/calico-01/bird_ip") == host.ip      # eth0, not docker0
    assert store.get("/calico/bgp/v1/host/calico-01/ip_addr_v4") == host.ip
    assert store.get("/calico/bgp/v1/host/calico-01/ip_addr_v6") == ""    # no --ip6: empty
    assert host.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"
    assert host.docker("ps", "-q").stdout.strip() == ""                   # nothing started
    r = calicoctl(host, env, "node", "--runtime=none", "--ip=198.18.0.99")
    assert r.returncode == 1 and "not an address of this host" in r.stderr
    assert calicoctl(host, env, "node", "remove").returncode == 0
    assert store.get("/calico/v1/host/calico-01/bird_ip") is None


def test_checksystem_inside_a_host(two_hosts, env):
    r = calicoctl(two_hosts[0], env, "checksystem", "--libnetwork")
    lines = r.stdout.splitlines()
    assert any(line.startswith("kernel: ipset match") and " OK " in line for line in lines), r
    assert any(line.startswith("Docker version") and " OK " in line for line in lines), r
    assert any(line.startswith("kernel: ipip") for line in lines)
    assert r.returncode == 0, r.stdout + r.stderr


def test_node_libnetwork_starts_healthy_and_reruns_safely(two_hosts, node_images, env, store):
    host = two_hosts[0]
    try:
        t0 = time.monotonic()
        r = calicoctl(host, env, "node", "--libnetwork")
        print("calicoctl node --libnetwork took %.1f s" % (time.monotonic() - t0))
        assert r.returncode == 0, r.stdout + r.stderr
        names = host.docker("ps", "--format", "{{.Names}} {{.Image}}").stdout.split("\n")
        assert any(n.startswith("calico-node calico/node:") for n in names), names
        assert any(n.startswith("calico-libnetwork calico/node-libnetwork:") for n in names)
        assert store.get("/calico/felix/v1/host/calico-01/status") is not None
        ids = host.docker("ps", "-q", "--no-trunc").stdout.split()
        # Again with the same configuration: calico-node, calico-libnetwork and calico-dns
        # left alone.
        r = calicoctl(host, env, "node", "--libnetwork")
        assert r.returncode == 0, r.stderr
        assert r.stderr.count("left alone") == 3, r.stderr
        assert host.docker("ps", "-q", "--no-trunc").stdout.split() == ids
        # A new AS is only etcd data (the agent follows it): containers left alone.
        r = calicoctl(host, env, "node", "--libnetwork", "--as=64512")
        assert r.returncode == 0 and r.stderr.count("left alone") == 3, r.stderr
        assert store.get("/calico/bgp/v1/host/calico-01/as_num") == "64512"
        # A changed container configuration restarts calico-node only.
        host.docker("tag", node_images[0], "calico/node:st-alt")
        r = calicoctl(host, env, "node", "--libnetwork", "--node-image=calico/node:st-alt")
        assert r.returncode == 0, r.stderr
        assert "configuration changed" in r.stderr and r.stderr.count("left alone") == 2
    finally:
        _clean([host], env)


def test_two_nodes_status_bgp_and_stop_rules(two_hosts, node_images, env, store):
    try:
        for host in two_hosts:
            r = calicoctl(host, env, "node", "--libnetwork")
            assert r.returncode == 0, r.stdout + r.stderr
        host = two_hosts[0]
        status = wait_for(lambda: (lambda r: r if r.returncode == 0 else None)(
            calicoctl(host, env, "status")), timeout=60, what="calicoctl status to be healthy")
        assert "Established" in status.stdout and two_hosts[1].ip in status.stdout
        lines = status.stdout.splitlines()      # the original calicoctl's layout
        assert lines[0].startswith("calico-node container is running. Status: Up"), lines
        assert "IPv4 BGP status" in lines and "IPv6 BGP status" in lines
        r = calicoctl(host, env, "node", "show")
        assert "calico-01" in r.stdout and "calico-02" in r.stdout and "yes" in r.stdout
        # A workload: stop refuses, status counts it.
        assert calicoctl(host, env, "pool", "add", "192.168.0.0/16").returncode == 0
        host.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
                    "stnet")
        host.docker("run", "-tid", "--label", "calico-st", "--net", "stnet", "--name", "st-a",
                    "busybox")
        assert "1 on node calico-01" in calicoctl(host, env, "status").stdout
        r = calicoctl(host, env, "node", "stop")
        assert r.returncode == 1 and "--force" in r.stderr
        # diags: one tarball with the BIRD state from inside calico-node.
        r = calicoctl(host, env, "diags")
        assert r.returncode == 0, r.stderr
        path = r.stdout.strip()
        listing = host.run(["tar", "-tzf", path]).stdout
        for name in ("iptables-save.txt", "bird-protocols.txt", "etcd-calico.json"):
            assert name in listing
        protocols = host.run(["sh", "-c", "tar -xzOf %s --wildcards '*/bird-protocols.txt'"
                              % path]).stdout
        assert "Established" in protocols
        # calico-02 goes away for good: remove it from calico-01 once its agent is gone.
        other = two_hosts[1]
        r = calicoctl(host, env, "node", "remove", "--hostname=calico-02")
        assert r.returncode == 1 and "alive" in r.stderr     # its agent still reports
        assert calicoctl(other, env, "node", "stop", "--force").returncode == 0
        # Stopping calico-node took the agent's liveness report with it: no TTL to wait out.
        r = calicoctl(host, env, "node", "remove", "--hostname=calico-02")
        assert r.returncode == 0, r.stderr
        assert not [k for k, _, _ in store.children("/calico") if "calico-02" in k]
    finally:
        _clean(two_hosts, env)
        calicoctl(two_hosts[0], env, "pool", "remove", "192.168.0.0/16", "--force")


def test_status_says_what_is_down(two_hosts, env):
    r = calicoctl(two_hosts[0], env, "status")
    assert r.returncode == 1
    assert r.stdout.splitlines()[0] == "calico-node container not running"
    assert "DOWN: agent" in r.stderr and "calicoctl node" in r.stderr

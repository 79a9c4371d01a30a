"""The libnetwork plugin on real dockerds in two namespace hosts: the demonstration's flow."""

import json

import pytest

from tests.st.harness import procs, wait_for

from tests.st.plugin_helpers import (PluginProcess, allow_forwarding, assert_nothing_left,
                                     calicoctl, clean_docker,
                                     container_ip, endpoint_id, etcd_keys, host_links,
                                     host_routes, ping, route_to, wipe_etcd)


@pytest.fixture(scope="module")
def plugins(two_hosts, etcd_on_bridge):
    procs = [PluginProcess(h, etcd_on_bridge).start() for h in two_hosts]
    for h in two_hosts:
        allow_forwarding(h)
    yield procs
    for p in procs:
        p.stop()


@pytest.fixture
def clean(two_hosts, etcd_on_bridge, plugins):
    yield
    for h in two_hosts:
        clean_docker(h)
    wipe_etcd(etcd_on_bridge)


def test_calico_ipam_network_across_hosts(two_hosts, etcd_on_bridge, plugins, clean):
    h1, h2 = two_hosts
    etcd = etcd_on_bridge
    calicoctl(h1, etcd, "pool", "add", "192.168.0.0/16")
    for h in two_hosts:
        h.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico", "net1")
    h1.docker("run", "--net", "net1", "--name", "workload-A", "-tid", "busybox")
    h1.docker("run", "--net", "net1", "--name", "workload-C", "-tid", "busybox")
    h2.docker("run", "--net", "net1", "--name", "workload-E", "-tid", "busybox")
    ip_a = container_ip(h1, "workload-A", "net1")
    ip_e = container_ip(h2, "workload-E", "net1")
    # Same host, by name through Docker's embedded DNS.
    result = ping(h1, "workload-A", "workload-C.net1")
    assert result.returncode == 0, result.stdout + result.stderr
    # Across hosts (the routes BGP would give).
    route_to(h1, ip_e, h2)
    route_to(h2, ip_a, h1)
    result = ping(h1, "workload-A", ip_e)
    assert result.returncode == 0, result.stdout + result.stderr
    # Inside the container: eth0 with a /32, default via 169.254.1.1, the workload MAC.
    out = h1.docker("exec", "workload-A", "ip", "-o", "addr", "show", "eth0").stdout
    assert "%s/32" % ip_a in out
    assert "ee:ee:ee:ee:ee:ee" in h1.docker("exec", "workload-A", "ip", "link", "show",
                                            "eth0").stdout
    routes = h1.docker("exec", "workload-A", "ip", "route").stdout
    assert "default via 169.254.1.1 dev eth0" in routes
    assert "169.254.1.1 dev eth0" in routes
    # On the host: the veth and the /32 route; in etcd: the record with profile and names.
    ep = endpoint_id(h1, "workload-A", "net1")
    assert "cali" + ep[:11] in host_links(h1)
    assert "%s dev cali%s" % (ip_a, ep[:11]) in host_routes(h1)

    def record():
        value = etcd_keys(etcd).get(
            "/calico/v1/host/calico-01/workload/libnetwork/libnetwork/endpoint/" + ep)
        return value and json.loads(value)
    rec = wait_for(lambda: (r := record()) and r.get("container_name") and r, timeout=15,
                   what="workload-A's endpoint record with its container name")
    assert rec["profile_ids"] == ["net1"] and rec["container_name"] == "workload-A"
    assert rec["ipv4_nets"] == ["%s/32" % ip_a] and rec["mac"] == "ee:ee:ee:ee:ee:ee"
    shown = calicoctl(h1, etcd, "endpoint", ep, "profile", "show").stdout
    assert "net1" in shown
    rules = calicoctl(h1, etcd, "profile", "net1", "rule", "show").stdout
    assert "allow from tag net1" in rules


POOL_KEY = "/calico/v1/ipam/v4/pool/192.168.0.0-16"


def _no_leftovers(hosts, etcd):
    """No veth, workload route, endpoint, address, handle, claim or network record; believed
    only because the same etcd read shows the 192.168.0.0/16 pool every test here adds."""
    assert_nothing_left(hosts, etcd, present=[POOL_KEY])


def test_default_ipam_network_clash_and_ip_range(two_hosts, etcd_on_bridge, plugins, clean):
    h1, h2 = two_hosts
    etcd = etcd_on_bridge
    # A Calico pool of its own, which must outlive the pool Docker's IPAM network brings.
    calicoctl(h1, etcd, "pool", "add", "192.168.0.0/16")
    for h in two_hosts:
        h.docker("network", "create", "--driver", "calico", "--subnet", "10.65.0.0/24",
                 "--opt", "nat-outgoing=true", "net2")
    pool = json.loads(etcd_keys(etcd)["/calico/v1/ipam/v4/pool/10.65.0.0-24"])
    assert pool == {"cidr": "10.65.0.0/24", "ipam": False, "masquerade": True}
    h1.docker("run", "--net", "net2", "--name", "d1", "-tid", "busybox")
    h1.docker("run", "--net", "net2", "--name", "d2", "-tid", "busybox")
    assert ping(h1, "d1", "d2.net2").returncode == 0
    # Each host's Docker hands out 10.65.0.2 first: the second host is refused, clearly.
    result = h2.docker("run", "--net", "net2", "--name", "d3", "-tid", "busybox", check=False)
    assert result.returncode != 0
    assert "--ip-range" in result.stderr and "10.65.0.2" in result.stderr, result.stderr
    assert host_links(h2) == []
    # With a range per host it works.
    h2.docker("rm", "-f", "d3", check=False)
    h2.docker("network", "rm", "net2")
    h2.docker("network", "create", "--driver", "calico", "--subnet", "10.65.0.0/24",
              "--ip-range", "10.65.0.128/25", "--opt", "nat-outgoing=true", "net2")
    h2.docker("run", "--net", "net2", "--name", "d3", "-tid", "busybox")
    ip3 = container_ip(h2, "d3", "net2")
    assert ip3.startswith("10.65.0.1")
    route_to(h1, ip3, h2)
    route_to(h2, container_ip(h1, "d1", "net2"), h1)
    assert ping(h1, "d1", ip3).returncode == 0
    # Unknown --opt keys are refused with the known ones.
    result = h1.docker("network", "create", "--driver", "calico", "--subnet", "10.66.0.0/24",
                       "--opt", "colour=blue", "net3", check=False)
    assert result.returncode != 0 and "colour" in result.stderr and "nat-outgoing" in \
        result.stderr
    for h in two_hosts:
        clean_docker(h)
    _no_leftovers(two_hosts, etcd)
    assert "/calico/v1/ipam/v4/pool/10.65.0.0-24" not in etcd_keys(etcd)


def test_static_ip_and_teardown_leaves_nothing(two_hosts, etcd_on_bridge, plugins, clean):
    h1, _ = two_hosts
    etcd = etcd_on_bridge
    calicoctl(h1, etcd, "pool", "add", "192.168.0.0/16")
    h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
              "--subnet", "192.168.0.0/16", "net1")
    h1.docker("run", "--net", "net1", "--ip", "192.168.7.7", "--name", "s1", "-tid", "busybox")
    assert container_ip(h1, "s1", "net1") == "192.168.7.7"
    h1.docker("run", "--net", "net1", "--name", "s2", "-tid", "busybox")
    assert ping(h1, "s2", "192.168.7.7").returncode == 0
    result = h1.docker("run", "--net", "net1", "--ip", "192.168.7.7", "--name", "s3", "-tid",
                       "busybox", check=False)
    assert result.returncode != 0 and "already in use" in result.stderr
    # --subnet that is not a pool: a clear error.
    result = h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
                       "--subnet", "10.99.0.0/16", "netx", check=False)
    assert result.returncode != 0 and "calicoctl pool add" in result.stderr
    h1.docker("rm", "-f", "s1", "s2", "s3")
    wait_for(lambda: host_links(h1) == [], timeout=15, what="veths gone")
    h1.docker("network", "rm", "net1")
    _no_leftovers(two_hosts, etcd)
    assert "/calico/v1/policy/profile/net1/tags" not in etcd_keys(etcd)


def test_plugin_restart_between_create_and_remove(two_hosts, etcd_on_bridge, plugins, clean):
    h1, _ = two_hosts
    etcd = etcd_on_bridge
    calicoctl(h1, etcd, "pool", "add", "192.168.0.0/16")
    h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico", "net1")
    h1.docker("run", "--net", "net1", "--name", "r1", "-tid", "busybox")
    h1.docker("run", "--net", "net1", "--name", "r2", "-tid", "busybox")
    plugin = plugins[0]
    # A crash (SIGKILL) leaves the socket; the new plugin replaces it.
    plugin.stop(sig=9)
    assert plugin.socket_path.exists()
    plugin.start()
    assert ping(h1, "r1", "r2.net1").returncode == 0
    h1.docker("run", "--net", "net1", "--name", "r3", "-tid", "busybox")
    assert ping(h1, "r3", "r1.net1").returncode == 0
    # A clean stop removes the socket.
    assert plugin.stop() == 0
    assert not plugin.socket_path.exists()
    plugin.start()
    h1.docker("rm", "-f", "r1", "r2", "r3")
    h1.docker("network", "rm", "net1")
    _no_leftovers(two_hosts, etcd)
    assert "Reconciliation: nothing to clean up" in plugin.log()


def test_second_calico_network_gets_second_interface(two_hosts, etcd_on_bridge, plugins,
                                                     clean):
    h1, _ = two_hosts
    etcd = etcd_on_bridge
    calicoctl(h1, etcd, "pool", "add", "192.168.0.0/16")
    h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico", "net1")
    h1.docker("network", "create", "--driver", "calico", "--subnet", "10.67.0.0/24", "net2")
    calicoctl(h1, etcd, "pool", "add", "10.68.0.0/24")
    h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico",
              "--subnet", "10.68.0.0/24", "net3")
    h1.docker("run", "--net", "net1", "--name", "m1", "-tid", "busybox")
    h1.docker("run", "--net", "net2", "--name", "m2", "-tid", "busybox")
    h1.docker("network", "connect", "net2", "m1")
    routes = h1.docker("exec", "m1", "ip", "route").stdout
    assert routes.count("default") == 1 and "default via 169.254.1.1 dev eth0" in routes
    assert "10.67.0.0/24 dev eth1" in routes, routes
    ip_m1_net2 = container_ip(h1, "m1", "net2")
    assert ip_m1_net2 in h1.docker("exec", "m1", "ip", "-o", "addr", "show", "eth1").stdout
    # Traffic to net2 leaves by eth1 with m1's net2 address.
    assert ping(h1, "m1", "m2.net2").returncode == 0
    assert ping(h1, "m2", ip_m1_net2).returncode == 0
    # A third, Calico-IPAM network with its own pool: routed through eth2's own next hop.
    h1.docker("run", "--net", "net3", "--name", "m3", "-tid", "busybox")
    h1.docker("network", "connect", "net3", "m1")
    routes = h1.docker("exec", "m1", "ip", "route").stdout
    assert routes.count("default") == 1
    assert "10.68.0.0/24 via 169.254.1.3 dev eth2" in routes, routes
    assert ping(h1, "m1", "m3.net3").returncode == 0
    h1.docker("network", "disconnect", "net2", "m1")
    h1.docker("rm", "-f", "m1", "m2", "m3")
    for net in ("net1", "net2", "net3"):
        h1.docker("network", "rm", net)
    _no_leftovers(two_hosts, etcd)


def test_dockerd_killed_with_containers_running(two_hosts, etcd_on_bridge, plugins, clean):
    h1, _ = two_hosts
    etcd = etcd_on_bridge
    calicoctl(h1, etcd, "pool", "add", "192.168.0.0/16")
    h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico", "net1")
    h1.docker("run", "--net", "net1", "--name", "k1", "-tid", "busybox")
    h1.docker("run", "--net", "net1", "--name", "k2", "-tid", "busybox")
    plugin = plugins[0]
    plugin.stop(sig=9)
    pid = int(h1.run(["cat", "/run/docker.pid"]).stdout)
    h1.run(["kill", "-9", str(pid)])
    wait_for(lambda: not procs.is_alive(pid), timeout=15, what="dockerd to die")
    # containerd dies with dockerd (parent-death signal) but may linger as a zombie whose pid
    # file would make the new dockerd wait on a dead socket.
    h1.run(["rm", "-f", "/run/docker.pid", "/run/docker/containerd/containerd.pid"])
    plugin.start()
    h1.start_dockerd()
    # Docker does not restart the containers; between its own clean-up calls and the plugin's
    # reconciliation, nothing of their endpoints survives.
    wait_for(lambda: host_links(h1) == [] and not [k for k in etcd_keys(etcd) if "/workload/" in k],
             timeout=60, what="the dead containers' endpoints to go")
    h1.docker("rm", "-f", "k1", "k2", check=False)
    h1.docker("network", "rm", "net1")
    _no_leftovers(two_hosts, etcd)


def test_reconciliation_after_calls_were_missed(two_hosts, etcd_on_bridge, plugins, clean):
    """Containers removed while the plugin was down: Docker could not tell it; the restarted
    plugin finds the endpoints Docker no longer knows and removes them, addresses and all."""
    h1, _ = two_hosts
    etcd = etcd_on_bridge
    calicoctl(h1, etcd, "pool", "add", "192.168.0.0/16")
    h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico", "net1")
    h1.docker("run", "--net", "net1", "--name", "g1", "-tid", "busybox")
    h1.docker("run", "--net", "net1", "--name", "g2", "-tid", "busybox")
    gone = endpoint_id(h1, "g1", "net1")
    kept = endpoint_id(h1, "g2", "net1")
    plugin = plugins[0]
    plugin.stop(sig=9)
    h1.docker("rm", "-f", "g1", check=False, timeout=180)
    plugin.start()
    wait_for(lambda: "Reconciliation: removed endpoint %s" % gone[:12] in plugin.log(), timeout=60,
             what="reconciliation")
    keys = etcd_keys(etcd)
    assert not [k for k in keys if gone in k]
    assert [k for k in keys if kept in k]
    assert "cali" + gone[:11] not in host_links(h1)
    assert "cali" + kept[:11] in host_links(h1)
    h1.docker("rm", "-f", "g2")
    h1.docker("network", "rm", "net1")
    _no_leftovers(two_hosts, etcd)


def test_ipv6_network(two_hosts, etcd_on_bridge, plugins, clean):
    h1, _ = two_hosts
    etcd = etcd_on_bridge
    calicoctl(h1, etcd, "pool", "add", "192.168.0.0/16")
    calicoctl(h1, etcd, "pool", "add", "fd80:24e2:f998:72d6::/64")
    h1.docker("network", "create", "--driver", "calico", "--ipam-driver", "calico", "--ipv6",
              "net6")
    h1.docker("run", "--net", "net6", "--name", "v1", "-tid", "busybox")
    h1.docker("run", "--net", "net6", "--name", "v2", "-tid", "busybox")
    info = json.loads(h1.docker("inspect", "--format", "{{json .NetworkSettings.Networks}}",
                                "v2").stdout)["net6"]
    ip6 = info["GlobalIPv6Address"]
    assert ip6.startswith("fd80:24e2:f998:72d6:"), info
    routes = h1.docker("exec", "v1", "ip", "-6", "route").stdout
    assert "default via fe80::1 dev eth0" in routes, routes
    result = h1.docker("exec", "v1", "ping", "-6", "-c", "1", "-W", "5", ip6, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ip6 in host_routes(h1) or ip6 in h1.run(["ip", "-6", "route"]).stdout
    h1.docker("rm", "-f", "v1", "v2")
    h1.docker("network", "rm", "net6")
    _no_leftovers(two_hosts, etcd)

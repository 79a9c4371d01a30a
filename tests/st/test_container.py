"""`calicoctl container`: a Calico interface in containers on Docker's default networking."""

import json

import pytest

from tests.st.plugin_helpers import (allow_forwarding, assert_nothing_left, calicoctl,
                                     clean_docker, etcd_keys, host_links, host_routes, ping,
                                     wipe_etcd)


@pytest.fixture
def host(two_hosts, etcd_on_bridge):
    h1 = two_hosts[0]
    allow_forwarding(h1)
    yield h1
    clean_docker(h1)
    wipe_etcd(etcd_on_bridge)


def test_container_add_gives_a_working_second_interface(host, etcd_on_bridge):
    etcd = etcd_on_bridge
    calicoctl(host, etcd, "pool", "add", "192.168.0.0/16")
    host.docker("run", "-tid", "--name", "c1", "busybox")              # on docker0
    host.docker("run", "-tid", "--net", "none", "--name", "c2", "busybox")
    out = calicoctl(host, etcd, "container", "add", "c1", "192.168.1.1")
    assert "192.168.1.1" in out.stderr
    calicoctl(host, etcd, "container", "add", "c2", "ipv4")
    c2_ip = host.docker("exec", "c2", "ip", "-4", "-o", "addr", "show", "eth1").stdout.split()[3]
    c2_ip = c2_ip.split("/")[0]
    # c1 keeps Docker's default route and reaches the pools through eth1; c2 (no network of
    # its own) gets its default route through eth1.
    routes1 = host.docker("exec", "c1", "ip", "route").stdout
    assert "default via 172.17.0.1 dev eth0" in routes1
    assert "192.168.0.0/16 via 169.254.1.1 dev eth1" in routes1
    assert "default via 169.254.1.1 dev eth1" in host.docker("exec", "c2", "ip", "route").stdout
    assert "ee:ee:ee:ee:ee:ee" in host.docker("exec", "c2", "ip", "link", "show", "eth1").stdout
    result = ping(host, "c1", c2_ip)
    assert result.returncode == 0, result.stdout + result.stderr
    # The records: orchestrator docker, workload = container id.
    cid = host.docker("inspect", "--format", "{{.Id}}", "c1").stdout.strip()
    eps = {k: json.loads(v) for k, v in etcd_keys(etcd).items()
           if "/workload/docker/%s/endpoint/" % cid in k}
    assert len(eps) == 1
    (ep_key, ep), = eps.items()
    assert ep["ipv4_nets"] == ["192.168.1.1/32"] and ep["container_name"] == "c1"
    assert "192.168.1.1 dev %s" % ep["name"] in host_routes(host)
    # More addresses, profiles, show.
    calicoctl(host, etcd, "container", "c1", "ip", "add", "192.168.1.50")
    assert "192.168.1.50" in host.docker("exec", "c1", "ip", "-o", "addr", "show",
                                         "eth1").stdout
    assert ping(host, "c2", "192.168.1.50").returncode == 0
    calicoctl(host, etcd, "container", "c1", "ip", "remove", "192.168.1.50")
    assert "192.168.1.50" not in host.docker("exec", "c1", "ip", "addr").stdout
    assert "192.168.1.50" not in host_routes(host)
    calicoctl(host, etcd, "profile", "add", "prof1")
    calicoctl(host, etcd, "container", "c1", "profile", "append", "prof1")
    shown = calicoctl(host, etcd, "container", "c1", "endpoint", "show").stdout
    assert "prof1" in shown and "192.168.1.1/32" in shown
    bad = calicoctl(host, etcd, "container", "c1", "profile", "append", "nosuch", check=False)
    assert bad.returncode == 1 and "nosuch" in bad.stderr
    bad = calicoctl(host, etcd, "container", "c1", "ip", "add", "10.1.2.3", check=False)
    assert bad.returncode == 1 and "not in any configured" in bad.stderr
    bad = calicoctl(host, etcd, "container", "add", "nosuch", "ipv4", check=False)
    assert bad.returncode == 1 and "does not exist" in bad.stderr
    # Remove: nothing left (what must stay, the pool and prof1, shows etcd was read).
    assert ep["name"] in host_links(host)
    for name in ("c1", "c2"):
        calicoctl(host, etcd, "container", "remove", name)
    assert "eth0" in host.docker("exec", "c1", "ip", "link").stdout
    assert "eth1" not in host.docker("exec", "c1", "ip", "link").stdout
    assert_nothing_left([host], etcd, present=["/calico/v1/ipam/v4/pool/192.168.0.0-16",
                                              "/calico/v1/policy/profile/prof1/rules"])


def test_container_add_interface_ipv6_and_profile_set_remove(host, etcd_on_bridge):
    """--interface names the Calico interface; an IPv6 address from an IPv6 pool; profile set
    replaces and profile remove takes away, as the endpoint's record and `endpoint show` say."""
    etcd = etcd_on_bridge
    calicoctl(host, etcd, "pool", "add", "192.168.0.0/16")
    calicoctl(host, etcd, "pool", "add", "fd80:24e2:f998:72d6::/64")
    for name in ("p1", "p2", "p3"):
        calicoctl(host, etcd, "profile", "add", name)
    host.docker("run", "-tid", "--name", "c3", "busybox")
    calicoctl(host, etcd, "container", "add", "c3", "192.168.2.1", "--interface=calieth")
    links = host.docker("exec", "c3", "ip", "link").stdout
    assert "calieth" in links and "eth1" not in links, links
    calicoctl(host, etcd, "container", "c3", "ip", "add", "fd80:24e2:f998:72d6::11",
              "--interface=calieth")
    addrs = host.docker("exec", "c3", "ip", "-6", "-o", "addr", "show", "calieth").stdout
    assert "fd80:24e2:f998:72d6::11/" in addrs, addrs

    cid = host.docker("inspect", "--format", "{{.Id}}", "c3").stdout.strip()

    def record():
        eps = [json.loads(v) for k, v in etcd_keys(etcd).items()
               if "/workload/docker/%s/endpoint/" % cid in k]
        assert len(eps) == 1, eps
        return eps[0]
    assert record()["ipv6_nets"] == ["fd80:24e2:f998:72d6::11/128"]

    calicoctl(host, etcd, "container", "c3", "profile", "set", "p1", "p2")
    assert record()["profile_ids"] == ["p1", "p2"]
    calicoctl(host, etcd, "container", "c3", "profile", "remove", "p1")
    assert record()["profile_ids"] == ["p2"]
    calicoctl(host, etcd, "container", "c3", "profile", "set", "p3")
    assert record()["profile_ids"] == ["p3"]
    shown = calicoctl(host, etcd, "container", "c3", "endpoint", "show").stdout
    assert "p3" in shown and "p2" not in shown, shown
    bad = calicoctl(host, etcd, "container", "c3", "profile", "remove", "p1", check=False)
    assert bad.returncode == 1 and "p1" in bad.stderr, bad.stderr
    assert record()["profile_ids"] == ["p3"]                       # nothing half-done
    calicoctl(host, etcd, "container", "remove", "c3")
    assert "calieth" not in host.docker("exec", "c3", "ip", "link").stdout

"""calico-dns, the container `calicoctl node --libnetwork` starts for names across hosts (pure)."""

from calicoctl.datastore.store import EtcdSettings
from calicoctl.node import containers


def settings(**kw):
    base = dict(node_name="calico-01", node_image="calico/node:v0.12.0",
                etcd_env=EtcdSettings(endpoints=["http://198.18.0.1:2379"]).to_env(),
                libnetwork_image="calico/node-libnetwork:v0.12.0", docker_socket="/run/docker.sock")
    base.update(kw)
    return containers.NodeSettings(**base)


def test_the_dns_container():
    spec = containers.dns_container_spec(settings())
    assert spec["name"] == "calico-dns" and spec["image"] == "calico/node-libnetwork:v0.12.0"
    assert spec["command"] == ["calicoctl", "dns", "serve",
                               "--ready-file=/var/run/calico/dns.ready"]
    # Host network and pid namespaces: it reaches Docker's sandbox paths through dockerd's root.
    assert spec["network_mode"] == "host" and spec["pid_mode"] == "host"
    assert spec["privileged"]
    assert spec["volumes"]["/run/docker.sock"]["bind"] == "/var/run/docker.sock"
    assert spec["volumes"]["/var/run/calico"]["bind"] == "/var/run/calico"
    assert spec["environment"]["CALICO_HOSTNAME"] == "calico-01"
    assert spec["environment"]["DOCKER_HOST"] == "unix:///var/run/docker.sock"
    assert spec["restart_policy"] == {"Name": "unless-stopped"}


def test_without_full_privileges_it_gets_what_the_host_has():
    spec = containers.dns_container_spec(settings(missing_caps=["SYS_RESOURCE"]))
    assert "privileged" not in spec and "SYS_ADMIN" in spec["cap_add"]
    assert "SYS_RESOURCE" not in spec["cap_add"]


def test_the_other_containers_are_unchanged():
    """Their configuration hash must not move: a `calicoctl node` re-run after an upgrade would
    restart calico-node and calico-libnetwork for nothing."""
    for spec in (containers.node_container_spec(settings()),
                 containers.plugin_container_spec(settings())):
        assert "pid_mode" not in spec


def test_ready_file(tmp_path):
    path = str(tmp_path / "dns.ready")
    assert not containers.dns_ready(path)
    (tmp_path / "dns.ready").write_text("1\n")
    assert containers.dns_ready(path)
    containers.clear_dns_ready(path)
    containers.clear_dns_ready(path)            # twice: nothing to remove is fine
    assert not containers.dns_ready(path)

"""The node library's pure parts (address choice, check verdicts, container specs, BIRD parsing)
and the read-only collectors (checks probed for real, diags) on this machine."""

import ipaddress
import json
import tarfile

from calicoctl.datastore.store import EtcdSettings
from calicoctl.node import address, checks, containers, diags, status


def _link(name, *addrs, kind=None, mtu=1500):
    return {"name": name, "kind": kind, "mtu": mtu,
            "addresses": [ipaddress.ip_interface(a) for a in addrs]}


def test_choose_address_skips_what_is_not_the_host():
    links = [_link("lo", "127.0.0.1/8"),
             _link("docker0", "172.17.0.1/16", kind="bridge"),
             _link("br-0123456789ab", "172.18.0.1/16", kind="bridge"),
             _link("cali1234567890a", "169.254.1.1/32", kind="veth"),
             _link("tunl0", "192.168.0.1/32", kind="ipip"),
             _link("mybridge", "10.0.0.1/24", kind="bridge"),   # a bridge Docker did not make
             _link("eth0", "fd00::2/64", "198.18.0.11/24")]
    assert address.choose_address(links) == ipaddress.ip_address("10.0.0.1")
    assert address.choose_address(links, docker_bridges={"mybridge"}) == \
        ipaddress.ip_address("198.18.0.11")
    assert address.choose_address(links, version=6) == ipaddress.ip_address("fd00::2")
    assert address.choose_address(links[:5]) is None


def test_check_on_host():
    links = [_link("eth0", "198.18.0.11/24")]
    assert address.check_on_host(ipaddress.ip_address("198.18.0.11"), links) == "eth0"
    try:
        address.check_on_host(ipaddress.ip_address("198.18.0.12"), links)
    except Exception as exc:
        assert "not an address of this host" in str(exc)
    else:
        raise AssertionError("accepted an address that is not on the host")


def test_real_interfaces_are_read():
    links = address.read_interfaces()
    assert any(link["name"] == "lo" for link in links)


def test_rp_filter_and_mtu_verdicts():
    assert checks.check_rp_filter(lambda p: "1").ok
    assert checks.check_rp_filter(lambda p: "0").ok
    loose = checks.check_rp_filter(lambda p: "2")
    assert not loose.ok and "spoof" in loose.detail and not loose.failed   # a warning
    assert checks.check_mtu(_link("eth0", mtu=1500)).ok
    small = checks.check_mtu(_link("eth0", mtu=1400))
    assert not small.ok and "mtu=1400" in small.detail
    assert checks.check_mtu(None).ok


def test_kernel_probes_run_for_real():
    # Policy needs ipset matches and IPv6 policy ip6tables: every machine these tests run on
    # has both (the agent's own tests program them), so the probes must say so.
    for check in (checks.check_xt_set(), checks.check_ip6tables()):
        assert check.ok, check.detail
    # ipip may be missing (this project's CI kernel has none): the probe must agree with an
    # independent look, in a namespace of its own, and never be required.
    import subprocess
    has_ipip = subprocess.run(["unshare", "--net", "ip", "link", "add", "name", "ipiptest",
                               "type", "ipip"], capture_output=True).returncode == 0
    ipip = checks.check_ipip()
    assert ipip.ok == has_ipip, ipip.detail
    assert not ipip.required and ("IP-in-IP" in ipip.detail)


def test_probe_failure_is_reported_with_the_error():
    check = checks.check_xt_set(probe=lambda script: (False, "Unknown match set"))
    assert check.failed and "Unknown match set" in check.detail and "xt_set" in check.detail


def test_docker_check_reports_unreachable_and_old():
    from calicoctl.errors import CalicoError

    def unreachable():
        raise CalicoError("Cannot reach Docker at unix:///nowhere")
    assert checks.check_docker(unreachable).failed

    class Engine:
        def __init__(self, version, api):
            self.answer = {"Version": version, "ApiVersion": api}

        def version(self):
            return self.answer
    # Docker 19.03 (API 1.40) is one step older than the oldest supported engine.
    old = checks.check_docker(lambda: Engine("19.03.15", "1.40"))
    assert old.failed and "\n" not in old.detail
    assert "Docker 19.03.15 (API 1.40) is older than Docker 20.10 (API 1.41)" in old.detail
    assert "install Docker 20.10 or later (Debian: apt-get install docker.io)" in old.detail
    assert checks.check_docker(lambda: Engine("20.10.24+dfsg1", "1.41")).ok
    assert checks.check_docker(lambda: Engine("28.5.2", "1.51")).ok


def test_container_specs():
    settings = containers.NodeSettings(
        node_name="calico-01", node_image="calico/node:v0.12.0",
        etcd_env=EtcdSettings(endpoints=["http://198.18.0.1:2379"]).to_env(),
        log_dir="/srv/log", libnetwork_image="calico/node-libnetwork:v0.12.0",
        tls_files=["/etc/calico/ca.pem"], docker_socket="/run/docker.sock")
    node = containers.node_container_spec(settings)
    assert node["name"] == "calico-node" and node["privileged"] and node["network_mode"] == "host"
    assert node["command"] == ["calicoctl", "felix", "serve"]
    assert node["environment"]["ETCD_ENDPOINTS"] == "http://198.18.0.1:2379"
    assert node["environment"]["CALICO_HOSTNAME"] == "calico-01"
    assert node["volumes"]["/srv/log"]["bind"] == "/var/log/calico"
    assert node["volumes"]["/etc/calico/ca.pem"]["mode"] == "ro"
    plugin = containers.plugin_container_spec(settings)
    assert plugin["command"] == ["calicoctl", "plugin", "serve"]
    assert plugin["volumes"]["/run/docker/plugins"]["bind"] == "/run/docker/plugins"
    assert plugin["volumes"]["/run/docker.sock"]["bind"] == "/var/run/docker.sock"
    assert plugin["volumes"]["/var/lib/calico"]["bind"] == "/var/lib/calico"   # pending releases
    # The hash changes with any setting and with the image itself.
    h = containers.config_hash(node, "sha256:1")
    assert h == containers.config_hash(containers.node_container_spec(settings), "sha256:1")
    assert h != containers.config_hash(node, "sha256:2")
    settings.node_name = "calico-02"
    assert h != containers.config_hash(containers.node_container_spec(settings), "sha256:1")


def test_default_images_follow_the_version():
    from calicoctl import __version__
    assert containers.default_node_image() == "calico/node:v" + __version__.lstrip("v")
    assert containers.default_plugin_image().startswith("calico/node-libnetwork:v")


def test_plugin_answers_is_false_without_a_socket(tmp_path):
    assert containers.plugin_answers(str(tmp_path / "none.sock"), timeout=0.5) is False


BIRD_OUTPUT = """BIRD 1.6.8 ready.
name     proto    table    state  since       info
kernel1  Kernel   master   up     20:55:01
device1  Device   master   up     20:55:01
Mesh_198_18_0_12 BGP      master   up     20:55:04    Established
  Preference:     100
  Input filter:   ACCEPT
  BGP state:          Established
    Neighbor address: 198.18.0.12
    Neighbor AS:      64511
Node_198_18_0_200 BGP      master   start  20:55:01    Active        Socket: Connection refused
  Preference:     100
  BGP state:          Active
    Neighbor address: 198.18.0.200
    Neighbor AS:      64513
"""


def test_parse_bird_protocols():
    sessions = status.parse_bird_protocols(BIRD_OUTPUT)
    assert [(s.peer, s.state, s.established) for s in sessions] == [
        ("198.18.0.12", "up", True), ("198.18.0.200", "start", False)]
    assert status.peer_type(sessions[0].name) == "node-to-node mesh"
    report = status.Report(sessions=sessions)
    assert report.problems == ["BGP peer 198.18.0.200 is Active        Socket: Connection refused"]


def test_diags_collects_one_tarball(store, tmp_path):
    store.set("/calico/v1/Ready", "true")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "felix.log").write_text("hello\n")
    path = diags.collect(store, str(logs), docker_factory=None, out_dir=str(tmp_path))
    with tarfile.open(path) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        dump = json.loads(tar.extractfile(
            [m for m in tar.getmembers() if m.name.endswith("etcd-calico.json")][0]).read())
    for expected in ("iptables-save.txt", "ipset-list.txt", "ip-route.txt", "ip-link.txt",
                     "bird-protocols.txt", "docker-version.txt", "calicoctl-version.txt",
                     "logs/felix.log"):
        assert expected in names, expected
    assert dump == {"/calico/v1/Ready": "true"}


def test_diags_command_prints_the_path(cli, tmp_path):
    r = cli("diags", "--log-dir=%s" % tmp_path)
    assert r.code == 0, r
    assert r.out.strip().endswith(".tar.gz")
    tarfile.open(r.out.strip()).close()


def test_privilege_falls_back_to_explicit_capabilities(tmp_path):
    status_file = tmp_path / "status"
    last_cap = tmp_path / "cap_last_cap"
    last_cap.write_text("40\n")
    status_file.write_text("Name:\tx\nCapBnd:\t000001ffffffffff\n")
    assert containers.missing_capabilities(str(status_file), str(last_cap)) == []
    assert containers.privilege_options([]) == {"privileged": True}
    status_file.write_text("Name:\tx\nCapBnd:\t000001fffeffffff\n")   # no CAP_SYS_RESOURCE
    missing = containers.missing_capabilities(str(status_file), str(last_cap))
    assert missing == ["SYS_RESOURCE"]
    options = containers.privilege_options(missing)
    assert "privileged" not in options and options["unmask_system_paths"]
    assert set(options["security_opt"]) == {"seccomp=unconfined", "apparmor=unconfined"}
    # Exactly the listed capabilities (CapDrop ALL is a keyword every engine accepts, not a
    # capability), none of them one the host lacks: Docker 26 and 28 refuse to name those.
    assert options["cap_drop"] == ["ALL"]
    granted = options["cap_add"]
    assert "SYS_RESOURCE" not in granted
    assert {"NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_MODULE", "SYS_PTRACE"} <= set(granted)
    # Docker 20.10 knows names only up to CAP_AUDIT_READ and refuses the rest as unknown.
    assert granted[-1] == "AUDIT_READ"
    assert not {"PERFMON", "BPF", "CHECKPOINT_RESTORE"} & set(granted)
    assert granted == [c for c in containers.CAPABILITIES if c in granted]   # kernel order
    assert len(granted) == containers.CAPABILITIES.index("AUDIT_READ")      # all 38 but one


def test_capabilities_asked_for_follow_the_hosts_bounding_set(tmp_path):
    status_file, last_cap = tmp_path / "status", tmp_path / "cap_last_cap"
    # An older kernel (cap_last_cap 37) whose host also withholds CAP_NET_BROADCAST (11) and
    # CAP_SYS_TIME (25): both are left out, everything else up to AUDIT_READ is asked for.
    last_cap.write_text("37\n")
    bounding = (1 << 38) - 1 & ~(1 << 11) & ~(1 << 25)
    status_file.write_text("CapBnd:\t%016x\n" % bounding)
    missing = containers.missing_capabilities(str(status_file), str(last_cap))
    assert missing == ["NET_BROADCAST", "SYS_TIME"]
    granted = containers.granted_capabilities(missing)
    assert len(granted) == 36 and "NET_BROADCAST" not in granted and "SYS_TIME" not in granted
    # A host withholding only a capability Docker 20.10 never asks for (CAP_BPF) still gets an
    # explicit list: the host's CapBnd decides, whatever the engine.
    last_cap.write_text("40\n")
    status_file.write_text("CapBnd:\t%016x\n" % ((1 << 41) - 1 & ~(1 << 39)))
    missing = containers.missing_capabilities(str(status_file), str(last_cap))
    assert missing == ["BPF"]
    assert containers.privilege_options(missing)["cap_add"] == \
        containers.GRANTABLE_CAPABILITIES


def test_live_restore_verdicts():
    class Client:
        def __init__(self, enabled):
            self.enabled = enabled

        def info(self):
            return {"LiveRestoreEnabled": self.enabled}

    assert checks.check_live_restore(lambda: Client(True)).ok
    off = checks.check_live_restore(lambda: Client(False))
    assert not off.ok and not off.failed and "live-restore" in off.detail   # a warning

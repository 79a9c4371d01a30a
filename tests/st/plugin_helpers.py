"""Helpers for the plugin's system tests: run `calicoctl plugin serve` inside a namespace host,
calicoctl against the testbed's etcd, and stand in for the agent where a test needs traffic to
flow (the agent is another component; these tests check the plugin's wiring, not policy)."""

import json
import signal
import sys
import time
from pathlib import Path

from tests.st.harness import wait_for

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else sys.executable
SOCKET = "/run/docker/plugins/calico.sock"


def etcd_env(etcd):
    return {"ETCD_ENDPOINTS": etcd.url, "PYTHONPATH": str(REPO)}


def calicoctl(host, etcd, *args, check=True, timeout=60):
    return host.run([PYTHON, "-m", "calicoctl", *args], env=etcd_env(etcd), check=check,
                    timeout=timeout)


class PluginProcess:
    """`calicoctl plugin serve` in one host; its log is <host log dir>/plugin.log."""

    def __init__(self, host, etcd, log_name="plugin", args=("plugin", "serve",
                                                              "--log-level=debug")):
        self.host, self.etcd, self.log_name = host, etcd, log_name
        self.args = list(args)
        self.proc = None

    @property
    def socket_path(self):
        return Path(self.host.root_path(SOCKET))

    def start(self, timeout=20, wait=True):
        cmd = [PYTHON, "-m", "calicoctl", *self.args]
        self.proc = self.host.popen(cmd, self.log_name, env=etcd_env(self.etcd))
        if not wait:
            return self

        def up():
            if self.proc.poll() is not None:
                raise AssertionError("plugin exited %s: %s" % (self.proc.returncode, self.log()))
            return self.socket_path.exists()
        wait_for(up, timeout=timeout, what="the plugin socket on %s" % self.host.name)
        return self

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc is None or self.proc.poll() is not None:
            return None
        # nsenter (without a pid namespace) execs the command: the popen'd pid is ours.
        self.proc.send_signal(sig)
        self.proc.wait(timeout=timeout)
        code = self.proc.returncode
        self.proc = None
        return code

    def log(self):
        path = self.host.log_path(self.log_name)
        return path.read_text() if path.exists() else ""


def allow_forwarding(host):
    """Stand in for the agent: dockerd sets the FORWARD policy to DROP, and Calico's agent is
    what accepts workload traffic.  Idempotent."""
    for rule in (["-i", "cali+"], ["-o", "cali+"]):
        if host.run(["iptables", "-w", "-C", "FORWARD", *rule, "-j", "ACCEPT"],
                    check=False).returncode != 0:
            host.run(["iptables", "-w", "-I", "FORWARD", "1", *rule, "-j", "ACCEPT"])


def route_to(host, ip, via_host):
    """Stand in for BGP: a route on `host` to a workload address on `via_host`."""
    host.run(["ip", "route", "replace", "%s/32" % ip, "via", via_host.ip])


def container_ip(host, name, network):
    out = host.docker("inspect", "--format",
                      "{{json .NetworkSettings.Networks}}", name).stdout
    return json.loads(out)[network]["IPAddress"]


def endpoint_id(host, name, network):
    out = host.docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", name).stdout
    return json.loads(out)[network]["EndpointID"]


def ping(host, container, target, count=1, timeout=5):
    return host.docker("exec", container, "ping", "-c", str(count), "-W", str(timeout), target,
                       check=False, timeout=timeout * count + 20)


def etcd_keys(etcd, prefix="/calico"):
    import urllib.request
    url = "%s/v2/keys%s?recursive=true" % (etcd.url, prefix)
    try:
        data = json.loads(urllib.request.urlopen(url, timeout=5).read())
    except Exception:  # noqa: BLE001 - absent prefix
        return {}
    out = {}

    def walk(node):
        if node.get("dir"):
            for child in node.get("nodes", []):
                walk(child)
        else:
            out[node["key"]] = node.get("value")
    walk(data["node"])
    return out


def wipe_etcd(etcd):
    import urllib.request
    req = urllib.request.Request("%s/v2/keys/calico?recursive=true&dir=true" % etcd.url,
                                 method="DELETE")
    try:
        urllib.request.urlopen(req, timeout=5)
    except Exception:  # noqa: BLE001 - already empty
        pass


def poll(predicate, timeout=15, what="condition"):
    return wait_for(predicate, timeout=timeout, what=what)


def host_links(host, prefix="cali"):
    out = host.run(["ip", "-o", "link", "show"]).stdout
    return [line.split(":", 2)[1].strip().split("@")[0] for line in out.splitlines()
            if line.split(":", 2)[1].strip().startswith(prefix)]


def host_routes(host):
    return host.run(["ip", "route"]).stdout


def clean_docker(host):
    """Remove every container and user network on the host."""
    ids = host.docker("ps", "-aq").stdout.split()
    if ids:
        host.docker("rm", "-f", *ids, check=False, timeout=120)
    nets = host.docker("network", "ls", "--filter", "driver=calico", "-q").stdout.split()
    for net in nets:
        host.docker("network", "rm", net, check=False)


def now():
    return time.monotonic()

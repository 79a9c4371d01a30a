"""Helpers for the plugin's system tests: run `calicoctl plugin serve` inside a namespace host,
calicoctl against the testbed's etcd, and stand in for the agent where a test needs traffic to
flow (the agent is another component; these tests check the plugin's wiring, not policy)."""

import json
import re
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


def ping_answered(host, container, target, count=1, timeout=1):
    """True if `target` answered a ping from `container`, False if ping sent its requests and
    none was answered.  Anything else (the container gone, a name that does not resolve, no
    route to send on) raises: a ping that never ran must not count as "blocked"."""
    result = ping(host, container, target, count=count, timeout=timeout)
    if result.returncode == 0:
        return True
    stats = re.search(r"(\d+) packets transmitted, (\d+) packets received", result.stdout)
    if result.returncode == 1 and stats and int(stats.group(1)) > 0 and stats.group(2) == "0":
        return False
    raise AssertionError("ping %s -> %s did not run (exit %d): %s" % (
        container, target, result.returncode, (result.stdout + result.stderr).strip()))


def answers_within(host, container, target, timeout):
    """True once target answers a ping from container, False if it has not within timeout
    seconds (routes and rules may lag a restart).  Raises if ping cannot run at all."""
    return wait_for(lambda: ping_answered(host, container, target), timeout=timeout,
                    interval=0.2, retry_on=(), raise_on_timeout=False,
                    what="%s to answer %s" % (target, container))


class EtcdReadError(RuntimeError):
    """etcd could not be read or written: never to be taken for "no keys"."""


def _direct(etcd):
    from tests.st.harness.etcd_direct import DirectEtcd
    return DirectEtcd(etcd.url, etcd.api)


def etcd_keys(etcd, prefix="/calico"):
    """{key: value} of every leaf under prefix, in whichever API the testbed's etcd serves; {}
    only when etcd says the prefix is absent. Any failure raises EtcdReadError."""
    try:
        return _direct(etcd).dump(prefix)
    except Exception as exc:  # noqa: BLE001 - every failure, re-raised as "could not read"
        raise EtcdReadError("reading %s from etcd at %s: %s" % (prefix, etcd.url, exc)) from exc


def wipe_etcd(etcd):
    """Delete /calico; raises unless etcd then says nothing is left under it."""
    try:
        _direct(etcd).delete("/calico", recursive=True)
    except Exception as exc:  # noqa: BLE001 - every failure, re-raised as "could not wipe"
        raise EtcdReadError("deleting /calico from etcd at %s: %s" % (etcd.url, exc)) from exc
    left = etcd_keys(etcd)
    if left:
        raise EtcdReadError("/calico still holds %d keys at %s after deleting it"
                            % (len(left), etcd.url))


def host_links(host, prefix="cali"):
    out = host.run(["ip", "-o", "link", "show"]).stdout
    return [line.split(":", 2)[1].strip().split("@")[0] for line in out.splitlines()
            if line.split(":", 2)[1].strip().startswith(prefix)]


def host_routes(host):
    return host.run(["ip", "route"]).stdout


def assert_nothing_left(hosts, etcd, present):
    """No veth, workload route, endpoint, address, handle, claim or network record: on every
    host and in etcd.  Each absence is only believed once the same read has shown something
    that must be there: the host's loopback link and a route of its own, and in etcd every key
    in `present` (say, the pool the test added), so an unreadable etcd or an empty listing
    fails instead of passing."""
    if not present:
        raise ValueError("name at least one key that must still be in etcd")
    for h in hosts:
        assert "lo" in host_links(h, prefix=""), "%s: no link listing" % h.name
        assert host_links(h) == [], h.name
        routes = host_routes(h).splitlines()
        assert any(" dev eth0" in r for r in routes), "%s: no route listing: %s" % (h.name,
                                                                                  routes)
        assert [r for r in routes if " dev cali" in r] == [], h.name
    keys = etcd_keys(etcd)
    missing = [k for k in present if k not in keys]
    assert not missing, "etcd read lacks keys that must be there: %s" % missing
    leftovers = [k for k in keys if "/workload/" in k or "/calico/libnetwork/" in k
                 or "/ipam/v2/handle/" in k]
    assert leftovers == [], leftovers
    for key, value in keys.items():
        if "/ipam/v2/assignment/" in key:
            assert all(a is None for a in json.loads(value)["allocations"]), key


def clean_docker(host):
    """Remove every container and Calico network on the host; raises if any is left."""
    def gone():
        ids = host.docker("ps", "-aq").stdout.split()
        if ids:
            # Fails for a container already being removed: the next listing judges.
            host.docker("rm", "-f", *ids, check=False, timeout=120)
        # calico:latest is the managed plugin's driver (calicoctl/node/managed_plugin.py).
        nets = [line.split()[0] for line in host.docker(
            "network", "ls", "--format", "{{.ID}} {{.Driver}}").stdout.splitlines()
            if line.split()[1:] in (["calico"], ["calico:latest"])]
        for net in nets:
            host.docker("network", "rm", net, check=False)
        return not ids and not nets
    wait_for(gone, timeout=120, what="no container or Calico network left on %s" % host.name)


def now():
    return time.monotonic()


# Seconds dockerd may take to answer after a restart before it counts as hung: Docker's 15 s
# driver look-ups, once per network and endpoint, stay well inside it.
DOCKERD_HANG = 180


def restart_dockerd_timed(host, extra_args=()):
    """Stop and start the host's dockerd: (seconds the stop took, seconds until the API
    answered, the monotonic time the start began).  A dockerd that does not answer within
    DOCKERD_HANG fails the test with the harness's reason."""
    from tests.st.harness import HarnessError
    t0 = time.monotonic()
    host.stop_dockerd(timeout=60)
    stopped = time.monotonic() - t0
    started = time.monotonic()
    try:
        host.start_dockerd(extra_args=list(extra_args), timeout=DOCKERD_HANG)
    except HarnessError as exc:
        raise AssertionError("dockerd did not answer within %d s of its restart: %s"
                             % (DOCKERD_HANG, exc)) from None
    return stopped, time.monotonic() - started, started

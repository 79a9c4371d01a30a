"""The whole per-host stack for isolation and security system tests: etcd wiped, both hosts
registered (workload-to-host RETURN, as `calicoctl node` writes), an IPv4 and an IPv6 pool, and
on each host the agent (with BIRD and BIRD6) and the plugin.  Routes between hosts come from BGP
only.  The one way the system tests start the agent."""

import ipaddress
import signal

import pytest

from tests.st.harness import procs
from tests.st.plugin_helpers import PYTHON, PluginProcess, clean_docker, etcd_env, wipe_etcd

__all__ = ["POOL", "POOL6", "UNDERLAY6", "AgentProcess", "calico_stack", "learnt", "register",
           "remove_stand_in", "store_for"]

POOL = "192.168.0.0/16"
POOL6 = "fd80:24e2:f998:72d6::/64"
UNDERLAY6 = "fd00:198:18::%d/64"      # test-only IPv6 underlay, for BIRD6 sessions


class AgentProcess:
    """`calicoctl felix serve` in one host; its log is <host log dir>/felix.log."""

    def __init__(self, host, etcd, dataplane="auto"):
        self.host, self.etcd, self.dataplane = host, etcd, dataplane
        self.proc = None

    def start(self):
        cmd = [PYTHON, "-m", "calicoctl", "felix", "serve", "--log-level=DEBUG",
               "--refresh-interval=2", "--dataplane=%s" % self.dataplane]
        self.proc = self.host.popen(cmd, "felix", env=etcd_env(self.etcd))
        return self

    def pids(self):
        out = []
        for pid in procs.pids_in_namespaces_of(self.host.pid):
            argv = procs.cmdline(pid)
            if "felix" in argv and "serve" in argv and argv[0] != "nsenter":
                out.append(pid)
        return out

    def stop(self, sig=signal.SIGTERM):
        import os
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            self.proc.wait(timeout=15)
            self.proc = None

    def log(self):
        path = self.host.log_path("felix")
        return path.read_text() if path.exists() else ""


def store_for(etcd):
    from calicoctl.datastore.store import EtcdSettings, EtcdStore
    # The API the harness started etcd with, not a detection: this process meets testbeds of
    # both APIs at the same URL, and calicoctl probes a URL once per process (datastore/api.py).
    return EtcdStore(EtcdSettings(endpoints=[etcd.url], api=etcd.api))


def register(store, hosts):
    from calicoctl.datastore.globals import ensure_defaults
    from calicoctl.datastore.hosts import register_node
    from calicoctl.datastore.models import Node
    ensure_defaults(store)
    for i, h in enumerate(hosts):
        register_node(store, Node(name=h.name, ipv4=h.ip, ipv6=UNDERLAY6.split("/")[0] % (i + 2)),
                      endpoint_to_host_action="RETURN")


def learnt(host, version=4):
    """Networks the host's kernel has from BIRD (proto bird), as an address-containment set."""
    out = host.run(["ip", "-%d" % version, "route", "show", "proto", "bird"]).stdout
    nets = [ipaddress.ip_network(line.split()[0]) for line in out.splitlines()
            if line and line.split()[0] != "blackhole" and "via" in line]
    return _Nets(nets)


class _Nets(list):
    def __contains__(self, ip):
        return any(ip in n for n in self)




def remove_stand_in(host):
    """Drop the plugin tests' stand-in ACCEPT rules (plugin_helpers.allow_forwarding), which
    would otherwise let workload traffic past the agent's policy in a shared session."""
    for rule in (["-i", "cali+"], ["-o", "cali+"]):
        while host.run(["iptables", "-w", "-D", "FORWARD", *rule, "-j", "ACCEPT"],
                       check=False).returncode == 0:
            pass


@pytest.fixture(scope="module")
def calico_stack(testbed, two_hosts, etcd_on_bridge, dataplane):
    for h in two_hosts:
        clean_docker(h)
        remove_stand_in(h)
    wipe_etcd(etcd_on_bridge)
    store = store_for(etcd_on_bridge)
    register(store, two_hosts)
    for i, h in enumerate(two_hosts):
        h.run(["ip", "-6", "addr", "add", UNDERLAY6 % (i + 2), "dev", "eth0", "nodad"],
              check=False)
        h.run(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"], check=False)
    from calicoctl.datastore import pools
    from calicoctl.datastore.models import Pool
    pools.add_pool(store, Pool(ipaddress.ip_network(POOL)))
    pools.add_pool(store, Pool(ipaddress.ip_network(POOL6)))
    agents = [AgentProcess(h, etcd_on_bridge, dataplane).start() for h in two_hosts]
    plugins = [PluginProcess(h, etcd_on_bridge).start() for h in two_hosts]
    try:
        yield {"store": store, "agents": agents, "plugins": plugins, "hosts": two_hosts,
               "etcd": etcd_on_bridge, "dataplane": dataplane}
    finally:
        for h in two_hosts:
            clean_docker(h)
        for p in plugins:
            p.stop()
        for a in agents:
            a.stop()
        wipe_etcd(etcd_on_bridge)

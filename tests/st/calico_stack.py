"""The whole per-host stack for isolation and security system tests: etcd wiped, both hosts
registered (workload-to-host RETURN, as `calicoctl node` writes), an IPv4 and an IPv6 pool, and
on each host the agent (with BIRD and BIRD6) and the plugin.  Routes between hosts come from BGP
only.  Built from test_policy's pieces so there is one way of starting the agent."""

import ipaddress

import pytest

from tests.st.plugin_helpers import PluginProcess, clean_docker, wipe_etcd
from tests.st.test_policy import (POOL, POOL6, UNDERLAY6, AgentProcess, learnt, register,
                                  store_for)

__all__ = ["calico_stack", "learnt", "remove_stand_in"]


def remove_stand_in(host):
    """Drop the plugin tests' stand-in ACCEPT rules (plugin_helpers.allow_forwarding), which
    would otherwise let workload traffic past the agent's policy in a shared session."""
    for rule in (["-i", "cali+"], ["-o", "cali+"]):
        while host.run(["iptables", "-w", "-D", "FORWARD", *rule, "-j", "ACCEPT"],
                       check=False).returncode == 0:
            pass


@pytest.fixture(scope="module")
def calico_stack(testbed, two_hosts, etcd_on_bridge):
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
    agents = [AgentProcess(h, etcd_on_bridge).start() for h in two_hosts]
    plugins = [PluginProcess(h, etcd_on_bridge).start() for h in two_hosts]
    try:
        yield {"store": store, "agents": agents, "plugins": plugins, "hosts": two_hosts,
               "etcd": etcd_on_bridge}
    finally:
        for h in two_hosts:
            clean_docker(h)
        for p in plugins:
            p.stop()
        for a in agents:
            a.stop()
        wipe_etcd(etcd_on_bridge)

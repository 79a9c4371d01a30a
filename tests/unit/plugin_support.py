"""What the plugin's unit tests share: the plugin behind Flask's test client, a throwaway network
namespace for its dataplane, and the calls Docker makes for a network and a container."""

import json
import os
import subprocess

import pytest

from calicoctl.dataplane import Dataplane
from tests.st.harness import wait_for

NET = "a1" * 32
NET2 = "b2" * 32
EP = "e1" * 32
EP2 = "f2" * 32
ETH_SANDBOX = "/var/run/docker/netns/test1"


def _root():
    return os.geteuid() == 0 and subprocess.run(
        ["unshare", "--net", "true"], capture_output=True).returncode == 0



@pytest.fixture
def netns():
    """A throwaway network namespace, held open by a sleeping process."""
    proc = subprocess.Popen(["unshare", "--net", "sh", "-c", "ip link set lo up; exec sleep 600"])
    path = "/proc/%d/ns/net" % proc.pid
    # Wait until the child has really moved (its netns differs from ours): a test run in our
    # own namespace would touch the machine's links and pass for the wrong reason.
    def moved():
        if proc.poll() is not None:
            raise RuntimeError("unshare --net exited %d before it moved" % proc.returncode)
        return os.readlink(path) != os.readlink("/proc/self/ns/net")
    try:
        wait_for(moved, timeout=10, interval=0.01, retry_on=(),
                 what="unshare --net to move into a namespace of its own")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    yield path
    proc.kill()
    proc.wait()


def ns_run(netns, *cmd):
    pid = netns.split("/")[2]
    return subprocess.run(["nsenter", "-t", pid, "-n", *cmd], capture_output=True, text=True)


class Plugin:
    def __init__(self, client):
        self.client = client

    def call(self, name, body=None, raw=None):
        data = raw if raw is not None else json.dumps(body if body is not None else {})
        resp = self.client.post("/" + name, data=data)
        assert resp.content_type == "application/vnd.docker.plugins.v1.1+json"
        return resp.status_code, json.loads(resp.data)

    def ok(self, name, body=None):
        status, answer = self.call(name, body)
        assert status == 200, answer
        assert "Err" not in answer and "Error" not in answer, answer
        return answer

    def err(self, name, body=None, raw=None):
        status, answer = self.call(name, body, raw)
        assert status == 200
        field = "Error" if name.startswith("IpamDriver") else "Err"
        assert answer.get(field), answer
        return answer[field]


@pytest.fixture
def plugin_parts(store, netns):
    from calicoctl.plugin import server
    app, learner, reconciler = server.build(store, "testhost", felix_wait=1.0,
                                            dataplane=Dataplane(netns), reconcile=False)
    return app, learner, reconciler


@pytest.fixture
def plugin(plugin_parts):
    return Plugin(plugin_parts[0].test_client())


def calico_network(plugin, network_id=NET, v6=False, pool=""):
    """What Docker sends for `docker network create --driver calico --ipam-driver calico`."""
    answer = plugin.ok("IpamDriver.RequestPool", {"AddressSpace": "CalicoLocalAddressSpace",
                                                  "Pool": pool, "SubPool": "", "Options": {},
                                                  "V6": False})
    v4data = [{"AddressSpace": "CalicoLocalAddressSpace", "Pool": answer["Pool"],
               "Gateway": "0.0.0.0/0", "AuxAddresses": None}]
    v6data = []
    options = {"com.docker.network.enable_ipv6": v6, "com.docker.network.generic": {}}
    if v6:
        a6 = plugin.ok("IpamDriver.RequestPool", {"AddressSpace": "CalicoLocalAddressSpace",
                                                  "Pool": "", "V6": True})
        v6data = [{"AddressSpace": "CalicoLocalAddressSpace", "Pool": a6["Pool"],
                   "Gateway": "::/0"}]
    plugin.ok("NetworkDriver.CreateNetwork", {"NetworkID": network_id, "Options": options,
                                              "IPv4Data": v4data, "IPv6Data": v6data})
    return answer["PoolID"]


def start_container(plugin, pool_id, endpoint_id=EP, network_id=NET, address="",
                    sandbox=ETH_SANDBOX):
    addr = plugin.ok("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": address,
                                                   "Options": None})["Address"]
    created = plugin.ok("NetworkDriver.CreateEndpoint", {
        "NetworkID": network_id, "EndpointID": endpoint_id, "Options": {},
        "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""}})
    joined = plugin.ok("NetworkDriver.Join", {"NetworkID": network_id, "EndpointID": endpoint_id,
                                              "SandboxKey": sandbox, "Options": {}})
    return addr, created, joined


def stop_container(plugin, pool_id, addr, endpoint_id=EP, network_id=NET):
    plugin.ok("NetworkDriver.Leave", {"NetworkID": network_id, "EndpointID": endpoint_id})
    plugin.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": network_id, "EndpointID": endpoint_id})
    plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": addr})

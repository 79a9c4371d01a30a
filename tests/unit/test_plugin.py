"""The libnetwork plugin through Flask's test client, against the real etcd fixture and the real
kernel (veths, routes and sysctls in a throwaway network namespace)."""

import ipaddress
import json

import pytest

from calicoctl.dataplane import Dataplane
from calicoctl.datastore import keys
from calicoctl.datastore.models import Pool
from calicoctl.datastore.pools import add_pool
from tests.unit.plugin_support import (EP, EP2, ETH_SANDBOX, NET, NET2, Plugin,  # noqa: F401
                                       _root, calico_network, netns, ns_run, plugin, plugin_parts,
                                       start_container, stop_container)

pytestmark = pytest.mark.skipif(not _root(), reason="needs root to make a network namespace")


# --- handshake and capabilities ---------------------------------------------------------------

def test_activate_and_capabilities(plugin):
    assert plugin.ok("Plugin.Activate") == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert plugin.ok("NetworkDriver.GetCapabilities") == {
        "Scope": "local", "ConnectivityScope": "global", "GwAllocChecker": True}
    # Docker 28 asks before reserving a gateway address; no Calico network needs one.
    assert plugin.ok("NetworkDriver.GwAllocCheck", {"Options": {
        "com.docker.network.generic": {}}}) == {"SkipIPv4": True, "SkipIPv6": True}
    assert plugin.ok("IpamDriver.GetCapabilities") == {"RequiresMACAddress": False}
    spaces = plugin.ok("IpamDriver.GetDefaultAddressSpaces")
    assert set(spaces) == {"LocalDefaultAddressSpace", "GlobalDefaultAddressSpace"}
    for call in ("NetworkDriver.DiscoverNew", "NetworkDriver.DiscoverDelete",
                 "NetworkDriver.AllocateNetwork", "NetworkDriver.FreeNetwork"):
        assert plugin.ok(call) == {}


def test_unknown_call_is_404(plugin):
    status, answer = plugin.call("NetworkDriver.SomethingNew", {})
    assert status == 404
    assert "SomethingNew" in answer["Err"]


# --- IPAM -------------------------------------------------------------------------------------

def test_request_pool_any_is_stable(store, plugin):
    req = {"AddressSpace": "CalicoLocalAddressSpace", "Pool": "", "SubPool": "", "V6": False}
    first = plugin.ok("IpamDriver.RequestPool", req)
    assert first["Pool"] == "0.0.0.0/0"
    assert first["Data"] == {"com.docker.network.gateway": "0.0.0.0/0"}
    assert plugin.ok("IpamDriver.RequestPool", req) == first
    add_pool(store, Pool(cidr=ipaddress.ip_network("fd80:24e2:f998:72d6::/64")))
    six = plugin.ok("IpamDriver.RequestPool", dict(req, V6=True))
    assert six["Pool"] == "fd80:24e2:f998:72d6::/64"
    assert six["Data"] == {"com.docker.network.gateway": "::/0"}
    assert six["PoolID"] != first["PoolID"]
    assert plugin.ok("IpamDriver.RequestPool", dict(req, V6=True)) == six


def test_request_pool_any_ipv6_spans_the_pools(store, plugin, monkeypatch, tmp_path):
    """Docker (20.10-28.5) asks again, without end, while the subnet holds one of the host's
    nameservers, and exempts only 0.0.0.0/0: ::/0 would hold any IPv6 nameserver."""
    from calicoctl.plugin import ipam_driver
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\nnameserver 2001:db8::53\n")
    monkeypatch.setattr(ipam_driver, "RESOLV_CONF", str(resolv))
    req = {"AddressSpace": "CalicoLocalAddressSpace", "Pool": "", "V6": True}
    assert "calicoctl pool add" in plugin.err("IpamDriver.RequestPool", req)
    add_pool(store, Pool(cidr=ipaddress.ip_network("fd80:1::/64")))
    add_pool(store, Pool(cidr=ipaddress.ip_network("fd80:2::/64")))
    # A Docker-IPAM subnet we only route is not where addresses come from.
    add_pool(store, Pool(cidr=ipaddress.ip_network("fd99::/64"), ipam=False))
    assert plugin.ok("IpamDriver.RequestPool", req)["Pool"] == "fd80::/30"
    # The span holds the nameserver: one clear sentence instead of Docker's endless loop.
    add_pool(store, Pool(cidr=ipaddress.ip_network("2001:db8::/64")))
    msg = plugin.err("IpamDriver.RequestPool", req)
    assert "2001:db8::53" in msg and "::/0" in msg and "--subnet" in msg
    # --subnet is never checked against nameservers by Docker, nor by us.
    assert plugin.ok("IpamDriver.RequestPool", dict(req, Pool="2001:db8::/64"))["Pool"] == \
        "2001:db8::/64"


def test_spanning_prefix_and_nameservers():
    from calicoctl.plugin.ipam_driver import parse_nameservers, spanning_prefix
    net = ipaddress.ip_network
    assert spanning_prefix([net("10.1.0.0/16")]) == net("10.1.0.0/16")
    assert spanning_prefix([net("10.1.0.0/24"), net("10.1.1.0/24")]) == net("10.1.0.0/23")
    assert spanning_prefix([net("10.1.1.0/24"), net("10.1.2.0/24")]) == net("10.1.0.0/22")
    assert spanning_prefix([net("fd80:1::/64"), net("fd80:1::/48")]) == net("fd80:1::/48")
    assert spanning_prefix([net("2001:db8::/64"), net("fd00::/64")]) == net("::/0")
    text = ("# comment\nnameserver 10.0.0.2\nsearch example.org\nnameserver fe80::1%eth0\n"
            "nameserver not-an-address\nnameserver\noptions ndots:2\n")
    assert parse_nameservers(text) == [ipaddress.ip_address("10.0.0.2"),
                                       ipaddress.ip_address("fe80::1")]


def test_request_pool_subnet_must_be_a_pool(store, plugin):
    msg = plugin.err("IpamDriver.RequestPool", {"Pool": "10.9.0.0/16", "V6": False})
    assert "10.9.0.0/16" in msg and "calicoctl pool add" in msg
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.9.0.0/16")))
    answer = plugin.ok("IpamDriver.RequestPool", {"Pool": "10.9.0.0/16", "V6": False})
    assert answer["Pool"] == "10.9.0.0/16"
    assert answer["Data"] == {"com.docker.network.gateway": "0.0.0.0/0"}
    assert "ip-range" in plugin.err("IpamDriver.RequestPool", {"Pool": "10.9.0.0/16",
                                                               "SubPool": "10.9.1.0/24"})
    assert "not an IPv6" in plugin.err("IpamDriver.RequestPool", {"Pool": "10.9.0.0/16",
                                                                   "V6": True})


def test_request_and_release_address(store, plugin):
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.9.0.0/24")))
    pool_id = plugin.ok("IpamDriver.RequestPool", {"Pool": ""})["PoolID"]
    answer = plugin.ok("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "",
                                                     "Options": None})
    ip = ipaddress.ip_interface(answer["Address"])
    assert ip.network.prefixlen == 32 and ip.ip in ipaddress.ip_network("10.9.0.0/24")
    assert answer["Data"] == {}
    from calicoctl.ipam.allocator import IPAMClient
    ipam = IPAMClient(store, "testhost")
    held = ipam.get_assignment(ip.ip)
    assert held["handle_id"].startswith("libnetwork.testhost.")
    # A specific address (--ip), then the same again: taken.
    plugin.ok("IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": "10.9.0.200"})
    assert "already in use" in plugin.err("IpamDriver.RequestAddress",
                                          {"PoolID": pool_id, "Address": "10.9.0.200"})
    plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": answer["Address"]})
    plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": "10.9.0.200"})
    assert ipam.get_assignment(ip.ip) is None
    assert ipam.get_assignment(ipaddress.ip_address("10.9.0.200")) is None
    assert not store.list_dir(keys.IPAM_HANDLES_DIR)
    # Releasing again is harmless.
    plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": pool_id, "Address": "10.9.0.200"})
    plugin.ok("IpamDriver.ReleasePool", {"PoolID": pool_id})


def test_pool_full_and_no_pools(store, plugin):
    pool_id = plugin.ok("IpamDriver.RequestPool", {"Pool": ""})["PoolID"]
    assert "pool" in plugin.err("IpamDriver.RequestAddress", {"PoolID": pool_id}).lower()
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.9.0.0/26")))
    for _ in range(64):
        plugin.ok("IpamDriver.RequestAddress", {"PoolID": pool_id})
    msg = plugin.err("IpamDriver.RequestAddress", {"PoolID": pool_id})
    assert "10.9.0.0/26" in msg
    assert plugin.ok("NetworkDriver.GetCapabilities")   # still serving


def test_gateway_request_refused(store, plugin):
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.9.0.0/24")))
    msg = plugin.err("IpamDriver.RequestAddress", {
        "PoolID": "calico:any:ipv4", "Address": "10.9.0.1",
        "Options": {"RequestAddressType": "com.docker.network.gateway"}})
    assert "--gateway" in msg


# --- malformed requests -------------------------------------------------------------------------

@pytest.mark.parametrize("call,body,raw,words", [
    ("NetworkDriver.CreateNetwork", None, "{not json", "not valid JSON"),
    ("IpamDriver.RequestAddress", None, "[1, 2]", "JSON object"),
    ("NetworkDriver.CreateEndpoint", {"NetworkID": NET}, None, "missing EndpointID"),
    ("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP}, None, "missing SandboxKey"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": "../etc"}, None, "not a valid id"),
    ("NetworkDriver.CreateNetwork", {"NetworkID": NET, "IPv4Data": "x"}, None, "wrong type"),
    ("IpamDriver.ReleaseAddress", {"PoolID": "calico:any:ipv4"}, None, "missing Address"),
    ("IpamDriver.RequestAddress", {"PoolID": "nonsense"}, None, "not made by Calico"),
])
def test_bad_requests_answered_with_error_field(plugin, call, body, raw, words):
    assert words in plugin.err(call, body, raw)
    assert plugin.ok("NetworkDriver.GetCapabilities")


def test_unknown_network_and_endpoint(plugin):
    assert "not known to Calico" in plugin.err("NetworkDriver.CreateEndpoint", {
        "NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.0.0.1/32"}})
    calico_network(plugin)
    assert "not known to Calico" in plugin.err("NetworkDriver.Join", {
        "NetworkID": NET, "EndpointID": EP, "SandboxKey": ETH_SANDBOX})
    # Teardown of what does not exist is not an error: Docker retries it after crashes.
    plugin.ok("NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": EP})
    plugin.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})
    plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NET2})


def test_etcd_unreachable(netns, etcd_env, monkeypatch):
    from calicoctl.datastore.store import EtcdStore
    from calicoctl.plugin import server
    from tests.st.harness import free_port   # a port nothing listens on
    monkeypatch.setenv("ETCD_AUTHORITY", "127.0.0.1:%d" % free_port())
    app, _, _ = server.build(EtcdStore(timeout=0.5), "testhost", dataplane=Dataplane(netns),
                             reconcile=False)
    plugin = Plugin(app.test_client())
    assert "Cannot reach etcd" in plugin.err("NetworkDriver.CreateNetwork", {
        "NetworkID": NET, "IPv4Data": [{"Pool": "0.0.0.0/0"}]})
    assert "Cannot reach etcd" in plugin.err("IpamDriver.RequestAddress",
                                             {"PoolID": "calico:any:ipv4"})
    assert plugin.ok("NetworkDriver.GetCapabilities")


# --- networks -----------------------------------------------------------------------------------

def test_create_network_calico_ipam(store, plugin, etcd_dump):
    calico_network(plugin)
    record = json.loads(etcd_dump()[keys.libnetwork_network(NET)])
    assert record == {"name": None, "ipam": "calico", "pool": None, "pool_v6": None,
                      "ipv6": False, "mtu": None, "options": {}, "host": "testhost"}
    msg = plugin.err("NetworkDriver.CreateNetwork", {
        "NetworkID": NET2, "IPv4Data": [{"AddressSpace": "CalicoLocalAddressSpace",
                                         "Pool": "0.0.0.0/0"}],
        "Options": {"com.docker.network.generic": {"ipip": "true"}}})
    assert "calicoctl pool add" in msg


def test_unknown_opt_refused(plugin, etcd_dump):
    msg = plugin.err("NetworkDriver.CreateNetwork", {
        "NetworkID": NET, "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.5.0.0/24"}],
        "Options": {"com.docker.network.generic": {"colour": "blue",
                                                   "com.docker.network.enable_ipv4": "true"}}})
    assert "colour" in msg and "ipip" in msg and "nat-outgoing" in msg and "mtu" in msg
    assert "enable_ipv4" not in msg
    assert "mtu" in plugin.err("NetworkDriver.CreateNetwork", {
        "NetworkID": NET, "IPv4Data": [{"Pool": "10.5.0.0/24"}],
        "Options": {"com.docker.network.generic": {"mtu": "12"}}})
    for bad in (["ipip"], "ipip=true", 7):          # found by test_fuzz_plugin
        assert "must be an object" in plugin.err("NetworkDriver.CreateNetwork", {
            "NetworkID": NET, "IPv4Data": [{"Pool": "10.5.0.0/24"}],
            "Options": {"com.docker.network.generic": bad}})
    assert keys.libnetwork_network(NET) not in etcd_dump()
    assert not [k for k in etcd_dump() if "/pool/" in k]


def test_docker_owned_options_accepted(plugin, etcd_dump):
    """What Docker 28 and daemon.json's default-network-opts put beside the user's --opt."""
    plugin.ok("NetworkDriver.CreateNetwork", {
        "NetworkID": NET, "IPv4Data": [{"AddressSpace": "CalicoLocalAddressSpace",
                                        "Pool": "0.0.0.0/0"}],
        "Options": {"com.docker.network.enable_ipv4": True,
                    "com.docker.network.enable_ipv6": False,
                    "com.docker.network.generic": {
                        "com.docker.network.enable_ipv4": "true",
                        "com.docker.network.advertise_addr_nmsgs": "0",
                        "com.docker.network.advertise_addr_ms": "500",
                        "mtu": "1400"}}})
    record = json.loads(etcd_dump()[keys.libnetwork_network(NET)])
    assert record["options"] == {"mtu": 1400} and record["mtu"] == 1400


def test_default_ipam_network_records_pool(store, plugin, etcd_dump):
    plugin.ok("NetworkDriver.CreateNetwork", {
        "NetworkID": NET, "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.5.0.0/24",
                                        "Gateway": "10.5.0.1/24"}],
        "Options": {"com.docker.network.generic": {"ipip": "true", "nat-outgoing": "true"}}})
    dump = etcd_dump()
    assert json.loads(dump["/calico/v1/ipam/v4/pool/10.5.0.0-24"]) == {
        "cidr": "10.5.0.0/24", "ipam": False, "ipip": "tunl0", "masquerade": True}
    record = json.loads(dump[keys.libnetwork_network(NET)])
    assert record["ipam"] == "default" and record["pool"] == "10.5.0.0/24"
    # The same-named network on a second host shares the pool; it goes with the last one.
    plugin.ok("NetworkDriver.CreateNetwork", {
        "NetworkID": NET2, "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.5.0.0/24"}],
        "Options": {"com.docker.network.generic": {"ipip": "true", "nat-outgoing": "true"}}})
    plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    assert "/calico/v1/ipam/v4/pool/10.5.0.0-24" in etcd_dump()
    plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NET2})
    assert not [k for k in etcd_dump() if "/pool/" in k or "libnetwork" in k]


def test_default_ipam_subnet_clashing_with_calico_pool(store, plugin):
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.5.0.0/16")))
    msg = plugin.err("NetworkDriver.CreateNetwork", {
        "NetworkID": NET, "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.5.0.0/24"}]})
    assert "overlaps" in msg
    msg = plugin.err("NetworkDriver.CreateNetwork", {
        "NetworkID": NET, "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.5.0.0/16"}]})
    assert "--ipam-driver calico" in msg


# --- endpoints ----------------------------------------------------------------------------------

def test_endpoint_lifecycle(store, plugin, plugin_parts, netns, etcd_dump):
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.9.0.0/24")))
    pool_id = calico_network(plugin)
    learner = plugin_parts[1]
    learner.learn_network(NET, "net1")          # what the event thread does on "create"
    addr, created, joined = start_container(plugin, pool_id)
    assert created == {"Interface": {"MacAddress": "ee:ee:ee:ee:ee:ee"}}
    assert joined == {
        "InterfaceName": {"SrcName": "tmp" + EP[:12], "DstPrefix": "eth"},
        "DisableGatewayService": True, "Gateway": "169.254.1.1",
        "StaticRoutes": [{"Destination": "169.254.1.1/32", "RouteType": 1, "NextHop": ""}]}
    ip = addr.split("/")[0]
    key = keys.endpoint("testhost", "libnetwork", "libnetwork", EP)
    record = json.loads(etcd_dump()[key])
    assert record["name"] == "cali" + EP[:11]
    assert record["mac"] == "ee:ee:ee:ee:ee:ee" and record["state"] == "active"
    assert record["profile_ids"] == ["net1"]
    assert record["ipv4_nets"] == [ip + "/32"] and record["ipv6_nets"] == []
    assert record["ipv4_gateway"] == "169.254.1.1"
    assert record["network_id"] == NET and record["sandbox"] == ETH_SANDBOX
    # The profile was made with the network's default rules.
    assert json.loads(etcd_dump()[keys.profile_tags("net1")]) == ["net1"]
    # Host side: veth, its peer with the workload MAC, the /32 route, proxy ARP, forwarding.
    host_if = "cali" + EP[:11]
    links = ns_run(netns, "ip", "-o", "link", "show").stdout
    assert host_if in links and "tmp" + EP[:12] in links
    assert "ee:ee:ee:ee:ee:ee" in ns_run(netns, "ip", "link", "show", "tmp" + EP[:12]).stdout
    assert "%s dev %s" % (ip, host_if) in ns_run(netns, "ip", "route").stdout
    assert ns_run(netns, "cat", "/proc/sys/net/ipv4/conf/%s/proxy_arp" % host_if).stdout == "1\n"
    assert ns_run(netns, "cat", "/proc/sys/net/ipv4/ip_forward").stdout == "1\n"
    assert plugin.ok("NetworkDriver.EndpointOperInfo", {"NetworkID": NET, "EndpointID": EP}) \
        == {"Value": {}}
    # Learning the container's name fills the record.
    learner.learn_container(EP, "c0ffee" * 10, "workload-A")
    record = json.loads(etcd_dump()[key])
    assert record["container_name"] == "workload-A" and record["container_id"] == "c0ffee" * 10
    stop_container(plugin, pool_id, addr)
    plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    assert "cali" not in ns_run(netns, "ip", "-o", "link", "show").stdout
    assert ns_run(netns, "ip", "route").stdout == ""
    left = etcd_dump()
    assert not [k for k in left if "/workload/" in k or "libnetwork" in k or "/handle/" in k
                or "/profile/" in k], left


def test_endpoint_closed_until_name_known(store, plugin, plugin_parts, etcd_dump):
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.9.0.0/24")))
    pool_id = calico_network(plugin)
    start_container(plugin, pool_id)
    key = keys.endpoint("testhost", "libnetwork", "libnetwork", EP)
    assert json.loads(etcd_dump()[key])["profile_ids"] == []
    plugin_parts[1].learn_network(NET, "net1")
    assert json.loads(etcd_dump()[key])["profile_ids"] == ["net1"]


class CountingScans:
    """The real store, counting the directory scans made through it."""

    def __init__(self, store):
        self._store, self.scanned = store, []

    def children(self, key, *args, **kwargs):
        self.scanned.append(key)
        return self._store.children(key, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._store, name)


class CountingReads(CountingScans):
    """The real store, recording the keys read through it."""

    def __init__(self, store):
        super().__init__(store)
        self.read_keys = []

    def read(self, key, *args, **kwargs):
        self.read_keys.append(key)
        return self._store.read(key, *args, **kwargs)

    def get(self, key, *args, **kwargs):
        self.read_keys.append(key)
        return self._store.get(key, *args, **kwargs)


def test_a_connect_gives_a_racing_endpoint_its_profile_without_a_scan(store, plugin,
                                                                      plugin_parts, etcd_dump):
    """An endpoint created while its network's name was still unknown, and written after the
    learner had given the name to the network's endpoints, gets it at its container's connect;
    and a connect (one per container start) reads single keys, never the host's endpoints."""
    from calicoctl.datastore import networks
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.9.0.0/24")))
    pool_id = calico_network(plugin)
    start_container(plugin, pool_id)                 # no name yet: closed
    networks.set_network_name(store, NET, "net1")    # the learner's write, its scan missed EP
    learner = plugin_parts[1]
    counting = CountingScans(store)
    learner.store = counting
    key = keys.endpoint("testhost", "libnetwork", "libnetwork", EP)
    # What the event thread does on "connect" (Docker's inspect gives the endpoint id).
    assert learner.learn_network(NET, "net1", scan_if_known=False) is True
    assert json.loads(etcd_dump()[key])["profile_ids"] == []
    learner.learn_container(EP, "c0ffee" * 10, "workload-A", profile="net1")
    record = json.loads(etcd_dump()[key])
    assert record["profile_ids"] == ["net1"] and record["container_name"] == "workload-A"
    assert counting.scanned == []
    # An endpoint of another host, or one already gone, is left alone.
    learner.learn_container("99" * 32, "c0ffee" * 10, "workload-B", profile="net1")
    assert not [k for k in etcd_dump() if "99" * 32 in k]
    # A network that is not ours is not learned.
    assert learner.learn_network("77" * 32, "other", scan_if_known=False) is False


def test_a_connect_in_a_network_named_here_reads_only_its_endpoint(store, plugin,
                                                                   plugin_parts, etcd_dump):
    """A connect comes with every container start, while Docker is starting it: in a network
    whose name this learner recorded, it reads neither the network's record nor its profile."""
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.9.0.0/24")))
    pool_id = calico_network(plugin)
    start_container(plugin, pool_id)
    learner = plugin_parts[1]
    learner.learn_network(NET, "net1")

    class Docker:
        def inspect_container(self, container_id):
            return {"Name": "/workload-A",
                    "NetworkSettings": {"Networks": {"net1": {"EndpointID": EP}}}}
    learner._client = Docker()      # the event thread's client (the thread makes its own)
    counting = CountingReads(store)
    learner.store = counting
    learner.handle_event({"Type": "network", "Action": "connect", "Actor": {
        "ID": NET, "Attributes": {"container": "c0ffee" * 10, "name": "net1", "type": "calico"}}})
    key = keys.endpoint("testhost", "libnetwork", "libnetwork", EP)
    assert counting.read_keys == [key] and counting.scanned == []
    assert json.loads(etcd_dump()[key])["container_name"] == "workload-A"


def test_a_named_network_is_read_once_and_forgotten_with_it(store, plugin, plugin_parts,
                                                           etcd_dump):
    """The driver keeps a network's record once it has its name (so a container start does not
    read it again); deleting the network drops it, so a record written anew is what counts."""
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.9.0.0/24")))
    pool_id = calico_network(plugin)
    plugin_parts[1].learn_network(NET, "net1")
    counting = CountingReads(store)
    driver = plugin_parts[2].network_driver
    driver.store = counting
    start_container(plugin, pool_id)
    start_container(plugin, pool_id, endpoint_id=EP2, sandbox="/var/run/docker/netns/two")
    assert counting.read_keys.count(keys.libnetwork_network(NET)) == 1
    driver.store = store
    key = keys.endpoint("testhost", "libnetwork", "libnetwork", EP2)
    assert json.loads(etcd_dump()[key])["profile_ids"] == ["net1"]
    plugin.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP2})
    plugin.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})
    plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    calico_network(plugin)                       # the same id again, its name not yet learned
    start_container(plugin, pool_id, endpoint_id=EP2, sandbox="/var/run/docker/netns/two")
    assert json.loads(etcd_dump()[key])["profile_ids"] == []


def test_join_counts_only_its_own_sandboxs_interfaces(store, plugin):
    """Join reads the host's endpoints once but parses only those naming its sandbox: another
    container's interface (same gateway address, different sandbox) must not push it off .1."""
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.9.0.0/24")))
    pool_id = calico_network(plugin)
    _, _, first = start_container(plugin, pool_id, sandbox="/var/run/docker/netns/other")
    assert first["Gateway"] == "169.254.1.1"
    _, _, second = start_container(plugin, pool_id, endpoint_id=EP2)
    assert second["Gateway"] == "169.254.1.1"
    _, _, third = start_container(plugin, pool_id, endpoint_id="d4" * 32)
    assert third["Gateway"] == "169.254.1.2"


def test_a_sandboxs_first_join_lists_no_endpoints(store, plugin, plugin_parts, netns):
    """The driver lists the host's endpoints at its first Join (which sandbox holds which) and
    keeps that: a container's first interface is joined from what CreateEndpoint wrote, and
    only a sandbox known to hold another endpoint is read again.  A driver started while
    containers run (a plugin restart) learns their sandboxes from etcd."""
    from calicoctl.plugin import server
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.9.0.0/24")))
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.8.0.0/24")))
    pool_id = calico_network(plugin)
    pool2 = calico_network(plugin, network_id=NET2, pool="10.8.0.0/24")
    counting = CountingScans(store)
    plugin_parts[2].network_driver.store = counting

    def listings():
        return [k for k in counting.scanned if "/workload" in k]
    start_container(plugin, pool_id, sandbox="/var/run/docker/netns/a")
    start_container(plugin, pool_id, endpoint_id=EP2, sandbox="/var/run/docker/netns/b")
    assert len(listings()) == 1
    _, _, joined = start_container(plugin, pool2, endpoint_id="d4" * 32, network_id=NET2,
                                   sandbox="/var/run/docker/netns/a")
    assert joined["Gateway"] == "169.254.1.2" and len(listings()) == 2
    plugin.ok("NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": EP})
    _, _, joined = start_container(plugin, pool_id, endpoint_id="c5" * 32,
                                   sandbox="/var/run/docker/netns/a")
    assert joined["Gateway"] == "169.254.1.1" and len(listings()) == 3
    restarted = server.build(store, "testhost", felix_wait=1.0, dataplane=Dataplane(netns),
                             reconcile=False)[0]
    _, _, joined = start_container(Plugin(restarted.test_client()), pool2, endpoint_id="d6" * 32,
                                   network_id=NET2, sandbox="/var/run/docker/netns/b")
    assert joined["Gateway"] == "169.254.1.2"


def test_mac_given_is_not_echoed_and_mtu_option(store, plugin, netns):
    plugin.ok("NetworkDriver.CreateNetwork", {
        "NetworkID": NET, "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.5.0.0/24"}],
        "Options": {"com.docker.network.generic": {"mtu": "1400"}}})
    created = plugin.ok("NetworkDriver.CreateEndpoint", {
        "NetworkID": NET, "EndpointID": EP,
        "Interface": {"Address": "10.5.0.2/24", "MacAddress": "02:42:0a:05:00:02"}})
    assert created == {"Interface": {}}
    out = ns_run(netns, "ip", "link", "show", "cali" + EP[:11]).stdout
    assert "mtu 1400" in out


def test_default_ipam_address_clash_between_hosts(store, plugin, netns, etcd_dump):
    body = {"IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.5.0.0/24"}]}
    plugin.ok("NetworkDriver.CreateNetwork", dict(body, NetworkID=NET))
    plugin.ok("NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": EP,
                                               "Interface": {"Address": "10.5.0.2/24"}})
    # Another host's plugin: its own Docker picked the same address.
    from calicoctl.plugin import server
    other_app, _, _ = server.build(store, "otherhost", dataplane=Dataplane(netns),
                                   reconcile=False)
    other = Plugin(other_app.test_client())
    other.ok("NetworkDriver.CreateNetwork", dict(body, NetworkID=NET2))
    msg = other.err("NetworkDriver.CreateEndpoint", {"NetworkID": NET2, "EndpointID": EP2,
                                                     "Interface": {"Address": "10.5.0.2/24"}})
    assert "10.5.0.2" in msg and "--ip-range" in msg and "Calico IPAM" in msg
    assert "testhost" in msg
    # Nothing of the refused endpoint is left.
    assert "cali" + EP2[:11] not in ns_run(netns, "ip", "-o", "link", "show").stdout
    assert not [k for k in etcd_dump() if EP2 in k or "otherhost/workload" in k]
    # Once the first endpoint goes, the address is free for the other host.
    plugin.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})
    other.ok("NetworkDriver.CreateEndpoint", {"NetworkID": NET2, "EndpointID": EP2,
                                              "Interface": {"Address": "10.5.0.2/24"}})


def test_each_network_in_a_sandbox_gets_its_own_gateway(store, plugin, etcd_dump):
    """Docker moves the default route between gateways (on disconnect, by gw-priority), so
    every interface has one, each its own link-local address."""
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.9.0.0/24")))
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.8.0.0/24")))
    pool_id = calico_network(plugin)
    pool2 = calico_network(plugin, network_id=NET2, pool="10.8.0.0/24")
    _, _, first = start_container(plugin, pool_id)
    assert first["Gateway"] == "169.254.1.1"
    assert first["StaticRoutes"] == [
        {"Destination": "169.254.1.1/32", "RouteType": 1, "NextHop": ""}]
    _, _, second = start_container(plugin, pool2, endpoint_id=EP2, network_id=NET2)
    assert second["Gateway"] == "169.254.1.2" and second["DisableGatewayService"] is True
    assert second["StaticRoutes"] == [
        {"Destination": "169.254.1.2/32", "RouteType": 1, "NextHop": ""},
        {"Destination": "10.8.0.0/24", "RouteType": 0, "NextHop": "169.254.1.2"}]
    record = json.loads(etcd_dump()[keys.endpoint("testhost", "libnetwork", "libnetwork", EP2)])
    assert record["ipv4_gateway"] == "169.254.1.2"
    # A Docker-IPAM network: the kernel routes the subnet on-link already; only the gateway.
    plugin.ok("NetworkDriver.CreateNetwork", {
        "NetworkID": "c3" * 32,
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.5.0.0/24"}]})
    plugin.ok("NetworkDriver.CreateEndpoint", {"NetworkID": "c3" * 32, "EndpointID": "d4" * 32,
                                               "Interface": {"Address": "10.5.0.2/24"}})
    third = plugin.ok("NetworkDriver.Join", {"NetworkID": "c3" * 32, "EndpointID": "d4" * 32,
                                             "SandboxKey": ETH_SANDBOX})
    assert third["Gateway"] == "169.254.1.3"
    assert third["StaticRoutes"] == [
        {"Destination": "169.254.1.3/32", "RouteType": 1, "NextHop": ""}]
    # The second leaves; a fourth takes the lowest gateway no interface uses (not .4, and not
    # .3, which would clash with the third's connected route).
    plugin.ok("NetworkDriver.Leave", {"NetworkID": NET2, "EndpointID": EP2})
    plugin.ok("NetworkDriver.CreateNetwork", {
        "NetworkID": "c5" * 32,
        "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.6.0.0/24"}]})
    plugin.ok("NetworkDriver.CreateEndpoint", {"NetworkID": "c5" * 32, "EndpointID": "d6" * 32,
                                               "Interface": {"Address": "10.6.0.2/24"}})
    fourth = plugin.ok("NetworkDriver.Join", {"NetworkID": "c5" * 32, "EndpointID": "d6" * 32,
                                              "SandboxKey": ETH_SANDBOX})
    assert fourth["Gateway"] == "169.254.1.2"


def test_ports_are_refused(store, plugin):
    """Docker publishes ports only on its bridge driver; -p on a Calico network is refused
    (Docker then undoes the Join) instead of seeming to work."""
    body = {"NetworkID": NET, "EndpointID": EP, "Options": {
        "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}],
        "com.docker.network.portmap": [
            {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080,
             "HostPortEnd": 8080},
            {"Proto": 17, "IP": "", "Port": 53, "HostIP": "", "HostPort": 0,
             "HostPortEnd": 0}]}}
    msg = plugin.err("NetworkDriver.ProgramExternalConnectivity", body)
    assert "do not publish ports (-p 8080:80/tcp, 53/udp)" in msg, msg
    # Only exposed ports, or nothing (the gateway moving to this endpoint): nothing to refuse.
    body["Options"].pop("com.docker.network.portmap")
    assert plugin.ok("NetworkDriver.ProgramExternalConnectivity", body) == {}
    assert plugin.ok("NetworkDriver.ProgramExternalConnectivity",
                     {"NetworkID": NET, "EndpointID": EP}) == {}
    assert plugin.ok("NetworkDriver.RevokeExternalConnectivity",
                     {"NetworkID": NET, "EndpointID": EP}) == {}


def test_ipv6_endpoint(store, plugin, netns, etcd_dump):
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.9.0.0/24")))
    add_pool(store, Pool(cidr=ipaddress.ip_network("fd80:24e2::/64")))
    calico_network(plugin, v6=True)
    a4 = plugin.ok("IpamDriver.RequestAddress", {"PoolID": "calico:any:ipv4"})["Address"]
    a6 = plugin.ok("IpamDriver.RequestAddress", {"PoolID": "calico:any:ipv6"})["Address"]
    assert a6.endswith("/128") and ipaddress.ip_interface(a6).ip in \
        ipaddress.ip_network("fd80:24e2::/64")
    plugin.ok("NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": EP,
                                               "Interface": {"Address": a4, "AddressIPv6": a6}})
    joined = plugin.ok("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP,
                                              "SandboxKey": ETH_SANDBOX})
    assert joined["GatewayIPv6"] == "fe80::1" and joined["Gateway"] == "169.254.1.1"
    assert {"Destination": "fe80::1/128", "RouteType": 1, "NextHop": ""} in \
        joined["StaticRoutes"]
    record = json.loads(etcd_dump()[keys.endpoint("testhost", "libnetwork", "libnetwork", EP)])
    assert record["ipv6_nets"] == [a6] and record["ipv6_gateway"] == "fe80::1"
    host_if = "cali" + EP[:11]
    assert "fe80::1/64" in ns_run(netns, "ip", "-6", "addr", "show", host_if).stdout
    assert a6.split("/")[0] in ns_run(netns, "ip", "-6", "route").stdout
    assert ns_run(netns, "cat", "/proc/sys/net/ipv6/conf/%s/proxy_ndp" % host_if).stdout == "1\n"


def test_ipv6_gateway_route_on_the_first_ipv6_interface(store, plugin):
    """fe80::1 is on every host-side veth, but only one interface of a container can hold the
    connected route to it (the kernel refuses a second); that one also routes its IPv6 pool."""
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.9.0.0/24")))
    add_pool(store, Pool(cidr=ipaddress.ip_network("fd80:24e2::/64")))
    pool4 = calico_network(plugin)                       # IPv4 only
    calico_network(plugin, network_id=NET2, v6=True)     # dual stack, any pool
    _, _, first = start_container(plugin, pool4)
    assert "GatewayIPv6" not in first
    a4 = plugin.ok("IpamDriver.RequestAddress", {"PoolID": "calico:any:ipv4"})["Address"]
    a6 = plugin.ok("IpamDriver.RequestAddress", {"PoolID": "calico:any:ipv6"})["Address"]
    plugin.ok("NetworkDriver.CreateEndpoint", {"NetworkID": NET2, "EndpointID": EP2,
                                               "Interface": {"Address": a4, "AddressIPv6": a6}})
    second = plugin.ok("NetworkDriver.Join", {"NetworkID": NET2, "EndpointID": EP2,
                                              "SandboxKey": ETH_SANDBOX})
    assert second["Gateway"] == "169.254.1.2" and second["GatewayIPv6"] == "fe80::1"
    assert second["StaticRoutes"] == [
        {"Destination": "169.254.1.2/32", "RouteType": 1, "NextHop": ""},
        {"Destination": "fe80::1/128", "RouteType": 1, "NextHop": ""},
        {"Destination": "fd80:24e2::/64", "RouteType": 0, "NextHop": "fe80::1"}]
    # A third, dual-stack interface: its gateway is reached through the second's route.
    b4 = plugin.ok("IpamDriver.RequestAddress", {"PoolID": "calico:any:ipv4"})["Address"]
    b6 = plugin.ok("IpamDriver.RequestAddress", {"PoolID": "calico:any:ipv6"})["Address"]
    plugin.ok("NetworkDriver.CreateEndpoint", {"NetworkID": NET2, "EndpointID": "d4" * 32,
                                               "Interface": {"Address": b4, "AddressIPv6": b6}})
    third = plugin.ok("NetworkDriver.Join", {"NetworkID": NET2, "EndpointID": "d4" * 32,
                                             "SandboxKey": ETH_SANDBOX})
    assert third["GatewayIPv6"] == "fe80::1"
    assert third["StaticRoutes"] == [
        {"Destination": "169.254.1.3/32", "RouteType": 1, "NextHop": ""}]


def _report_later(store, endpoint_id, delay=0.3):
    """The agent's "up" report for endpoint_id, written from another thread after delay."""
    import threading
    status_key = keys.felix_endpoint_status("testhost", "libnetwork", "libnetwork", endpoint_id)
    reported = threading.Event()

    def report():
        reported.set()
        store.set(status_key, json.dumps({"status": "up"}))
    timer = threading.Timer(delay, report)
    timer.start()
    return reported, timer


def test_the_agent_wait_overlaps_dockers_own_work(store, plugin, netns, etcd_dump):
    """The sandbox's first interface becomes its gateway endpoint, and Docker calls
    ProgramExternalConnectivity for it after configuring the interface: the wait for the
    agent's report is there.  A later interface of the same sandbox, and any interface of an
    --internal network, get no such call, so their Join waits."""
    import time
    from calicoctl.plugin import server
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.9.0.0/24")))
    pool_id = calico_network(plugin)
    store.set(keys.felix_status("testhost"), json.dumps({"time": "now", "uptime": 1}), ttl=30)
    # A plugin whose bound on the wait is far beyond pytest's timeout: a call that waits can
    # only answer because the agent's report came, and only after it came.
    patient = Plugin(server.build(store, "testhost", felix_wait=3600, dataplane=Dataplane(netns),
                                  reconcile=False)[0].test_client())

    def create(endpoint_id, network_id=NET):
        addr = patient.ok("IpamDriver.RequestAddress", {"PoolID": pool_id})["Address"]
        patient.ok("NetworkDriver.CreateEndpoint", {"NetworkID": network_id,
                                                    "EndpointID": endpoint_id,
                                                    "Interface": {"Address": addr}})
    # First interface: Join answers with no report; ProgramExternalConnectivity waits for it.
    create(EP)
    patient.ok("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP,
                                      "SandboxKey": ETH_SANDBOX})
    reported, timer = _report_later(store, EP)
    patient.ok("NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NET, "EndpointID": EP})
    assert reported.is_set()
    timer.join()
    # A second interface of the same container: Join itself waits.
    create(EP2)
    reported, timer = _report_later(store, EP2)
    patient.ok("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP2,
                                      "SandboxKey": ETH_SANDBOX})
    assert reported.is_set()
    timer.join()
    # An --internal network's first interface: Join waits too.
    internal = "c7" * 32
    plugin.ok("NetworkDriver.CreateNetwork", {
        "NetworkID": internal, "Options": {"com.docker.network.internal": True},
        "IPv4Data": [{"AddressSpace": "CalicoLocalAddressSpace", "Pool": "0.0.0.0/0"}]})
    third = "d7" * 32
    create(third, internal)
    reported, timer = _report_later(store, third)
    patient.ok("NetworkDriver.Join", {"NetworkID": internal, "EndpointID": third,
                                      "SandboxKey": "/var/run/docker/netns/internal"})
    assert reported.is_set()
    timer.join()
    # No report at all: the call still answers, once the bound (1 s in these tests) has passed.
    addr2 = plugin.ok("IpamDriver.RequestAddress", {"PoolID": pool_id})["Address"]
    fourth = "e7" * 32
    plugin.ok("NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": fourth,
                                               "Interface": {"Address": addr2}})
    plugin.ok("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": fourth,
                                     "SandboxKey": "/var/run/docker/netns/other"})
    started = time.monotonic()
    plugin.ok("NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NET,
                                                            "EndpointID": fourth})
    assert time.monotonic() - started >= 0.9       # it waited; how long at most is no concern


def test_failure_half_way_undoes(store, plugin, netns, etcd_dump):
    """A veth name already taken by something else: nothing is left behind."""
    plugin.ok("NetworkDriver.CreateNetwork", {
        "NetworkID": NET, "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "10.5.0.0/24"}]})
    # The temporary peer name is taken, so creating the pair fails.
    ns_run(netns, "ip", "link", "add", "tmp" + EP[:12], "type", "veth", "peer", "name", "x0")
    msg = plugin.err("NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": EP,
                                                      "Interface": {"Address": "10.5.0.2/24"}})
    assert "ip link add" in msg
    assert not [k for k in etcd_dump() if "/workload/" in k or "/address/" in k]
    assert "cali" + EP[:11] not in ns_run(netns, "ip", "-o", "link", "show").stdout


# --- reconciliation -----------------------------------------------------------------------------

def test_reconcile_removes_what_docker_forgot(store, plugin, plugin_parts, netns, etcd_dump):
    from calicoctl.plugin.names import DockerView
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.9.0.0/24")))
    pool_id = calico_network(plugin)
    kept_addr, _, _ = start_container(plugin, pool_id, endpoint_id=EP)
    gone_addr, _, _ = start_container(plugin, pool_id, endpoint_id=EP2, sandbox="/x/other")
    # An address requested just before a crash: no endpoint ever held it.
    orphan = plugin.ok("IpamDriver.RequestAddress", {"PoolID": pool_id})["Address"]
    view = DockerView()
    view.networks = {NET: "net1"}
    view.endpoints = {EP: (NET, "c1", "workload-A", [kept_addr.split("/")[0]])}
    reconciler = plugin_parts[2]
    reconciler.grace = 0.01
    cleaned = reconciler.run(view)
    assert cleaned["endpoints"] == [EP2] and cleaned["networks"] == []
    assert len(cleaned["handles"]) == 1
    from calicoctl.ipam.allocator import IPAMClient
    ipam = IPAMClient(store, "testhost")
    assert ipam.get_assignment(ipaddress.ip_interface(gone_addr).ip) is None
    assert ipam.get_assignment(ipaddress.ip_interface(orphan).ip) is None
    assert ipam.get_assignment(ipaddress.ip_interface(kept_addr).ip) is not None
    links = ns_run(netns, "ip", "-o", "link", "show").stdout
    assert "cali" + EP[:11] in links and "cali" + EP2[:11] not in links
    dump = etcd_dump()
    assert keys.endpoint("testhost", "libnetwork", "libnetwork", EP) in dump
    assert keys.endpoint("testhost", "libnetwork", "libnetwork", EP2) not in dump
    # Docker forgot the network too: its record goes.
    assert reconciler.run(DockerView())["networks"] == [NET]
    assert keys.libnetwork_network(NET) not in etcd_dump()


def test_same_named_networks_share_one_profile(store, plugin, plugin_parts, etcd_dump):
    """Each host's Docker has its own network id; one name is one Calico network."""
    calico_network(plugin, network_id=NET)
    calico_network(plugin, network_id=NET2)          # as if created on a second host
    learner = plugin_parts[1]
    learner.learn_network(NET, "net1")
    learner.learn_network(NET2, "net1")
    assert json.loads(etcd_dump()[keys.profile_rules("net1")]) == {
        "id": "net1", "inbound_rules": [{"action": "allow", "src_tag": "net1"}],
        "outbound_rules": [{"action": "allow"}]}
    plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    assert keys.profile_tags("net1") in etcd_dump()
    plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NET2})
    assert not [k for k in etcd_dump() if "/profile/" in k]

"""Fuzz every plugin call's JSON body through the Flask app, against the real etcd fixture and a
throwaway network namespace.

Bodies are drawn three ways: arbitrary JSON (any type, nesting, unicode, huge strings), objects
holding the call's own field names with values of every kind (right type, wrong type, plausible
and hostile strings, ids of a network and an endpoint that exist), and raw bytes that are not
JSON at all.  For each case:
  - the answer is HTTP 200 with Docker's content type and a JSON object (never a 500 or a
    traceback);
  - a refusal carries exactly one sentence in the protocol's error field (`Err` for the network
    driver, `Error` for IPAM): one line, ending in a full stop, of bounded length, not an
    "internal error";
  - when the request is refused, etcd is exactly as before;
  - the server still answers afterwards.
The number of cases run is printed at the end of the module (about 30-60 s in all).
"""

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from calicoctl.datastore import keys
from calicoctl.plugin.app import CONTENT_TYPE, error_field
from calicoctl.plugin.schemas import SCHEMAS
from tests.unit.conftest import dump
from tests.unit.plugin_support import (EP, NET, _root, calico_network, netns,  # noqa: F401
                                    plugin, plugin_parts, start_container)

pytestmark = pytest.mark.skipif(not _root(), reason="needs root to make a network namespace")

CALLS = sorted(SCHEMAS)
# Per call; 21 calls x this many is about 35-40 s here (the brief: 30-60 s).
EXAMPLES = 500
# An error message is one sentence a user reads in `docker` output, not a dump of the request.
MAX_MESSAGE = 600
CASES = {"run": 0, "refused": 0}

HUGE = "x" * 20000
HOSTILE_TEXT = ["", " ", "../../etc", "/calico/v1", "a/b", "ä中\u202e", "\x00", "\n", HUGE,
                "0" * 300, "null", "{}", "%s%n", "'\"", "-1"]

json_leaves = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
               | st.floats(allow_nan=False, allow_infinity=False)
               | st.text(max_size=30) | st.sampled_from(HOSTILE_TEXT))
json_values = st.recursive(json_leaves, lambda children: (
    st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)),
    max_leaves=12)

ids = st.sampled_from([NET, EP, "b" * 64, "net1", "a" * 128, "a" * 129]) | st.sampled_from(
    HOSTILE_TEXT)
addresses = st.sampled_from([
    "10.9.0.5/32", "10.9.0.5", "10.9.0.200/24", "10.10.0.1/32", "::1/128", "fd00::5/128",
    "fe80::1/64", "0.0.0.0/0", "::/0", "999.1.1.1", "10.9.0.5/33", "10.9.0.5/32/1", "1e3"])
pool_ids = st.sampled_from(["calico:any:ipv4", "calico:any:ipv6", "calico:pool:10.9.0.0/24",
                            "calico:pool:10.9.0.0/99", "calico:pool:", "calico:any:ipv5"])
pool_cidrs = st.sampled_from(["", "0.0.0.0/0", "::/0", "10.9.0.0/24", "10.5.0.0/24",
                              "10.5.0.1/24", "fd80::/64", "300.0.0.0/8", "10.0.0.0/-1"])
generic_opts = st.dictionaries(
    st.sampled_from(["ipip", "nat-outgoing", "mtu", "colour",
                     "com.docker.network.enable_ipv6", "com.docker.network.advertise_addr_ms"]),
    st.sampled_from(["true", "false", "1500", "12", "yes", True, 1500, None, HUGE]) | json_values,
    max_size=3)
options = st.one_of(
    st.none(), json_values,
    st.fixed_dictionaries({}, optional={
        "com.docker.network.generic": generic_opts | json_values,
        "com.docker.network.enable_ipv6": st.booleans() | json_values,
        "RequestAddressType": st.just("com.docker.network.gateway") | json_values}))
ip_data = st.lists(st.fixed_dictionaries({}, optional={
    "AddressSpace": st.sampled_from(["CalicoLocalAddressSpace", "LocalDefault", ""]) | json_values,
    "Pool": pool_cidrs | json_values, "Gateway": addresses | json_values,
    "AuxAddresses": json_values}) | json_values, max_size=3) | json_values
interface = st.fixed_dictionaries({}, optional={
    "Address": addresses | json_values, "AddressIPv6": addresses | json_values,
    "MacAddress": st.sampled_from(["", "ee:ee:ee:ee:ee:ee", "zz", "01:00:5e:00:00:01"])
    | json_values}) | json_values

FIELD_VALUES = {
    "NetworkID": ids, "EndpointID": ids, "SandboxKey": st.sampled_from(
        ["/var/run/docker/netns/x", ""]) | json_values,
    "Options": options, "IPv4Data": ip_data, "IPv6Data": ip_data, "Interface": interface,
    "AddressSpace": st.sampled_from(["CalicoLocalAddressSpace", "x"]) | json_values,
    "Pool": pool_cidrs | json_values, "SubPool": pool_cidrs | json_values,
    "V6": st.booleans() | json_values, "PoolID": pool_ids | json_values,
    "Address": addresses | json_values,
}


def bodies(call):
    fields = SCHEMAS[call]
    shaped = st.fixed_dictionaries({}, optional={
        **{name: FIELD_VALUES.get(name, json_values) for name in fields},
        "Junk": json_values})      # a field no call takes
    as_json = (shaped | json_values).map(json.dumps)
    raw = st.one_of(st.text(max_size=50), st.binary(max_size=50).map(
        lambda b: b.decode("latin-1")), st.sampled_from(["{", "[1,", '{"a":', "\ufeff{}", HUGE,
                                                         '"' + HUGE + '"', "NaN", "1e999"]))
    return st.one_of(as_json, as_json, as_json, raw)


@pytest.fixture(scope="module", autouse=True)
def report(request):
    yield
    line = "plugin fuzz: %d cases run, %d refused" % (CASES["run"], CASES["refused"])
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        print("\n" + line)


@pytest.fixture
def seeded(store, plugin, plugin_parts):
    """A pool, a network and an endpoint, so fuzzed ids sometimes hit real objects."""
    import ipaddress
    from calicoctl.datastore.models import Pool
    from calicoctl.datastore.pools import add_pool
    add_pool(store, Pool(cidr=ipaddress.ip_network("10.9.0.0/24")))
    pool_id = calico_network(plugin)
    plugin_parts[1].learn_network(NET, "net1")
    start_container(plugin, pool_id)

    def reseed():
        if store.get(keys.libnetwork_network(NET)) is None:
            calico_network(plugin)
    return reseed


def check_one_sentence(call, message):
    assert isinstance(message, str) and message.strip(), (call, message)
    assert "\n" not in message and "Traceback" not in message, (call, message)
    assert "Internal error" not in message, (call, message)
    assert len(message) <= MAX_MESSAGE, (call, len(message), message[:200])
    assert message.rstrip().endswith((".", ".)")), (call, message)


@pytest.mark.parametrize("call", CALLS)
def test_fuzz_call(call, plugin, raw_etcd, seeded):
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=bodies(call))
    def case(body):
        seeded()
        before = dump(raw_etcd)
        resp = plugin.client.post("/" + call, data=body)
        CASES["run"] += 1
        assert resp.status_code == 200, (call, body[:300], resp.status_code, resp.data[:300])
        assert resp.content_type == CONTENT_TYPE
        answer = json.loads(resp.data)
        assert isinstance(answer, dict), answer
        field = error_field(call)
        if field in answer:
            CASES["refused"] += 1
            check_one_sentence(call, answer[field])
            after = dump(raw_etcd)
            assert after == before, (call, body[:300], answer[field],
                                     {k for k in set(before) ^ set(after)}
                                     | {k for k in before if after.get(k, before[k]) != before[k]})
        status, capabilities = plugin.call("NetworkDriver.GetCapabilities", {})
        assert status == 200 and capabilities["Scope"] == "local"
    case()

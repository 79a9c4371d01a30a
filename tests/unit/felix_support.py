"""What the agent's unit tests share: the agent over a stateful fake kernel (felix_fakes) and
the real etcd fixture, and writers of the records it reads."""

import json

import pytest

from calicoctl.datastore import keys
from calicoctl.datastore.globals import ensure_defaults
from calicoctl.felix.agent import Agent
from calicoctl.felix.executor import AgentDataplane
from tests.unit.felix_fakes import FakeKernel

HOST = "testhost"


class NoRoutes:
    """Routes need root and real interfaces; the fake dataplane records what it would do."""
    programmed = set()

    def set_routes(self, desired):
        self.programmed = set(desired)

    def update(self, add, remove):
        self.programmed = (self.programmed | add) - remove

    def forget_flows(self, addresses):
        self.forgotten = getattr(self, "forgotten", []) + [set(addresses)]

    def repair(self, desired):
        self.set_routes(desired)


@pytest.fixture
def kernel():
    return FakeKernel()


@pytest.fixture
def agent(store, kernel):
    dp = AgentDataplane(runner=kernel)
    dp.routes = NoRoutes()
    ensure_defaults(store)
    return Agent(store, HOST, dp, refresh_interval=3600)


def write_endpoint(store, eid, ip, profiles, host=HOST, **extra):
    data = {"state": "active", "name": ("cali" + eid)[:15], "mac": "ee:ee:ee:ee:ee:ee",
            "profile_ids": profiles, "ipv4_nets": [ip + "/32"], "ipv6_nets": [],
            "ipv4_gateway": "169.254.1.1", "ipv6_gateway": None}
    data.update(extra)
    store.set(keys.endpoint(host, "libnetwork", "libnetwork", eid), json.dumps(data))


def write_profile(store, name, inbound=None, outbound=None, tags=None):
    store.set(keys.profile_tags(name), json.dumps(tags if tags is not None else [name]))
    store.set(keys.profile_rules(name), json.dumps({
        "id": name, "inbound_rules": inbound if inbound is not None else [
            {"action": "allow", "src_tag": name}],
        "outbound_rules": outbound if outbound is not None else [{"action": "allow"}]}))


def chains(kernel, version=4, table="filter"):
    return kernel.table(version, table)


def settle(agent, tries=20):
    """Poll the watch until nothing more arrives (events are applied in batches); raises if it
    never goes quiet, rather than letting the test judge a half-applied state."""
    for _ in range(tries):
        before = agent.index
        agent.poll_once()
        if agent.index == before:
            return
    raise AssertionError("the watch still delivered events after %d polls" % tries)

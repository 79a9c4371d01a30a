"""Restarts under running workloads on two namespace hosts, with the agent and the plugin as
host processes:
  - etcd restarted with its data kept: the agents resync, a release made while etcd was down is
    applied when it is back, and the dataplane follows changes made afterwards;
  - the agent's watch index lost (the agent frozen while more than 1000 events are written):
    it resyncs and the dataplane ends right.
Each test sets up the policy it starts from, so either runs alone or first.
(dockerd restarted under the node containers is tests/st/test_dockerd_restart.py; the agent
restarted under a ping stream is tests/st/test_policy.py's
test_agent_restart_under_ping_loses_at_most_two.)
"""

import os
import signal
import time

import pytest

from tests.st.churn_checks import NETWORKS, PREFIX, report, settle, stack  # noqa: F401 - fixture
from tests.st.harness import wait_for
from tests.st.harness.etcd_direct import DirectEtcd
from tests.st.plugin_helpers import (answers_within, calicoctl as calicoctl_in, container_ip,
                                     ping_answered)

SETTLE = 90                   # seconds for the system to reach rest after a restart
ADMIT_CHURN2 = ("inbound", "allow", "from", "tag", "churn2")    # a rule for churn1's profile


def blocked(host, src, ip):
    """src's ping to ip ran and went unanswered (raises if it could not run)."""
    return not ping_answered(host, src, ip)


def set_admit_rule(host, etcd, present):
    """Add or remove churn1's rule that admits churn2, whatever the state before."""
    shown = calicoctl_in(host, etcd, "profile", "churn1", "rule", "show").stdout
    if ("allow from tag churn2" in shown) != present:
        calicoctl_in(host, etcd, "profile", "churn1", "rule", "add" if present else "remove",
                     *ADMIT_CHURN2)


@pytest.fixture(scope="module")
def workloads(stack):
    h1, h2 = stack["hosts"]
    made = {}
    for h, name, net in ((h1, "a", "churn1"), (h2, "b", "churn1"), (h1, "c", "churn2"),
                         (h2, "d", "churn2"), (h1, "x", "churn1")):
        h.docker("run", "-d", "--net", net, "--name", PREFIX + name, "busybox", "sleep",
                 "1000000")
        made[name] = (h, container_ip(h, PREFIX + name, net))
    assert answers_within(h1, PREFIX + "a", made["b"][1], 60)
    return made


def test_etcd_restart_keeps_data_and_the_agents_resync(testbed, stack, workloads, request):
    h1, h2 = stack["hosts"]
    store = stack["store"]
    etcd = testbed.etcd
    set_admit_rule(h1, etcd, present=False)
    wait_for(lambda: blocked(h1, PREFIX + "c", workloads["a"][1]), timeout=SETTLE,
             what="churn2 -> churn1 blocked")
    etcd.stop(remove_data=False)
    down = time.monotonic()
    try:
        # A container removed while etcd is down: Docker is answered, the release is kept.
        removed = h2.docker("rm", "-f", PREFIX + "d", check=False, timeout=120)
    finally:
        etcd.start()
        testbed.save()                      # the new etcd pid, for a later cleanup
    outage = time.monotonic() - down
    assert removed.returncode == 0, removed.stderr
    # Changes after the restart reach the dataplane: churn1 now admits churn2.
    set_admit_rule(h1, etcd, present=True)
    h2.docker("run", "-d", "--net", "churn2", "--name", PREFIX + "e", "busybox", "sleep",
              "1000000")
    ip_e = container_ip(h2, PREFIX + "e", "churn2")
    problems = settle(store, stack["hosts"], NETWORKS, timeout=SETTLE)
    assert not problems, "\n".join(problems)
    assert answers_within(h1, PREFIX + "c", workloads["a"][1], 30)     # now allowed
    assert answers_within(h2, PREFIX + "e", workloads["a"][1], 60)
    assert blocked(h1, PREFIX + "a", ip_e)                 # churn2 still admits only churn2
    assert answers_within(h1, PREFIX + "a", workloads["b"][1], 30)
    report(request, "etcd restart with data kept: outage %.1f s, release made during it "
                    "applied, dataplane right" % outage)


def test_agent_resyncs_after_its_watch_index_is_lost(testbed, stack, workloads, request):
    h1, _ = stack["hosts"]
    store = stack["store"]
    agent = stack["agents"][0]
    # The starting point: churn1 admits churn2, and the agent has applied it.
    set_admit_rule(h1, testbed.etcd, present=True)
    assert answers_within(h1, PREFIX + "c", workloads["a"][1], SETTLE)
    lost_before = agent.log().count("Watch fell too far behind")
    pids = agent.pids()
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        # While the agent sleeps: the rule goes, a workload goes, and etcd drops the history
        # its watch would need to catch up (v2: more events than it keeps; v3: a compaction).
        set_admit_rule(h1, testbed.etcd, present=False)
        h1.docker("rm", "-f", PREFIX + "x", timeout=120)
        DirectEtcd(testbed.etcd.url, testbed.etcd.api).forget_history()
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    wait_for(lambda: agent.log().count("Watch fell too far behind") > lost_before, timeout=30,
             what="the agent to notice its lost index")
    problems = settle(store, stack["hosts"], NETWORKS, timeout=SETTLE)
    assert not problems, "\n".join(problems)
    wait_for(lambda: blocked(h1, PREFIX + "c", workloads["a"][1]), timeout=30,
             what="churn2 -> churn1 blocked again")
    assert answers_within(h1, PREFIX + "a", workloads["b"][1], 30)
    report(request, "agent watch history lost while frozen (etcd v%s): resynced, dataplane "
                    "right" % testbed.etcd.api)

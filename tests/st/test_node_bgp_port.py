"""`calicoctl node` on a host where something else already holds TCP port 179: a BIRD left
running by an earlier `calicoctl felix serve` outside the node container (the agent leaves BIRD
running when it stops, so that a restarted agent adopts it).  calico-node's own BIRD could not
listen there and BGP would stay down, so `calicoctl node` refuses in one line naming the
process, exit status 1, with nothing written or started.  Once the stray BIRD is gone it starts,
and a re-run with calico-node's own BIRD on 179 is no error.
"""

import signal

import pytest

from tests.st.calico_stack import AgentProcess, store_for
from tests.st.harness import wait_for
from tests.st.plugin_helpers import calicoctl

# A global peer nobody answers (an address on the testbed bridge no host holds): with a BGP
# protocol configured, BIRD listens on 179 whether or not the session comes up.
SILENT_PEER = "198.18.0.200"


def listeners_179(host):
    """pid -> command of whatever listens on TCP 179 inside the host (by `ss`)."""
    out = host.run(["ss", "-Hltnp", "sport = :179"]).stdout
    found = {}
    for part in out.split("users:((")[1:]:
        for user in part.split("),("):
            name, pid = user.split(",")[0].strip('"'), user.split("pid=")[1].split(",")[0]
            found[int(pid)] = name
    return found


def _etcd_state(store):
    """Every key under /calico and its value, but the agent's liveness report (it expires)."""
    return {k: v for k, v, _ in store.children("/calico") if "/felix/v1/host/" not in k}


@pytest.fixture
def host(two_hosts, node_images, testbed):
    host = two_hosts[0]
    store = store_for(testbed.etcd)
    yield host
    # Whatever a failed step left: the stray BIRD, the node containers, the registration.
    for pid, name in listeners_179(host).items():
        if name.startswith("bird"):
            host.run(["kill", str(pid)], check=False)
    calicoctl(host, testbed.etcd, "node", "stop", "--force", check=False)
    calicoctl(host, testbed.etcd, "node", "remove", "--remove-endpoints", check=False)
    calicoctl(host, testbed.etcd, "bgp", "peer", "remove", SILENT_PEER, check=False)
    store.delete("/calico/felix/v1/host/%s/status" % host.name)


def test_node_refuses_while_a_stray_bird_holds_179_and_reruns_over_its_own(host, testbed):
    etcd = testbed.etcd
    store = store_for(etcd)
    assert calicoctl(host, etcd, "node", "--runtime=none").returncode == 0
    assert calicoctl(host, etcd, "bgp", "peer", "add", SILENT_PEER, "as", "64511").returncode == 0
    # The agent on the host itself, stopped the way a user stops it: its BIRD stays.
    agent = AgentProcess(host, etcd).start()
    try:
        stray = wait_for(lambda: {p: n for p, n in listeners_179(host).items()
                                  if n.startswith("bird")}, timeout=60, what="BIRD on 179")
    finally:
        agent.stop(signal.SIGINT)
    (stray_pid, stray_name), = stray.items()
    assert listeners_179(host) == stray

    before = _etcd_state(store)
    r = calicoctl(host, etcd, "node", check=False, timeout=180)
    assert r.returncode == 1, r.stdout + r.stderr
    # One line says it (before it: the address chosen, and warnings such as no ipip here).
    refusal = r.stderr.strip().splitlines()[-1]
    assert [line for line in r.stderr.splitlines() if "179" in line] == [refusal], r.stderr
    assert refusal.startswith("This host cannot run Calico yet: BGP port 179 free: TCP port "
                              "179 is held by %s (pid %d), not by calico-node"
                              % (stray_name, stray_pid)), refusal
    assert "kill %d" % stray_pid in refusal
    # Nothing half-started: no container, nothing new in etcd, the stray BIRD untouched.
    assert host.docker("ps", "-aq").stdout.strip() == ""
    assert _etcd_state(store) == before
    assert listeners_179(host) == stray

    host.run(["kill", str(stray_pid)])
    wait_for(lambda: not listeners_179(host), timeout=30, what="the stray BIRD to go")
    r = calicoctl(host, etcd, "node", check=False, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    own = wait_for(lambda: listeners_179(host), timeout=60, what="calico-node's BIRD on 179")
    assert stray_pid not in own
    # Again, with calico-node's own BIRD on the port: no error, the container left alone.
    r = calicoctl(host, etcd, "node", check=False, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "left alone" in r.stderr, r.stderr

"""The node containers' privileges on every supported Docker engine: Docker 20.10 (Debian 12),
26.1 (Debian 13) and 28.5 (Debian testing), each run by a scratch namespace host of that suite
(tests/st/harness/suites.py).

Where the host withholds a capability (this machine's sandbox lacks CAP_SYS_RESOURCE),
`privileged` fails on 20.10 ("unable to apply caps") and the containers ask for an explicit list
instead (calicoctl/node/containers.py).  Docker 23 and later refuse to *name* a capability the
daemon lacks ("invalid CapDrop"), so the list must never name one: here each engine really
creates and runs a container with the options calicoctl would give it, and the container gets
exactly the capabilities asked for and can write a network sysctl, as the agent must.
"""

import pytest

from calicoctl.node import containers
from tests.st.harness import Host, check_host_support, import_busybox, wait_for

MARKER = "calico-privtest:"


@pytest.fixture(scope="module", params=["host", "trixie", "forky"])
def engine_host(request, tmp_path_factory):
    reason = check_host_support()
    if reason:
        pytest.skip(f"needs namespace hosts: {reason}")
    suite = None if request.param == "host" else request.param
    host = Host.create(f"priv-{request.param}", None, tmp_path_factory.mktemp("priv"),
                       marker=MARKER, suite=suite, timeout=600)
    try:
        host.start_dockerd(timeout=120)
        import_busybox(host.docker_client())
        yield host
    finally:
        try:
            host.stop_dockerd()
        finally:
            host.stop(keep_logs=False)


def _cap_set(names):
    return sum(1 << containers.CAPABILITIES.index(n) for n in names)


def test_fallback_privileges_start_on_every_engine(engine_host):
    client = engine_host.docker_client()
    # What this host really withholds; on a host that withholds nothing, SYS_RESOURCE stands in
    # (the engine then has it, and the list must still be taken as exactly what it says).
    missing = containers.missing_capabilities() or ["SYS_RESOURCE"]
    options = containers.privilege_options(missing)
    spec = {"name": "privtest", "image": "busybox:latest",
            "command": ["sh", "-c", "grep CapEff /proc/self/status; "
                        "echo 1 > /proc/sys/net/ipv4/conf/lo/proxy_arp && echo sysctl-ok; "
                        "exec sleep 600"],
            "environment": {}, "volumes": {}, "network_mode": "host",
            "restart_policy": {"Name": "no"}, **options}
    version = client.version()["Version"]
    try:
        container = containers.create_and_start(client, spec, {})
        logs = wait_for(lambda: (lambda text: "sysctl-ok" in text and text)(
            container.logs().decode()), timeout=30, what=f"the container on Docker {version}")
        assert containers.container_running(container)
    finally:
        leftover = containers.find_container(client, "privtest")
        if leftover is not None:
            leftover.remove(force=True)
    effective = int(logs.split("CapEff:")[1].split()[0], 16)
    assert effective == _cap_set(options["cap_add"]), (version, hex(effective))
    assert not effective & _cap_set(m for m in missing if m in containers.CAPABILITIES)

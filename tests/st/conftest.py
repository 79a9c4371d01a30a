"""Fixtures for system tests across namespace hosts.

    testbed          the whole Testbed (session): bridge calibr0, etcd, calico-01/02, dockerd,
                     busybox imported; torn down at the end of the session, even on failure
    etcd_on_bridge   the EtcdServer on 198.18.0.1:2379 (.url, .authority) (session)
    two_hosts        (calico-01, calico-02) Host objects (session)
    node_images      ['calico/node:vX', 'calico/node-libnetwork:vX'] loaded on both hosts
                     (session; built once per source change, else loaded from the cache tarball)
    engine           which Docker engine and BIRD the hosts run: "host" (this machine's own) or
                     a Debian suite whose root the hosts pivot into (tests/st/harness/suites.py:
                     bookworm = Docker 20.10 + BIRD 1.6, trixie = 26.1 + BIRD 2.17, forky =
                     28.5 + BIRD 2). A module lists its engines with
                     `pytestmark = pytest.mark.engines(...)` (default: "host"); the test ids
                     name the engine; CALICO_ST_ENGINE=forky runs every module on one engine.

Tests that cannot run here (not root, no unshare, no dockerd/etcd, no docker-py) are skipped
with the reason; they never fail for want of an environment.
"""

import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:      # one copy of the harness, whatever pytest's import mode
    sys.path.insert(0, str(REPO))

from tests.st.harness import Testbed, check_host_support, cleanup_stale, exclusive  # noqa: E402


def testbed_unavailable():
    """Why system tests cannot run here, or None."""
    reason = check_host_support()
    if reason:
        return reason
    for binary in ("dockerd", "etcd", "/usr/bin/docker", "iptables"):
        if shutil.which(binary) is None:
            return f"{binary} is not installed"
    try:
        import docker  # noqa: F401
    except ImportError:
        return "docker-py is not installed (pip install docker)"
    return None


ENGINE_ENV = "CALICO_ST_ENGINE"


def pytest_configure(config):
    config.addinivalue_line("markers", "engines(*suites): the Docker engines (Debian suites, or "
                            "'host') a system-test module runs on")
    config.addinivalue_line("markers", "dataplanes(*names): the agent's policy dataplanes "
                            "(nftables, iptables) a system-test module runs on; else auto")


def pytest_generate_tests(metafunc):
    dataplanes = metafunc.definition.get_closest_marker("dataplanes")
    if dataplanes and "dataplane" in metafunc.fixturenames:
        # The agent's policy dataplanes a module runs on (`calicoctl felix serve --dataplane`).
        metafunc.parametrize("dataplane", list(dataplanes.args), scope="module")
    if "engine" not in metafunc.fixturenames:
        return
    from tests.st.harness.suites import ENGINE_SUITES
    forced = os.environ.get(ENGINE_ENV)
    marker = metafunc.definition.get_closest_marker("engines")
    engines = [forced] if forced else list(marker.args) if marker else ["host"]
    unknown = [e for e in engines if e not in ENGINE_SUITES]
    if unknown:
        raise pytest.UsageError(f"unknown engine {unknown[0]!r}: one of {', '.join(ENGINE_SUITES)}")
    metafunc.parametrize("engine", engines, scope="module")


def pytest_collection_modifyitems(config, items):
    """Everything under tests/st is a system test: mark it so `-m 'not st'` deselects it."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.st)


@pytest.fixture(scope="module")
def dataplane():
    """The agent's policy dataplane (`calicoctl felix serve --dataplane`): auto, unless a
    module's `dataplanes` marker names them (pytest_generate_tests)."""
    return "auto"


@pytest.fixture(scope="session")
def testbed_lock():
    """Skip if namespace hosts are impossible; else hold the machine-wide testbed lock."""
    reason = testbed_unavailable()
    if reason:
        pytest.skip(f"system tests need namespace hosts: {reason}")
    with exclusive():
        yield


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session", autouse=False)
def _sigterm_as_interrupt():
    # A SIGTERM (CI stopping, `timeout`) becomes an interrupt, so pytest still runs the
    # teardown below instead of leaving dockerds behind.
    signal.signal(signal.SIGTERM, _interrupt)


# Where a module's testbed logs go when one of its tests failed or errored: the next module's
# testbed removes the hosts' logs, and `down` etcd's. /var/tmp, not /tmp: a Debian 13 machine
# (and tools/fresh-root-check's roots) keep /tmp on a tmpfs that goes with the machine.
FAILED_LOGS_ENV = "CALICO_ST_FAILED_LOGS"
FAILED_MODULES = set()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if outcome.get_result().failed:
        FAILED_MODULES.add(item.module.__name__)


def keep_failed_logs(bed, module):
    root = Path(os.environ.get(FAILED_LOGS_ENV, "/var/tmp/calico-st-logs"))
    dest = root / ("%s-%s" % (module.rsplit(".", 1)[-1], time.strftime("%Y%m%d-%H%M%S")))
    try:
        bed.copy_logs(dest)
    except OSError as exc:
        print(f"[testbed] {module} failed; its logs could not be kept: {exc}", file=sys.stderr)
    else:
        print(f"[testbed] {module} failed; its testbed's logs are kept in {dest}",
              file=sys.stderr)


# Fresh hosts and a fresh etcd for every test module: modules leave agents, BIRD, iptables
# chains and liveness keys behind by design (each tests a running system), and one module's
# leftovers must never decide another's result.  Bringing a testbed up takes ~2 s.
@pytest.fixture(scope="module")
def testbed(request, testbed_lock, _sigterm_as_interrupt, engine):
    cleanup_stale()          # a crashed earlier run must not make this one fail
    bed = Testbed(suite=engine)
    bed.up(n_hosts=2, progress=lambda msg: print(f"[testbed] {msg}", file=sys.stderr))
    try:
        yield bed
    finally:
        if request.module.__name__ in FAILED_MODULES:
            keep_failed_logs(bed, request.module.__name__)
        bed.down(progress=lambda msg: None)
        # Anything the tests started outside the Testbed's knowledge goes too.
        cleanup_stale(progress=lambda msg: None, keep_logs=True)


@pytest.fixture(scope="module")
def etcd_on_bridge(testbed):
    return testbed.etcd


@pytest.fixture(scope="module")
def two_hosts(testbed):
    return testbed.hosts[0], testbed.hosts[1]


@pytest.fixture(scope="module")
def node_images(two_hosts, engine):
    from tests.st.harness.node_images import load_node_images
    from tests.st.harness.suites import node_image_suite
    return load_node_images(two_hosts, suite=node_image_suite(engine),
                            progress=lambda msg: print(msg, file=sys.stderr))


# The agent+plugin stack fixture, for every module (some reach it through another module's
# fixture, e.g. test_restarts through test_churn's `stack`).
from tests.st.calico_stack import calico_stack  # noqa: E402,F401

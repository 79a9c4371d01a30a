"""Fixtures: a real etcd per test session, a clean /calico key space per test, and a CLI runner.

Every test that uses etcd runs twice, once per etcd API calicoctl speaks: "v2" is an etcd that
serves the v2 API (calicoctl must detect it and speak v2), "v3" one started with
--enable-v2=false (calicoctl must detect v3).  ETCD_API is unset in both, so the detection is
under test too.  CALICO_UNIT_ETCD=v2 (or v3) runs one of them only.
"""

import io
import os
import contextlib

import pytest

from tests.unit.etcd_direct import DirectEtcd
from tests.unit.etcd_server import EtcdServer

ETCD_APIS = ("v2", "v3")


def _etcd_params():
    chosen = os.environ.get("CALICO_UNIT_ETCD", "").strip()
    if chosen and chosen not in ETCD_APIS:
        raise pytest.UsageError("CALICO_UNIT_ETCD must be v2 or v3, not %r" % chosen)
    return [chosen] if chosen else list(ETCD_APIS)


@pytest.fixture(scope="session", params=_etcd_params())
def etcd_server(request):
    server = EtcdServer(enable_v2=request.param == "v2").start()
    yield server
    server.stop()


@pytest.fixture
def etcd_env(etcd_server, monkeypatch):
    """Point every component at the test etcd, with an empty /calico and the API left for
    calicoctl to detect."""
    monkeypatch.delenv("ETCD_ENDPOINTS", raising=False)
    monkeypatch.delenv("ETCD_API", raising=False)
    monkeypatch.setenv("ETCD_AUTHORITY", etcd_server.authority)
    monkeypatch.setenv("CALICO_HOSTNAME", "testhost")
    DirectEtcd(etcd_server.url, etcd_server.api).delete("/calico", recursive=True)
    yield etcd_server


@pytest.fixture
def store(etcd_env):
    from calicoctl.datastore.store import EtcdStore
    return EtcdStore()


@pytest.fixture
def raw_etcd(etcd_env):
    """The test etcd read and written directly, in the API it serves (etcd_direct.py)."""
    return DirectEtcd(etcd_env.url, etcd_env.api)


class CLIResult:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err

    def __repr__(self):
        return "CLIResult(code=%r, out=%r, err=%r)" % (self.code, self.out, self.err)


@pytest.fixture
def cli(etcd_env):
    """Run calicoctl through its entry point: cli("pool", "add", "10.0.0.0/8")."""
    from calicoctl.cli import main

    def run(*argv, stdin=None):
        out, err = io.StringIO(), io.StringIO()
        old_stdin = None
        if stdin is not None:
            import sys
            old_stdin, sys.stdin = sys.stdin, io.StringIO(stdin)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(list(argv))
        finally:
            if old_stdin is not None:
                import sys
                sys.stdin = old_stdin
        return CLIResult(code, out.getvalue(), err.getvalue())
    return run


def dump(raw_etcd, prefix="/calico"):
    """Every leaf key below prefix -> value."""
    return raw_etcd.dump(prefix)


@pytest.fixture
def etcd_dump(raw_etcd):
    return lambda prefix="/calico": dump(raw_etcd, prefix)

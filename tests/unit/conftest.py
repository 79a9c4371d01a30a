"""Fixtures: a real etcd per test session, a clean /calico key space per test, and a CLI runner."""

import io
import os
import contextlib

import pytest

from tests.unit.etcd_server import EtcdServer


@pytest.fixture(scope="session")
def etcd_server():
    server = EtcdServer().start()
    yield server
    server.stop()


@pytest.fixture
def etcd_env(etcd_server, monkeypatch):
    """Point every component at the test etcd, with an empty /calico."""
    monkeypatch.delenv("ETCD_ENDPOINTS", raising=False)
    monkeypatch.setenv("ETCD_AUTHORITY", etcd_server.authority)
    monkeypatch.setenv("CALICO_HOSTNAME", "testhost")
    import etcd
    client = etcd.Client(host="127.0.0.1", port=etcd_server.client_port)
    for top in ("/calico",):
        try:
            client.delete(top, recursive=True, dir=True)
        except etcd.EtcdKeyNotFound:
            pass
    yield etcd_server


@pytest.fixture
def store(etcd_env):
    from calicoctl.datastore.store import EtcdStore
    return EtcdStore()


@pytest.fixture
def raw_etcd(etcd_env):
    import etcd
    return etcd.Client(host="127.0.0.1", port=etcd_env.client_port)


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
    import etcd
    try:
        result = raw_etcd.read(prefix, recursive=True)
    except etcd.EtcdKeyNotFound:
        return {}
    return {n.key: n.value for n in result.leaves if not n.dir}


@pytest.fixture
def etcd_dump(raw_etcd):
    return lambda prefix="/calico": dump(raw_etcd, prefix)

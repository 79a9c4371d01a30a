"""`calicoctl plugin serve` as a process: a real waitress server on a unix socket."""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from tests.st.harness import wait_for


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def post(path, call, body):
    conn = UnixHTTPConnection(path)
    conn.request("POST", "/" + call, body=json.dumps(body))
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, resp.getheader("Content-Type"), json.loads(data)


def _accepts(path):
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


@pytest.fixture
def serve(etcd_env, tmp_path):
    procs = []

    def start(sock):
        env = dict(os.environ, DOCKER_HOST="unix://%s" % (tmp_path / "no-docker.sock"))
        proc = subprocess.Popen([sys.executable, "-m", "calicoctl", "plugin", "serve",
                                 "--socket", str(sock), "--log-level=debug"], env=env,
                                stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        wait_for(lambda: _accepts(sock) or proc.poll() is not None, timeout=15, retry_on=(),
                 what="the plugin socket %s (or the server to exit)" % sock)
        assert proc.poll() is None, proc.stderr.read()
        return proc
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_serves_concurrently_and_stops_cleanly_on_sigterm(serve, tmp_path):
    sock = tmp_path / "plugins" / "calico.sock"
    proc = serve(sock)
    assert oct(sock.stat().st_mode & 0o777) == "0o600"
    status, ctype, answer = post(str(sock), "Plugin.Activate", {})
    assert status == 200 and ctype == "application/vnd.docker.plugins.v1.1+json"
    assert answer == {"Implements": ["NetworkDriver", "IpamDriver"]}
    # Many requests at once, good and bad mixed: every one answered, the server carries on.
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(
            lambda i: post(str(sock), "NetworkDriver.GetCapabilities" if i % 2 else
                           "IpamDriver.RequestAddress", {} if i % 2 else {"PoolID": "bad"}),
            range(64)))
    assert all(r[0] == 200 for r in results)
    assert all(("Scope" in r[2]) if i % 2 else ("Error" in r[2]) for i, r in enumerate(results))
    assert post(str(sock), "Nope.Call", {})[0] == 404
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert not sock.exists()
    log = proc.stderr.read()
    assert "call Plugin.Activate took" in log


def test_debug_log_holds_our_lines_only(serve, tmp_path):
    """--log-level=debug is for the plugin's own lines: the libraries' debug lines (python-etcd
    logs every request, pyroute2 every netlink socket) would cost more than the calls."""
    sock = tmp_path / "calico.sock"
    proc = serve(sock)
    # Both go to etcd (the pool list, the network record), where python-etcd logs each
    # request at debug.
    assert "Error" in post(str(sock), "IpamDriver.RequestAddress",
                           {"PoolID": "calico:any:ipv4"})[2]
    assert "Err" in post(str(sock), "NetworkDriver.Join",
                           {"NetworkID": "n" * 64, "EndpointID": "e" * 64,
                            "SandboxKey": "/var/run/docker/netns/x"})[2]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    lines = proc.stderr.read().splitlines()
    request_address = [line for line in lines if "call IpamDriver.RequestAddress took" in line]
    # Its line says how much of the call was etcd (the pool list at least).
    assert request_address and re.search(r" ms \(etcd: [1-9]\d* operations, [\d.]+ ms\) ",
                                         request_address[0]), request_address
    foreign = [line for line in lines
               if " DEBUG " in line and not line.split(" DEBUG ")[1].startswith("calicoctl")]
    assert foreign == []


def test_stale_socket_replaced_live_one_refused(serve, tmp_path):
    sock = tmp_path / "calico.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()                     # the file stays, nobody listens: a crashed plugin
    proc = serve(sock)
    assert post(str(sock), "Plugin.Activate", {})[0] == 200
    second = subprocess.run([sys.executable, "-m", "calicoctl", "plugin", "serve", "--socket",
                             str(sock)], capture_output=True, text=True, timeout=30)
    assert second.returncode == 1 and "Another process already serves" in second.stderr
    assert post(str(sock), "Plugin.Activate", {})[0] == 200
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)


def test_bad_arguments(cli):
    r = cli("plugin", "serve", "--interface-prefix=9x")
    assert r.code == 1 and "--interface-prefix" in r.err
    r = cli("plugin", "serve", "--felix-wait=abc")
    assert r.code == 1 and "--felix-wait" in r.err

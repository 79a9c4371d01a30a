"""A real etcd (v2 API enabled) for tests: started on free loopback ports, removed afterwards."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdServer:
    def __init__(self, name="test"):
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.data_dir = tempfile.mkdtemp(prefix="calico-etcd-")
        self.proc = None

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.client_port

    @property
    def authority(self):
        return "127.0.0.1:%d" % self.client_port

    def start(self, timeout=30):
        etcd = shutil.which("etcd")
        if etcd is None:
            raise RuntimeError("etcd is not installed: run 'make test' (it installs etcd-server)")
        self.log = open(os.path.join(self.data_dir, "etcd.log"), "w")
        self.proc = subprocess.Popen(
            [etcd, "--name", self.name, "--data-dir", os.path.join(self.data_dir, "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", "http://127.0.0.1:%d" % self.peer_port,
             "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % self.peer_port,
             "--initial-cluster", "%s=http://127.0.0.1:%d" % (self.name, self.peer_port),
             "--enable-v2=true"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("etcd exited; see %s" % self.log.name)
            try:
                with urllib.request.urlopen(self.url + "/v2/keys/", timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("etcd did not become ready in %ss" % timeout)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)

"""A throwaway etcd 3.4, serving the v2 API beside v3 or (enable_v2=False) v3 alone.

calicoctl speaks v2 where etcd serves it and v3 where it does not (calicoctl/datastore/api.py);
`CALICO_ST_ETCD_API=3` makes the system tests' etcd a v3-only one (the default of etcd 3.4 and
3.5, and all etcd 3.6 offers).  Named etcd_server, not etcd, so it can never shadow the
python-etcd package.
"""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from . import procs
from .errors import HarnessError


def free_port(address="127.0.0.1"):
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def default_enable_v2():
    """Whether the system tests' etcd serves the v2 API: yes unless CALICO_ST_ETCD_API=3."""
    api = os.environ.get("CALICO_ST_ETCD_API", "").strip().lower().lstrip("v")
    if api not in ("", "2", "3"):
        raise HarnessError("CALICO_ST_ETCD_API must be 2 or 3, not %r" % api)
    return api != "3"


class EtcdServer:
    """One etcd member with a temporary data dir.

    `EtcdServer("127.0.0.1").start()` for unit tests (ports chosen free), or
    `EtcdServer("198.18.0.1", 2379)` on the testbed bridge. `start()` returns the client URL.
    """

    def __init__(self, address="127.0.0.1", port=None, peer_port=None, data_dir=None,
                 log_path=None, name="calico-testbed", enable_v2=None):
        self.address = address
        # None: the system tests' choice, CALICO_ST_ETCD_API=3 for v3 alone.
        self.enable_v2 = default_enable_v2() if enable_v2 is None else enable_v2
        self.port = port or free_port(address)
        self.peer_port = peer_port or free_port(address)
        self._own_data_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else None
        self.log_path = Path(log_path) if log_path else None
        self.name = name
        self.pid = None
        self._proc = None

    @property
    def url(self):
        return f"http://{self.address}:{self.port}"

    @property
    def api(self):
        """The etcd API calicoctl picks for this etcd: "2" where v2 is served, else "3"."""
        return "2" if self.enable_v2 else "3"

    @property
    def authority(self):
        """host:port, the form calicoctl's ETCD_AUTHORITY takes."""
        return f"{self.address}:{self.port}"

    def start(self, timeout=30):
        if shutil.which("etcd") is None:
            raise HarnessError("etcd is not installed (apt-get install etcd-server)")
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="calico-etcd-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path or self.data_dir / "etcd.log"
        peer = f"http://{self.address}:{self.peer_port}"
        cmd = [
            "etcd", "--name", self.name, "--data-dir", str(self.data_dir / "data"),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            # etcd 3.4 serves the v2 keyspace only when asked; calicoctl picks v2 when it does.
            "--enable-v2=%s" % ("true" if self.enable_v2 else "false"),
        ]
        with open(log_path, "ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self._proc.pid
        try:
            procs.wait_for(self._ready, timeout=timeout, what=f"etcd at {self.url}")
        except HarnessError as exc:
            self.stop()
            raise HarnessError(f"{exc}; log: {log_path}") from None
        return self.url

    def _ready(self):
        if self._proc is not None and self._proc.poll() is not None:
            raise HarnessError(f"etcd exited with {self._proc.returncode}")
        with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
            if json.load(resp).get("health") != "true":
                return False
        # /health can answer before the keys API does; a read proves what calicoctl needs.
        if self.enable_v2:
            with urllib.request.urlopen(self.url + "/v2/keys/", timeout=2) as resp:
                return resp.status == 200
        # The v3 status call needs no credentials (a restarted etcd may have users) and names
        # the raft leader: with one, the keys API serves.
        request = urllib.request.Request(self.url + "/v3/maintenance/status", method="POST",
                                         data=b"{}")
        with urllib.request.urlopen(request, timeout=2) as resp:
            return json.load(resp).get("leader", "0") != "0"

    def stop(self, remove_data=True):
        """Stop etcd and (by default) delete its data. Safe to call twice."""
        if self.pid is not None:
            procs.terminate(self.pid)
            if self._proc is not None:
                self._proc.wait(timeout=5)
            self.pid = None
            self._proc = None
        if remove_data and self._own_data_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # State for `python -m tests.st.harness down` from another process.
    def to_state(self):
        return {"address": self.address, "port": self.port, "peer_port": self.peer_port,
                "data_dir": str(self.data_dir), "pid": self.pid, "name": self.name,
                "enable_v2": self.enable_v2}

    @classmethod
    def from_state(cls, state):
        server = cls(state["address"], state["port"], state["peer_port"], state["data_dir"],
                     name=state["name"], enable_v2=state.get("enable_v2", True))
        server._own_data_dir = True
        # Only trust the pid if it is still an etcd using our data dir (pids get reused).
        pid = state.get("pid")
        if pid and any(str(server.data_dir) in arg for arg in procs.cmdline(pid)):
            server.pid = pid
        return server

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

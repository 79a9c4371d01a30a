"""The whole testbed: etcd on the bridge, N namespace hosts with dockerd, busybox loaded.

State is written to <state_dir>/state.json after every step, so `down` works from another
process and after a crash half-way through `up`. cleanup_stale() also finds leftovers that no
state file describes (by name prefix and by the hosts' init marker).
"""

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import time
from pathlib import Path

from . import images, network, procs, suites
from .errors import HarnessError
from .etcd_server import EtcdServer
from .hosts import Host, remove_container_cgroups

STATE_DIR = Path(os.environ.get("CALICO_TESTBED_DIR", "/tmp/calico-testbed"))
ETCD_PORT = 2379
ETCD_PEER_PORT = 2380


def host_name(index, prefix="calico-"):
    return f"{prefix}{index + 1:02d}"


def host_marker(underlay):
    """argv[0] prefix of a testbed's host inits: how cleanup finds them without a state file,
    scoped by bridge so cleaning one testbed never touches another."""
    return f"calico-testbed[{underlay.bridge}]:"


class Testbed:
    """`Testbed().up()` gives calico-01/calico-02 on calibr0 (198.18.0.0/24) with etcd on
    198.18.0.1:2379. Another underlay, state_dir and name_prefix give a second, independent one."""

    __test__ = False    # not a pytest test class, despite the name

    def __init__(self, state_dir=STATE_DIR, underlay=network.DEFAULT_UNDERLAY,
                 name_prefix="calico-", suite=None):
        self.state_dir = Path(state_dir)
        self.suite = None if suite == "host" else suite   # the hosts' Debian root (suites.py)
        self.underlay = underlay
        self.name_prefix = name_prefix
        self.hosts = []
        self.etcd = None
        self.bridge = None

    # ---- state -----------------------------------------------------------------------------

    @property
    def state_file(self):
        return self.state_dir / "state.json"

    def save(self):
        state = {"underlay": {"bridge": self.underlay.bridge,
                              "subnet": str(self.underlay.subnet)},
                 "name_prefix": self.name_prefix, "suite": self.suite,
                 "bridge": self.bridge, "etcd": self.etcd.to_state() if self.etcd else None,
                 "hosts": [h.to_state() for h in self.hosts]}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.rename(self.state_file)

    @classmethod
    def load(cls, state_dir=STATE_DIR):
        """The testbed described by the state file, or None if there is none."""
        state_file = Path(state_dir) / "state.json"
        if not state_file.exists():
            return None
        state = json.loads(state_file.read_text())
        underlay = network.Underlay(state["underlay"]["bridge"],
                                    ipaddress.ip_network(state["underlay"]["subnet"]))
        bed = cls(state_dir, underlay, state["name_prefix"], state.get("suite"))
        bed.bridge = state.get("bridge")
        bed.etcd = EtcdServer.from_state(state["etcd"]) if state.get("etcd") else None
        bed.hosts = [Host.from_state(h) for h in state.get("hosts", [])]
        return bed

    @property
    def etcd_url(self):
        return self.etcd.url if self.etcd else None

    def host(self, name):
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    # ---- up / down -------------------------------------------------------------------------

    def up(self, n_hosts=2, etcd=True, dockerd=True, busybox=True, progress=print):
        """Build the testbed; on any failure tear down what was built and re-raise."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._up(n_hosts, etcd, dockerd, busybox, progress)
        except BaseException:
            self.down(progress=progress)
            raise
        return self

    def _up(self, n_hosts, etcd, dockerd, busybox, progress):
        t0 = time.monotonic()
        u = self.underlay
        progress(f"bridge {u.bridge} {u.bridge_ip}/{u.subnet.prefixlen}")
        self.bridge = u.bridge
        self.save()                       # record before creating, so a crash still cleans it
        network.create_bridge(u)
        if etcd:
            self.etcd = EtcdServer(str(u.bridge_ip), ETCD_PORT, ETCD_PEER_PORT,
                                   data_dir=self.state_dir / "etcd",
                                   enable_v2=suites.etcd_enable_v2(self.suite))
            self.etcd.start()
            self.save()
            progress(f"etcd {self.etcd.url} (pid {self.etcd.pid})")
        for i in range(n_hosts):
            name = host_name(i, self.name_prefix)
            host = Host.create(name, str(u.host_ip(i)), self.state_dir / "hosts" / name,
                               marker=host_marker(u), suite=self.suite, timeout=60)
            self.hosts.append(host)
            self.save()
            network.connect_host(host, u)
            progress(f"host {name} {host.ip} (pid {host.pid})")
        if dockerd:
            busybox_tar = images.busybox_tarball() if busybox else None
            for host in self.hosts:
                driver = host.start_dockerd()
                progress(f"dockerd {host.engine_version()} on {host.name} ({driver}, "
                         f"{host.suite or 'this machine'}'s root) at {host.docker_url}")
                if busybox_tar:
                    client = host.docker_client()
                    images.import_busybox(client, busybox_tar)
                    client.close()
            if busybox_tar:
                progress("busybox image imported on every host")
        progress(f"testbed up in {time.monotonic() - t0:.1f}s")

    def down(self, progress=print, keep_logs=True):
        """Tear everything down; every step runs even if an earlier one failed. Idempotent."""
        errors = []

        def step(what, fn, *args):
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - carry on, report at the end
                errors.append(f"{what}: {exc}")

        for host in self.hosts:
            step(f"stop {host.name}", host.stop, True, keep_logs)
            step(f"veth of {host.name}", network.delete_link, network.root_veth_name(host.name))
        if self.etcd:
            step("stop etcd", self.etcd.stop)
        step("etcd data", shutil.rmtree, self.state_dir / "etcd", True)
        if self.bridge:
            step("delete bridge", network.delete_link, self.bridge)
        step("root iptables rules", network.remove_root_rules, self.underlay.bridge)
        self.hosts, self.etcd, self.bridge = [], None, None
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        if errors:
            raise HarnessError("teardown incomplete:\n  " + "\n  ".join(errors))
        progress("testbed down")

    def copy_logs(self, dest):
        """Copy every host's log folder and etcd's log to dest (made if missing), while they
        still exist: `down` removes etcd's, and the next testbed's clean-up the hosts'."""
        dest = Path(dest)
        for host in self.hosts:
            shutil.copytree(host.log_path("x").parent, dest / host.name, dirs_exist_ok=True)
        if self.etcd:
            log = self.etcd.log_path or Path(self.etcd.data_dir) / "etcd.log"
            if log.exists():
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy2(log, dest / "etcd.log")
        return dest

    def status(self):
        """A plain dict of what is up, for humans and for `status`."""
        return {
            "state_dir": str(self.state_dir),
            "bridge": self.bridge if self.bridge and network.link_exists(self.bridge) else None,
            "etcd": self.etcd.url if self.etcd and self.etcd.pid else None,
            "hosts": [{"name": h.name, "ip": h.ip, "pid": h.pid, "alive": h.alive,
                       "docker_url": h.docker_url if h.alive else None,
                       "enter": f"nsenter -t {h.pid} -n -u -m" if h.alive else None}
                      for h in self.hosts],
        }


def cleanup_stale(state_dir=STATE_DIR, underlay=network.DEFAULT_UNDERLAY,
                  name_prefix="calico-", progress=print, keep_logs=False):
    """Remove whatever a previous (possibly crashed) run of this testbed left: the state file's
    testbed, then anything recognisable by name -- host inits by argv[0] marker, root-side veths
    by prefix, the bridge, our iptables rules for it, an etcd using our data dir. Safe when
    nothing is there. With keep_logs the hosts' log folders survive (to read after `down`)."""
    state_dir = Path(state_dir)
    bed = None
    with contextlib.suppress(Exception):
        bed = Testbed.load(state_dir)
    if bed is not None:
        underlay, name_prefix = bed.underlay, bed.name_prefix
        with contextlib.suppress(HarnessError):
            bed.down(progress=lambda *_: None)
    marker = host_marker(underlay)
    for pid, argv0 in procs.find_pids_by_argv0_prefix(marker).items():
        progress(f"killing stale host {argv0[len(marker):]} (pid {pid})")
        procs.kill_namespace_processes(pid)
        remove_container_cgroups(argv0[len(marker):])
    # A host's veth pair dies with its network namespace; these are pairs whose host is gone
    # but whose root side was never deleted (crash between the two `ip` calls).
    for link in network.list_links(network.root_veth_name(name_prefix)):
        network.delete_link(link)
    if network.link_exists(underlay.bridge):
        progress(f"deleting stale bridge {underlay.bridge}")
        network.delete_link(underlay.bridge)
    network.remove_root_rules(underlay.bridge)
    etcd_dir = str(state_dir / "etcd")
    for pid in procs.find_pids_by_argv0_prefix("etcd"):
        if any(arg.startswith(etcd_dir) for arg in procs.cmdline(pid)):
            progress(f"killing stale etcd (pid {pid})")
            procs.terminate(pid)
    shutil.rmtree(state_dir / "etcd", ignore_errors=True)
    if not keep_logs:
        shutil.rmtree(state_dir / "hosts", ignore_errors=True)
    else:
        for host_dir in (state_dir / "hosts").glob("*"):
            for sub in ("docker", "etc-docker"):
                shutil.rmtree(host_dir / sub, ignore_errors=True)


@contextlib.contextmanager
def exclusive(state_dir=STATE_DIR, timeout=600):
    """Hold the testbed lock: one test session (or `up`) at a time on this machine, since the
    bridge name and addresses are fixed."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "lock", "a+") as lock:
        procs.wait_for(lambda: _try_lock(lock), timeout=timeout,
                       what=f"the testbed lock {state_dir / 'lock'} (another session holds it)")
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _try_lock(f):
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False

"""A "host": its own network, UTS and mount namespaces held open by a long-lived process.

Everything a host runs is entered into those namespaces with `nsenter -t PID -n -u -m`. Each step
of the init script is there because dockerd or the calico agents need it; its comments say why.
"""

import glob
import os
import shutil
import signal
import subprocess
from pathlib import Path

from . import procs
from .errors import HarnessError

INIT_SCRIPT = r"""#!/bin/bash
# First process of testbed host "$1", already inside new net/uts/mount namespaces.
# With a 4th argument the host runs that Debian root (suites.py) instead of this machine's.
set -euo pipefail
name=$1 host_dir=$2 marker=$3 root=${4:-} repo=${5:-}
# The pid file is opened now: after pivot_root this machine's folders are out of sight.
exec 3>"$host_dir/init.pid.tmp"
# Nothing we mount here may propagate back to the real machine.
mount --make-rprivate /
new=""
if [ -n "$root" ]; then
  # The cached root stays read-only: each host writes into its own overlay layer.
  ov=$host_dir/overlay
  rm -rf "$ov"; mkdir -p "$ov/upper" "$ov/work" "$ov/merged"
  mount -t overlay overlay -o "lowerdir=$root,upperdir=$ov/upper,workdir=$ov/work" "$ov/merged"
  new=$ov/merged
  mount --rbind /proc "$new/proc"
  mount --rbind /dev "$new/dev"
  # A fresh sysfs shows this host's devices; dockerd needs the machine's cgroup tree under it.
  mount -t sysfs sysfs "$new/sys"
  mount --rbind /sys/fs/cgroup "$new/sys/fs/cgroup"
  # The code under test at the same path, and over its .venv the root's own venv (the root's
  # Python, with dependency wheels made for it), so `<repo>/.venv/bin/python -m calicoctl`
  # means the same inside every host whatever its suite.
  mkdir -p "$new$repo"
  mount --bind "$repo" "$new$repo"
  if [ -d "$new$repo/.venv" ]; then mount --bind "$new/opt/calico-venv" "$new$repo/.venv"; fi
  cp /etc/resolv.conf "$new/etc/resolv.conf"
else
  # A fresh sysfs so /sys/class/net shows this host's devices -- but dockerd needs the cgroup
  # tree that lives under /sys ("Devices cgroup isn't mounted"), so park it and put it back.
  cg=$(mktemp -d /tmp/calico-testbed-cgroup.XXXXXX)
  mount --rbind /sys/fs/cgroup "$cg"
  umount -l /sys
  mount -t sysfs sysfs /sys
  mount --rbind "$cg" /sys/fs/cgroup
  umount -l "$cg"
  rmdir "$cg"
fi
# Per-host daemon state, logs and docker config (/etc/docker holds key.json = the engine id).
mkdir -p "$new/var/lib/docker" "$new/var/log/calico" "$new/etc/docker"
mount --bind "$host_dir/docker" "$new/var/lib/docker"
mount --bind "$host_dir/log" "$new/var/log/calico"
mount --bind "$host_dir/etc-docker" "$new/etc/docker"
if [ -n "$root" ]; then
  # From here on the host sees only its root: nsenter -m lands in it, never on this machine's.
  cd "$new"
  mkdir -p .oldroot
  pivot_root . .oldroot
  umount -l /.oldroot
  rmdir /.oldroot
  cd /
fi
# Per-host /run: docker.sock, /run/docker/plugins (libnetwork plugin sockets), pid files.
mount -t tmpfs -o mode=755 tmpfs /run
hostname "$name"
ip link set lo up
# The pid written here is the pid of "sleep" after exec: the host's handle. A whole line in
# init.pid.tmp means the host is ready (Host._start renames it).
echo $$ >&3
exec 3>&-
# argv[0] marks the process so cleanup can find hosts of a crashed run without any state file.
exec -a "$marker$name" sleep infinity
"""

DEFAULT_MARKER = "calico-testbed:"  # argv[0] prefix of init; testbeds pass their own


def nsenter_prefix(pid):
    return ["nsenter", "-t", str(pid), "-n", "-u", "-m", "--"]


def check_host_support():
    """Return None if namespace hosts can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "namespace hosts need root"
    for tool in ("unshare", "nsenter", "ip", "bash"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(["unshare", "--net", "--uts", "--mount", "--fork", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --net --uts --mount does not work here: {probe.stderr.strip()}"
    return None


class Host:
    """One namespace host. Create with `Host.create(name, ip, host_dir)`.

    `host_dir` holds the per-host folders bound over /var/lib/docker (docker/), /var/log/calico
    (log/) and /etc/docker (etc-docker/).
    """

    def __init__(self, name, ip, host_dir, pid=None, marker=DEFAULT_MARKER, suite=None):
        self.name = name
        self.suite = suite          # None: this machine's root; else a Debian suite's (suites.py)
        self.ip = ip
        self.host_dir = Path(host_dir)
        self.pid = pid
        self.marker = marker
        self._unshare = None        # Popen of unshare when this process created the host
        self._daemons = {}          # log name -> Popen started by this process

    def __repr__(self):
        return f"Host({self.name!r}, ip={self.ip!r}, pid={self.pid})"

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(cls, name, ip, host_dir, marker=DEFAULT_MARKER, timeout=15, suite=None):
        host = cls(name, ip, host_dir, marker=marker, suite=suite)
        host._start(timeout)
        return host

    def _start(self, timeout):
        for sub in ("docker", "log", "etc-docker"):
            (self.host_dir / sub).mkdir(parents=True, exist_ok=True)
        pid_file = self.host_dir / "init.pid"
        tmp_file = self.host_dir / "init.pid.tmp"
        pid_file.unlink(missing_ok=True)
        tmp_file.unlink(missing_ok=True)
        script = self.host_dir / "init.sh"
        script.write_text(INIT_SCRIPT)
        init_log = self.host_dir / "log" / "init.log"
        root_args = []
        if self.suite is not None:
            from . import suites
            root_args = [str(suites.host_root(self.suite)), str(suites.REPO)]
        with open(init_log, "ab") as log:
            self._unshare = subprocess.Popen(
                ["unshare", "--net", "--uts", "--mount", "--fork",
                 "bash", str(script), self.name, str(self.host_dir), self.marker, *root_args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)

        def ready():
            if self._unshare.poll() is not None:
                raise HarnessError(f"host {self.name} init exited {self._unshare.returncode}: "
                                   f"{init_log.read_text()[-2000:]}")
            text = tmp_file.read_text() if tmp_file.exists() else ""
            return text.endswith("\n") and text.strip()

        self.pid = int(procs.wait_for(ready, timeout=timeout, what=f"host {self.name} init"))
        tmp_file.rename(pid_file)

    @property
    def alive(self):
        return self.pid is not None and procs.cmdline(self.pid)[:1] == [self.marker + self.name]

    def stop(self, remove_dirs=True, keep_logs=True):
        """Kill everything running in the host, then drop its folders. Safe to call twice."""
        if self.alive:
            procs.kill_namespace_processes(self.pid)
        for proc in [*self._daemons.values(), self._unshare]:
            if proc is not None:
                proc.poll()           # reap our own children so they do not linger as zombies
        self._daemons.clear()
        self.pid = None
        remove_container_cgroups(self.name)
        if remove_dirs:
            for sub in ("docker", "etc-docker", "overlay"):
                shutil.rmtree(self.host_dir / sub, ignore_errors=True)
            if not keep_logs:
                shutil.rmtree(self.host_dir, ignore_errors=True)

    # ---- running things inside -------------------------------------------------------------

    def _argv(self, cmd):
        if self.pid is None:
            raise HarnessError(f"host {self.name} is not running")
        return nsenter_prefix(self.pid) + (["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd))

    @staticmethod
    def _env(env):
        return None if env is None else {**os.environ, **env}

    def run(self, cmd, check=True, env=None, timeout=60, input=None):
        """Run `cmd` (argv list, or a string for sh -c) inside the host; CompletedProcess."""
        return procs.run(self._argv(cmd), check=check, env=self._env(env), timeout=timeout,
                         input=input)

    def popen(self, cmd, log_name, env=None):
        """Start a long-running daemon inside the host, output appended to
        <host_dir>/log/<log_name>.log (= /var/log/calico/<log_name>.log inside the host)."""
        log_path = self.log_path(log_name)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(self._argv(cmd), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=self._env(env),
                                    start_new_session=True)
        self._daemons[log_name] = proc
        return proc

    def log_path(self, log_name):
        return self.host_dir / "log" / f"{log_name}.log"

    def root_path(self, path):
        """A path inside the host's mount namespace, reachable from the root namespace."""
        return f"/proc/{self.pid}/root{path}"

    # ---- docker ----------------------------------------------------------------------------

    @property
    def docker_url(self):
        # /run is a per-host tmpfs, so the socket is reached through the init's root link.
        return "unix://" + self.root_path("/run/docker.sock")

    def docker_client(self, timeout=60):
        import docker  # imported late: the harness's CLI and skips work without docker-py
        return docker.DockerClient(base_url=self.docker_url, timeout=timeout)

    def docker(self, *args, check=True, timeout=120, input=None):
        """Debian's docker 20.10 client inside the host (/usr/local/bin/docker is a newer CLI)."""
        return self.run(["/usr/bin/docker", *args], check=check, timeout=timeout, input=input)

    def start_dockerd(self, storage_driver=None, extra_args=(), timeout=60):
        """Start dockerd with per-host state and wait until its API answers.

        iptables management stays on (docker's default), as on a real Calico host. Containers'
        cgroups go under calico-testbed/<host> so they can be found and removed on teardown.
        """
        driver = storage_driver or pick_storage_driver(self.host_dir / "docker")
        cmd = ["dockerd", "--host", "unix:///run/docker.sock", "--storage-driver", driver,
               "--iptables=true", "--cgroup-parent", f"/calico-testbed/{self.name}",
               *extra_args]
        proc = self.popen(cmd, "dockerd")

        def answers():
            if proc.poll() is not None:
                raise HarnessError(f"dockerd on {self.name} exited {proc.returncode}: "
                                   f"{self.log_path('dockerd').read_text()[-2000:]}")
            return self.docker("version", "--format", "{{.Server.Version}}",
                               check=False, timeout=10).returncode == 0

        procs.wait_for(answers, timeout=timeout, what=f"dockerd on {self.name}")
        return driver

    def engine_version(self):
        """The Docker engine's version, as its API reports it."""
        return self.docker("version", "--format", "{{.Server.Version}}", timeout=30).stdout.strip()

    def stop_dockerd(self, timeout=30):
        """Stop dockerd gracefully (it stops its containers and its containerd)."""
        pid_file = Path(self.root_path("/run/docker.pid"))
        if pid_file.exists():
            procs.terminate(int(pid_file.read_text()), timeout=timeout)
        proc = self._daemons.pop("dockerd", None)
        if proc is not None:
            proc.wait(timeout=5)

    # ---- state for other processes ---------------------------------------------------------

    def to_state(self):
        return {"name": self.name, "ip": self.ip, "host_dir": str(self.host_dir),
                "pid": self.pid, "marker": self.marker, "suite": self.suite}

    @classmethod
    def from_state(cls, state):
        host = cls(state["name"], state["ip"], state["host_dir"], state.get("pid"),
                   state.get("marker", DEFAULT_MARKER), state.get("suite"))
        if not host.alive:
            host.pid = None
        return host


def pick_storage_driver(data_dir):
    """overlay2 where the kernel has it and the data dir is not itself on overlayfs (overlay on
    overlay fails); vfs otherwise (slow and large, but works anywhere)."""
    with open("/proc/filesystems") as f:
        has_overlay = any(line.split()[-1] == "overlay" for line in f if line.strip())
    fstype = procs.run(["stat", "-f", "-c", "%T", str(data_dir)], check=False).stdout.strip()
    return "overlay2" if has_overlay and fstype != "overlayfs" else "vfs"


CGROUP_PARENT = "calico-testbed"


def _container_cgroup_dirs(host_name):
    """The host's container cgroup folders in every mounted hierarchy (v1 and v2 layouts)."""
    return sorted(set(glob.glob(f"/sys/fs/cgroup/*/{CGROUP_PARENT}/{host_name}") +
                      glob.glob(f"/sys/fs/cgroup/{CGROUP_PARENT}/{host_name}")))


def remove_container_cgroups(host_name):
    """Kill anything still in the host's container cgroups, then remove the folders, deepest
    first. dockerd removes them itself when it stops containers, but not when it is killed."""
    for top in _container_cgroup_dirs(host_name):
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            try:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    for pid in f.read().split():
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except ProcessLookupError:
                            pass
            except OSError:
                pass
            try:
                procs.wait_for(lambda d=dirpath: _rmdir(d), timeout=5,
                               what=f"cgroup {dirpath} to empty")
            except Exception:  # noqa: BLE001 - a leaked empty cgroup must not fail teardown
                pass
        try:
            os.rmdir(os.path.dirname(top))   # calico-testbed/ itself, once no host uses it
        except OSError:
            pass


def _rmdir(path):
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    return True

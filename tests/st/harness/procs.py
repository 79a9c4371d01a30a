"""Running commands, polling for conditions, and finding/killing processes by namespace."""

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from .errors import CommandError, HarnessError

NAMESPACE_TYPES = ("mnt", "net", "uts")


def run(cmd, check=True, env=None, timeout=60, input=None, cwd=None):
    """Run `cmd` (a list) to completion with text output; raise CommandError on failure."""
    try:
        result = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout,
            input=input, cwd=cwd, stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(cmd, "timeout", _text(exc.stdout), _text(exc.stderr) +
                           f"\n(timed out after {timeout}s)", input) from None
    if check and result.returncode != 0:
        raise CommandError(cmd, result.returncode, result.stdout, result.stderr, input)
    return result


def _text(data):
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def on_each(items, fn):
    """[fn(item) for item in items], all at once in threads (independent hosts, each doing what
    its own operator would); once every one has finished, the first exception is raised."""
    items = list(items)
    with ThreadPoolExecutor(max_workers=len(items) or 1) as pool:
        return list(pool.map(fn, items))


def wait_for(predicate, timeout=30.0, interval=0.05, what="condition", retry_on=(Exception,),
             raise_on_timeout=True):
    """Poll `predicate` until it returns a truthy value and return that value.

    Exceptions of the types in `retry_on` count as "not yet" (a daemon that is still starting
    refuses connections); the last one is reported if time runs out. Any other exception
    propagates at once: pass `retry_on=()` where a check that cannot run must fail the test now
    rather than be retried until the timeout.

    On timeout a HarnessError names `what`. With `raise_on_timeout=False` the predicate's last,
    falsy, value is returned instead, for callers that report what is still wrong themselves
    (it still raises if that last call failed, since there is no value to return).

    The interval grows to at most 0.5 s so short waits are quick and long ones do not spin.
    """
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        failed = False
        try:
            value = predicate()
            if value:
                return value
        except retry_on as exc:
            last_exc, failed = exc, True
        if time.monotonic() >= deadline:
            if not raise_on_timeout and not failed:
                return value
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise HarnessError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)


def is_alive(pid):
    """True if `pid` exists and is not a zombie (a zombie has already let go of its namespaces)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state follows the parenthesised command name, which may itself contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def cmdline(pid):
    """argv of `pid` as a list ([] if it is gone or a kernel thread)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def namespaces(pid):
    """{type: 'net:[inode]'} for the namespace types the harness creates."""
    result = {}
    for ns in NAMESPACE_TYPES:
        try:
            result[ns] = os.readlink(f"/proc/{pid}/ns/{ns}")
        except OSError:
            pass
    return result


def _all_pids():
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _parent(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def pids_in_namespaces_of(init_pid):
    """Every live process sharing a mount, network or UTS namespace with `init_pid`, plus
    all their descendants (container processes live in their own namespaces but are children of
    containerd shims, which share the host's mount namespace).

    Namespaces that `init_pid` shares with this process are ignored: if the pid was reused by an
    ordinary process after a crash, we must never conclude that the whole machine is "the host".
    """
    own = namespaces("self")
    targets = {v for k, v in namespaces(init_pid).items() if own.get(k) != v}
    if not targets:
        return set()
    me = os.getpid()
    parents = {}
    found = set()
    for pid in _all_pids():
        if pid == me or not is_alive(pid):
            continue
        parents[pid] = _parent(pid)
        if targets & set(namespaces(pid).values()):
            found.add(pid)
    # Close over descendants.
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if pid not in found and ppid in found:
                found.add(pid)
                changed = True
    found.discard(me)
    return found


def kill_namespace_processes(init_pid, timeout=20.0):
    """SIGKILL everything in the namespaces held open by `init_pid` (including it) until none is
    left. Repeats the scan because a dying daemon may have forked meanwhile."""
    def remaining():
        pids = pids_in_namespaces_of(init_pid) if is_alive(init_pid) else set()
        if is_alive(init_pid):
            pids.add(init_pid)
        return pids

    deadline = time.monotonic() + timeout
    while True:
        pids = remaining()
        if not pids:
            return
        # Kill the init last: while it lives, its namespaces identify the rest.
        for pid in sorted(pids - {init_pid}) + ([init_pid] if init_pid in pids else []):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if time.monotonic() > deadline:
            raise HarnessError(f"processes {sorted(pids)} in the namespaces of {init_pid} "
                               f"survived SIGKILL for {timeout}s")
        time.sleep(0.05)


def _pid_namespace(pid):
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def find_pids_by_argv0_prefix(prefix):
    """{pid: argv0} for live processes whose argv[0] starts with `prefix` (the init marker).

    Only processes of our own PID namespace: a whole machine in a child PID namespace (a fresh
    Debian root under tools/fresh-root-check) runs its own testbed with the same names, and a
    cleanup here must never kill it."""
    found = {}
    ours = _pid_namespace("self")
    for pid in _all_pids():
        argv = cmdline(pid)
        if argv and argv[0].startswith(prefix) and is_alive(pid) \
                and _pid_namespace(pid) == ours:
            found[pid] = argv[0]
    return found


def terminate(pid, timeout=10.0):
    """SIGTERM, wait, then SIGKILL a single process. Returns once it is gone (or a zombie)."""
    if not is_alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not is_alive(pid), timeout=timeout, what=f"pid {pid} to exit")
    except HarnessError:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        wait_for(lambda: not is_alive(pid), timeout=5, what=f"pid {pid} to die")
    except ProcessLookupError:
        pass

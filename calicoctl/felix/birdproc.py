"""The BIRD daemons the agent runs, reconfigured with `birdc configure` when the config changes.

BIRD 1.x runs one daemon per family: BirdProcess(4) is bird, BirdProcess(6) is bird6, each with
its own config, control socket and pid file.  BIRD 2 has no bird6: BirdProcess(4) runs the one
bird that serves both families (bird.cfg, bird.ctl), and the agent gives BirdProcess(6) no config
(bird.render_config), which only stops a bird6 left from a BIRD 1.x installation.  Which BIRD
this is, `bird --version` says; each process asks once, on its first use.

BIRD is started in its own session so that it outlives an agent restart: the next agent finds it
through its control socket and adopts it, so BGP sessions and learnt routes survive (restarting
the agent under a running ping loses nothing).  stop() ends it for good.
"""

import logging
import os
import signal
import subprocess
import time

from calicoctl.errors import DataplaneError
from calicoctl.felix.bird import bird_version
from calicoctl.dataplane.commands import run_command

log = logging.getLogger(__name__)

DEFAULT_RUN_DIR = "/var/run/calico"
# How long an old BIRD gets to exit before the new one is started in its place.
STOP_TIMEOUT = 10.0


def detect_version(binary="bird"):
    """(major, minor, ...) of the installed BIRD, from `bird --version` (printed on stderr);
    DataplaneError when there is no BIRD or it names no version."""
    cmd = [binary, "--version"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataplaneError(cmd, -1, "", str(exc))
    found = bird_version(proc.stdout + proc.stderr)
    if proc.returncode != 0 or found is None:
        raise DataplaneError(cmd, proc.returncode, proc.stdout, proc.stderr)
    return found


class BirdProcess:
    def __init__(self, version, run_dir=DEFAULT_RUN_DIR, runner=run_command,
                 detect=detect_version):
        self.version = version
        suffix = "" if version == 4 else "6"
        self.binary = "bird" + suffix
        self.birdc = "birdc" + suffix
        self.conf = os.path.join(run_dir, "bird%s.cfg" % suffix)
        self.ctl = os.path.join(run_dir, "bird%s.ctl" % suffix)
        self.pid_file = os.path.join(run_dir, "bird%s.pid" % suffix)
        self.log_file = os.path.join(run_dir, "bird%s.log" % suffix)
        self.run_dir = run_dir
        self.run = runner
        self.detect = detect
        self.found = None         # (major, minor, ...) of the installed BIRD, once asked
        self.text = None
        self.proc = None          # the BIRD we started (None: adopted or not running)

    @property
    def major(self):
        """The installed BIRD's major version (1 or 2), asked of `bird` once: BIRD 2's
        `bird` is the binary for both families."""
        if self.found is None:
            self.found = self.detect()
            log.info("BIRD %s found", ".".join(map(str, self.found)))
        return self.found[0]

    def _status(self):
        """`birdc show status` of the BIRD on our socket, or None when none answers."""
        if self.proc is not None and self.proc.poll() is not None:
            self.proc = None      # reaped: it exited
        try:
            return self.run([self.birdc, "-s", self.ctl, "show", "status"])
        except DataplaneError:
            return None

    def answers(self):
        return self._status() is not None

    def pid(self):
        """The pid in our pid file while it is still a BIRD (a stale file may name a pid
        the kernel has since given to something else, which must never be signalled)."""
        try:
            with open(self.pid_file) as f:
                pid = int(f.read().strip())
            with open("/proc/%d/comm" % pid) as f:
                return pid if f.read().startswith("bird") else None
        except (OSError, ValueError):
            return None

    def configure(self, text):
        """Write text as the config; start BIRD or make it reread.  None stops it."""
        if text is None:
            self.stop()
            return
        if text == self.text and self.answers():
            return
        major = self.major
        os.makedirs(self.run_dir, exist_ok=True)
        tmp = self.conf + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        # Check before replacing: a config BIRD rejects must never replace a working one.
        self.run([self.binary, "-p", "-c", tmp])
        os.replace(tmp, self.conf)
        status = self._status()
        if self.proc is not None and status is None:
            self.text = None      # still starting: reread on the next call
            return
        running = bird_version(status) if status is not None else None
        if running is not None and running[0] != major:
            # Adopted across an upgrade (Debian 12's BIRD 1.6 still running, BIRD 2 installed):
            # the old daemon cannot read the new syntax, so it makes way for a new one.
            log.warning("%s on %s is BIRD %d but BIRD %d is installed: restarting it",
                        self.binary, self.ctl, running[0], major)
            self._stop_and_wait()
            status = None
        if status is not None:
            out = self.run([self.birdc, "-s", self.ctl, "configure"])
            log.info("%s reconfigured: %s", self.binary, out.strip().splitlines()[-1:])
        else:
            self._start()
        self.text = text

    def _start(self):
        log.info("Starting %s", self.binary)
        with open(self.log_file, "ab") as logf:
            self.proc = subprocess.Popen([self.binary, "-f", "-c", self.conf, "-s", self.ctl,
                                          "-P", self.pid_file], stdout=logf, stderr=logf,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self):
        pid = self.pid()
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        self.text = None

    def _stop_and_wait(self):
        self.stop()
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.answers():
            if time.monotonic() > deadline:
                raise DataplaneError([self.birdc, "-s", self.ctl, "show", "status"], 0, "",
                                     "the old BIRD still answers %.0f s after SIGTERM"
                                     % STOP_TIMEOUT)
            time.sleep(0.1)

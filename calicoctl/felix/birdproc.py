"""BIRD and BIRD6 run by the agent, reconfigured with `birdc configure` when the config changes.

BIRD is started in its own session so that it outlives an agent restart: the next agent finds it
through its control socket and adopts it, so BGP sessions and learnt routes survive (restarting
the agent under a running ping loses nothing).  stop() ends it for good.
"""

import logging
import os
import signal
import subprocess

from calicoctl.errors import DataplaneError
from calicoctl.felix.executor import run_command

log = logging.getLogger(__name__)

DEFAULT_RUN_DIR = "/var/run/calico"


class BirdProcess:
    def __init__(self, version, run_dir=DEFAULT_RUN_DIR, runner=run_command):
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
        self.text = None
        self.proc = None          # the BIRD we started (None: adopted or not running)

    def answers(self):
        if self.proc is not None and self.proc.poll() is not None:
            self.proc = None      # reaped: it exited
        try:
            self.run([self.birdc, "-s", self.ctl, "show", "status"])
            return True
        except DataplaneError:
            return False

    def pid(self):
        try:
            with open(self.pid_file) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def configure(self, text):
        """Write text as the config; start BIRD or make it reread.  None stops it."""
        if text is None:
            self.stop()
            return
        if text == self.text and self.answers():
            return
        os.makedirs(self.run_dir, exist_ok=True)
        tmp = self.conf + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        # Check before replacing: a config BIRD rejects must never replace a working one.
        self.run([self.binary, "-p", "-c", tmp])
        os.replace(tmp, self.conf)
        if self.proc is not None and not self.answers():
            self.text = None      # still starting: reread on the next call
            return
        if self.answers():
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

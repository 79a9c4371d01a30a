"""Real BIRDs for the unit tier: every major version this machine can run, and scratch network
namespaces to run them in.

real_birds() gives this machine's own BIRD (1.6 on Debian 12, BIRD 2 on Debian 13) and the other
major version from a cached Debian root of the other suite (tests/st/harness/rootfs.py, the same
root the system tests' hosts of that suite use), run there by chroot.  So the tests check both
majors on either distribution.  A BIRD that cannot be found or built raises: tests that need
BIRD fail, they never skip.
"""

import functools
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from calicoctl.felix.bird import bird_version
from tests.st.harness import rootfs, suites
from tests.st.harness.procs import run

# The suite whose root gives the major version this machine lacks: Debian 13 has BIRD 2.17
# (bird2), Debian 12 BIRD 1.6.8 (bird).
OTHER_SUITE = {1: "trixie", 2: "bookworm"}


class BirdNotFound(Exception):
    """A BIRD the tests need is not installed and could not be built."""


@dataclass(frozen=True)
class RealBird:
    version: tuple        # (2, 17, 6)
    root: Path = None     # None: this machine's own; else a suite root entered by chroot

    @property
    def major(self):
        return self.version[0]

    def __str__(self):
        return "BIRD %s (%s)" % (".".join(map(str, self.version)),
                                 "this machine" if self.root is None else self.root.name)

    def argv(self, *cmd):
        """cmd as run for this BIRD (paths in it as the BIRD sees them, see scratch())."""
        return (["chroot", str(self.root)] if self.root is not None else []) + list(cmd)

    def daemons(self):
        """{4/6: (daemon, client)} the agent runs: BIRD 1.x one per family, BIRD 2 one."""
        if self.major < 2:
            return {4: ("bird", "birdc"), 6: ("bird6", "birdc6")}
        return {4: ("bird", "birdc")}

    @contextmanager
    def scratch(self):
        """A fresh directory this process and the BIRD both see: (path here, path for BIRD)."""
        base = self.root / "tmp" if self.root is not None else Path(tempfile.gettempdir())
        here = Path(tempfile.mkdtemp(prefix="calico-bird-", dir=base))
        try:
            yield here, ("/tmp/%s" % here.name if self.root is not None else str(here))
        finally:
            shutil.rmtree(here, ignore_errors=True)

    def check(self, text, daemon="bird"):
        """`bird -p -c` (parse only) of text: the CompletedProcess."""
        with self.scratch() as (here, inside):
            (here / "bird.conf").write_text(text)
            return subprocess.run(self.argv(daemon, "-p", "-c", inside + "/bird.conf"),
                                  capture_output=True, text=True, timeout=60)


def _version(argv, where):
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise BirdNotFound("no BIRD %s: %s" % (where, exc)) from None
    found = bird_version(proc.stdout + proc.stderr)
    if proc.returncode != 0 or found is None:
        raise BirdNotFound("no BIRD %s: %r exited %s: %s" % (
            where, argv, proc.returncode, (proc.stdout + proc.stderr).strip()))
    return found


@functools.lru_cache(maxsize=None)
def real_birds():
    """[this machine's BIRD, the other major version's] (built once, then cached on disk)."""
    if shutil.which("bird") is None:
        raise BirdNotFound("this machine has no bird (apt-get install bird, or bird2 on "
                           "Debian 13)")
    host = RealBird(_version(["bird", "--version"], "on this machine"))
    suite = OTHER_SUITE.get(host.major)
    if suite is None:
        raise BirdNotFound("no suite known with a BIRD other than %s" % host)
    try:
        # The system tests' host root of that suite: usually built already, and one root
        # fewer in the cache than a BIRD-only one.
        root = rootfs.root_dir(suite, suites.HOST_PACKAGES[suite])
    except Exception as exc:  # noqa: BLE001 - whatever stopped the build is the message
        raise BirdNotFound("cannot build the %s root for its BIRD: %s" % (suite, exc)) from exc
    other = RealBird(_version(["chroot", str(root), "bird", "--version"], "in " + str(root)),
                     root)
    if other.major == host.major:
        raise BirdNotFound("%s and %s are the same major version" % (host, other))
    return [host, other]


# --- scratch network namespaces ---------------------------------------------------------------

class Namespace:
    """A named network namespace (`ip netns`), deleted by close()."""

    def __init__(self, name):
        self.name = name
        run(["ip", "netns", "add", name])
        self.ip("link", "set", "lo", "up")
        # Addresses usable at once: BIRD cannot bind a source address still in IPv6 DAD.
        self.run(["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0",
                  "net.ipv6.conf.all.accept_dad=0"])

    def run(self, cmd, **kw):
        return run(["ip", "netns", "exec", self.name] + list(cmd), **kw)

    def ip(self, *args):
        return self.run(["ip"] + list(args)).stdout

    def close(self):
        run(["ip", "netns", "del", self.name], check=False)


def veth(a, b, name_a, name_b):
    """A veth pair joining namespaces a and b."""
    run(["ip", "link", "add", name_a, "netns", a.name, "type", "veth", "peer", "name", name_b,
         "netns", b.name])
    a.ip("link", "set", name_a, "up")
    b.ip("link", "set", name_b, "up")


class Daemon:
    """One BIRD daemon of `bird` running in namespace ns, with its config, socket and log in a
    scratch directory the BIRD sees."""

    def __init__(self, bird, ns, daemon, client, text, here, inside):
        self.bird, self.ns, self.client = bird, ns, client
        self.here, self.inside = here, inside
        self.name = daemon
        (here / ("%s.conf" % daemon)).write_text(text)
        self.ctl = "%s/%s.ctl" % (inside, daemon)
        self.log = here / ("%s.log" % daemon)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", ns.name] + bird.argv(
                    daemon, "-f", "-c", "%s/%s.conf" % (inside, daemon), "-s", self.ctl),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def birdc(self, *command):
        """birdc's output for command; raises when the daemon does not answer."""
        return run(self.bird.argv(self.client, "-s", self.ctl, *command), timeout=30).stdout

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_text(self):
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def ns_name(tag):
    """A namespace name unique to this test process."""
    return "cbird%d%s" % (os.getpid(), tag)

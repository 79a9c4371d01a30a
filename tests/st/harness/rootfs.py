"""Debian root file systems made by debootstrap, cached by suite and package list.

Two users: the node images' base (images/build.py) and namespace hosts that run another suite's
Docker engine and BIRD (suites.py). A root is built once into CACHE_DIR/roots/<suite>-<key> and
reused while its suite and package list stay the same; nothing requires the cache to exist.
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import procs
from .errors import HarnessError

CACHE_DIR = Path(os.environ.get("CALICO_IMAGE_CACHE", "/var/cache/calico-images"))
ROOTS_DIR = CACHE_DIR / "roots"
# A root nobody asked for in this long is taken to be superseded (its package list changed).
UNUSED_DAYS = 14


@dataclass(frozen=True)
class Suite:
    """A Debian suite debootstrap can build here."""
    name: str
    # debootstrap's script for the suite when it has none of that name (Debian 12's debootstrap
    # predates forky; testing uses the same script as sid).
    script: str = None


SUITES = {
    "bookworm": Suite("bookworm"),
    "trixie": Suite("trixie"),
    "forky": Suite("forky", script="sid"),
}


def say(msg):
    print(f"[rootfs] {msg}", file=sys.stderr, flush=True)


def debian_mirror():
    """The Debian mirror apt on this machine uses (debootstrap must reach the same one)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in path.read_text().splitlines():
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    if uri.rstrip("/").endswith("/debian"):
                        return uri
    sources = Path("/etc/apt/sources.list")
    if sources.exists():
        for line in sources.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[1].rstrip("/").endswith("/debian"):
                return parts[1]
    return "http://deb.debian.org/debian"


def root_key(suite, packages):
    return hashlib.sha256(" ".join([suite, *sorted(packages)]).encode()).hexdigest()[:12]


def root_dir(suite, packages, progress=say):
    """A cached root of `suite` with `packages`, built by debootstrap when missing."""
    if suite not in SUITES:
        raise HarnessError(f"unknown Debian suite {suite!r} (known: {', '.join(SUITES)})")
    target = ROOTS_DIR / f"{suite}-{root_key(suite, packages)}"
    if (target / ".complete").exists():
        _mark_used(target)
        return target
    ROOTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(ROOTS_DIR / f"{suite}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)    # two sessions building the same root wait, once
        if (target / ".complete").exists():
            _mark_used(target)
            return target
        _build(SUITES[suite], packages, target, progress)
    return target


def _mark_used(root):
    """Stamp the root as used now: pruning only takes roots nobody has asked for in a while."""
    os.utime(root / ".complete")


def _build(suite, packages, target, progress):
    if shutil.which("debootstrap") is None:
        raise HarnessError("debootstrap is not installed (apt-get install debootstrap)")
    shutil.rmtree(target, ignore_errors=True)
    mirror = debian_mirror()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=ROOTS_DIR, prefix=f".{suite.name}-") as tmp:
        root = Path(tmp) / "root"
        progress(f"debootstrap {suite.name} from {mirror} (a minute or two)")
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(sorted(packages))}",
               suite.name, str(root), mirror]
        if suite.script:
            cmd.append(f"/usr/share/debootstrap/scripts/{suite.script}")
        _stream(cmd, prefix=f"debootstrap {suite.name}", progress=progress)
        # Package caches are dead weight: nothing runs apt in these roots.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / junk).glob("*"):
                if entry.is_file():
                    entry.unlink()
        (root / ".complete").write_text(f"{suite.name} {' '.join(sorted(packages))}\n")
        root.rename(target)
    progress(f"root {target} in {time.monotonic() - t0:.0f}s")
    _prune(suite.name, keep=target)


def _prune(suite_name, keep):
    """Drop roots of the suite (and their tars) unused for UNUSED_DAYS. Not simply every other
    package list: two users (node image base, suite hosts) keep different lists of one suite at
    once, and a host may be running on its root right now."""
    cutoff = time.time() - UNUSED_DAYS * 86400
    for old in ROOTS_DIR.glob(f"{suite_name}-*"):
        if old == keep or not old.is_dir():
            continue
        stamp = old / ".complete"
        if stamp.exists() and stamp.stat().st_mtime > cutoff:
            continue
        shutil.rmtree(old, ignore_errors=True)
        old.with_name(old.name + ".tar").unlink(missing_ok=True)


def root_tarball(suite, packages, progress=say):
    """The cached root as a tar (for `docker import`), made once per root."""
    root = root_dir(suite, packages, progress)
    tarball = root.with_name(root.name + ".tar")
    if not tarball.exists():
        part = tarball.with_name(tarball.name + ".part")
        # /dev, /proc and /sys contents come from the container runtime, never from the image.
        procs.run(["tar", "-C", str(root), "--numeric-owner", "--exclude=./dev/*",
                   "--exclude=./proc/*", "--exclude=./sys/*", "--exclude=./.complete",
                   "-cf", str(part), "."], timeout=600)
        part.rename(tarball)
    return tarball


def python_version(root):
    """'3.13' for a root whose python3 is 3.13 (read from the files, nothing is run)."""
    target = os.readlink(root / "usr" / "bin" / "python3") if \
        (root / "usr" / "bin" / "python3").is_symlink() else ""
    if target.startswith("python3."):
        return target[len("python"):]
    raise HarnessError(f"{root} has no python3 symlink to tell its Python version")


def _stream(cmd, prefix, progress):
    """Run cmd showing a progress line every few seconds instead of every line it prints."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail, last = [], 0.0
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-40:]
        if time.monotonic() - last > 10:
            progress(f"  {prefix}: {line.strip()}")
            last = time.monotonic()
    if proc.wait() != 0:
        raise HarnessError(f"{prefix} failed ({proc.returncode}):\n" + "\n".join(tail))

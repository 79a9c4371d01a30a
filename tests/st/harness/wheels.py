"""Wheels of calicoctl's dependencies for the Python of another root (a node image, a suite host).

The machine that builds may run another Python than the root that installs (Debian 12's 3.11
beside Debian 13's 3.13), so compiled wheels must be chosen for the target's version, never for
the builder's. Dependencies are resolved once with this machine's pip; pure-Python wheels are
used as they are, and every compiled one is fetched again for the target's CPython. Everything
lands in a cache under CACHE_DIR/wheels and is reused offline afterwards.
"""

import platform
import re
import shutil
import sys
import tomllib
from pathlib import Path

from . import procs
from .errors import HarnessError
from .rootfs import CACHE_DIR

REPO = Path(__file__).resolve().parents[3]
WHEEL_CACHE = CACHE_DIR / "wheels"
# A wheel's file name: name-version(-build)?-python-abi-platform.whl
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-(?P<py>[^-]+)-(?P<abi>[^-]+)"
                    r"-(?P<plat>[^-]+)\.whl$")


def _pip(*args, env=None):
    return procs.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                     timeout=900, env=env)


def project_dependencies(repo=REPO):
    pyproject = repo / "pyproject.toml"
    if not pyproject.exists():
        raise HarnessError(f"{pyproject} is missing: nothing to build calicoctl from")
    return tomllib.loads(pyproject.read_text())["project"].get("dependencies", [])


def _resolve_here(requirements, dest):
    """Every dependency, transitively, as wheels for this machine's Python (offline first)."""
    source = WHEEL_CACHE / "source"
    source.mkdir(parents=True, exist_ok=True)
    offline = ["--no-index", "--find-links", str(source)]
    try:
        _pip("wheel", "-q", *offline, "-w", str(dest), "-r", str(requirements))
    except HarnessError:
        _pip("wheel", "-q", "-w", str(source), "-r", str(requirements))
        # An isolated build of calicoctl's own wheel needs its build backend offline too.
        _pip("download", "-q", "-d", str(source), "setuptools>=64", "wheel")
        _pip("wheel", "-q", *offline, "-w", str(dest), "-r", str(requirements))


def _is_pure(match):
    return match["abi"] == "none" and match["plat"] == "any"


def _fits(match, cp_tag):
    """A compiled wheel this machine resolved that the target's CPython can install as it is:
    built for exactly that CPython, or for the stable ABI of a version no newer than it (a
    cp312-abi3 wheel resolved by a 3.13 builder does not load in Debian 12's 3.11)."""
    pys = match["py"].split(".")
    if cp_tag in pys:
        return True
    return match["abi"] == "abi3" and any(
        p.startswith("cp") and p[2:].isdigit() and int(p[2:]) <= int(cp_tag[2:]) for p in pys)


def _fetch_for(name, version, python_version, dest):
    cache = WHEEL_CACHE / f"cp{python_version.replace('.', '')}"
    cache.mkdir(parents=True, exist_ok=True)
    arch = platform.machine()
    platforms = [f"manylinux_2_{n}_{arch}" for n in (17, 28, 34)] + [f"manylinux2014_{arch}"]
    common = ["--no-deps", "--only-binary=:all:", "--python-version", python_version,
              "--implementation", "cp", *[a for p in platforms for a in ("--platform", p)]]
    spec = f"{name}=={version}"
    try:
        _pip("download", "-q", "--no-index", "--find-links", str(cache), *common,
             "-d", str(dest), spec)
    except HarnessError:
        _pip("download", "-q", *common, "-d", str(cache), spec)
        _pip("download", "-q", "--no-index", "--find-links", str(cache), *common,
             "-d", str(dest), spec)


def dependency_wheels(python_version, dest, repo=REPO):
    """Fill `dest` (emptied first) with wheels of every dependency for CPython `python_version`
    ('3.13'), plus requirements.txt naming the project's direct dependencies."""
    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    requirements = dest / "requirements.txt"
    requirements.write_text("\n".join(project_dependencies(repo)) + "\n")
    here = dest / ".here"
    _resolve_here(requirements, here)
    cp_tag = "cp" + python_version.replace(".", "")
    for wheel in sorted(here.glob("*.whl")):
        match = _WHEEL.match(wheel.name)
        if match is None:
            raise HarnessError(f"cannot read the wheel file name {wheel.name}")
        if _is_pure(match) or _fits(match, cp_tag):
            shutil.copy2(wheel, dest)
        else:
            _fetch_for(match["name"], match["version"], python_version, dest)
    shutil.rmtree(here)
    return dest

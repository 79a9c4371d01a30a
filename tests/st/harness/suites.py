"""Docker engines and BIRDs of other Debian suites, for namespace hosts on one machine.

A host may run its own root: a cached debootstrap root of a suite (rootfs.py) with that suite's
docker.io and BIRD, entered by pivot_root in the host's mount namespace (hosts.py). The same
harness then drives another engine: Debian 12 gives Docker 20.10 and BIRD 1.6, Debian 13 Docker
26.1 and BIRD 2.17, Debian testing Docker 28.5 and BIRD 2. calicoctl runs inside such a host from
a venv in the root (the root's own Python, dependency wheels made for it) whose calicoctl is this
repository, bound in at the same path, so tests always run the code under test.
"""

import os
from pathlib import Path

from . import procs, rootfs, wheels
from .errors import HarnessError

REPO = wheels.REPO
VENV = "/opt/calico-venv"       # inside a suite root

_COMMON = ["iptables", "ipset", "iproute2", "procps", "kmod", "psmisc", "busybox-static",
           "python3", "python3-venv", "ca-certificates"]
HOST_PACKAGES = {
    "bookworm": ["docker.io", "bird", *_COMMON],
    # From Debian 13 on, docker.io only recommends docker-cli, which holds /usr/bin/docker.
    "trixie": ["docker.io", "docker-cli", "bird2", *_COMMON],
    "forky": ["docker.io", "docker-cli", "bird2", *_COMMON],
}

# What a test or the demo asks for: an engine by its suite, or "host" for this machine's own.
ENGINE_SUITES = ("host", "bookworm", "trixie", "forky")
# The node images' BIRD goes with the engine's era: BIRD 1.6 (Debian 12's) beside Docker 20.10
# from Debian 12, BIRD 2 (the images' default, Debian 13's) everywhere else.
NODE_IMAGE_SUITES = {"bookworm": "bookworm"}
DEFAULT_NODE_IMAGE_SUITE = "trixie"


def node_image_suite(engine):
    return NODE_IMAGE_SUITES.get(engine, DEFAULT_NODE_IMAGE_SUITE)


# etcd goes with the engine's era too.  A Debian 13 or testing user's etcd-server (3.5) serves
# v3 alone unless told otherwise, so modules on those engines run calicoctl on etcd's v3 API;
# on this machine's own engine and Debian 12's, etcd also serves v2, where existing Calico data
# lives.  CALICO_ST_ETCD_API (etcd_server.py) overrides this for every module.
V3_ONLY_SUITES = ("trixie", "forky")


def etcd_enable_v2(suite):
    """enable_v2 for the testbed etcd beside hosts of `suite` (None: the harness default)."""
    if os.environ.get("CALICO_ST_ETCD_API", "").strip():
        return None
    return False if suite in V3_ONLY_SUITES else None


def say(msg):
    rootfs.say(msg)


def host_root(suite, progress=say):
    """The cached root for a host of `suite`, with calicoctl's venv in it, built when missing."""
    if suite not in HOST_PACKAGES:
        raise HarnessError(f"no host packages known for suite {suite!r} "
                           f"(known: {', '.join(HOST_PACKAGES)})")
    root = rootfs.root_dir(suite, HOST_PACKAGES[suite], progress)
    _ensure_venv(root, progress)
    return root


def _ensure_venv(root, progress):
    """A venv of the root's own Python holding calicoctl's dependencies, and a .pth naming the
    repository so that `python -m calicoctl` inside is the code under test."""
    venv = root / VENV.lstrip("/")
    python_version = rootfs.python_version(root)
    stamp = venv / ".deps"
    want = " ".join(sorted(wheels.project_dependencies()))
    if not (stamp.exists() and stamp.read_text() == want):
        progress(f"calicoctl venv in {root.name} (Python {python_version})")
        house = root / "tmp" / "calico-wheels"
        wheels.dependency_wheels(python_version, house)
        procs.run(["chroot", str(root), "python3", "-m", "venv", "--clear", VENV], timeout=300)
        procs.run(["chroot", str(root), f"{VENV}/bin/pip", "install", "-q",
                   "--disable-pip-version-check", "--no-index", "--find-links",
                   "/tmp/calico-wheels", "-r", "/tmp/calico-wheels/requirements.txt"],
                  timeout=600)
        for entry in house.iterdir():
            entry.unlink()
        house.rmdir()
        stamp.write_text(want)
    site = venv / "lib" / f"python{python_version}" / "site-packages"
    (site / "calicoctl-repo.pth").write_text(str(REPO) + "\n")
    _console_script(venv)


def _console_script(venv):
    script = venv / "bin" / "calicoctl"
    script.write_text(f"#!{VENV}/bin/python\nimport sys\nfrom calicoctl.cli import console\n"
                      "sys.exit(console())\n")
    os.chmod(script, 0o755)


def python_in(suite):
    """The Python that runs calicoctl inside a host of `suite` (None: this machine's venv)."""
    return None if suite in (None, "host") else f"{VENV}/bin/python"


def binds(suite):
    """Folders of this machine a suite host needs at the same path: the repository under test."""
    return [REPO]


def versions(root):
    """{'docker': '26.1.5...', 'bird': '2.17...'} read from the root's dpkg status (no run)."""
    found = {}
    status = Path(root) / "var" / "lib" / "dpkg" / "status"
    package = None
    for line in status.read_text().splitlines():
        if line.startswith("Package: "):
            package = line.split(": ", 1)[1]
        elif line.startswith("Version: ") and package in ("docker.io", "bird", "bird2"):
            found["docker" if package == "docker.io" else "bird"] = line.split(": ", 1)[1]
    return found

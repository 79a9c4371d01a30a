"""The node images as users get them: built on Debian 13 with BIRD 2 (and the BIRD 1.6 variant on
Debian 12), with every Python package installed from a wheelhouse made for the image's own
Python, whatever Python the building machine runs (Debian 12's 3.11 builds for Debian 13's 3.13).

Needs root, debootstrap and namespace hosts (a scratch host runs dockerd to try the images); the
roots, wheels and image tarballs come from /var/cache/calico-images when they are there.
"""

import platform
import shutil
import subprocess
import sys

import pytest
from packaging.utils import parse_wheel_filename

from tests.st.harness import Host, check_host_support, load_images, rootfs, wheels
from tests.st.harness.node_images import _build_module, node_image_names, node_images_tarball

MARKER = "calico-imagetest:"
# Compiled modules of calicoctl's dependencies: loading them proves the wheels fit the
# interpreter (a wheel for another CPython does not install, or its extension does not load).
# charset_normalizer keeps a pure md.py beside its extension, hence the check of the file.
COMPILED_CHECK = ("import markupsafe._speedups, charset_normalizer.md as md; "
                  "assert md.__file__.endswith('.so'), md.__file__")


@pytest.fixture(scope="module", autouse=True)
def _needs_root_and_debootstrap():
    reason = check_host_support()
    if reason:
        pytest.skip(f"node image tests need namespace hosts: {reason}")
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed")


def _compiled_tags(wheel):
    """The (interpreter, abi) pairs of a compiled wheel; [] for a pure-Python one."""
    _name, _version, _build, tags = parse_wheel_filename(wheel.name)
    return sorted({(t.interpreter, t.abi) for t in tags if t.abi != "none"})


def _fits(pairs, cp_tag):
    """A compiled wheel the target CPython (cp_tag 'cp313') can load: built for exactly it, or
    for the stable ABI of a version no newer than it."""
    target = int(cp_tag[2:])
    return any((interp == cp_tag and abi == cp_tag) or
               (abi == "abi3" and interp.startswith("cp") and int(interp[2:]) <= target)
               for interp, abi in pairs)


def _manylinux_platforms(root):
    """Every manylinux platform tag the root's glibc can load. pip takes --platform literally
    (manylinux_2_36 does not imply manylinux_2_17), so all of them are named."""
    status = (root / "var" / "lib" / "dpkg" / "status").read_text()
    libc = status.split("Package: libc6\n", 1)[1].split("\n\n", 1)[0]
    version = next(line.split()[1] for line in libc.splitlines() if line.startswith("Version:"))
    minor = int(version.split("-")[0].split(".")[1])
    arch = platform.machine()
    legacy = {5: "manylinux1", 12: "manylinux2010", 17: "manylinux2014"}
    return [f"manylinux_2_{n}_{arch}" for n in range(5, minor + 1)] + \
        [f"{name}_{arch}" for n, name in legacy.items() if n <= minor]


def _install_in_overlay(root, wheelhouse, scratch, check):
    """Install the wheelhouse into a venv of `root`'s own python3, inside a throwaway overlay of
    the root (so the cached root stays as it was), and run the Python code `check` with that
    venv. Returns the CompletedProcess."""
    upper, work, merged = scratch / "upper", scratch / "work", scratch / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    (scratch / "check.py").write_text(check + "\n")
    script = f"""set -e
mount --make-rprivate /
mount -t overlay overlay -o lowerdir={root},upperdir={upper},workdir={work} {merged}
mkdir -p {merged}/wheels
mount --bind {wheelhouse} {merged}/wheels
cp {scratch}/check.py {merged}/check.py
mount --rbind /proc {merged}/proc
mount --rbind /dev {merged}/dev
chroot {merged} /bin/sh -ec '
  python3 -m venv /tmp/venv
  /tmp/venv/bin/pip install -q --disable-pip-version-check --no-index \
      --find-links /wheels -r /wheels/requirements.txt
  /tmp/venv/bin/python /check.py'
"""
    # The mount namespace, and every mount in it, ends with the command.
    return subprocess.run(["unshare", "--mount", "--fork", "sh", "-c", script],
                          capture_output=True, text=True, timeout=600)


def test_wheelhouse_fits_the_image_python_not_the_builders(tmp_path):
    build = _build_module()
    root = build.base_root(build.DEFAULT_SUITE)
    target = rootfs.python_version(root)
    here = "%d.%d" % sys.version_info[:2]
    assert target == "3.13", f"Debian 13's python3 is 3.13, the root says {target}"
    print(f"building for Python {target} on Python {here}")
    cp_tag = "cp" + target.replace(".", "")
    house = wheels.dependency_wheels(target, tmp_path / "wheels")

    compiled = {w.name: _compiled_tags(w) for w in house.glob("*.whl") if _compiled_tags(w)}
    # Without a compiled dependency there would be nothing to prove.
    assert any(name.startswith("markupsafe-") for name in compiled), sorted(compiled)
    misfits = [name for name, pairs in compiled.items() if not _fits(pairs, cp_tag)]
    assert not misfits, f"wheels that Python {target} cannot load: {misfits}"

    # pip's own verdict for the target interpreter and C library, without running either.
    platforms = [a for p in _manylinux_platforms(root) for a in ("--platform", p)]
    dry = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "--dry-run",
         "--ignore-installed", "--no-index", "--find-links", str(house), "--only-binary=:all:",
         "--python-version", target, "--implementation", "cp", *platforms,
         "--target", str(tmp_path / "target"), "-r", str(house / "requirements.txt")],
        capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stdout + dry.stderr

    # And for real: the root's own python3 installs the wheelhouse and loads every extension.
    r = _install_in_overlay(root, house, tmp_path, COMPILED_CHECK + "; import docker, flask")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def scratch_host(tmp_path_factory):
    """A namespace host with its own dockerd, for trying the images; gone after the module."""
    host = Host.create("imagetest", None, tmp_path_factory.mktemp("imagetest"), marker=MARKER)
    try:
        host.start_dockerd()
        yield host
    finally:
        try:
            host.stop_dockerd()
        finally:
            host.stop(keep_logs=False)


@pytest.mark.parametrize("suite, bird, python", [("trixie", "BIRD version 2.", "3.13"),
                                                 ("bookworm", "BIRD version 1.6.", "3.11")])
def test_images_run_calicoctl_bird_and_compiled_wheels(scratch_host, suite, bird, python):
    load_images(scratch_host.docker_url, node_images_tarball(suite, progress=print))
    version = _build_module().image_version().lstrip("v")
    for image in node_image_names(suite):
        def run(*cmd, image=image):
            r = scratch_host.docker("run", "--rm", image, *cmd, check=False)
            assert r.returncode == 0, f"{image} {cmd}: {r.stdout}{r.stderr}"
            return (r.stdout + r.stderr).strip()
        assert run("calicoctl", "version") == version
        assert run("bird", "--version").startswith(bird)
        assert run("python3", "-c", COMPILED_CHECK + "; import sys; "
                   "print('%d.%d' % sys.version_info[:2])") == python

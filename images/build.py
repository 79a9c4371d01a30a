#!/usr/bin/env python3
"""Build calico/node:<version> and calico/node-libnetwork:<version> with no registry.

    python images/build.py [--suite trixie|bookworm] [--docker-url URL] [--save PATH] [--no-cache]

The images run on Debian 13 (trixie) with BIRD 2 by default. `--suite bookworm` builds the
BIRD 1.6 variant on Debian 12, tagged <version>-bookworm, for what still has to run BIRD 1.6
(the two-host demo on Docker 20.10 hosts).

Into the engine at --docker-url, else $DOCKER_HOST, else a throwaway "builder" namespace host
whose /var/lib/docker persists in /var/cache/calico-images/builder (so the layer cache survives).
dockerd is never started in the root namespace: it would turn on forwarding there.

Steps: the suite's Debian root (tests/st/harness/rootfs.py: debootstrap, cached) -> wheelhouse
for that root's Python, whatever Python runs this script (tests/st/harness/wheels.py; cached)
-> base image (the root imported; skipped when present) -> docker build of both targets of
images/Dockerfile -> (builder only) save both into a cached tarball per suite, which the system
tests load into their hosts instead of building again.
"""

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.st.harness import images, procs, rootfs, wheels  # noqa: E402
from tests.st.harness.errors import HarnessError  # noqa: E402
from tests.st.harness.hosts import Host, check_host_support  # noqa: E402

CACHE_DIR = images.CACHE_DIR
CONTEXT_DIR = REPO / "images" / ".build"      # git-ignored; one docker build context per suite
DEFAULT_VERSION = "v0.12.0-py"
# Debian 13 is what users run now: BIRD 2 (2.17) and Python 3.13. From Debian 13 on there is
# no BIRD 1.x package at all, so the default images carry BIRD 2 like the hosts around them.
DEFAULT_SUITE = "trixie"
# The BIRD each suite's images carry (same binary names, bird/birdc). Debian 12's images keep
# BIRD 1.6, the BIRD of the Docker 20.10 hosts the two-host demo still runs on.
BIRD_PACKAGES = {"trixie": "bird2", "bookworm": "bird"}
# python3-venv brings pip into the image's venv (ensurepip): no python3-pip needed.
# nftables: the agent's default policy dataplane (calicoctl felix serve --dataplane=auto).
COMMON_PACKAGES = ["python3", "python3-venv", "iptables", "ipset", "nftables", "iproute2",
                   "procps", "ca-certificates"]
BASE_KEY_LABEL = "org.projectcalico.base-key"
BUILDER_NAME = "calico-builder"
BUILDER_MARKER = "calico-builder:"
# Wheels are zip files stamped with mtimes; a fixed epoch makes an unchanged calicoctl build
# byte-identical, so docker's COPY cache (content based) holds and a warm rebuild is quick.
SOURCE_DATE_EPOCH = "315532800"   # 1980-01-01, the earliest date a zip can hold


def say(msg):
    print(f"[images] {msg}", file=sys.stderr, flush=True)


# ---- names -------------------------------------------------------------------------------

def image_version(repo=REPO):
    """'v' + calicoctl.__version__, read as text (the package may not import while in flux)."""
    try:
        text = (repo / "calicoctl" / "__init__.py").read_text()
    except OSError:
        return DEFAULT_VERSION
    match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", text, re.MULTILINE)
    if not match:
        return DEFAULT_VERSION
    version = match.group(1)
    return version if version.startswith("v") else "v" + version


def check_suite(suite):
    if suite not in BIRD_PACKAGES:
        raise HarnessError(f"no node images for Debian suite {suite!r} "
                           f"(known: {', '.join(BIRD_PACKAGES)})")
    return suite


def node_image_names(version=None, suite=DEFAULT_SUITE):
    """The default suite's images carry the bare version; another suite's add it as a suffix,
    so both can sit in one engine and `calicoctl node --node-image` picks one."""
    version = version or image_version()
    tag = version if check_suite(suite) == DEFAULT_SUITE else f"{version}-{suite}"
    return [f"calico/node:{tag}", f"calico/node-libnetwork:{tag}"]


# ---- base image --------------------------------------------------------------------------

def base_packages(suite):
    return sorted([*COMMON_PACKAGES, BIRD_PACKAGES[check_suite(suite)]])


def base_tag(suite):
    return f"calico/debian-base:{suite}"


def base_key(suite):
    return rootfs.root_key(suite, base_packages(suite))


def base_root(suite, progress=say):
    """The suite's Debian root for the image base (debootstrap once, then cached)."""
    return rootfs.root_dir(suite, base_packages(suite), progress)


def ensure_base_image(client, docker_url, suite):
    """calico/debian-base:<suite> in the engine, built only if missing or stale."""
    key, tag, slim = base_key(suite), base_tag(suite), f"debian:{suite}-slim"
    if images.has_image(client, tag):
        labels = client.images.get(tag).labels or {}
        if labels.get(BASE_KEY_LABEL) == key:
            say(f"base image {tag}: present")
            return
        say(f"base image {tag}: package list changed, rebuilding")
    if images.has_image(client, slim):
        # Same suite, so the same python3 as the root the wheelhouse was made for.
        say(f"base image from {slim} (apt-get inside a build container)")
        try:
            _docker_build(client, REPO / "images", "base.Dockerfile", tag, target=None,
                          buildargs={"SUITE": suite, "PACKAGES": " ".join(base_packages(suite))},
                          labels={BASE_KEY_LABEL: key})
            return
        except HarnessError as exc:
            say(f"building from {slim} failed ({exc}); falling back to debootstrap")
    tarball = rootfs.root_tarball(suite, base_packages(suite), progress=say)
    say(f"docker import {tarball.name} -> {tag}")
    procs.run([images.DOCKER_CLI, "-H", docker_url, "import",
               "-c", f"LABEL {BASE_KEY_LABEL}={key}", "-c", 'CMD ["bash"]',
               str(tarball), tag], timeout=600)


# ---- wheelhouse --------------------------------------------------------------------------

def context_dir(suite):
    return CONTEXT_DIR / suite


def build_wheelhouse(suite, repo=REPO):
    """Fill <context>/wheels/{deps,calicoctl} for the suite's image. Dependency wheels are made
    for the Python of the suite's root, never for the one running this script (Debian 12's 3.11
    builds for Debian 13's 3.13): a compiled wheel for the wrong CPython does not install.
    calicoctl's own wheel is pure Python, rebuilt every time from a copy of the source
    (building in the repo would leave build/ and egg-info)."""
    python_version = rootfs.python_version(base_root(suite))
    context = context_dir(suite)
    deps_dir, own_dir = context / "wheels" / "deps", context / "wheels" / "calicoctl"
    wheels.dependency_wheels(python_version, deps_dir, repo)
    shutil.rmtree(own_dir, ignore_errors=True)
    own_dir.mkdir(parents=True)
    build_own_wheel(own_dir, repo)
    say(f"wheelhouse for Python {python_version}: {len(list(deps_dir.glob('*.whl')))} "
        f"dependency wheels + {', '.join(p.name for p in own_dir.glob('*.whl'))}")
    return python_version


def build_own_wheel(dest, repo=REPO):
    """calicoctl's wheel, built offline against the build backend kept in the wheel cache."""
    backend = wheels.WHEEL_CACHE / "source"
    backend.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="calicoctl-src-") as tmp:
        src = Path(tmp)
        shutil.copy2(repo / "pyproject.toml", src)
        shutil.copytree(repo / "calicoctl", src / "calicoctl",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        readme = repo / "README.md"
        if readme.exists():
            shutil.copy2(readme, src)
        else:   # pyproject names a readme; a stand-in keeps the build going while it is written
            (src / "README.md").write_text("calicoctl\n")
        env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        build = [*pip, "wheel", "-q", "--no-deps", "--no-index", "--find-links", str(backend),
                 "-w", str(dest), str(src)]
        try:
            procs.run(build, timeout=900, env=env)
        except HarnessError:
            say("calicoctl wheel: fetching its build backend from PyPI into the cache")
            procs.run([*pip, "download", "-q", "-d", str(backend), "setuptools>=64", "wheel"],
                      timeout=900)
            procs.run(build, timeout=900, env=env)


def context_key(suite):
    """Hash of everything that decides the images: Dockerfile, wheels, base key, version."""
    context = context_dir(suite)
    h = hashlib.sha256(f"{suite} {base_key(suite)} {image_version()}".encode())
    files = [REPO / "images" / "Dockerfile", *sorted((context / "wheels").rglob("*"))]
    for path in files:
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


# ---- docker build ------------------------------------------------------------------------

def _docker_build(client, context, dockerfile, tag, target, buildargs=None, labels=None,
                  nocache=False):
    stream = client.api.build(path=str(context), dockerfile=dockerfile, tag=tag, target=target,
                              buildargs=buildargs or {}, labels=labels or {}, rm=True,
                              forcerm=True, nocache=nocache, decode=True)
    for chunk in stream:
        if "error" in chunk:
            raise HarnessError(f"docker build of {tag} failed: {chunk['error'].strip()}")
        line = chunk.get("stream", "").rstrip()
        if line.startswith("Step ") or line.startswith(" ---> Using cache"):
            say(f"  {tag}: {line.strip()}")


def build_node_images(client, docker_url, suite=DEFAULT_SUITE, version=None, nocache=False):
    """Base (if needed) and both images, from the wheelhouse build_wheelhouse() made.
    Returns the image names."""
    names = node_image_names(version, suite)
    context = context_dir(suite)
    ensure_base_image(client, docker_url, suite)
    shutil.copy2(REPO / "images" / "Dockerfile", context / "Dockerfile")
    for name, target in zip(names, ("node", "node-libnetwork"), strict=True):
        t0 = time.monotonic()
        _docker_build(client, context, "Dockerfile", name, target,
                      buildargs={"BASE_IMAGE": base_tag(suite)}, nocache=nocache)
        say(f"built {name} in {time.monotonic() - t0:.1f}s")
    return names


# ---- where to build ----------------------------------------------------------------------

@contextlib.contextmanager
def builder_engine(docker_url=None):
    """Yield a docker URL to build with: the given one, $DOCKER_HOST, or a builder host."""
    url = docker_url or os.environ.get("DOCKER_HOST")
    if url:
        yield url
        return
    reason = check_host_support()
    if reason:
        raise HarnessError(f"no DOCKER_HOST and cannot start a builder host: {reason}")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / "builder.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)     # one builder at a time: it owns a fixed data dir
        for pid in procs.find_pids_by_argv0_prefix(BUILDER_MARKER):
            say(f"killing a stale builder host (pid {pid})")
            procs.kill_namespace_processes(pid)
        host = Host.create(BUILDER_NAME, None, CACHE_DIR / "builder", marker=BUILDER_MARKER)
        try:
            driver = host.start_dockerd()
            say(f"builder host {BUILDER_NAME} (pid {host.pid}, {driver}) at {host.docker_url}")
            yield host.docker_url
        finally:
            # Graceful first: the layer cache in builder/docker must be consistent next time.
            with contextlib.suppress(Exception):
                host.stop_dockerd()
            host.stop(remove_dirs=False)


def node_images_tarball(suite=DEFAULT_SUITE, nocache=False, progress=say):
    """Path of a tarball holding both node images of `suite` for the current source, built if
    missing."""
    t0 = time.monotonic()
    build_wheelhouse(suite)
    progress(f"wheelhouse ready in {time.monotonic() - t0:.1f}s")
    tarball = CACHE_DIR / f"node-images-{suite}-{context_key(suite)}.tar"
    if tarball.exists() and not nocache:
        progress(f"node images: cached {tarball}")
        return tarball
    with builder_engine() as url:
        import docker
        client = docker.DockerClient(base_url=url, timeout=600)
        names = build_node_images(client, url, suite, nocache=nocache)
        images.save_images(url, names, tarball)
        # Superseded builds would pile up in the persistent builder; the layers of the current
        # images (the warm cache) are kept since they are not dangling.
        client.images.prune(filters={"dangling": True})
    _prune_old(tarball, suite)
    progress(f"node images: saved {tarball}")
    return tarball


# Tarballs named before images had a suite (node-images-<key>.tar): all were bookworm builds.
_UNSUITED_TARBALL = re.compile(r"^node-images-[0-9a-f]{16}\.tar$")


def _prune_old(keep, suite):
    """Keep only the newest tarball of each suite: each is a few hundred MB."""
    for old in CACHE_DIR.glob("node-images-*.tar"):
        if old != keep and (old.name.startswith(f"node-images-{suite}-") or
                            _UNSUITED_TARBALL.match(old.name)):
            old.unlink(missing_ok=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default=DEFAULT_SUITE, choices=sorted(BIRD_PACKAGES),
                        help=f"Debian suite of the images (default: {DEFAULT_SUITE}, BIRD 2; "
                             "bookworm: BIRD 1.6)")
    parser.add_argument("--docker-url", help="engine to build in (default: $DOCKER_HOST, else "
                                             "a builder namespace host)")
    parser.add_argument("--save", help="also write both images to this tarball")
    parser.add_argument("--no-cache", action="store_true", help="ignore docker's layer cache")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    try:
        if args.docker_url or os.environ.get("DOCKER_HOST"):
            with builder_engine(args.docker_url) as url:
                import docker
                client = docker.DockerClient(base_url=url, timeout=600)
                build_wheelhouse(args.suite)
                names = build_node_images(client, url, args.suite, nocache=args.no_cache)
                if args.save:
                    images.save_images(url, names, args.save)
        else:
            tarball = node_images_tarball(args.suite, nocache=args.no_cache)
            names = node_image_names(suite=args.suite)
            if args.save:
                shutil.copy2(tarball, args.save)
    except HarnessError as exc:
        say(f"error: {exc}")
        return 1
    say(f"done in {time.monotonic() - t0:.1f}s: {' '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

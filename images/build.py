#!/usr/bin/env python3
"""Build calico/node:<version> and calico/node-libnetwork:<version> with no registry.

    python images/build.py [--docker-url URL] [--save PATH] [--no-cache]

Into the engine at --docker-url, else $DOCKER_HOST, else a throwaway "builder" namespace host
whose /var/lib/docker persists in /var/cache/calico-images/builder (so the layer cache survives).
dockerd is never started in the root namespace: it would turn on forwarding there.

Steps: base image (skipped when present) -> wheelhouse on this machine (pip; cached) -> docker
build of both targets of images/Dockerfile -> (builder only) save both into a cached tarball,
which the system tests load into their hosts instead of building again.
"""

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.st.harness import images, procs  # noqa: E402
from tests.st.harness.errors import HarnessError  # noqa: E402
from tests.st.harness.hosts import Host, check_host_support  # noqa: E402

CACHE_DIR = images.CACHE_DIR
CONTEXT_DIR = REPO / "images" / ".build"      # git-ignored docker build context
DEFAULT_VERSION = "v0.12.0-py"
SUITE = "bookworm"
BASE_TAG = f"calico/debian-base:{SUITE}"
SLIM_TAG = f"debian:{SUITE}-slim"
BASE_PACKAGES = ["python3", "python3-pip", "python3-venv", "iptables", "ipset", "bird",
                 "iproute2", "procps", "ca-certificates"]
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


def node_image_names(version=None):
    version = version or image_version()
    return [f"calico/node:{version}", f"calico/node-libnetwork:{version}"]


# ---- base image --------------------------------------------------------------------------

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


def base_key():
    return hashlib.sha256(" ".join([SUITE, *sorted(BASE_PACKAGES)]).encode()).hexdigest()[:12]


def base_rootfs_tarball():
    """A debootstrapped Debian root file system as a tar, cached by suite + package list."""
    tarball = CACHE_DIR / f"debian-base-{SUITE}-{base_key()}.tar"
    if tarball.exists():
        say(f"base rootfs: cached {tarball}")
        return tarball
    if shutil.which("debootstrap") is None:
        raise HarnessError("debootstrap is not installed (apt-get install debootstrap)")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=CACHE_DIR, prefix="rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        say(f"debootstrap {SUITE} from {mirror} (about a minute)")
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
               SUITE, str(rootfs), mirror]
        _stream(cmd, prefix="debootstrap")
        # Package caches are dead weight in an image that never runs apt.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / junk).glob("*"):
                if entry.is_file():
                    entry.unlink()
        part = tarball.with_name(tarball.name + ".part")
        # /dev, /proc and /sys contents come from the container runtime, never from the image.
        procs.run(["tar", "-C", str(rootfs), "--numeric-owner", "--exclude=./dev/*",
                   "--exclude=./proc/*", "--exclude=./sys/*", "-cf", str(part), "."],
                  timeout=600)
        part.rename(tarball)
    say(f"base rootfs: {tarball} ({tarball.stat().st_size >> 20} MiB) "
        f"in {time.monotonic() - t0:.0f}s")
    return tarball


def ensure_base_image(client, docker_url):
    """calico/debian-base:bookworm in the engine, built only if missing or stale."""
    key = base_key()
    if images.has_image(client, BASE_TAG):
        labels = client.images.get(BASE_TAG).labels or {}
        if labels.get(BASE_KEY_LABEL) == key:
            say(f"base image {BASE_TAG}: present")
            return
        say(f"base image {BASE_TAG}: package list changed, rebuilding")
    if images.has_image(client, SLIM_TAG):
        say(f"base image from {SLIM_TAG} (apt-get inside a build container)")
        try:
            _docker_build(client, REPO / "images", "base.Dockerfile", BASE_TAG, target=None,
                          buildargs={"PACKAGES": " ".join(BASE_PACKAGES)},
                          labels={BASE_KEY_LABEL: key})
            return
        except HarnessError as exc:
            say(f"building from {SLIM_TAG} failed ({exc}); falling back to debootstrap")
    tarball = base_rootfs_tarball()
    say(f"docker import {tarball.name} -> {BASE_TAG}")
    procs.run([images.DOCKER_CLI, "-H", docker_url, "import",
               "-c", f"LABEL {BASE_KEY_LABEL}={key}", "-c", 'CMD ["bash"]',
               str(tarball), BASE_TAG], timeout=600)


# ---- wheelhouse --------------------------------------------------------------------------

def _pip(*args, env=None):
    return procs.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                     timeout=900, env=env)


def project_dependencies(repo=REPO):
    pyproject = repo / "pyproject.toml"
    if not pyproject.exists():
        raise HarnessError(f"{pyproject} is missing: nothing to build calicoctl from")
    return tomllib.loads(pyproject.read_text())["project"].get("dependencies", [])


def build_wheelhouse(context=CONTEXT_DIR, repo=REPO):
    """Fill <context>/wheels/{deps,calicoctl}. Dependency wheels come from a cache that is
    refilled from PyPI only when an offline resolve fails; calicoctl's wheel is rebuilt every
    time from a copy of the source (building in the repo would leave build/ and egg-info)."""
    if sys.version_info[:2] != (3, 11):
        say(f"warning: building wheels with Python {sys.version.split()[0]}; the image's "
            "Python is 3.11, so compiled wheels may not fit")
    wheel_cache = CACHE_DIR / "wheels"
    wheel_cache.mkdir(parents=True, exist_ok=True)
    deps_dir, own_dir = context / "wheels" / "deps", context / "wheels" / "calicoctl"
    for d in (deps_dir, own_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    requirements = deps_dir / "requirements.txt"
    requirements.write_text("\n".join(project_dependencies(repo)) + "\n")
    offline = ["--no-index", "--find-links", str(wheel_cache)]
    try:
        _pip("wheel", "-q", *offline, "-w", str(deps_dir), "-r", str(requirements))
    except HarnessError:
        say("dependency wheels: fetching from PyPI into the cache")
        _pip("wheel", "-q", "-w", str(wheel_cache), "-r", str(requirements))
        # The isolated build of calicoctl's own wheel needs its build backend offline too.
        _pip("download", "-q", "-d", str(wheel_cache), "setuptools>=64", "wheel")
        _pip("wheel", "-q", *offline, "-w", str(deps_dir), "-r", str(requirements))
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
        _pip("wheel", "-q", "--no-deps", *offline, "-w", str(own_dir), str(src), env=env)
    say(f"wheelhouse: {len(list(deps_dir.glob('*.whl')))} dependency wheels + "
        f"{', '.join(p.name for p in own_dir.glob('*.whl'))}")


def context_key(context=CONTEXT_DIR):
    """Hash of everything that decides the images: Dockerfile, wheels, base key, version."""
    h = hashlib.sha256(f"{base_key()} {image_version()}".encode())
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


def build_node_images(client, docker_url, version=None, nocache=False):
    """Base (if needed) and both images, from the wheelhouse build_wheelhouse() made.
    Returns the image names."""
    names = node_image_names(version)
    ensure_base_image(client, docker_url)
    shutil.copy2(REPO / "images" / "Dockerfile", CONTEXT_DIR / "Dockerfile")
    for name, target in zip(names, ("node", "node-libnetwork"), strict=True):
        t0 = time.monotonic()
        _docker_build(client, CONTEXT_DIR, "Dockerfile", name, target,
                      buildargs={"BASE_IMAGE": BASE_TAG}, nocache=nocache)
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


def node_images_tarball(nocache=False, progress=say):
    """Path of a tarball holding both node images for the current source, built if missing."""
    t0 = time.monotonic()
    build_wheelhouse()
    progress(f"wheelhouse ready in {time.monotonic() - t0:.1f}s")
    tarball = CACHE_DIR / f"node-images-{context_key()}.tar"
    if tarball.exists() and not nocache:
        progress(f"node images: cached {tarball}")
        return tarball
    with builder_engine() as url:
        import docker
        client = docker.DockerClient(base_url=url, timeout=600)
        names = build_node_images(client, url, nocache=nocache)
        images.save_images(url, names, tarball)
        # Superseded builds would pile up in the persistent builder; the layers of the current
        # images (the warm cache) are kept since they are not dangling.
        client.images.prune(filters={"dangling": True})
    _prune_old(tarball)
    progress(f"node images: saved {tarball}")
    return tarball


def _prune_old(keep):
    """Keep only the newest node-images tarball: each is a few hundred MB."""
    for old in CACHE_DIR.glob("node-images-*.tar"):
        if old != keep:
            old.unlink(missing_ok=True)


def _stream(cmd, prefix):
    """Run cmd showing a progress line every few seconds instead of every line it prints."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail, last = [], 0.0
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-40:]
        if time.monotonic() - last > 5:
            say(f"  {prefix}: {line.strip()}")
            last = time.monotonic()
    if proc.wait() != 0:
        raise HarnessError(f"{prefix} failed ({proc.returncode}):\n" + "\n".join(tail))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
                build_wheelhouse()
                names = build_node_images(client, url, nocache=args.no_cache)
                if args.save:
                    images.save_images(url, names, args.save)
        else:
            tarball = node_images_tarball(nocache=args.no_cache)
            names = node_image_names()
            if args.save:
                shutil.copy2(tarball, args.save)
    except HarnessError as exc:
        say(f"error: {exc}")
        return 1
    say(f"done in {time.monotonic() - t0:.1f}s: {' '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

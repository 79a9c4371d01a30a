"""calico/node and calico/node-libnetwork in the testbed's engines, built at most once per
source change: images/build.py keeps a tarball per Debian suite and content hash in
/var/cache/calico-images. The default suite (trixie) carries BIRD 2; suite="bookworm" gives the
BIRD 1.6 variant, tagged <version>-bookworm."""

import importlib.util
import sys
import time
from pathlib import Path

from . import images, procs

REPO = Path(__file__).resolve().parents[3]


def _build_module():
    """images/build.py is a script (run by `make images`), not a package: load it by path."""
    name = "calico_images_build"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "images" / "build.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def default_suite():
    return _build_module().DEFAULT_SUITE


def node_image_names(suite=None):
    """['calico/node:v<version>[-<suite>]', 'calico/node-libnetwork:v<version>[-<suite>]']."""
    build = _build_module()
    return build.node_image_names(suite=suite or build.DEFAULT_SUITE)


def node_images_tarball(suite=None, progress=print):
    """The cached tarball of both images of `suite`, built first if the source changed."""
    build = _build_module()
    return build.node_images_tarball(suite or build.DEFAULT_SUITE, progress=progress)


def load_node_images(hosts, suite=None, progress=print):
    """Make sure every host's dockerd has both node images of `suite` (building them if the
    source changed since the cached tarball was made), also under the default names, so that a
    plain `calicoctl node` on those hosts runs them. Returns the default names."""
    tarball = node_images_tarball(suite, progress=progress)
    names, defaults = node_image_names(suite), node_image_names()
    t0 = time.monotonic()

    def load(host):
        images.load_images(host.docker_url, tarball)
        for name, default in zip(names, defaults, strict=True):
            if name != default:
                procs.run([images.DOCKER_CLI, "-H", host.docker_url, "tag", name, default])

    # In parallel: each load unpacks a few hundred MB, and the engines are independent.
    procs.on_each(hosts, load)
    progress(f"node images {', '.join(names)} loaded on {', '.join(h.name for h in hosts)} "
             f"in {time.monotonic() - t0:.1f}s")
    return defaults

#!/usr/bin/env python3
"""`make plugin`: the Calico managed plugin folder (config.json + rootfs), with no registry.

    python images/plugin.py [--suite trixie|bookworm] [--out build/plugin]

The rootfs is calico/node-libnetwork as images/build.py built it (the cached `docker save`
tarball, built first if the source changed), unpacked layer by layer; config.json is
calicoctl/node/managed_plugin.plugin_config with this host's defaults.  On a Docker host:

    docker plugin create calico build/plugin
    docker plugin set calico:latest ETCD_ENDPOINTS=http://10.0.0.5:2379 CALICO_HOSTNAME=$(hostname)
    docker plugin enable calico:latest

(`calicoctl node --libnetwork --managed-plugin` does the same from the image in the engine.)
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from calicoctl.node import managed_plugin  # noqa: E402
from tests.st.harness import node_images  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default=None, help="Debian suite of the images "
                        "(default: images/build.py's)")
    parser.add_argument("--out", default=str(REPO / "build" / "plugin"))
    args = parser.parse_args()
    tarball = node_images.node_images_tarball(args.suite, progress=print)
    image = node_images.node_image_names(args.suite)[1]
    with open(tarball, "rb") as saved:
        managed_plugin.write_plugin_dir(saved, args.out, managed_plugin.plugin_config(), image)
    print("Managed plugin folder %s (from %s): docker plugin create calico %s"
          % (args.out, image, args.out))


if __name__ == "__main__":
    main()

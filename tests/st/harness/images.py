"""Images without a registry: a busybox image made from Debian's static busybox, and copying
images between the testbed's Docker engines through tarballs."""

import io
import os
import subprocess
import tarfile
from pathlib import Path

from . import procs
from .errors import HarnessError

BUSYBOX_BINARY = "/usr/bin/busybox"     # from busybox-static: no libraries needed in the image
BUSYBOX_IMAGE = "busybox:latest"
CACHE_DIR = Path(os.environ.get("CALICO_IMAGE_CACHE", "/var/cache/calico-images"))
DOCKER_CLI = "/usr/bin/docker"          # Debian's 20.10 client, matching the daemons


def busybox_tarball(binary=BUSYBOX_BINARY):
    """A root file system tar: /usr/bin/busybox plus one /bin symlink per applet.

    Built in memory with tarfile so no root-owned scratch folder is left behind; the result
    is what `docker import` of such a folder would take.
    """
    if not Path(binary).exists():
        raise HarnessError(f"{binary} is missing (apt-get install busybox-static)")
    applets = procs.run([binary, "--list"]).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for folder in ("bin", "usr", "usr/bin", "etc", "tmp", "root", "var", "proc", "sys", "dev"):
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        tar.add(binary, arcname="usr/bin/busybox")
        for applet in applets:
            if applet == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "/usr/bin/busybox"
            tar.addfile(link)
        # Enough of /etc for `id`, `ps` and `ping` to print names instead of numbers.
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
                           ("etc/group", "root:x:0:\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def import_busybox(client, tarball=None, tag=BUSYBOX_IMAGE):
    """`docker import` the busybox root file system into the engine behind docker-py `client`
    (pass `tarball` from busybox_tarball() to import the same bytes into several engines)."""
    repo, _, version = tag.partition(":")
    client.api.import_image_from_data(tarball or busybox_tarball(), repository=repo,
                                      tag=version or "latest", changes=['CMD ["sh"]'])
    return client.images.get(tag)


def has_image(client, name):
    import docker.errors
    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def save_images(docker_url, names, path):
    """`docker save` several images into one tarball (written atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    procs.run([DOCKER_CLI, "-H", docker_url, "save", "-o", str(tmp), *names], timeout=600)
    tmp.rename(path)
    return path


def load_images(docker_url, path):
    """`docker load` a tarball made by save_images into another engine."""
    procs.run([DOCKER_CLI, "-H", docker_url, "load", "-i", str(path)], timeout=600)


def copy_images(src_url, dst_urls, names):
    """Stream images from one engine into others without a file: docker save | docker load."""
    for dst in dst_urls:
        save = subprocess.Popen([DOCKER_CLI, "-H", src_url, "save", *names],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        load = subprocess.run([DOCKER_CLI, "-H", dst, "load"], stdin=save.stdout,
                              capture_output=True, text=True, timeout=600)
        save.stdout.close()
        save_err = save.stderr.read().decode(errors="replace")
        save.stderr.close()
        if save.wait() != 0 or load.returncode != 0:
            raise HarnessError(f"copying {names} from {src_url} to {dst} failed: "
                               f"{save_err} {load.stderr}")

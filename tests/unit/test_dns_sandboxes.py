"""calicoctl/dnsproxy/sandboxes.py: finding a sandbox path under another process's root (a
scratch folder stands in for /proc/<dockerd pid>/root)."""

import os

import pytest

from calicoctl.dnsproxy.sandboxes import path_in_root
from calicoctl.errors import DataplaneError


def test_symlinks_resolve_against_that_root_not_ours(tmp_path):
    root = str(tmp_path)
    os.makedirs(root + "/run/docker/netns")
    open(root + "/run/docker/netns/abc", "w").close()
    os.makedirs(root + "/var")
    os.symlink("/run", root + "/var/run")                  # Debian's, absolute
    os.symlink("../run/docker", root + "/var/docker")      # a relative one
    assert path_in_root(root, "/var/run/docker/netns/abc") == root + "/run/docker/netns/abc"
    assert os.path.exists(path_in_root(root, "/var/run/docker/netns/abc"))
    assert path_in_root(root, "/var/docker/netns/abc") == root + "/run/docker/netns/abc"
    assert path_in_root(root, "/var/run/../run/./docker") == root + "/run/docker"
    assert path_in_root(root, "/var/run/docker/netns/gone") == root + "/run/docker/netns/gone"
    # With no root of its own (dockerd's is ours), the path is taken as it is.
    assert path_in_root("", "/var/run/docker/netns/abc") == "/var/run/docker/netns/abc"


def test_a_symlink_loop_is_an_error(tmp_path):
    os.symlink("/loop", str(tmp_path / "loop"))
    with pytest.raises(DataplaneError):
        path_in_root(str(tmp_path), "/loop/x")


def test_dockerd_root_is_found_from_the_peer_of_its_socket(tmp_path):
    """Whoever listens on Docker's socket is dockerd: its /proc root is where its sandbox
    paths are.  Here the listener is this process."""
    import socket

    from calicoctl.dnsproxy.sandboxes import dockerd_root
    from calicoctl.errors import CalicoError
    path = str(tmp_path / "docker.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    try:
        assert dockerd_root(path) == "/proc/%d/root" % os.getpid()
    finally:
        listener.close()
    with pytest.raises(CalicoError):
        dockerd_root(str(tmp_path / "none.sock"))

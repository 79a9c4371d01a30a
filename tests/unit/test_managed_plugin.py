"""The managed plugin's pieces that need no engine: its config.json and the root file system
unpacked from `docker save` (whiteouts applied as the engine applies them).  Creating,
enabling and removing it in a real dockerd is tests/st/test_managed_plugin.py."""

import io
import json
import os
import tarfile

import pytest

from calicoctl.errors import CalicoError
from calicoctl.node import managed_plugin


def _tar(entries):
    """A tar (bytes) of (name, content or None for a folder, or ("link", target))."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif isinstance(content, tuple):
                info.type = tarfile.SYMTYPE
                info.linkname = content[1]
                tar.addfile(info)
            else:
                info.size = len(content)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _saved(layers):
    names = ["layer%d/layer.tar" % i for i in range(len(layers))]
    manifest = json.dumps([{"Config": "c.json", "RepoTags": ["x:y"], "Layers": names}]).encode()
    return io.BytesIO(_tar([("manifest.json", manifest)] + list(zip(names, layers))))


def _tree(root):
    found = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(folder, name), root))
    return found


def test_layers_apply_in_order_with_their_whiteouts(tmp_path):
    lower = _tar([("a", None), ("a/x", b"x"), ("a/y", b"y"), ("b", b"b"), ("c", None),
                  ("c/old", b"old"), ("d", b"file then folder"), ("bin", None),
                  ("bin/sh", b"sh")])
    upper = _tar([("a/.wh.x", b""), (".wh.b", b""), ("c/.wh..wh..opq", b""), ("c/new", b"new"),
                  ("d", None), ("d/inside", b"i"), ("bin/ash", ("link", "sh"))])
    managed_plugin.rootfs_from_save(_saved([lower, upper]), str(tmp_path))
    assert _tree(tmp_path) == {"a", "a/y", "c", "c/new", "d", "d/inside", "bin", "bin/sh",
                               "bin/ash"}
    assert (tmp_path / "c" / "new").read_bytes() == b"new"
    assert os.readlink(tmp_path / "bin" / "ash") == "sh"


def test_a_path_outside_the_root_is_refused(tmp_path):
    evil = _tar([("../outside", b"x")])
    with pytest.raises(CalicoError, match="outside its root"):
        managed_plugin.rootfs_from_save(_saved([evil]), str(tmp_path / "root"))


def test_config_gives_both_drivers_the_host_network_and_only_net_admin():
    config = managed_plugin.plugin_config("/run/docker.sock", ["/etc/calico/ca.pem"])
    assert config["interface"] == {"types": ["docker.networkdriver/1.0",
                                             "docker.ipamdriver/1.0"], "socket": "calico.sock"}
    assert config["network"] == {"type": "host"}
    assert config["linux"]["capabilities"] == ["CAP_NET_ADMIN"]
    mounts = {m["destination"]: (m["source"], m["options"]) for m in config["mounts"]}
    assert mounts["/var/run/docker.sock"] == ("/run/docker.sock", ["rbind", "rw"])
    assert mounts["/host/proc/sys"] == ("/proc/sys", ["rbind", "rw"])
    assert mounts["/var/lib/calico"][0] == "/var/lib/calico"
    assert mounts["/etc/calico/ca.pem"] == ("/etc/calico/ca.pem", ["rbind", "ro"])
    env = {e["name"]: e for e in config["env"]}
    assert env["CALICO_PROC_SYS"]["value"] == "/host/proc/sys"
    assert env["ETCD_ENDPOINTS"]["settable"] == ["value"]
    assert "settable" not in env["CALICO_PROC_SYS"]
    assert config["args"]["settable"] == ["value"]


def test_settings_are_this_hosts_etcd_and_node_name():
    env = managed_plugin.settings_env({"ETCD_ENDPOINTS": "http://198.18.0.1:2379",
                                       "ETCD_API": "3", "ETCD_CA_CERT_FILE": "",
                                       "SOMETHING_ELSE": "x"}, "calico-01")
    assert env == {"ETCD_ENDPOINTS": "http://198.18.0.1:2379", "ETCD_API": "3",
                   "CALICO_HOSTNAME": "calico-01"}


def test_one_image_is_picked_from_a_tar_of_several(tmp_path):
    one, two = _tar([("one", b"1")]), _tar([("two", b"2")])
    manifest = json.dumps([{"RepoTags": ["calico/node:v1"], "Layers": ["a/layer.tar"]},
                           {"RepoTags": ["calico/node-libnetwork:v1"],
                            "Layers": ["b/layer.tar"]}]).encode()
    saved = io.BytesIO(_tar([("manifest.json", manifest), ("a/layer.tar", one),
                             ("b/layer.tar", two)]))
    managed_plugin.rootfs_from_save(saved, str(tmp_path / "r"), "calico/node-libnetwork:v1")
    assert _tree(tmp_path / "r") == {"two"}
    saved.seek(0)
    with pytest.raises(CalicoError, match="calico/node:v1, calico/node-libnetwork:v1"):
        managed_plugin.rootfs_from_save(saved, str(tmp_path / "s"), "calico/node:v2")


def test_dockers_refusals_become_one_line_saying_what_to_do():
    import docker
    cap = docker.errors.APIError("500", explanation="error: unable to apply caps:\n"
                                 "invalid CapAdd: capability not available: CAP_NET_ADMIN")
    line = managed_plugin._explain(cap)
    assert "\n" not in line and line.startswith("invalid CapAdd")
    assert "needs CAP_NET_ADMIN" in line and "calico-libnetwork container" in line
    mount = docker.errors.APIError("500", explanation='error while mounting volume "/etc/x": '
                                   "mount source path does not exist")
    assert "a path the plugin mounts is missing" in managed_plugin._explain(mount)
    other = docker.errors.APIError("500", explanation="something else")
    assert managed_plugin._explain(other) == "something else"

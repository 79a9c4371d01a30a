"""The libnetwork plugin as a Docker managed plugin (`calicoctl node --libnetwork
--managed-plugin`, `make plugin`).

dockerd starts a managed plugin itself, before it restores networks, so a dockerd restart does
not wait for a driver that its own stopped container would provide.  The plugin is the
calico/node-libnetwork image's file system plus a config.json (plugin_config); Docker runs it
with the host's network, the listed capabilities and mounts, and the settings given through
`docker plugin set`.

Docker registers a managed plugin's drivers under the plugin's full name, tag included, so the
driver is `calico:latest`, never `calico` (Docker 20.10, 26 and 28 alike answer "could not
resolve driver calico in registry").

Everything here talks to Docker through docker-py; building the plugin folder needs no
registry: the rootfs comes from the image as `docker save` gives it (rootfs_from_save).
"""

import json
import logging
import os
import shutil
import tarfile
import tempfile

from calicoctl.errors import CalicoError

log = logging.getLogger(__name__)

PLUGIN_NAME = "calico:latest"
# The plugin sees /proc/sys read-only (Docker offers plugins no way to change that), so the
# host's is mounted here and the sysctl writer pointed at it (dataplane/sysctl.py).
HOST_PROC_SYS = "/host/proc/sys"
PLUGIN_STATE_DIR = "/var/lib/calico"          # the plugin's pending-release file
# What the plugin does needs CAP_NET_ADMIN alone: veths, addresses, routes and net sysctls.
CAPABILITIES = ["CAP_NET_ADMIN"]
# Settings a user may change with `docker plugin set` (the etcd ones as calicoctl reads them).
SETTABLE_ENV = ["ETCD_ENDPOINTS", "ETCD_AUTHORITY", "ETCD_SCHEME", "ETCD_CA_CERT_FILE",
                "ETCD_CERT_FILE", "ETCD_KEY_FILE", "ETCD_USERNAME", "ETCD_PASSWORD", "ETCD_API",
                "CALICO_HOSTNAME"]
INSTALL_TIMEOUT = 120


# --- the plugin's config.json (pure) ----------------------------------------------------------

def _bind(name, source, destination, rw=True):
    return {"name": name, "description": name, "source": source, "destination": destination,
            "type": "bind", "options": ["rbind", "rw" if rw else "ro"]}


def plugin_config(docker_socket="/var/run/docker.sock", tls_files=()):
    """config.json: both driver interfaces on calico.sock, the host's network, CAP_NET_ADMIN,
    and the mounts the plugin needs -- Docker's API socket (network names from its events),
    the pending-release folder, the host's /proc/sys and any etcd TLS files.  The plugin logs
    to its output, which dockerd writes into its own log."""
    mounts = [
        _bind("docker-socket", docker_socket, "/var/run/docker.sock"),
        _bind("state", PLUGIN_STATE_DIR, PLUGIN_STATE_DIR),
        _bind("proc-sys", "/proc/sys", HOST_PROC_SYS),
    ]
    mounts += [_bind("tls-%d" % i, path, path, rw=False) for i, path in enumerate(tls_files)]
    env = [{"name": name, "description": name, "settable": ["value"], "value": ""}
           for name in SETTABLE_ENV]
    env += [{"name": "DOCKER_HOST", "description": "Docker's API, mounted",
             "value": "unix:///var/run/docker.sock"},
            {"name": "CALICO_PROC_SYS", "description": "the host's /proc/sys, mounted",
             "value": HOST_PROC_SYS}]
    return {
        "description": "Calico network and IPAM driver (routed IP networking with policy)",
        "documentation": "https://github.com/projectcalico/calico-docker",
        "entrypoint": ["/opt/calico/bin/calicoctl", "plugin", "serve"],
        "workdir": "/",
        "interface": {"types": ["docker.networkdriver/1.0", "docker.ipamdriver/1.0"],
                      "socket": "calico.sock"},
        "network": {"type": "host"},
        "linux": {"capabilities": list(CAPABILITIES)},
        "mounts": mounts,
        "env": env,
        # `docker plugin set calico:latest args="--log-level=debug"`
        "args": {"name": "args", "description": "calicoctl plugin serve options",
                 "settable": ["value"], "value": []},
    }


def settings_env(etcd_env, node_name):
    """The `docker plugin set` values for this host."""
    values = {k: v for k, v in etcd_env.items() if k in SETTABLE_ENV and v}
    values["CALICO_HOSTNAME"] = node_name
    return values


# --- the root file system from `docker save` --------------------------------------------------

def rootfs_from_save(saved, dest, image=None):
    """Unpack an image of a `docker save` tar (a seekable file) into dest, layer by layer,
    applying the layers' whiteouts (`.wh.<name>` deletes <name>, `.wh..wh..opq` empties the
    folder) as the engine would.  image: its name, where the tar holds several."""
    with tarfile.open(fileobj=saved, mode="r:") as outer:
        manifest = json.load(outer.extractfile("manifest.json"))
        chosen = [m for m in manifest if image is None or image in (m.get("RepoTags") or [])]
        if len(chosen) != 1:
            raise CalicoError("Expected %s in the saved tar, found %s." % (
                image or "one image", ", ".join(t for m in manifest
                                                for t in m.get("RepoTags") or []) or "none"))
        os.makedirs(dest, exist_ok=True)
        for name in chosen[0]["Layers"]:
            with tarfile.open(fileobj=outer.extractfile(name), mode="r:*") as layer:
                _apply_layer(layer, dest)


def _apply_layer(layer, dest):
    entries = layer.getmembers()
    for member in entries:          # whiteouts name what lower layers had
        folder, base = os.path.split(member.name)
        if base == ".wh..wh..opq":
            target = _inside(dest, folder)
            if os.path.isdir(target):
                for name in os.listdir(target):
                    _remove(os.path.join(target, name))
        elif base.startswith(".wh."):
            _remove(_inside(dest, os.path.join(folder, base[len(".wh."):])))
    kept = [m for m in entries if not os.path.basename(m.name).startswith(".wh.")]
    for member in kept:
        target = _inside(dest, member.name)
        if os.path.lexists(target) and not (member.isdir() and os.path.isdir(target)):
            _remove(target)
    # Our own image, unpacked as root: owners, modes and links exactly as built.
    layer.extractall(dest, members=kept, **_trusted())


def _trusted():
    return {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}


def _inside(dest, name):
    path = os.path.normpath(os.path.join(dest, name.lstrip("/")))
    if path != dest and not path.startswith(dest.rstrip("/") + "/"):
        raise CalicoError("The image has a path outside its root: %s." % name)
    return path


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def write_plugin_dir(saved, dest, config, image=None):
    """dest/rootfs from the image and dest/config.json: what `docker plugin create` takes."""
    if os.path.exists(dest):
        shutil.rmtree(dest)
    rootfs_from_save(saved, os.path.join(dest, "rootfs"), image)
    with open(os.path.join(dest, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


# --- in the engine ----------------------------------------------------------------------------

def find(client):
    import docker
    try:
        return client.plugins.get(PLUGIN_NAME)
    except docker.errors.NotFound:
        return None


def install(client, image, config, env, say):
    """Create (from image) and enable the plugin with these settings; one already enabled with
    the same settings and image is left as it is, otherwise it is replaced."""
    import docker
    existing = find(client)
    wanted_env = sorted("%s=%s" % kv for kv in env.items())
    image_id = client.images.get(image).id
    if existing is not None:
        have = existing.attrs.get("Settings", {}).get("Env") or []
        same = existing.enabled and all(e in have for e in wanted_env) and \
            existing.attrs.get("Config", {}).get("Description", "").endswith(
                "[%s]" % image_id[:19])
        if same:
            say("%s is enabled with these settings; left as it is." % PLUGIN_NAME)
            return False
        say("Replacing %s (its image or settings changed)." % PLUGIN_NAME)
        _take_away(client, existing, force=False, say=say)
    config = dict(config, description="%s [%s]" % (config["description"], image_id[:19]))
    for path in (PLUGIN_STATE_DIR,):
        os.makedirs(path, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="calico-plugin-")
    try:
        folder = os.path.join(workdir, "plugin")
        say("Building %s from %s." % (PLUGIN_NAME, image))
        with _saved_image(client, image) as stream:
            write_plugin_dir(stream, folder, config)
        try:
            plugin = client.plugins.create(PLUGIN_NAME, folder)
        except docker.errors.APIError as exc:
            raise CalicoError("Docker refused to create %s: %s" % (
                PLUGIN_NAME, _explain(exc))) from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    plugin = client.plugins.get(PLUGIN_NAME)
    try:
        plugin.configure(env)
        plugin.enable(timeout=INSTALL_TIMEOUT)
    except docker.errors.APIError as exc:
        plugin.remove(force=True)
        raise CalicoError("Docker refused to enable %s: %s" % (
            PLUGIN_NAME, _explain(exc))) from exc
    say("%s enabled: create networks with --driver %s --ipam-driver %s." % (
        PLUGIN_NAME, PLUGIN_NAME, PLUGIN_NAME))
    return True


class _saved_image:
    """`docker save` of one image into a temporary file (the tar is read twice: index, then
    layers), as a context manager giving the open file."""

    def __init__(self, client, image):
        self.client, self.image = client, image

    def __enter__(self):
        self.file = tempfile.TemporaryFile()
        for chunk in self.client.images.get(self.image).save(named=True):
            self.file.write(chunk)
        self.file.seek(0)
        return self.file

    def __exit__(self, *exc):
        self.file.close()


def _explain(exc):
    """Docker's refusal in one line, with what to do where we can tell."""
    text = str(getattr(exc, "explanation", None) or exc).strip().splitlines()
    text = text[-1] if text else exc.__class__.__name__
    for cap in CAPABILITIES:
        if cap in text or cap[len("CAP_"):] in text:
            return "%s (the plugin needs %s, which this dockerd cannot grant: run dockerd " \
                   "with it, or use the calico-libnetwork container instead)" % (text, cap)
    if "mount" in text:
        return "%s (a path the plugin mounts is missing or refused on this host: Docker's " \
               "socket, %s, /proc/sys or an etcd TLS file)" % (text, PLUGIN_STATE_DIR)
    return text


def networks_using(client):
    return sorted(n.name for n in client.networks.list()
                  if n.attrs.get("Driver") == PLUGIN_NAME)


def remove(client, say, force=False):
    """Disable and remove the plugin; returns whether there was one.  Docker refuses to
    disable a plugin its networks use (unless forced); that refusal names them."""
    plugin = find(client)
    if plugin is None:
        return False
    _take_away(client, plugin, force, say)
    return True


def _take_away(client, plugin, force, say):
    import docker
    if plugin.enabled:
        try:
            plugin.disable(force=force)
        except docker.errors.APIError as exc:
            held = networks_using(client)
            raise CalicoError(
                "Docker will not disable %s: %s%s" % (
                    PLUGIN_NAME, _explain(exc),
                    "; networks using it: %s (remove them, or use --force)" % ", ".join(held)
                    if held else "")) from exc
    plugin.remove(force=True)
    say("Removed %s." % PLUGIN_NAME)

"""The node's containers: `calico-node` (the agent and BIRD), and with --libnetwork
`calico-libnetwork` (the plugin) and `calico-dns` (names across hosts, calicoctl/dnsproxy/).

What each container should look like is a pure function of the node's settings
(`node_container_spec`, `plugin_container_spec`, `dns_container_spec`); `ensure_container`
compares that with what is
there and starts, restarts or leaves it alone.  The whole spec, with the image's id, is hashed
into a label, so "same configuration" means exactly the same container would be made, and a
rebuilt image counts as a change.
"""

import hashlib
import http.client
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field

from calicoctl.errors import CalicoError

log = logging.getLogger(__name__)

NODE_CONTAINER = "calico-node"
PLUGIN_CONTAINER = "calico-libnetwork"
DNS_CONTAINER = "calico-dns"
# calicoctl dns serve writes its ready file here once it answers (bound from the host, so
# `calicoctl node` can see it) and removes it when it stops.
DNS_RUN_DIR = "/var/run/calico"
DNS_READY_FILE = DNS_RUN_DIR + "/dns.ready"
DEFAULT_LOG_DIR = "/var/log/calico"
PLUGIN_DIR = "/run/docker/plugins"
PLUGIN_SOCKET = PLUGIN_DIR + "/calico.sock"
# Where the plugin keeps teardown calls that met an unreachable etcd (plugin/pending.py): bound
# from the host so they survive the plugin container being re-created.
PLUGIN_STATE_DIR = "/var/lib/calico"
CONFIG_LABEL = "org.projectcalico.config"
# Long enough for a cold start of the agent (first full resync, BIRD up); a healthy start here
# takes a few seconds.
HEALTH_TIMEOUT = 90.0


def image_tag():
    from calicoctl import __version__
    return __version__ if __version__.startswith("v") else "v" + __version__


def default_node_image():
    return "calico/node:" + image_tag()


def default_plugin_image():
    return "calico/node-libnetwork:" + image_tag()


# --- the Docker client ------------------------------------------------------------------------

def docker_host():
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def docker_client(timeout=60):
    """A docker-py client for DOCKER_HOST (or the default socket) that has answered a ping."""
    import docker
    import requests
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.InvalidVersion:
        # docker-py itself refuses engines older than API 1.24 (Docker 1.12).
        from calicoctl.node.checks import docker_too_old
        raise CalicoError(docker_too_old("Docker at %s" % docker_host()) + ".")
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise CalicoError("Cannot reach Docker at %s (%s). Start dockerd or set DOCKER_HOST."
                          % (docker_host(), _one_line(exc)))
    return client


def docker_socket_path():
    """The engine's socket on this host, to mount into the plugin container."""
    host = docker_host()
    if not host.startswith("unix://"):
        raise CalicoError("--libnetwork needs Docker on a local unix socket (the plugin talks to "
                          "it); DOCKER_HOST is %s." % host)
    return os.path.realpath(host[len("unix://"):])


# --- desired containers (pure) ----------------------------------------------------------------

@dataclass
class NodeSettings:
    node_name: str
    node_image: str
    etcd_env: dict
    log_dir: str = DEFAULT_LOG_DIR
    libnetwork_image: str = None          # None: no plugin container
    tls_files: list = field(default_factory=list)
    docker_socket: str = "/var/run/docker.sock"
    missing_caps: list = field(default_factory=list)   # capabilities this host withholds
    managed_plugin: bool = False          # the driver as a Docker managed plugin, not calico-libnetwork


# Linux capability numbers -> Docker's names (include/uapi/linux/capability.h order).
CAPABILITIES = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
]


def missing_capabilities(status_path="/proc/self/status",
                         last_cap_path="/proc/sys/kernel/cap_last_cap"):
    """Capabilities the kernel knows but this process's bounding set lacks.

    A privileged container asks for every capability; where the host itself runs without some
    (a sandboxed VM withholding CAP_SYS_RESOURCE, say) runc fails with "unable to apply caps".
    dockerd runs beside us with the same bounding set, so ours tells what it can grant.
    """
    try:
        with open(last_cap_path) as f:
            last = int(f.read())
        with open(status_path) as f:
            bounding = next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))
    except (OSError, ValueError, StopIteration):
        return []
    return [CAPABILITIES[n] if n < len(CAPABILITIES) else "CAP_%d" % n
            for n in range(last + 1) if not bounding >> n & 1]


# The capabilities the fallback may name. Docker 20.10 knows names only up to CAP_AUDIT_READ
# (its oci/caps list stops there: the runc of its day did not know PERFMON, BPF or
# CHECKPOINT_RESTORE) and refuses any other as "unknown capability", so those three are never
# asked for; the agent and plugin need none of them.
GRANTABLE_CAPABILITIES = CAPABILITIES[:CAPABILITIES.index("AUDIT_READ") + 1]


def granted_capabilities(missing_caps):
    """The capabilities to ask for when privileged is impossible: every grantable one the host
    has, in kernel order."""
    missing = set(missing_caps)
    return [c for c in GRANTABLE_CAPABILITIES if c not in missing]


def privilege_options(missing_caps):
    """Docker options for a container that manages the host's network.

    privileged=True where the host allows it. Otherwise an explicit list of what the host has,
    with /proc/sys writable (systempaths=unconfined: the agent and plugin set sysctls such as
    proxy_arp), no seccomp filter and no AppArmor profile (Docker's default one forbids writes
    under /proc/sys/net) -- what privileged gives, minus what the host withholds.

    The list is exact: CapDrop ALL, then CapAdd the list, which Docker 20.10 to 28 all read as
    "exactly these". A capability the host lacks is never named at all: Docker 23 and later
    check every CapAdd/CapDrop name against what the daemon itself holds and refuse the
    container ("invalid CapDrop: ... not available in the current environment"), while
    CapAdd ALL on 20.10 asks runc for the missing one too ("unable to apply caps").
    """
    if not missing_caps:
        return {"privileged": True}
    return {"cap_add": granted_capabilities(missing_caps), "cap_drop": ["ALL"],
            "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
            "unmask_system_paths": True}


def _common_env(settings):
    env = dict(settings.etcd_env)
    # The containers share the host's network but not its UTS namespace, so the node name is
    # passed explicitly (one name for CLI, agent and plugin).
    env["CALICO_HOSTNAME"] = settings.node_name
    return env


def _volumes(settings):
    volumes = {settings.log_dir: {"bind": DEFAULT_LOG_DIR, "mode": "rw"}}
    for path in settings.tls_files:
        volumes[path] = {"bind": path, "mode": "ro"}
    return volumes


def node_container_spec(settings):
    return {
        "name": NODE_CONTAINER,
        "image": settings.node_image,
        "command": ["calicoctl", "felix", "serve"],
        "environment": _common_env(settings),
        "volumes": _volumes(settings),
        # Host network: the agent programs this host's routes and iptables and BIRD peers from
        # the host's address.  Privileged: iptables, ipsets, sysctls and routes need it.
        "network_mode": "host",
        "restart_policy": {"Name": "unless-stopped"},
        **privilege_options(settings.missing_caps),
    }


def plugin_container_spec(settings):
    volumes = _volumes(settings)
    # Docker finds remote drivers by their socket in /run/docker/plugins; the plugin asks the
    # engine about containers and networks through the engine's socket.
    volumes[PLUGIN_DIR] = {"bind": PLUGIN_DIR, "mode": "rw"}
    volumes[settings.docker_socket] = {"bind": "/var/run/docker.sock", "mode": "rw"}
    volumes[PLUGIN_STATE_DIR] = {"bind": PLUGIN_STATE_DIR, "mode": "rw"}
    env = _common_env(settings)
    env["DOCKER_HOST"] = "unix:///var/run/docker.sock"
    return {
        "name": PLUGIN_CONTAINER,
        "image": settings.libnetwork_image,
        "command": ["calicoctl", "plugin", "serve"],
        "environment": env,
        "volumes": volumes,
        "network_mode": "host",
        "restart_policy": {"Name": "unless-stopped"},
        **privilege_options(settings.missing_caps),
    }


def dns_container_spec(settings):
    """calicoctl dns serve, from the plugin's image.  It works inside workloads' network
    namespaces, which it finds at Docker's sandbox paths through dockerd's own root
    (/proc/<dockerd's pid>/root/var/run/docker/netns/<id>): hence the host's pid namespace,
    and no mount of the host's netns folder (whose propagation would have to be shared)."""
    volumes = _volumes(settings)
    volumes[settings.docker_socket] = {"bind": "/var/run/docker.sock", "mode": "rw"}
    volumes[DNS_RUN_DIR] = {"bind": DNS_RUN_DIR, "mode": "rw"}
    env = _common_env(settings)
    env["DOCKER_HOST"] = "unix:///var/run/docker.sock"
    return {
        "name": DNS_CONTAINER,
        "image": settings.libnetwork_image,
        "command": ["calicoctl", "dns", "serve", "--ready-file=" + DNS_READY_FILE],
        "environment": env,
        "volumes": volumes,
        "network_mode": "host",
        "pid_mode": "host",
        "restart_policy": {"Name": "unless-stopped"},
        **privilege_options(settings.missing_caps),
    }


def config_hash(spec, image_id):
    text = json.dumps({"spec": spec, "image_id": image_id}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- health -----------------------------------------------------------------------------------

class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def plugin_answers(path=PLUGIN_SOCKET, timeout=2.0):
    """True if the plugin socket answers /Plugin.Activate naming the network driver."""
    conn = _UnixHTTPConnection(path, timeout)
    try:
        conn.request("POST", "/Plugin.Activate", body=b"{}",
                     headers={"Content-Type": "application/vnd.docker.plugins.v1.2+json"})
        resp = conn.getresponse()
        body = json.loads(resp.read() or b"{}")
        return resp.status == 200 and "NetworkDriver" in body.get("Implements", [])
    except (OSError, ValueError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def dns_ready(path=DNS_READY_FILE):
    return os.path.exists(path)


def clear_dns_ready(path=DNS_READY_FILE):
    """Forget an earlier run's ready file (a killed one leaves it), so only the new one counts."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _pid_namespace(pid):
    try:
        return os.readlink("/proc/%d/ns/pid" % pid)
    except OSError:
        return None


def node_holds_bgp_port(client_factory):
    """checks.check_bgp_port's test for calico-node's own processes: those in the pid namespace
    of the running calico-node container (its BIRD, on a re-run of `calicoctl node`).  When the
    holders cannot be seen at all, a running calico-node is taken to be the one."""
    import docker

    def holds(pids):
        try:
            container = find_container(client_factory(), NODE_CONTAINER)
            if container is None or not container_running(container):
                return False
        except (CalicoError, docker.errors.DockerException):
            return False          # no Docker: nothing of ours runs (the Docker check says why)
        namespace = _pid_namespace(container.attrs.get("State", {}).get("Pid") or 0)
        if not pids or namespace is None:
            return True
        return all(_pid_namespace(pid) == namespace for pid in pids)
    return holds


def container_running(container):
    container.reload()
    return container.status == "running"


def _exit_message(container):
    state = container.attrs.get("State", {})
    logs = container.logs(tail=5).decode(errors="replace").strip().splitlines()
    return "%s exited (code %s)%s; see 'docker logs %s'" % (
        container.name, state.get("ExitCode"), (": " + logs[-1]) if logs else "",
        container.name)


def wait_healthy(container, healthy, what, timeout=HEALTH_TIMEOUT):
    """Poll until healthy() while the container keeps running; CalicoError otherwise."""
    deadline = time.monotonic() + timeout
    interval = 0.1
    while True:
        if not container_running(container):
            raise CalicoError(_exit_message(container))
        if healthy():
            return
        if time.monotonic() > deadline:
            raise CalicoError("%s is running but %s after %.0f s; see 'docker logs %s'." % (
                container.name, what, timeout, container.name))
        time.sleep(interval)
        interval = min(interval * 1.5, 1.0)


# --- starting and stopping --------------------------------------------------------------------

def find_container(client, name):
    import docker
    try:
        return client.containers.get(name)
    except docker.errors.NotFound:
        return None


def image_id(client, image):
    import docker
    try:
        return client.images.get(image).id
    except docker.errors.ImageNotFound:
        pass
    try:
        return client.images.pull(image).id
    except docker.errors.DockerException as exc:
        raise CalicoError("Image %s is not on this host and could not be pulled (%s); build it "
                          "with 'make images' or 'docker load' it." % (image, _one_line(exc)))


def ensure_container(client, spec, healthy, unhealthy_what, say, before_start=None):
    """Make the container match spec and wait until healthy().  Returns "unchanged"/"started".

    An existing container with the same configuration hash that is running and healthy is left
    alone; anything else (stopped, changed, unhealthy) is removed and made again.
    """
    wanted = config_hash(spec, image_id(client, spec["image"]))
    existing = find_container(client, spec["name"])
    if existing is not None:
        same = existing.labels.get(CONFIG_LABEL) == wanted
        if same and container_running(existing) and healthy():
            say("%s is already running with this configuration; left alone." % spec["name"])
            return "unchanged"
        say("%s: %s; removing it." % (spec["name"], "configuration changed" if not same else
                                       "not running or not healthy"))
        existing.remove(force=True)
    if before_start:
        before_start()
    say("Starting %s (image %s)." % (spec["name"], spec["image"]))
    import docker
    try:
        container = create_and_start(client, spec, {CONFIG_LABEL: wanted})
    except docker.errors.APIError as exc:
        leftover = find_container(client, spec["name"])
        if leftover is not None:
            leftover.remove(force=True)
        raise CalicoError("Docker could not start %s: %s" % (
            spec["name"], exc.explanation or _one_line(exc)))
    say("Waiting for %s to be healthy..." % spec["name"])
    wait_healthy(container, healthy, unhealthy_what)
    say("%s is running." % spec["name"])
    return "started"


def create_and_start(client, spec, labels):
    """docker run -d, through the low-level API: docker-py's high-level one cannot clear the
    masked and read-only /proc paths (the CLI's --security-opt systempaths=unconfined)."""
    host_config = client.api.create_host_config(
        binds=spec["volumes"], network_mode=spec["network_mode"],
        restart_policy=spec["restart_policy"], privileged=spec.get("privileged", False),
        pid_mode=spec.get("pid_mode"),
        cap_add=spec.get("cap_add"), cap_drop=spec.get("cap_drop"),
        security_opt=spec.get("security_opt"))
    if spec.get("unmask_system_paths"):
        host_config["MaskedPaths"] = []
        host_config["ReadonlyPaths"] = []
    created = client.api.create_container(
        spec["image"], command=spec["command"], name=spec["name"],
        environment=spec["environment"], labels=labels, host_config=host_config)
    client.api.start(created["Id"])
    return client.containers.get(created["Id"])


def start_node(client, store, settings, say):
    """Start (or leave alone) calico-node and, with a libnetwork image, calico-libnetwork (or
    the managed plugin) and calico-dns."""
    from calicoctl.felix import status
    node_spec = node_container_spec(settings)
    # Forget the previous agent's liveness first, so only the new one's report counts.
    ensure_container(client, node_spec, lambda: status.agent_alive(store, settings.node_name),
                     "the agent has not reported itself alive in etcd", say,
                     before_start=lambda: status.clear_alive(store, settings.node_name))
    if settings.libnetwork_image and settings.managed_plugin:
        from calicoctl.node import managed_plugin
        other = find_container(client, PLUGIN_CONTAINER)
        if other is not None:
            say("Removing %s: the managed plugin replaces it." % PLUGIN_CONTAINER)
            other.stop(timeout=10)
            other.remove(force=True)
        managed_plugin.install(
            client, settings.libnetwork_image,
            managed_plugin.plugin_config(settings.docker_socket, settings.tls_files),
            managed_plugin.settings_env(settings.etcd_env, settings.node_name), say)
    elif settings.libnetwork_image:
        ensure_container(client, plugin_container_spec(settings), plugin_answers,
                         "the plugin socket %s does not answer /Plugin.Activate" % PLUGIN_SOCKET,
                         say)
    if settings.libnetwork_image:
        ensure_container(client, dns_container_spec(settings), dns_ready,
                         "it has not written %s (not answering yet)" % DNS_READY_FILE, say,
                         before_start=clear_dns_ready)


def stop_node(client, say, timeout=10, force=False):
    """Stop and remove the node's containers and its managed plugin; returns the names that
    were there.  calico-dns goes first: stopping, it hands every workload back to Docker's
    resolver alone.  A managed plugin that networks still use stops nothing (Docker would
    refuse to disable it), unless forced."""
    from calicoctl.node import managed_plugin
    plugin = managed_plugin.find(client)
    if plugin is not None and plugin.enabled and not force:
        held = managed_plugin.networks_using(client)
        if held:
            raise CalicoError(
                "Docker will not disable %s while networks use it: %s. Remove them first, or "
                "use --force." % (managed_plugin.PLUGIN_NAME, ", ".join(held)))
    stopped = []
    for name in (DNS_CONTAINER, PLUGIN_CONTAINER, managed_plugin.PLUGIN_NAME, NODE_CONTAINER):
        if name == managed_plugin.PLUGIN_NAME:
            if managed_plugin.remove(client, say, force=force):
                stopped.append(name)
            continue
        container = find_container(client, name)
        if container is None:
            continue
        say("Stopping %s." % name)
        container.stop(timeout=timeout)
        container.remove(force=True)
        stopped.append(name)
    return stopped


def follow_logs(client, say):
    """--detach=false: show calico-node's output until interrupted, then stop the node."""
    container = find_container(client, NODE_CONTAINER)
    try:
        for chunk in container.logs(stream=True, follow=True):
            os.write(1, chunk)
    except KeyboardInterrupt:
        pass
    stop_node(client, say)


def _one_line(exc):
    text = str(exc).strip().splitlines()
    return text[-1] if text else exc.__class__.__name__

"""Learning names from Docker, outside every driver callback.

Docker calls the driver with its own locks held, and a new network is not even visible during
CreateNetwork, so the callbacks never ask Docker anything.  Instead this background thread
follows Docker's event stream (network create/connect) and, at start-up and after every
reconnect, lists Docker's Calico networks.  What it learns goes to etcd:
  - a network's name -> its record, the profile (created with the default rules), and the
    profile_ids of endpoints that were created before the name was known (closed until then);
  - a container's name and id -> its endpoint record (so `calicoctl endpoint show` tells an
    operator which container is which).

A container's "connect" event comes while Docker is still starting it, and what it teaches
(the container's name on its endpoint) costs an inspect of the container and a write, CPU that
dockerd would otherwise have while the user waits.  So that waits, on a thread of its own,
until the container's "start" event.  A connect to a container already running (`docker
network connect`) is learned at once: the learner knows which containers run (listed at each
sync, then kept by start and die events).  CONNECT_SETTLE bounds the wait for a start that
never comes.  Nothing depends on it in the meantime: an endpoint whose network had no name yet
when it was created is named by the driver itself (network_driver._name_if_learned).
"""

import logging
import threading
import time

from calicoctl.datastore import networks, profiles
from calicoctl.errors import CalicoError, NotFoundError
from calicoctl.plugin import records

log = logging.getLogger(__name__)

# The driver's names: the plugin in its container serves "calico"; as a managed plugin,
# Docker calls it "calico:latest" (calicoctl/node/managed_plugin.py).  Either is ours, and a
# network Docker lists under neither would look forgotten to reconcile.py.
DRIVERS = ("calico", "calico:latest")
RECONNECT_MAX_DELAY = 5.0
# How long a connect's container waits for its start event before it is learned anyway.
CONNECT_SETTLE = 2.0
# The events we follow: networks' create and connect, containers' start and die.
EVENTS = {"type": ["network", "container"], "event": ["create", "connect", "start", "die"]}


def default_docker_factory():
    import docker   # deferred: docker-py is only needed by the thread
    return docker.from_env(timeout=30).api


class DockerView:
    """What Docker knows on this host, from one listing."""

    def __init__(self):
        self.networks = {}        # network id -> name (Calico networks only)
        self.endpoints = {}       # endpoint id -> (network id, container id, container name, ips)


class NameLearner:
    def __init__(self, store, host, docker_factory=default_docker_factory, on_sync=None):
        self.store = store
        self.host = host
        self.docker_factory = docker_factory
        # Called (on its own thread) with the view after the first listing and after every
        # listing that follows a lost connection: dockerd may have crashed and forgotten
        # containers without telling the driver.
        self.on_sync = on_sync
        self._stop = threading.Event()
        self._thread = None
        self._client = None
        self.synced = threading.Event()
        self.settle = CONNECT_SETTLE
        self._known = {}          # network id -> the name learn_network recorded
        self._running = set()     # ids of the containers running, as far as events tell
        # Container id -> [monotonic time it is due, [(network id, network name)]].
        self._waiting = {}
        self._due = threading.Condition()
        self._worker = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self):
        self._thread = threading.Thread(target=self._run, name="docker-names", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        with self._due:
            self._due.notify_all()
        client = self._client
        if client is not None:
            try:
                client.close()     # breaks the blocking event read
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass

    def _run(self):
        delay = 0.2
        while not self._stop.is_set():
            try:
                self._client = self.docker_factory()
                events = self._client.events(decode=True, filters=EVENTS)
                view = self.sync()
                if self.on_sync is not None:
                    threading.Thread(target=self.on_sync, args=(view,),
                                     name="reconcile", daemon=True).start()
                self.synced.set()
                delay = 0.2
                for event in events:
                    if self._stop.is_set():
                        return
                    self.handle_event(event)
            except Exception as exc:  # noqa: BLE001 - Docker restarting, etcd blip: retry
                if self._stop.is_set():
                    return
                log.info("Docker event stream unavailable (%s); retrying in %.1f s", exc, delay)
            self._stop.wait(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY)

    # -- learning ----------------------------------------------------------------------------

    def sync(self, client=None):
        """List Docker's Calico networks and their containers; record every name."""
        client = client or self._client
        view = DockerView()
        # Before the networks: a container that starts meanwhile is then either listed or
        # seen starting (the event stream is already open).
        self._running.update(c["Id"] for c in client.containers())
        for net in client.networks(filters={"driver": list(DRIVERS)}):
            view.networks[net["Id"]] = net["Name"]
        for network_id, name in view.networks.items():
            self.learn_network(network_id, name)
            detail = client.inspect_network(network_id)
            for container_id, info in (detail.get("Containers") or {}).items():
                ips = [a.split("/")[0] for a in (info.get("IPv4Address"), info.get("IPv6Address"))
                       if a]
                view.endpoints[info.get("EndpointID")] = (network_id, container_id,
                                                          info.get("Name"), ips)
                self.learn_container(info.get("EndpointID"), container_id, info.get("Name"))
        log.info("Docker knows %d Calico network(s) with %d endpoint(s) here",
                 len(view.networks), len(view.endpoints))
        return view

    def handle_event(self, event):
        actor = event.get("Actor") or {}
        action = event.get("Action")
        if event.get("Type") == "container":
            if action == "start":
                self._running.add(actor.get("ID"))
                self._due_now(actor.get("ID"))
            elif action == "die":
                self._running.discard(actor.get("ID"))
            return
        attrs = actor.get("Attributes") or {}
        if attrs.get("type") not in DRIVERS:
            return
        network_id, name = actor.get("ID"), attrs.get("name")
        try:
            if action == "create":
                self.learn_network(network_id, name)
            elif action == "connect" and attrs.get("container"):
                # Each container start brings one of these: a network whose name we recorded
                # costs nothing here (its endpoints got their profile then), and the
                # container waits for its start (see the module docstring).
                if not (self._known.get(network_id) == name or
                        self.learn_network(network_id, name, scan_if_known=False)):
                    return
                if attrs["container"] in self._running:
                    self._learn_from_container(self._client, network_id, attrs["container"],
                                               name)
                else:
                    self._wait_for_start(attrs["container"], network_id, name)
        except CalicoError as exc:
            log.warning("Could not record what Docker's %s event says: %s", action, exc)

    # -- containers, once started ------------------------------------------------------------

    def _wait_for_start(self, container_id, network_id, name):
        with self._due:
            if self._worker is None:
                self._worker = threading.Thread(target=self._learn_started, daemon=True,
                                                name="docker-containers")
                self._worker.start()
            entry = self._waiting.setdefault(container_id,
                                             [time.monotonic() + self.settle, []])
            entry[1].append((network_id, name))
            self._due.notify_all()

    def _due_now(self, container_id):
        with self._due:
            if container_id in self._waiting:
                self._waiting[container_id][0] = 0.0
                self._due.notify_all()

    def _learn_started(self):
        client = None
        while not self._stop.is_set():
            with self._due:
                now = time.monotonic()
                ready = [c for c, (at, _) in self._waiting.items() if at <= now]
                if not ready:
                    soonest = min((at for at, _ in self._waiting.values()), default=None)
                    self._due.wait(None if soonest is None else soonest - now)
                    continue
                batch = [(c, self._waiting.pop(c)[1]) for c in ready]
            for container_id, joined in batch:
                try:
                    client = client or self.docker_factory()
                    for network_id, name in joined:
                        self._learn_from_container(client, network_id, container_id, name)
                except Exception as exc:  # noqa: BLE001 - gone already, Docker or etcd away
                    # The next listing (a reconnect, a restart) records what this missed.
                    log.info("Could not record the name of container %s: %s",
                             container_id[:12], exc)
                    client = None
        if client is not None:
            client.close()

    def _learn_from_container(self, client, network_id, container_id, network_name):
        info = client.inspect_container(container_id)
        networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
        endpoint_id = (networks.get(network_name) or {}).get("EndpointID")
        if endpoint_id:
            self.learn_container(endpoint_id, container_id, (info.get("Name") or "").lstrip("/"),
                                 profile=network_name)

    def learn_network(self, network_id, name, scan_if_known=True):
        """Record the network's name and make its profile; give the name to this host's
        endpoints of the network that lack it (all of them when the name is new, or when
        scan_if_known).  True if the network is ours."""
        if not network_id or not name:
            return False
        record = networks.read_network(self.store, network_id)
        if record is None:
            return False      # not created through us (or already deleted)
        scan = scan_if_known
        if record.name != name:
            record = networks.set_network_name(self.store, network_id, name)
            log.info("Network %s is named %s", network_id[:12], name)
            scan = True
        if record is None:
            return False
        profiles.create_profile(self.store, name, exist_ok=True)
        self._known[network_id] = name
        if scan:
            for ep in records.host_endpoints(self.store, self.host):
                if ep.extra.get("network_id") == network_id and ep.profile_ids != [name]:
                    records.update_endpoint_fields(self.store, ep, profile_ids=[name])
                    log.info("Endpoint %s now has profile %s", ep.endpoint_id[:12], name)
        return True

    def learn_container(self, endpoint_id, container_id, container_name, profile=None):
        """Record which container an endpoint belongs to (and, given its network's name as
        profile, make sure it has that profile)."""
        if not endpoint_id:
            return
        try:
            ep = records.endpoint_of(self.store, self.host, endpoint_id)
        except NotFoundError:
            return            # another host's, or already gone
        fix_profile = profile is not None and ep.profile_ids != [profile]
        if ep.extra.get("container_id") != container_id or \
                ep.extra.get("container_name") != container_name or fix_profile:
            records.update_endpoint_fields(self.store, ep,
                                           profile_ids=[profile] if fix_profile else None,
                                           container_id=container_id,
                                           container_name=container_name)
            log.info("Endpoint %s belongs to container %s (%s)", endpoint_id[:12],
                     container_name, container_id[:12])
            if fix_profile:
                log.info("Endpoint %s now has profile %s", endpoint_id[:12], profile)


def fresh_sync(learner):
    """A listing on its own connection (the learner's is busy streaming events)."""
    client = learner.docker_factory()
    try:
        return learner.sync(client)
    finally:
        client.close()


def wait_until(predicate, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()

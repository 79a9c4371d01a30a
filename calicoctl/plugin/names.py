"""Learning names from Docker, outside every driver callback.

Docker calls the driver with its own locks held, and a new network is not even visible during
CreateNetwork, so the callbacks never ask Docker anything.  Instead this background thread
follows Docker's event stream (network create/connect) and, at start-up and after every
reconnect, lists Docker's Calico networks.  What it learns goes to etcd:
  - a network's name -> its record, the profile (created with the default rules), and the
    profile_ids of endpoints that were created before the name was known (closed until then);
  - a container's name and id -> its endpoint record (so `calicoctl endpoint show` tells an
    operator which container is which).
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
        self._known = {}          # network id -> the name learn_network recorded and profiled

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self):
        self._thread = threading.Thread(target=self._run, name="docker-names", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
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
                events = self._client.events(decode=True, filters={"type": ["network"]})
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
        attrs = (event.get("Actor") or {}).get("Attributes") or {}
        if attrs.get("type") not in DRIVERS:
            return
        network_id = (event.get("Actor") or {}).get("ID")
        action = event.get("Action")
        try:
            if action == "create":
                self.learn_network(network_id, attrs.get("name"))
            elif action == "connect" and attrs.get("container"):
                # Each container start brings one of these while Docker is still starting it,
                # so it must cost a few reads, not a scan of the host's endpoints: the network's
                # other endpoints got their profile when the name was learned (a name learnt
                # here before costs no read at all), and this one gets it (if it raced that)
                # with its container's name.
                if self._known.get(network_id) == attrs.get("name") or \
                        self.learn_network(network_id, attrs.get("name"), scan_if_known=False):
                    self._learn_from_container(network_id, attrs["container"],
                                               attrs.get("name"))
        except CalicoError as exc:
            log.warning("Could not record what Docker's %s event says: %s", action, exc)

    def _learn_from_container(self, network_id, container_id, network_name):
        info = self._client.inspect_container(container_id)
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
        self._known[network_id] = name      # Docker never reuses a network id
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

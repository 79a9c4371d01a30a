"""The agent's composition root: etcd snapshot + watch -> state -> desired state -> executor.

Loop: wait for /calico/v1/Ready; read all of /calico once (one consistent index); program the
host from it (removing chains and sets of ours nothing wants); then watch from that index,
applying events in batches.  A lost watch (index cleared, etcd restarted) means a fresh
snapshot and a full sync.  Between events: poll for workload interfaces appearing, refresh the
liveness key, and every refresh_interval repair what someone removed by hand.
"""

import contextlib
import gc
import ipaddress
import logging
import time

from calicoctl.dataplane.routing import ensure_tunnel, present_interfaces
from calicoctl.datastore import keys
from calicoctl.datastore.result import HistoryLost
from calicoctl.errors import DataplaneError, DatastoreError
from calicoctl.felix import routes as route_calc
from calicoctl.felix import status
from calicoctl.felix.bird import render_config
from calicoctl.felix.state import Changes, FelixState

log = logging.getLogger(__name__)

WATCH_TIMEOUT = 0.25     # seconds: also the interface polling period
MAX_BATCH = 2000         # events applied at once at most (bounds latency of the first one)
RETRY_DELAY = 1.0        # seconds between attempts while etcd is down
# Above this many chains a refresh reads back every rule only every DEEP_EVERY-th time (reading
# 100,000 rules costs seconds of CPU); the others check the entry chains and jumps only.
DEEP_CHAINS = 3000
DEEP_EVERY = 10


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic garbage collector off for the block, which builds long-lived state;
    after it, every object then alive is frozen (gc.freeze), so no later collection scans the
    state again, and the collector is as it was. When the block runs again (a later resync,
    rare), what was frozen is unfrozen and collected once first, so a cycle the last one froze
    (there should be none) is not kept for ever."""
    was_enabled = gc.isenabled()
    if gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


class Agent:
    def __init__(self, store, host, dataplane, birds=None, refresh_interval=None,
                 log_level=None, clock=time.monotonic):
        self.store = store
        self.host = host
        self.dataplane = dataplane
        self.birds = birds or {}          # 4 / 6 -> BirdProcess (bird / bird6)
        self.refresh_override = refresh_interval
        self.log_level_override = log_level
        self.clock = clock
        self.started = clock()
        self.state = FelixState(host)
        # The dataplane says which kind of desired state it programs (iptables or nftables).
        self.desired = dataplane.desired_state() if dataplane is not None else None
        self.index = None
        self.ifaces = set()
        self.ep_routes = {}               # local endpoint key -> set(Route) wanted
        self.ep_names = {}                # local endpoint key -> its interface name
        self.local_names = {}             # and back: interface name -> local endpoint key
        self.tunnel_routes = set()
        self.tunnel_ok = {}               # device -> bool (checked once per device)
        self.next_status = 0
        self.next_refresh = 0
        self.refreshes = 0
        self.stopping = False

    # -- outer loop --------------------------------------------------------------------------

    def run(self, once=False):
        """Serve until stop(); once=True returns after the first full sync (tests, bench)."""
        self.dataplane.prepare()
        while not self.stopping:
            try:
                if not self.wait_ready():
                    return
                self.resync()
                if once:
                    return
                self.watch_loop()
            except HistoryLost as exc:
                log.warning("Watch fell too far behind (%s); resyncing", exc)
            except DatastoreError as exc:
                log.error("Lost etcd (%s); resyncing when it is back", exc)
                self._sleep(RETRY_DELAY)

    def stop(self):
        self.stopping = True

    def _sleep(self, seconds):
        end = self.clock() + seconds
        while not self.stopping and self.clock() < end:
            time.sleep(min(0.1, seconds))

    def wait_ready(self):
        logged = False
        while not self.stopping:
            try:
                if self.store.get(keys.READY) == "true":
                    return True
            except DatastoreError as exc:
                log.warning("Waiting for etcd: %s", exc)
            if not logged:
                log.info("Waiting for %s to be true", keys.READY)
                logged = True
            self._sleep(RETRY_DELAY)
        return False

    # -- snapshot and full sync ----------------------------------------------------------------

    def resync(self):
        # A snapshot makes several objects per key, and keeps them: the cyclic collector ran
        # about 270 times over the growing heap, twice over all of it, and found nothing (90 to
        # 120 ms of a 1.1 s cold start at 10,000 endpoints, bench/felix.py). The state it
        # replaces has no cycles, so refcounting frees it and the collector can wait. Merely
        # paused, the collector went over all of the new state in the first minute after
        # instead (0.2 s more CPU in that minute at rest): hence frozen.
        with collector_paused():
            self._resync()

    def _resync(self):
        items, index = self.store.snapshot(keys.ROOT)
        self.index = index + 1
        self.state.load_snapshot(items)
        self._apply_log_level()
        self.desired = self.dataplane.desired_state()
        self.desired.update(self.state, Changes(), full=True)
        t0 = self.clock()
        self.dataplane.sync(self.desired, full=True)
        self.ifaces = present_interfaces(self.state.config.interface_prefix)
        self.dataplane.routes.programmed = set()
        self.ep_routes = {k: route_calc.endpoint_routes(ep)
                          for k, ep in self.state.endpoints.items() if k[0] == self.host}
        self.ep_names = {k: ep.name for k, ep in self.state.endpoints.items()
                         if k[0] == self.host}
        self.local_names = {name: k for k, name in self.ep_names.items()}
        self._update_tunnels()
        self._apply_routes()
        self._update_bird()
        log.info("Programmed %d local endpoints in %.2fs (etcd index %d)",
                 len(self.ep_routes), self.clock() - t0, self.index)
        self._report_endpoints(set(self.ep_routes) | set(self.state.reported))
        self.next_refresh = self.clock() + self.refresh_interval()

    def refresh_interval(self):
        return self.refresh_override or self.state.config.refresh_interval

    # -- watching ------------------------------------------------------------------------------

    def watch_loop(self):
        while not self.stopping:
            self.poll_once()

    def poll_once(self):
        """Wait (briefly) for events, apply them as one batch, then do periodic work."""
        changes = Changes()
        count = 0
        while count < MAX_BATCH:
            result = self.store.watch(keys.ROOT, self.index, WATCH_TIMEOUT)
            if result is None:
                break
            self.index = result.modified_index + 1
            value = None if result.deleted else result.value
            count += 1
            if result.is_dir and value is not None:
                continue          # a directory being created says nothing by itself
            self.state.apply(result.key, value, changes)
            if result.store_index is None or result.store_index < self.index:
                break             # nothing more is waiting: apply what we have
        if changes:
            self.apply(changes)
        self.tick()

    def apply(self, changes):
        if changes.ready and not self.state.ready:
            log.warning("%s is no longer true; keeping the host as it is", keys.READY)
        if changes.config:
            self._apply_log_level()
        delta = self.desired.update(self.state, changes)
        try:
            self.dataplane.apply(delta)
        except DataplaneError as exc:
            log.error("Applying a change failed: %s\ninput:\n%s", exc, exc.input_text)
            self.dataplane.sync(self.desired, full=True)
        # Routes change only for the endpoints that changed: a new endpoint costs the same at
        # 10,000 endpoints as at 10 (bench/felix.py).  Tunnels change them all.
        gone, left = set(), set()
        for key in changes.local_endpoints:
            had = self.ep_routes.pop(key, set())
            gone |= had
            old_name = self.ep_names.pop(key, None)
            if self.local_names.get(old_name) == key:
                del self.local_names[old_name]
            ep = self.state.endpoints.get(key)
            if ep:
                self.ep_routes[key] = route_calc.endpoint_routes(ep)
                self.ep_names[key] = ep.name
                self.local_names[ep.name] = key
            # Per endpoint, not per host: a new endpoint given the address in the same batch
            # must not inherit the old one's flows.
            left |= {r.dst for r in had} - {r.dst for r in self.ep_routes.get(key, ())}
        if changes.pools or changes.affinities or changes.hosts:
            self._update_tunnels()
            self._apply_routes()
        else:
            wanted = self._routes_of(changes.local_endpoints)
            self.dataplane.routes.update(wanted, gone - wanted)
        self._forget_flows(left)
        if changes.bgp or changes.pools or changes.affinities or changes.config \
                or self._bird_sees(changes.local_endpoints):
            self._update_bird()
        self._report_endpoints(changes.local_endpoints)

    def tick(self):
        now = self.clock()
        ifaces = present_interfaces(self.state.config.interface_prefix)
        if ifaces != self.ifaces:
            appeared, vanished = ifaces - self.ifaces, self.ifaces - ifaces
            self.ifaces = ifaces
            # Only the endpoints whose interface came or went: their routes go in (or are
            # forgotten: the kernel removed them with the interface).
            waiting = {self.local_names[n] for n in appeared if n in self.local_names}
            lost = {self.local_names[n] for n in vanished if n in self.local_names}
            self.dataplane.routes.update(self._routes_of(waiting),
                                         {r for k in lost for r in self.ep_routes.get(k, ())})
            self._report_endpoints(waiting)
        if now >= self.next_status:
            try:
                status.report_alive(self.store, self.host, now - self.started,
                                    getattr(self.dataplane, "kind", None))
            except DatastoreError as exc:
                log.warning("Cannot report liveness: %s", exc)
            self.next_status = now + status.STATUS_INTERVAL
        if now >= self.next_refresh:
            self.refresh()
            self.next_refresh = now + self.refresh_interval()

    def refresh(self):
        """Repair what someone else removed: chains, jumps, sets, routes, BIRD."""
        self.refreshes += 1
        # Reading back costs with what there is to read: every chain (iptables), or every
        # endpoint's elements (nftables).
        size = max([len(c) for c in self.desired.chains.values()]
                   + [2 * len(self.desired.rendered)])
        try:
            if size < DEEP_CHAINS or self.refreshes % DEEP_EVERY == 0:
                self.dataplane.sync(self.desired, full=False)
            else:
                self.dataplane.quick_sync(self.desired)
        except DataplaneError as exc:
            log.error("Refresh failed: %s", exc)
        self.dataplane.routes.repair(self._wanted_routes())
        self._update_bird()

    # -- routes, tunnels, BIRD, status -----------------------------------------------------------

    def _wanted_routes(self):
        wanted = set(self.tunnel_routes)
        for routes in self.ep_routes.values():
            wanted |= {r for r in routes if r.dev in self.ifaces}
        return wanted

    def _routes_of(self, endpoint_keys):
        """The wanted routes of some local endpoints (those whose interface is present)."""
        return {r for k in endpoint_keys for r in self.ep_routes.get(k, ())
                if r.dev in self.ifaces}

    def _apply_routes(self):
        self.dataplane.routes.set_routes(self._wanted_routes())

    def _update_tunnels(self):
        pools = self.state.pool_list()
        routes = set()
        for pool in route_calc.ipip_pools(pools):
            dev = pool.ipip
            if dev not in self.tunnel_ok:
                self.tunnel_ok[dev] = ensure_tunnel(dev)
                if not self.tunnel_ok[dev]:
                    log.error("IPIP pool %s needs the %s device, but this kernel has no ipip "
                              "support: its traffic to other hosts is not tunnelled; "
                              "everything else carries on", pool.cidr, dev)
            if self.tunnel_ok[dev]:
                affinities = {h: a.get(4, set()) for h, a in self.state.affinities.items()}
                routes |= route_calc.tunnel_routes([pool], affinities, self.state.host_ips,
                                                   self.host)
        self.tunnel_routes = routes

    def _bird_sees(self, endpoint_keys):
        """Whether a changed local endpoint has an address outside this host's blocks (those
        are announced one by one, so BIRD's config changes)."""
        blocks = [ipaddress.ip_network(b) for vs in
                  self.state.affinities.get(self.host, {}).values() for b in vs]
        for key in endpoint_keys:
            ep = self.state.endpoints.get(key) or self.desired.rendered.get(key)
            if ep is None:
                return True
            for n in ep.ipv4_nets + ep.ipv6_nets:
                net = ipaddress.ip_network(n)
                if not any(net.version == b.version and net.subnet_of(b) for b in blocks):
                    return True
        return False

    def _update_bird(self):
        if not self.birds:
            return
        view = self.state.bgp_view()
        for version, bird in self.birds.items():
            # BIRD 1.x and 2 differ in syntax and daemons; the process knows which is installed.
            try:
                bird.configure(render_config(view, bird.major, version))
            except DataplaneError as exc:
                log.error("%s not configured: %s", bird.binary, exc)

    def _report_endpoints(self, endpoint_keys):
        """Write "up" for programmed endpoints whose interface exists; remove the report of
        endpoints that are gone or not (yet) up.  Only changes are written, so a restart with
        thousands of endpoints writes nothing it had already reported."""
        programmed = self.dataplane.routes.programmed
        reports = {}
        for key in endpoint_keys:
            if key[0] != self.host:
                continue
            ep = self.state.endpoints.get(key)
            routes = self.ep_routes.get(key)
            up = ep is not None and ep.state == "active" and ep.name in self.ifaces and (
                not routes or any(r in programmed for r in routes))
            if up and self.state.reported.get(key) != "up":
                reports[key] = "up"
            elif not up and key in self.state.reported:
                reports[key] = None
        if not reports:
            return
        failed = set(status.write_endpoint_reports(self.store, self.host, reports))
        for key, state in reports.items():
            if key in failed:
                continue
            if state is None:
                self.state.reported.pop(key, None)
            else:
                self.state.reported[key] = state

    def _forget_flows(self, addresses):
        """Addresses an endpoint gave up lose their tracked connections, so a workload that
        gets one next is not reachable through its predecessor's flows."""
        if not addresses:
            return
        try:
            self.dataplane.routes.forget_flows(addresses)
        except DataplaneError as exc:
            log.error("Cannot delete the tracked connections of %s: %s",
                      ", ".join(sorted(addresses)), exc)

    def _apply_log_level(self):
        level = self.log_level_override or self.state.config.log_level
        logging.getLogger("calicoctl").setLevel(level)

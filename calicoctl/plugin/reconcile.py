"""Reconciliation: after a daemon crash or a killed plugin, Docker may never call
Leave/DeleteEndpoint/ReleaseAddress for endpoints it has forgotten.  Whenever Docker answers
after not answering (the plugin's start, or dockerd back from a crash: each fresh listing of
names.py), this removes what this host recorded but Docker no longer knows: endpoints (veth,
record, address claims, Calico IPAM addresses), network records, addresses allocated under this
host's libnetwork handles that nothing holds, and workload veths that no endpoint record names
(a plugin killed inside CreateEndpoint, between creating the veth and writing the record).

Runs in the background so the socket serves meanwhile (dockerd may be starting and calling us).
Anything found is checked twice, a grace period apart, so a call in flight (an address requested
but its endpoint not yet created) is never mistaken for a leak.
"""

import ipaddress
import logging
import threading
import time

from calicoctl.datastore import endpoints, keys, networks
from calicoctl.datastore.models import interface_name
from calicoctl.errors import CalicoError
from calicoctl.plugin import records
from calicoctl.plugin.ipam_driver import handle_prefix
from calicoctl.plugin.network_driver import remove_endpoint_state

log = logging.getLogger(__name__)

GRACE_SECONDS = 3.0
_VETH_PREFIX = interface_name("")     # "cali": every workload veth's host side


class Reconciler:
    def __init__(self, store, host, ipam, network_driver, grace=GRACE_SECONDS):
        self.store = store
        self.host = host
        self.ipam = ipam
        self.network_driver = network_driver
        self.grace = grace
        self._running = threading.Lock()   # one pass at a time (start-up and a reconnect)

    def find_stale(self, view):
        """(endpoints, network ids, handles, veths) recorded for or left on this host that
        Docker does not know."""
        eps = [ep for ep in records.host_endpoints(self.store, self.host)
               if ep.endpoint_id not in view.endpoints]
        nets = [nid for nid, rec in networks.list_networks(self.store, quorum=True).items()
                if rec.host == self.host and nid not in view.networks]
        live_ips = {ip for (_, _, _, ips) in view.endpoints.values() for ip in ips}
        for ep in records.host_endpoints(self.store, self.host):
            if ep.endpoint_id in view.endpoints:
                live_ips.update(str(a) for a in ep.addresses())
        live_handles = set()
        for ip in live_ips:
            assignment = self._assignment(ip)
            if assignment and assignment.get("handle_id"):
                live_handles.add(assignment["handle_id"])
        prefix = handle_prefix(self.host)
        handles = [name for name, is_dir in self.store.list_dir(keys.IPAM_HANDLES_DIR)
                   if not is_dir and name.startswith(prefix) and name not in live_handles]
        # Any orchestrator's endpoints (`calicoctl container` makes cali veths too).
        named = {ep.name for ep in endpoints.list_endpoints(self.store, self.host, quorum=True)}
        veths = [name for name in self.network_driver.dataplane.list_veths(_VETH_PREFIX)
                 if name not in named]
        return eps, nets, handles, veths

    def _assignment(self, ip):
        try:
            return self.ipam.get_assignment(ipaddress.ip_address(ip))
        except (CalicoError, ValueError):
            return None

    def run(self, view, rescan=None):
        """Clean up; rescan() gives a fresh Docker view for the second look.  A pass already
        running makes this one a no-op (returns None)."""
        if not self._running.acquire(blocking=False):
            return None
        try:
            return self._run(view, rescan)
        finally:
            self._running.release()

    def _run(self, view, rescan):
        try:
            eps, nets, handles, veths = self.find_stale(view)
            if not (eps or nets or handles or veths):
                log.info("Reconciliation: nothing to clean up")
                return {"endpoints": [], "networks": [], "handles": [], "veths": []}
            time.sleep(self.grace)
            view = rescan() if rescan is not None else view
            eps2, nets2, handles2, veths2 = self.find_stale(view)
            ep_ids = {e.endpoint_id for e in eps}
            eps = [e for e in eps2 if e.endpoint_id in ep_ids]
            nets = [n for n in nets2 if n in set(nets)]
            handles = [h for h in handles2 if h in set(handles)]
            veths = [v for v in veths2 if v in set(veths)]
            for ep in eps:
                self._remove_endpoint(ep)
            for name in veths:
                self.network_driver.dataplane.remove_veth(name)
                log.warning("Reconciliation: removed veth %s that no endpoint names", name)
            for network_id in nets:
                self.network_driver.delete_network({"NetworkID": network_id})
                log.warning("Reconciliation: removed network record %s (Docker no longer has "
                            "it)", network_id[:12])
            # Releasing the endpoints' addresses dropped their handles; what is left is orphaned.
            remaining = {name for name, _ in self.store.list_dir(keys.IPAM_HANDLES_DIR)}
            handles = [h for h in handles if h in remaining]
            for handle_id in handles:
                released = self.ipam.release_by_handle(handle_id)
                log.warning("Reconciliation: released %s (handle %s held by no endpoint)",
                            ", ".join(map(str, released)) or "nothing", handle_id)
            return {"endpoints": [e.endpoint_id for e in eps], "networks": nets,
                    "handles": handles, "veths": veths}
        except Exception:  # noqa: BLE001 - a failed cleanup must not take the plugin down
            log.exception("Reconciliation failed; it runs again at the next start")
            return None

    def _remove_endpoint(self, ep):
        self.network_driver.dataplane.remove_veth(ep.name)
        released = []
        for ip in ep.addresses():
            assignment = self._assignment(ip)
            if assignment and str(assignment.get("handle_id") or "").startswith(
                    handle_prefix(self.host)):
                self.ipam.release([ip])
                released.append(str(ip))
        remove_endpoint_state(self.store, ep)
        log.warning("Reconciliation: removed endpoint %s (%s, container %s) that Docker no "
                    "longer knows; released %s", ep.endpoint_id[:12], ep.name,
                    ep.extra.get("container_name") or "unknown",
                    ", ".join(released) or "no Calico IPAM address")

"""The plugin's HTTP face: one handler per libnetwork call, named after it.

Each request is parsed and validated against its schema before any work; every failure is
answered (HTTP 200, as Docker's plugin client expects) with the protocol's error field -- `Err`
for the network driver, `Error` for IPAM -- and the server carries on.  Calls we do not know get
404, so newer Docker calls degrade gracefully.
"""

import json
import logging
import time

from calicoctl.datastore.failover import RequestTally
from calicoctl.errors import CalicoError, ValidationError
from calicoctl.plugin import schemas

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.docker.plugins.v1.1+json"


def handlers(network, ipam):
    """call name -> function(request dict) -> answer dict."""
    return {
        "Plugin.Activate": lambda r: {"Implements": ["NetworkDriver", "IpamDriver"]},
        "NetworkDriver.GetCapabilities": lambda r: network.get_capabilities(),
        "NetworkDriver.GwAllocCheck": network.gw_alloc_check,
        "NetworkDriver.CreateNetwork": network.create_network,
        "NetworkDriver.DeleteNetwork": network.delete_network,
        "NetworkDriver.CreateEndpoint": network.create_endpoint,
        "NetworkDriver.DeleteEndpoint": network.delete_endpoint,
        "NetworkDriver.EndpointOperInfo": network.endpoint_oper_info,
        "NetworkDriver.Join": network.join,
        "NetworkDriver.Leave": network.leave,
        "NetworkDriver.ProgramExternalConnectivity": network.program_external_connectivity,
        # Nothing was programmed, and discovery is not Calico's business; acknowledge them.
        "NetworkDriver.RevokeExternalConnectivity": lambda r: {},
        "NetworkDriver.DiscoverNew": lambda r: {},
        "NetworkDriver.DiscoverDelete": lambda r: {},
        # Swarm-only calls.
        "NetworkDriver.AllocateNetwork": lambda r: {},
        "NetworkDriver.FreeNetwork": lambda r: {},
        "IpamDriver.GetCapabilities": lambda r: {"RequiresMACAddress": False},
        "IpamDriver.GetDefaultAddressSpaces": lambda r: ipam.get_default_address_spaces(),
        "IpamDriver.RequestPool": ipam.request_pool,
        "IpamDriver.ReleasePool": ipam.release_pool,
        "IpamDriver.RequestAddress": ipam.request_address,
        "IpamDriver.ReleaseAddress": ipam.release_address,
    }


def _parse(call, raw):
    try:
        return json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise ValidationError("%s: the request is not valid JSON (%s)." % (call, exc))


def error_field(call):
    return "Error" if call.startswith("IpamDriver.") else "Err"


def create_app(network, ipam, pending=None):
    """pending: a PendingReleases; its deferrable teardown calls survive an etcd outage."""
    from flask import Flask, Response, request

    app = Flask("calico-plugin")
    table = handlers(network, ipam)
    if pending is not None:
        from calicoctl.plugin.pending import DEFERRABLE
        for call in DEFERRABLE:
            table[call] = pending.guard(call, table[call])

    def answer(call, body, status=200):
        return Response(json.dumps(body), status=status, content_type=CONTENT_TYPE)

    @app.route("/<path:call>", methods=["POST"])
    def dispatch(call):
        handler = table.get(call)
        if handler is None:
            log.info("Unknown call /%s: 404", call)
            return answer(call, {error_field(call): "Calico does not implement %s." % call}, 404)
        started = time.monotonic()
        raw = request.get_data(as_text=True)
        etcd = RequestTally()
        try:
            with etcd:
                result = handler(schemas.validate(call, _parse(call, raw)))
        except CalicoError as exc:
            result = {error_field(call): str(exc)}
        except Exception as exc:  # noqa: BLE001 - a bug: log it whole, keep serving
            log.exception("%s failed on %s", call, raw)
            result = {error_field(call): "Internal error in the Calico plugin (%s: %s); see the "
                                         "plugin's log." % (type(exc).__name__, exc)}
        elapsed = (time.monotonic() - started) * 1000
        # One line per call, parsed by bench/container_start.py for per-call timings and the
        # datastore's share of them.
        log.debug("call %s took %.1f ms (etcd: %d operations, %.1f ms) request=%s answer=%s",
                  call, elapsed, etcd.count, etcd.seconds * 1000, raw.strip(), json.dumps(result))
        if error_field(call) in result:
            log.warning("%s refused: %s", call, result[error_field(call)])
        return answer(call, result)

    return app

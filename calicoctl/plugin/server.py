"""`calicoctl plugin serve`: the composition root and the unix-socket server.

Builds the datastore-backed drivers, the name learner and the reconciler, then serves the Flask
app with waitress (a real WSGI server; many requests at once on its worker threads).  SIGTERM
stops it cleanly and removes the socket; a socket left by a crash is replaced.
"""

import errno
import logging
import os
import signal
import socket

from calicoctl.errors import CalicoError

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/docker/plugins/calico.sock"
# Docker runs up to one call per container start concurrently; 8 parallel `docker run`s each
# make a few calls, so 16 workers keep every call off the queue.
WORKER_THREADS = 16


def prepare_socket(path):
    """Make the directory; remove a stale socket, refuse a live one."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if not os.path.exists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOTSOCK, errno.ENOENT):
            log.info("Replacing stale socket %s", path)
            os.unlink(path)
            return
        raise CalicoError("Cannot use %s: %s." % (path, exc.strerror))
    finally:
        probe.close()
    raise CalicoError("Another process already serves %s; stop it first." % path)


def build(store, host, interface_prefix="eth", felix_wait=5.0, docker_factory=None,
          reconcile=True, dataplane=None, pending_path=None):
    """(app, learner, reconciler) wired together; nothing started yet.  app.pending is the
    PendingReleases (teardown calls kept while etcd is unreachable; serve() starts its
    replays); pending_path=None keeps them at pending.DEFAULT_PATH."""
    from calicoctl.ipam.allocator import IPAMClient
    from calicoctl.plugin import names
    from calicoctl.plugin.app import create_app
    from calicoctl.plugin.ipam_driver import IpamDriver
    from calicoctl.plugin.network_driver import NetworkDriver
    from calicoctl.plugin.pending import DEFAULT_PATH, PendingReleases
    from calicoctl.plugin.reconcile import Reconciler

    ipam = IPAMClient(store, host)
    network = NetworkDriver(store, host, interface_prefix, felix_wait, dataplane)
    pending = PendingReleases(pending_path or DEFAULT_PATH, host)
    ipam_driver = IpamDriver(store, host, ipam, pending)
    pending.appliers = {"NetworkDriver.Leave": network.leave,
                        "NetworkDriver.DeleteEndpoint": network.delete_endpoint,
                        "NetworkDriver.DeleteNetwork": network.delete_network,
                        "IpamDriver.ReleaseAddress": ipam_driver.release_deferred}
    app = create_app(network, ipam_driver, pending)
    app.pending = pending
    reconciler = Reconciler(store, host, ipam, network)
    learner = names.NameLearner(store, host, docker_factory or names.default_docker_factory)
    if reconcile:
        learner.on_sync = lambda view: reconciler.run(
            view, rescan=lambda: names.fresh_sync(learner))
    return app, learner, reconciler


def serve(socket_path, app, learner=None):
    import waitress.server
    prepare_socket(socket_path)
    pending = getattr(app, "pending", None)
    server = waitress.server.create_server(app, unix_socket=socket_path,
                                           unix_socket_perms="600", threads=WORKER_THREADS)

    def on_term(signum, frame):
        raise SystemExit(0)      # waitress's loop stops on SystemExit and closes its channels

    previous = signal.signal(signal.SIGTERM, on_term)
    if learner is not None:
        learner.start()
    if pending is not None:
        pending.start()       # replays at once what an earlier run could not apply
    log.warning("Calico network and IPAM driver serving on %s", socket_path)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if learner is not None:
            learner.stop()
        if pending is not None:
            pending.stop()
        server.close()
        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass
        log.warning("Stopped; removed %s", socket_path)

"""`calicoctl node`: check the host, register it, turn on forwarding, start its containers.

Order matters for "nothing half-written on bad input": every check and every address is settled
before the first write to etcd or the host.
"""

import logging
from dataclasses import dataclass

from calicoctl.dataplane import sysctl
from calicoctl.errors import CalicoError, DataplaneError, ValidationError
from calicoctl.node import address, checks, containers, registration

log = logging.getLogger(__name__)


@dataclass
class StartRequest:
    node_name: str
    ip: object = None               # ipaddress.IPv4Address or None (found automatically)
    ip6: object = None
    as_num: str = None
    runtime: str = "docker"         # "docker" | "none"
    detach: bool = True
    log_dir: str = containers.DEFAULT_LOG_DIR
    node_image: str = None          # None: calico/node:<version>
    libnetwork: bool = False
    libnetwork_image: str = None    # None: calico/node-libnetwork:<version>
    managed_plugin: bool = False    # the driver as a Docker managed plugin (calico:latest)


def start(request, store, say, report_check, docker_factory=None):
    """Run `calicoctl node`.  docker_factory defaults to containers.docker_client."""
    docker_factory = docker_factory or containers.docker_client
    use_docker = request.runtime == "docker"

    client_holder = {}

    def cached_client():
        if "client" not in client_holder:
            client_holder["client"] = docker_factory()
        return client_holder["client"]

    links = address.read_interfaces()
    ip = request.ip
    if ip is None:
        ip = address.autodetect(4, cached_client() if use_docker else None, links)
        say("Using IPv4 address %s (found on this host; use --ip to choose another)." % ip)
    else:
        address.check_on_host(ip, links)
    if request.ip6 is not None:
        address.check_on_host(request.ip6, links)

    # With --runtime=none the agent, and so BIRD, run on the host itself; calico-node brings its
    # own BIRD, which needs the host's BGP port to itself.
    results = checks.system_checks(
        store=store, docker_factory=cached_client if use_docker else None,
        uplink=address.interface_of(ip, links), libnetwork=request.libnetwork and use_docker,
        host_bird=not use_docker,
        node_holds_bgp_port=containers.node_holds_bgp_port(cached_client) if use_docker
        else None)
    failed = checks.failures(results)
    for check in results:
        if not check.ok and not check.failed:
            report_check(check)   # warnings; what fails is said once, in the error below
    if failed:
        raise ValidationError("This host cannot run Calico yet: %s." % "; ".join(
            "%s: %s" % (c.name, c.detail.rstrip(".")) for c in failed))

    settings = None
    if use_docker:
        # Settle the container configuration (images, sockets) before writing anything.
        settings = containers.NodeSettings(
            node_name=request.node_name,
            node_image=request.node_image or containers.default_node_image(),
            etcd_env=store.settings.to_env(),
            log_dir=request.log_dir,
            libnetwork_image=(request.libnetwork_image or containers.default_plugin_image())
            if request.libnetwork else None,
            tls_files=[p for p in (store.settings.ca_cert, store.settings.cert,
                                   store.settings.key) if p],
            docker_socket=containers.docker_socket_path() if request.libnetwork
            else "/var/run/docker.sock",
            missing_caps=containers.missing_capabilities(),
            managed_plugin=request.managed_plugin)
        if settings.missing_caps:
            say("This host withholds %s, so the containers cannot be fully privileged; they "
                "get the capabilities the host has instead." % ", ".join(
                    c if c.startswith("CAP_") else "CAP_" + c for c in settings.missing_caps))
        client = cached_client()
        for image in filter(None, (settings.node_image, settings.libnetwork_image)):
            containers.image_id(client, image)

    registration.register(store, request.node_name, ip, request.ip6, request.as_num)
    try:
        sysctl.enable_forwarding(ipv6=request.ip6 is not None)
    except DataplaneError as exc:
        raise CalicoError("Could not turn on forwarding (%s); run as root." % exc) from exc
    say("Node %s registered with address %s%s." % (
        request.node_name, ip, (" and %s" % request.ip6) if request.ip6 else ""))

    if not use_docker:
        say("--runtime=none: nothing started. Run 'calicoctl felix serve'%s on this host."
            % (", 'calicoctl plugin serve' and 'calicoctl dns serve'" if request.libnetwork
               else ""))
        return
    _make_dirs(request.log_dir)
    containers.start_node(client, store, settings, say)
    if not request.libnetwork:
        for name in (containers.PLUGIN_CONTAINER, containers.DNS_CONTAINER):
            if containers.find_container(client, name) is not None:
                say("%s was left as it is (this run did not ask for --libnetwork)." % name)
    if not request.detach:
        say("Showing calico-node's output; Ctrl-C stops the node.")
        containers.follow_logs(client, say)


def _make_dirs(log_dir):
    import os
    try:
        os.makedirs(log_dir, exist_ok=True)
    except OSError as exc:
        raise CalicoError("Cannot create the log folder %s: %s." % (log_dir, exc.strerror))

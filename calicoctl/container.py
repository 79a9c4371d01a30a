"""`calicoctl container`: a Calico interface for a container on Docker's default networking.

The same host-side wiring as the plugin (veth.set_up_workload), plus what Docker does for the
plugin: moving the peer into the container's namespace with its addresses and routes
(netns.move_into_container).  Endpoints use orchestrator "docker", workload = the container id,
a generated endpoint id, and that id as the IPAM handle.
"""

import ipaddress
import logging
import uuid

from calicoctl.dataplane import netns, veth
from calicoctl.datastore import endpoints, keys, pools as pools_store
from calicoctl.datastore.models import IPV4_GATEWAY, WORKLOAD_MAC, Endpoint, interface_name
from calicoctl.errors import NotFoundError, ValidationError

log = logging.getLogger(__name__)

DEFAULT_INTERFACE = "eth1"


def docker_api():
    import docker   # deferred: only container commands need docker-py
    return docker.from_env(timeout=30).api


def parse_ip_spec(text):
    """'ipv4' | 'ipv6' | a pool CIDR | an address -> ("auto", version, pool|None) or
    ("address", ip)."""
    t = str(text).strip().lower()
    if t in ("ipv4", "ipv6"):
        return ("auto", 4 if t == "ipv4" else 6, None)
    if "/" in t:
        try:
            net = ipaddress.ip_network(t)
        except ValueError:
            raise ValidationError("Invalid pool %r: give a pool's CIDR, an address, ipv4 or ipv6."
                                  % text)
        return ("auto", net.version, net)
    try:
        return ("address", ipaddress.ip_address(t))
    except ValueError:
        raise ValidationError("Invalid IP %r: give an address, a pool's CIDR, ipv4 or ipv6."
                              % text)


class ContainerNetworking:
    def __init__(self, store, host, ipam, docker):
        self.store = store
        self.host = host
        self.ipam = ipam
        self.docker = docker

    # -- look-ups ------------------------------------------------------------------------------

    def inspect(self, container):
        """(id, name, pid) of a running container."""
        import docker.errors
        try:
            info = self.docker.inspect_container(container)
        except docker.errors.NotFound:
            raise NotFoundError("Container %s does not exist; 'docker ps' lists them." % container)
        except docker.errors.DockerException as exc:
            raise ValidationError("Cannot ask Docker about %s: %s" % (container, exc))
        state = info.get("State") or {}
        if not state.get("Running") or not state.get("Pid"):
            raise ValidationError("Container %s is not running; start it first." % container)
        return info["Id"], (info.get("Name") or "").lstrip("/"), state["Pid"]

    def endpoints(self, container_id):
        return endpoints.list_endpoints(self.store, self.host, keys.DOCKER_ORCHESTRATOR,
                                        container_id)

    def endpoint_on(self, container, interface=None):
        cid, _, _ = self.inspect(container)
        eps = self.endpoints(cid)
        if interface:
            eps = [e for e in eps if e.extra.get("interface") == interface]
        if not eps:
            raise NotFoundError("Container %s has no Calico interface%s; add one with "
                                "'calicoctl container add'." % (
                                    container, " " + interface if interface else ""))
        if len(eps) > 1:
            raise ValidationError("Container %s has several Calico interfaces; name one with "
                                  "--interface." % container)
        return eps[0]

    # -- add / remove --------------------------------------------------------------------------

    def _assign(self, spec, handle_id, container_id):
        attributes = {"host": self.host, "container": container_id}
        if spec[0] == "auto":
            _, version, pool = spec
            if pool is not None:
                pools_store.get_pool(self.store, pool)   # a clear error for an unknown pool
            return self.ipam.auto_assign(version, handle_id=handle_id, attributes=attributes,
                                         pool=pool)
        self.ipam.assign(spec[1], handle_id=handle_id, attributes=attributes)
        return spec[1]

    def _gateway_routes(self, path, version):
        """The default route when the container has none of this family; else routes to the
        Calico pools only, so its existing (Docker bridge) default route stays."""
        if not netns.has_default_route(path, version):
            return ["0.0.0.0/0" if version == 4 else "::/0"]
        return [str(p.cidr) for p in pools_store.list_pools(self.store, version)]

    def add(self, container, ip_spec, interface=DEFAULT_INTERFACE):
        spec = parse_ip_spec(ip_spec)
        cid, name, pid = self.inspect(container)
        path = netns.netns_path(pid)
        if netns.interface_exists(path, interface):
            raise ValidationError("Container %s already has an interface %s; choose another "
                                  "with --interface." % (container, interface))
        endpoint_id = uuid.uuid4().hex
        ip = self._assign(spec, endpoint_id, cid)
        net = str(ipaddress.ip_network(ip))
        ep = Endpoint(host=self.host, orchestrator=keys.DOCKER_ORCHESTRATOR, workload=cid,
                      endpoint_id=endpoint_id, name=interface_name(endpoint_id),
                      mac=WORKLOAD_MAC,
                      ipv4_nets=[net] if ip.version == 4 else [],
                      ipv6_nets=[net] if ip.version == 6 else [],
                      ipv4_gateway=IPV4_GATEWAY if ip.version == 4 else None,
                      ipv6_gateway=veth.IPV6_GATEWAY if ip.version == 6 else None,
                      extra={"interface": interface, "container_id": cid,
                             "container_name": name})
        created = False
        try:
            created = veth.set_up_workload(ep.name, veth.temp_peer_name(endpoint_id),
                                           self._mtu(ip), ep.ipv4_nets, ep.ipv6_nets)
            netns.move_into_container(veth.temp_peer_name(endpoint_id), path, interface, [net],
                                      self._gateway_routes(path, ip.version))
            endpoints.create_endpoint(self.store, ep)
        except Exception:
            if created:
                veth.remove_veth(ep.name)
            self.ipam.release_by_handle(endpoint_id)
            raise
        log.info("Container %s: %s on %s (endpoint %s)", container, ip, interface, endpoint_id)
        return ep, ip

    def _mtu(self, ip):
        ipip = any(p.ipip and ip in p.cidr for p in pools_store.list_pools(self.store, ip.version))
        return veth.workload_mtu(ipip=ipip)

    def remove(self, container):
        cid, _, _ = self.inspect(container)
        eps = self.endpoints(cid)
        if not eps:
            raise NotFoundError("Container %s has no Calico interface." % container)
        for ep in eps:
            veth.remove_veth(ep.name)
            self.ipam.release_by_handle(ep.endpoint_id)
            self.ipam.release(ep.addresses())
            endpoints.delete_endpoint(self.store, ep)
        return eps

    # -- addresses -----------------------------------------------------------------------------

    def ip_add(self, container, ip_spec, interface=None):
        spec = parse_ip_spec(ip_spec)
        ep = self.endpoint_on(container, interface)
        cid, _, pid = self.inspect(container)
        path = netns.netns_path(pid)
        ip = self._assign(spec, ep.endpoint_id, cid)
        net = str(ipaddress.ip_network(ip))
        try:
            has_family = any(ipaddress.ip_network(n).version == ip.version
                             for n in ep.ipv4_nets + ep.ipv6_nets)
            routes = [] if has_family else self._gateway_routes(path, ip.version)
            netns.add_address(path, ep.extra.get("interface") or DEFAULT_INTERFACE, net, routes)
            veth.configure_host_side(ep.name, [net] if ip.version == 4 else [],
                                     [net] if ip.version == 6 else [])

            def mutate(current):
                nets = current.ipv4_nets if ip.version == 4 else current.ipv6_nets
                nets.append(net)
                if ip.version == 4:
                    current.ipv4_gateway = IPV4_GATEWAY
                else:
                    current.ipv6_gateway = veth.IPV6_GATEWAY
                return current
            endpoints.update_endpoint(self.store, ep, mutate)
        except Exception:
            self.ipam.release([ip])
            raise
        return ip

    def ip_remove(self, container, ip_text, interface=None):
        try:
            ip = ipaddress.ip_address(str(ip_text).strip())
        except ValueError:
            raise ValidationError("Invalid IP address %r." % ip_text)
        ep = self.endpoint_on(container, interface)
        net = str(ipaddress.ip_network(ip))
        if net not in ep.ipv4_nets + ep.ipv6_nets:
            raise ValidationError("%s is not an address of container %s's Calico interface."
                                  % (ip, container))
        _, _, pid = self.inspect(container)
        netns.remove_address(netns.netns_path(pid), ep.extra.get("interface") or
                             DEFAULT_INTERFACE, net)
        veth.remove_host_route(ep.name, net)

        def mutate(current):
            current.ipv4_nets = [n for n in current.ipv4_nets if n != net]
            current.ipv6_nets = [n for n in current.ipv6_nets if n != net]
            return current
        endpoints.update_endpoint(self.store, ep, mutate)
        self.ipam.release([ip])
        return ip

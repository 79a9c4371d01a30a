"""Docker's network driver: networks are Calico profiles, endpoints are Calico endpoints.

Every call is answered from the request and etcd alone: Docker holds internal locks while it
calls a driver, so nothing here calls back into Docker (names.py learns names from its events).
"""

import ipaddress
import logging
import threading
import time

from calicoctl.dataplane import Dataplane, veth
from calicoctl.datastore import endpoints, keys, networks, pools as pools_store, profiles
from calicoctl.datastore.models import (IPIP_DEVICE, IPV4_GATEWAY, WORKLOAD_MAC, Endpoint,
                                        Network, Pool, interface_name)
from calicoctl.errors import ConflictError, DatastoreError, NotFoundError, ValidationError
from calicoctl.felix import status
from calicoctl.plugin import records
from calicoctl.plugin.ipam_driver import ANY_POOL, is_calico_address_space
from calicoctl.plugin.schemas import shown

log = logging.getLogger(__name__)

GENERIC_OPTIONS = "com.docker.network.generic"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
INTERNAL = "com.docker.network.internal"       # --internal, in CreateNetwork's Options
PORT_MAP = "com.docker.network.portmap"       # -p/-P, in Join and ProgramExternalConnectivity
# --opt keys a Calico network understands, with what each means (shown when one is unknown).
KNOWN_OPTIONS = {
    "ipip": "true|false: IP-in-IP between hosts (Docker-IPAM subnets only)",
    "nat-outgoing": "true|false: NAT traffic leaving the pools (Docker-IPAM subnets only)",
    "mtu": "N: MTU of the workload interfaces (default: the uplink's, minus 20 with ipip)",
}
# Keys under Docker's own prefix belong to Docker, not to the user's --opt for us: Docker 28
# adds com.docker.network.enable_ipv4 and the advertise_addr_nmsgs/_ms knobs, which it applies
# itself for every driver, and daemon.json's default-network-opts (24+) can put any key there.
# Refusing them would make `docker network create` fail for settings Docker honours on its own.
DOCKER_OPTION_PREFIX = "com.docker.network."
# Join answers a connected route to the gateway (RouteType 1: no next hop).
ROUTE_CONNECTED, ROUTE_NEXTHOP = 1, 0
# Container start-up is on the critical path of every `docker run`; the uplink's MTU and the
# pools' ipip flags change rarely, so they are re-read at most this often.
MTU_CACHE_SECONDS = 10.0


def parse_options(generic):
    """--opt key/values -> typed dict; refuses unknown keys of the user's, naming the known
    ones, and passes over Docker's own (com.docker.network.*)."""
    if not isinstance(generic, dict):
        # Docker always sends an object; anything else is not a request we understand.
        raise ValidationError("Network options (%s) must be an object of --opt key/values."
                              % GENERIC_OPTIONS)
    unknown = sorted(k for k in generic
                     if k not in KNOWN_OPTIONS and not str(k).startswith(DOCKER_OPTION_PREFIX))
    if unknown:
        raise ValidationError("Unknown --opt %s; Calico networks know: %s." % (
            ", ".join(shown(k)[1:-1] for k in unknown),
            "; ".join("%s=%s" % kv for kv in sorted(KNOWN_OPTIONS.items()))))
    ignored = sorted(k for k in generic if str(k).startswith(DOCKER_OPTION_PREFIX))
    if ignored:
        log.info("Docker's own network options, left to Docker: %s", ", ".join(ignored))
    opts = {}
    for name in ("ipip", "nat-outgoing"):
        if name in generic:
            value = str(generic[name]).strip().lower()
            if value not in ("true", "false"):
                raise ValidationError("--opt %s must be true or false, not %s." % (
                    name, shown(generic[name])))
            opts[name] = value == "true"
    if "mtu" in generic:
        try:
            mtu = int(str(generic["mtu"]).strip())
        except ValueError:
            mtu = 0
        # 1280 is IPv6's minimum link MTU; 65535 the largest a veth takes.
        if not 1280 <= mtu <= 65535:
            raise ValidationError("--opt mtu must be a number from 1280 to 65535, not %s."
                                  % shown(generic["mtu"]))
        opts["mtu"] = mtu
    return opts


def _is_calico_ipam(data):
    return is_calico_address_space(data.get("AddressSpace")) or data.get("Pool") in \
        ANY_POOL.values()


class NetworkDriver:
    def __init__(self, store, host, interface_prefix="eth", felix_wait=5.0, dataplane=None):
        self.dataplane = dataplane or Dataplane()
        self._mtu_cache = {}          # ipip flag -> (monotonic time, mtu)
        self._pool_cache = (0.0, [])  # (monotonic time, IPv4 pools)
        self.store = store
        self.host = host
        self.interface_prefix = interface_prefix
        self.felix_wait = felix_wait
        # Endpoints whose Join left the agent wait to ProgramExternalConnectivity (see join).
        self._deferred = {}
        self._lock = threading.Lock()
        # Which sandbox each of this host's joined endpoints is in (endpoint id -> sandbox
        # key), read from etcd at the first Join and kept by this process's Joins and Leaves:
        # only this process joins endpoints on this host, so a sandbox it knows no endpoint in
        # has none and Join need not list the host's endpoints (one it knows endpoints in is
        # read: their records decide the gateway).  An entry left by an endpoint removed
        # elsewhere only costs that read.  None until read.
        self._joined = None
        self._reading_joined = threading.Lock()
        # Endpoints created here and not yet joined, as written (their index for Join's CAS).
        self._created = {}
        # Network records once they carry their name (network id -> Network): nothing changes
        # a record after that, and Docker never reuses a network id, so CreateEndpoint and Join
        # need not read it again for every container.  Dropped by Create/DeleteNetwork.
        self._named = {}

    # -- networks --------------------------------------------------------------------------

    def get_capabilities(self):
        # Docker 20.10+ has no cluster store: each host keeps its own copy of the network
        # (local scope) while the workloads reach each other across hosts (global connectivity).
        # GwAllocChecker (Docker 28; older engines ignore the field) makes Docker ask
        # gw_alloc_check before it reserves a gateway address in the subnet.
        return {"Scope": "local", "ConnectivityScope": "global", "GwAllocChecker": True}

    def gw_alloc_check(self, request):
        """Docker 28: no network of ours needs a gateway address from its subnet -- workloads
        route through the link-local gateway on their veth -- so Docker's IPAM need not hold
        one back (with Docker IPAM the subnet's first address is then a workload's too).  A
        --gateway the user gives is still reserved by Docker."""
        return {"SkipIPv4": True, "SkipIPv6": True}

    def create_network(self, request):
        network_id = request["NetworkID"]
        with self._lock:
            self._named.pop(network_id, None)
        options = request.get("Options") or {}
        opts = parse_options(options.get(GENERIC_OPTIONS) or {})
        ipv6 = str(options.get(ENABLE_IPV6, "")).lower() == "true"
        v4 = request.get("IPv4Data") or []
        v6 = request.get("IPv6Data") or []
        calico_ipam = bool(v4 or v6) and all(_is_calico_ipam(d) for d in v4 + v6)
        if options.get(INTERNAL) is True:
            # Docker never calls ProgramExternalConnectivity on an --internal network, so
            # Join must do the agent wait itself there (see join).
            opts["internal"] = True
        old = networks.read_network(self.store, network_id)
        record = Network(network_id=network_id, name=old.name if old else None,
                         ipam="calico" if calico_ipam else "default", pool=None, pool_v6=None,
                         ipv6=ipv6, mtu=opts.get("mtu"), options={k: v for k, v in opts.items()},
                         host=self.host)
        for data, field in ((v4, "pool"), (v6, "pool_v6")):
            if data and data[0].get("Pool") not in ANY_POOL.values():
                setattr(record, field, str(ipaddress.ip_network(data[0]["Pool"], strict=False)))
        added = []
        if calico_ipam:
            if "ipip" in opts or "nat-outgoing" in opts:
                raise ValidationError(
                    "With Calico IPAM, ipip and nat-outgoing belong to the pool: "
                    "'calicoctl pool add <CIDR> --ipip --nat-outgoing'; drop the --opt.")
        else:
            added = self._record_docker_pools(record, opts)
        try:
            networks.write_network(self.store, record)
        except Exception:
            for cidr in added:
                pools_store.remove_pool(self.store, cidr)
            raise
        log.info("Network %s created (%s IPAM, pool %s)", network_id[:12], record.ipam,
                 record.pool or "any")
        return {}

    def _record_docker_pools(self, record, opts):
        """Docker owns the subnet's addresses; record it as a pool Calico routes (and NATs) but
        never allocates from.  Returns the pools this call created (to undo on failure)."""
        added = []
        for field, version in (("pool", 4), ("pool_v6", 6)):
            if not getattr(record, field):
                continue
            cidr = ipaddress.ip_network(getattr(record, field))
            existing = pools_store.list_pools(self.store, version)
            same = [p for p in existing if p.cidr == cidr]
            if same and same[0].ipam:
                raise ValidationError(
                    "%s is a Calico IPAM pool; create the network with --ipam-driver calico, or "
                    "pick a --subnet outside every Calico pool." % cidr)
            pool = Pool(cidr=cidr, ipip=IPIP_DEVICE if opts.get("ipip") and version == 4 else None,
                        masquerade=bool(opts.get("nat-outgoing")), ipam=False)
            pools_store.add_pool(self.store, pool)   # refuses overlaps with a clear sentence
            if not same:
                added.append(cidr)
        return added

    def _network(self, network_id):
        record = self._named.get(network_id)
        if record is None:
            record = networks.get_network(self.store, network_id)
            if record.name:
                with self._lock:
                    self._named[network_id] = record
        return record

    def delete_network(self, request):
        network_id = request["NetworkID"]
        with self._lock:
            self._named.pop(network_id, None)
        record = networks.read_network(self.store, network_id)
        if record is None:
            return {}
        networks.delete_network(self.store, network_id)
        # Delete first, then look: of two hosts removing the last copies at once, at least the
        # later one sees no other record and removes the shared objects.
        others = networks.list_networks(self.store, quorum=True).values()
        name = record.name
        if name and not any(r.name == name for r in others):
            if profiles.profile_exists(self.store, name):
                profiles.remove_profile(self.store, name)
                log.info("Removed profile %s with the last network of that name", name)
        if record.ipam == "default":
            for field in ("pool", "pool_v6"):
                cidr = getattr(record, field)
                if cidr and not any(getattr(r, field) == cidr and r.ipam == "default"
                                    for r in others):
                    self._remove_docker_pool(ipaddress.ip_network(cidr))
        return {}

    def _remove_docker_pool(self, cidr):
        try:
            pool = pools_store.get_pool(self.store, cidr)
        except NotFoundError:
            return
        if not pool.ipam:
            pools_store.remove_pool(self.store, cidr)

    # -- endpoints -------------------------------------------------------------------------

    def create_endpoint(self, request):
        network_id, endpoint_id = request["NetworkID"], request["EndpointID"]
        iface = request.get("Interface") or {}
        record = self._network(network_id)
        nets4 = [_host_net(iface["Address"], 4)] if iface.get("Address") else []
        nets6 = [_host_net(iface["AddressIPv6"], 6)] if iface.get("AddressIPv6") else []
        if not nets4 and not nets6:
            raise ValidationError("Docker gave endpoint %s no address; Calico endpoints need "
                                  "one." % endpoint_id[:12])
        mac = iface.get("MacAddress") or WORKLOAD_MAC
        name = record.name
        ep = Endpoint(host=self.host, orchestrator=keys.LIBNETWORK_ORCHESTRATOR,
                      workload=keys.LIBNETWORK_WORKLOAD, endpoint_id=endpoint_id,
                      name=interface_name(endpoint_id), mac=mac,
                      profile_ids=[name] if name else [],   # no name yet: closed, never open
                      ipv4_nets=nets4, ipv6_nets=nets6,
                      ipv4_gateway=IPV4_GATEWAY if nets4 else None,
                      ipv6_gateway=veth.IPV6_GATEWAY if nets6 else None,
                      extra={"network_id": network_id})
        claimed = []
        created_veth = False
        try:
            if record.ipam == "default":
                for net in nets4 + nets6:
                    self._claim(net, endpoint_id)
                    claimed.append(net)
            created_veth = self.dataplane.set_up_workload(
                ep.name, veth.temp_peer_name(endpoint_id), self._mtu(record, nets4), nets4,
                nets6, mac)
            ep.extra["_index"] = endpoints.write_endpoint(self.store, ep)
            with self._lock:
                self._created[endpoint_id] = ep
        except Exception:
            if created_veth:
                self.dataplane.remove_veth(ep.name)
            for net in claimed:
                records.release_claim(self.store, _ip(net), endpoint_id)
            raise
        log.info("Endpoint %s created on %s with %s", endpoint_id[:12], ep.name,
                 ", ".join(nets4 + nets6))
        # Never echo what Docker supplied (it would roll the endpoint back); only fill gaps.
        return {"Interface": {} if iface.get("MacAddress") else {"MacAddress": WORKLOAD_MAC}}

    def _claim(self, net, endpoint_id):
        ip = _ip(net)
        holder = records.claim_address(self.store, ip, self.host, endpoint_id)
        if holder is not None:
            raise ConflictError(
                "Address %s is already used by endpoint %s on host %s: with Docker's own IPAM each "
                "host allocates from the subnet on its own. Give each host its own --ip-range "
                "within the subnet, or use Calico IPAM (--ipam-driver calico)." % (
                    ip, str(holder.get("endpoint_id", "?"))[:12], holder.get("host", "?")))

    def _mtu(self, record, nets4):
        if record.mtu:
            return int(record.mtu)
        ipip = bool((record.options or {}).get("ipip"))
        if record.ipam == "calico" and nets4:
            ip = ipaddress.ip_address(_ip(nets4[0]))
            ipip = any(p.ipip and ip in p.cidr for p in self._pools_v4())
        now = time.monotonic()
        cached = self._mtu_cache.get(ipip)
        if cached and now - cached[0] < MTU_CACHE_SECONDS:
            return cached[1]
        mtu = self.dataplane.workload_mtu(ipip=ipip)
        self._mtu_cache[ipip] = (now, mtu)
        return mtu

    def _pools_v4(self):
        read_at, pools = self._pool_cache
        if time.monotonic() - read_at >= MTU_CACHE_SECONDS:
            pools = pools_store.list_pools(self.store, 4)
            self._pool_cache = (time.monotonic(), pools)
        return pools

    def join(self, request):
        network_id, endpoint_id = request["NetworkID"], request["EndpointID"]
        sandbox = request["SandboxKey"]
        record = self._network(network_id)
        ep, others = self._sandbox_endpoints(sandbox, endpoint_id)
        if ep is None:
            raise NotFoundError("Endpoint %s is not known to Calico on %s." % (
                endpoint_id[:12], self.host))
        if not self.dataplane.veth_exists(ep.name):    # e.g. a crash undid the veth
            self.dataplane.set_up_workload(ep.name, veth.temp_peer_name(endpoint_id),
                                 self._mtu(record, ep.ipv4_nets), ep.ipv4_nets, ep.ipv6_nets,
                                 ep.mac or WORKLOAD_MAC)
        gateway4 = _free_gateway(others) if ep.ipv4_nets else None
        records.set_endpoint_fields(self.store, ep, ipv4_gateway=gateway4, sandbox=sandbox)
        with self._lock:
            self._joined[endpoint_id] = sandbox
        answer = {"InterfaceName": {"SrcName": veth.temp_peer_name(endpoint_id),
                                    "DstPrefix": self.interface_prefix},
                  # Our gateway is on the veth; Docker must never add docker_gwbridge (traffic
                  # through it would escape policy).
                  "DisableGatewayService": True,
                  "StaticRoutes": []}
        routes = answer["StaticRoutes"]
        # Every interface gets a gateway, and Docker picks which one carries the default route
        # (20.10/26: dual-stack before single-stack, then the network name; 28: gw-priority
        # first).  So when a container leaves the network that had it, Docker moves the default
        # route, and with it the embedded DNS's way out, to another one.
        if gateway4:
            answer["Gateway"] = gateway4
            routes.append({"Destination": gateway4 + "/32", "RouteType": ROUTE_CONNECTED,
                           "NextHop": ""})
            # The network's own pool stays on this interface whichever one has the default.
            if record.ipam == "calico" and record.pool:
                routes.append({"Destination": record.pool, "RouteType": ROUTE_NEXTHOP,
                               "NextHop": gateway4})
        if ep.ipv6_nets:
            # Every host-side veth owns fe80::1, so fe80::1 is right on any interface.
            answer["GatewayIPv6"] = veth.IPV6_GATEWAY
            if not any(e.ipv6_nets for e in others):
                # Docker 26 and later look the gateway up in the routing table before making it
                # the default route; the interface's own fe80::/64 may not exist yet then.  Only
                # one interface can hold this route (the kernel refuses a second one); a later
                # IPv6 interface finds fe80::1 through the first, or, once the first has gone,
                # through its own fe80::/64.
                routes.append({"Destination": veth.IPV6_GATEWAY + "/128",
                               "RouteType": ROUTE_CONNECTED, "NextHop": ""})
                if record.ipam == "calico" and record.pool_v6:
                    routes.append({"Destination": record.pool_v6,
                                   "RouteType": ROUTE_NEXTHOP, "NextHop": veth.IPV6_GATEWAY})
        if others or (record.options or {}).get("internal"):
            self._wait_for_agent(ep)
        else:
            # The sandbox's first interface becomes its gateway endpoint, and Docker calls
            # ProgramExternalConnectivity for that once it has moved the interface into the
            # container and configured it: waiting there lets the agent's work overlap Docker's
            # (bench/container_start.py).  The container's process starts only after that
            # call, so its first packets still find policy and routes in place.
            with self._lock:
                self._deferred[endpoint_id] = ep
        return answer

    def _sandbox_endpoints(self, sandbox, endpoint_id):
        """(this endpoint or None, this host's other endpoints in the sandbox): from memory
        when CreateEndpoint here left the record and the sandbox holds no other endpoint,
        else from etcd."""
        if self._joined is None:
            with self._reading_joined:     # Joins wait for it: none is noted before it
                if self._joined is None:
                    found = {ep.endpoint_id: ep.extra["sandbox"]
                             for ep in records.host_endpoints(self.store, self.host)
                             if ep.extra.get("sandbox")}
                    with self._lock:
                        self._joined = found
        with self._lock:
            ep = self._created.pop(endpoint_id, None)
            alone = not any(s == sandbox for e, s in self._joined.items() if e != endpoint_id)
        if ep is not None and alone:
            return ep, []
        return records.sandbox_endpoints(self.store, self.host, sandbox, endpoint_id)

    def _forget(self, endpoint_id):
        """What this process remembers of an endpoint that leaves its sandbox or goes."""
        with self._lock:
            self._deferred.pop(endpoint_id, None)
            self._created.pop(endpoint_id, None)
            if self._joined is not None:
                self._joined.pop(endpoint_id, None)

    def _wait_for_agent(self, ep):
        """When the agent runs here, give it a bounded moment to program the endpoint, so the
        workload's first packets are not dropped for want of policy or a route.  Watches the
        report key (answering the moment it lands) rather than polling."""
        if not self.felix_wait:
            return
        started = time.monotonic()
        key = keys.felix_endpoint_status(self.host, ep.orchestrator, ep.workload,
                                         ep.endpoint_id)
        try:
            # A report already there ends it at once, before asking whether the agent is
            # alive at all.  Otherwise the watch is opened first and the report read again: a
            # report written in between is seen by the watch.
            if status.endpoint_up(self.store.get(key)):
                return
            with self.store.watching(key) as index:
                if status.endpoint_up(self.store.get(key)):
                    return
                if not status.agent_alive(self.store, self.host):
                    return
                self._watch_for_up(key, index, started + self.felix_wait, ep.endpoint_id)
        finally:
            # Debug only: the time spent waiting, apart from the call's own work
            # (bench/container_start.py reads it).
            log.debug("Waited %.1f ms for the agent's report on %s",
                      (time.monotonic() - started) * 1000, ep.endpoint_id[:12])

    def _watch_for_up(self, key, index, deadline, endpoint_id):
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                change = self.store.watch(key, index + 1, timeout=remaining)
            except DatastoreError:   # e.g. HistoryLost (the index left etcd's history), a blip
                index = self.store.current_index()
                if status.endpoint_up(self.store.get(key)):
                    return
                continue
            if change is None:
                continue
            index = change.modified_index
            if status.endpoint_up(change.value):
                return
        log.warning("The agent did not report endpoint %s up within %.1f s; answering Docker "
                    "anyway", endpoint_id[:12], self.felix_wait)

    def leave(self, request):
        endpoint_id = request["EndpointID"]
        self._forget(endpoint_id)
        self.dataplane.remove_veth(interface_name(endpoint_id))
        try:
            ep = records.endpoint_of(self.store, self.host, endpoint_id)
        except NotFoundError:
            return {}
        records.update_endpoint_fields(self.store, ep, sandbox=None)
        return {}

    def delete_endpoint(self, request):
        endpoint_id = request["EndpointID"]
        self._forget(endpoint_id)
        self.dataplane.remove_veth(interface_name(endpoint_id))
        try:
            ep = records.endpoint_of(self.store, self.host, endpoint_id)
        except NotFoundError:
            return {}
        remove_endpoint_state(self.store, ep)
        log.info("Endpoint %s deleted", endpoint_id[:12])
        return {}

    def endpoint_oper_info(self, request):
        # Docker 27+ calls this for every endpoint while it restores containers at start-up:
        # answered from the request alone, so a slow etcd never delays the daemon.
        return {"Value": {}}

    def program_external_connectivity(self, request):
        """Docker publishes ports (-p) only on its bridge driver; for any other driver it just
        passes the port map here, and `docker run -p` would seem to work while nothing listens
        on the host.  Refusing makes Docker undo the Join and tell the user why; without a port
        map (a gateway moving between networks) there is nothing to do but the agent wait Join
        left for this call."""
        with self._lock:
            ep = self._deferred.pop(request["EndpointID"], None)
        ports = (request.get("Options") or {}).get(PORT_MAP) or []
        if ports:
            ports = ports if isinstance(ports, list) else [ports]
            raise ValidationError(
                "Calico networks do not publish ports (-p %s): reach the container at its Calico "
                "address from any Calico host, or publish the port from a container on a Docker "
                "bridge network." % ", ".join(_port_text(p) for p in ports[:4]))
        if ep is not None:
            self._wait_for_agent(ep)
        return {}


def _free_gateway(others):
    """The lowest 169.254.1.n that no other interface of the sandbox uses as its gateway: each
    interface needs its own, since its connected route to the gateway must be unique."""
    used = {e.ipv4_gateway for e in others if e.ipv4_nets}
    # 169.254.1.1 (IPV4_GATEWAY) is the first; one sandbox has far fewer than 254 interfaces.
    for n in range(1, 255):
        gateway = "169.254.1.%d" % n
        if gateway not in used:
            return gateway
    raise ConflictError("Every link-local gateway 169.254.1.1-254 is in use in this container.")


_PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}


def _port_text(port):
    """One entry of Docker's port map as the user wrote it: 8080:80/tcp."""
    if not isinstance(port, dict):
        return shown(port)
    proto = _PROTOCOLS.get(port.get("Proto"), str(port.get("Proto")))
    host_port = port.get("HostPort") or ""
    return "%s%s/%s" % ("%s:" % host_port if host_port else "", port.get("Port"), proto)


def remove_endpoint_state(store, ep):
    """The endpoint's record and its default-IPAM address claims (addresses from Calico IPAM
    are Docker's to release, through ReleaseAddress)."""
    for net in ep.ipv4_nets + ep.ipv6_nets:
        records.release_claim(store, _ip(net), ep.endpoint_id)
    endpoints.delete_endpoint(store, ep)


def _host_net(cidr, version):
    try:
        iface = ipaddress.ip_interface(cidr)
    except ValueError:
        raise ValidationError("Invalid address %s from Docker." % shown(cidr))
    if iface.version != version:
        raise ValidationError("%s is not an IPv%d address." % (cidr, version))
    return str(ipaddress.ip_network(iface.ip))


def _ip(net):
    return str(ipaddress.ip_network(net).network_address)

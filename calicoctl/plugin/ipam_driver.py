"""Docker's IPAM driver: addresses from Calico pools through calicoctl.ipam.

Pools: RequestPool with no --subnet answers a pool id meaning "any Calico pool of this family";
with --subnet the subnet must be a configured Calico pool.  Either way the answer carries a
gateway of 0.0.0.0/0 (::/0) in its data so Docker never takes a pool address for a gateway: the
workloads' gateway is the link-local 169.254.1.1 (fe80::1) the host answers for.

The pool Docker is told for "any pool" is 0.0.0.0/0 for IPv4, but for IPv6 the smallest prefix
spanning Calico's IPv6 pools.  Docker checks that a network's subnet holds none of the host's
nameservers, and exempts only 0.0.0.0/0 (and a --subnet) from the check; ::/0 holds every IPv6
nameserver, and Docker then repeats RequestPool forever (20.10 to 28.5; on 27+ it keeps going
even after resolv.conf is fixed).  The pool id, not the pool, decides where addresses come from,
so the span is only what Docker shows and checks.  Docker asks again only when a network is
created (we do not ask for RequiresRequestReplay), so a span that moves with later pools is
never compared with an older one.

Handles: Docker's RequestAddress carries no endpoint id, so each address gets its own handle,
"libnetwork.<host>.<random hex>", and ReleaseAddress releases by address.  The host in the
handle lets start-up reconciliation find this host's addresses that no endpoint and no Docker
network holds any more (a crash between RequestAddress and CreateEndpoint) and release them.
"""

import ipaddress
import logging
import uuid

from calicoctl.datastore import pools as pools_store
from calicoctl.errors import NotFoundError, ValidationError
from calicoctl.plugin.schemas import shown

log = logging.getLogger(__name__)

ADDRESS_SPACES = {"LocalDefaultAddressSpace": "CalicoLocalAddressSpace",
                  "GlobalDefaultAddressSpace": "CalicoGlobalAddressSpace"}
ANY_POOL = {4: "0.0.0.0/0", 6: "::/0"}
GATEWAY_KEY = "com.docker.network.gateway"
HANDLE_PREFIX = "libnetwork."
_ANY_ID = "calico:any:ipv%d"
RESOLV_CONF = "/etc/resolv.conf"
# Docker reads this file instead when /etc/resolv.conf names only systemd-resolved's stub.
SYSTEMD_STUB = "127.0.0.53"
SYSTEMD_RESOLV_CONF = "/run/systemd/resolve/resolv.conf"
_POOL_ID = "calico:pool:%s"


def handle_prefix(host):
    return "%s%s." % (HANDLE_PREFIX, host)


def new_handle(host):
    return handle_prefix(host) + uuid.uuid4().hex


def is_calico_address_space(space):
    return space in ADDRESS_SPACES.values()


def parse_pool_id(pool_id):
    """PoolID -> (version, pool network or None for any pool)."""
    for version in (4, 6):
        if pool_id == _ANY_ID % version:
            return version, None
    if isinstance(pool_id, str) and pool_id.startswith("calico:pool:"):
        try:
            net = ipaddress.ip_network(pool_id[len("calico:pool:"):])
        except ValueError:
            pass
        else:
            return net.version, net
    raise NotFoundError("Pool id %s was not made by Calico's IPAM driver." % shown(pool_id))


def spanning_prefix(nets):
    """The smallest network holding every network in nets (all of one IP version)."""
    first = min(n.network_address for n in nets)
    last = max(n.broadcast_address for n in nets)
    for prefixlen in range(min(n.prefixlen for n in nets), -1, -1):
        span = ipaddress.ip_network((first, prefixlen), strict=False)
        if last in span:
            return span
    raise AssertionError("unreachable: a /0 holds every address")


def parse_nameservers(text):
    """The nameserver addresses of a resolv.conf's text (a zone such as %eth0 dropped)."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                found.append(ipaddress.ip_address(fields[1].split("%")[0]))
            except ValueError:
                continue
    return found


def host_nameservers(path=None):
    """The nameservers Docker checks new subnets against.  Like Docker, read systemd-resolved's
    list of upstream servers when resolv.conf names only its local stub.  The plugin runs on the
    host or in a host-network container, whose resolv.conf Docker copies from that same file."""
    path = path or RESOLV_CONF
    try:
        with open(path) as f:
            servers = parse_nameservers(f.read())
    except OSError:
        return []
    if servers == [ipaddress.ip_address(SYSTEMD_STUB)]:
        try:
            with open(SYSTEMD_RESOLV_CONF) as f:
                return parse_nameservers(f.read())
        except OSError:
            return servers
    return servers


class IpamDriver:
    def __init__(self, store, host, ipam, pending=None):
        self.store = store
        self.host = host
        self.ipam = ipam
        self.pending = pending      # PendingReleases, told of every address given out

    def get_default_address_spaces(self):
        return dict(ADDRESS_SPACES)

    def request_pool(self, request):
        version = 6 if request.get("V6") else 4
        if request.get("SubPool"):
            raise ValidationError(
                "Calico IPAM does not support --ip-range; make a smaller Calico pool "
                "('calicoctl pool add <CIDR>') and pass it as --subnet.")
        subnet = request.get("Pool") or ""
        if not subnet:
            pool_id = _ANY_ID % version
            cidr = ANY_POOL[4] if version == 4 else str(self._any_ipv6_span())
        else:
            try:
                net = ipaddress.ip_network(subnet)
            except ValueError:
                raise ValidationError("Invalid --subnet %s: use a CIDR such as 192.168.0.0/16."
                                      % shown(subnet))
            if net.version != version:
                raise ValidationError("--subnet %s is not an IPv%d subnet." % (subnet, version))
            pool = self._configured_pool(net)
            pool_id, cidr = _POOL_ID % pool.cidr, str(pool.cidr)
        return {"PoolID": pool_id, "Pool": cidr, "Data": {GATEWAY_KEY: ANY_POOL[version]}}

    def _any_ipv6_span(self):
        """The smallest prefix holding every Calico IPv6 pool: Docker's view of an --ipv6 network
        created without --subnet (see the module docstring for why not ::/0)."""
        pools = [p.cidr for p in pools_store.list_pools(self.store, 6) if p.ipam]
        if not pools:
            raise ValidationError(
                "There is no Calico IPv6 pool to take addresses from; add one with "
                "'calicoctl pool add <IPv6 CIDR>' before creating an --ipv6 network.")
        span = spanning_prefix(pools)
        inside = [ns for ns in host_nameservers() if ns.version == 6 and ns in span]
        if inside:
            # Docker would find its nameserver in the span and ask again forever.
            raise ValidationError(
                "The host's nameserver %s lies in %s, the span of Calico's IPv6 pools, and "
                "Docker refuses such a subnet without --subnet; create the network with "
                "--subnet <one Calico IPv6 pool>." % (inside[0], span))
        return span

    def _configured_pool(self, net):
        for pool in pools_store.list_pools(self.store, net.version):
            if pool.cidr == net and pool.ipam:
                return pool
        raise ValidationError(
            "With Calico IPAM, --subnet must be a Calico pool and %s is not one; add it with "
            "'calicoctl pool add %s' (or leave out --subnet to use any pool)." % (net, net))

    def release_pool(self, request):
        parse_pool_id(request["PoolID"])
        return {}

    def request_address(self, request):
        version, pool = parse_pool_id(request["PoolID"])
        options = request.get("Options") or {}
        if options.get("RequestAddressType") == GATEWAY_KEY:
            raise ValidationError(
                "Calico networks route through the link-local gateway %s; do not pass "
                "--gateway with --ipam-driver calico." % ("169.254.1.1" if version == 4
                                                         else "fe80::1"))
        handle = new_handle(self.host)
        attributes = {"host": self.host, "source": "libnetwork"}
        wanted = request.get("Address") or ""
        if wanted:
            try:
                ip = ipaddress.ip_address(wanted.split("/")[0])
            except ValueError:
                raise ValidationError("Invalid address %s." % shown(wanted))
            if ip.version != version:
                raise ValidationError("%s is not an IPv%d address." % (ip, version))
            if pool is not None and ip not in pool:
                raise ValidationError("%s is outside this network's pool %s." % (ip, pool))
            self.ipam.assign(ip, handle_id=handle, attributes=attributes)
        else:
            ip = self.ipam.auto_assign(version, handle_id=handle, attributes=attributes,
                                       pool=pool)
        if self.pending is not None:
            self.pending.forget_address(ip)
        prefix = 32 if ip.version == 4 else 128
        log.info("Assigned %s (handle %s)", ip, handle)
        return {"Address": "%s/%d" % (ip, prefix), "Data": {}}

    def release_address(self, request):
        parse_pool_id(request["PoolID"])
        try:
            ip = ipaddress.ip_address(request["Address"].split("/")[0])
        except ValueError:
            raise ValidationError("Invalid address %s." % shown(request["Address"]))
        if ip.is_unspecified:
            return {}      # the 0.0.0.0/0 "gateway" of RequestPool's answer: never allocated
        not_allocated = self.ipam.release([ip])
        if not_allocated:
            log.info("ReleaseAddress %s: it was not allocated (already released)", ip)
        return {}

    def release_deferred(self, request):
        """ReleaseAddress replayed after an etcd outage (pending.py): the address may meanwhile
        have been freed and given to a new container, so release it only while one of this
        host's plugin handles still holds it and no endpoint of this host has it."""
        from calicoctl.plugin import records
        parse_pool_id(request["PoolID"])
        ip = ipaddress.ip_address(request["Address"].split("/")[0])
        if ip.is_unspecified:
            return {}
        assignment = self.ipam.get_assignment(ip)
        if assignment is None:
            return {}
        if not str(assignment.get("handle_id") or "").startswith(handle_prefix(self.host)):
            log.info("Deferred release of %s skipped: it is now held by %s", ip,
                     assignment.get("handle_id"))
            return {}
        for ep in records.host_endpoints(self.store, self.host):
            if ip in ep.addresses():
                log.info("Deferred release of %s skipped: endpoint %s holds it", ip,
                         ep.endpoint_id[:12])
                return {}
        self.ipam.release([ip])
        return {}

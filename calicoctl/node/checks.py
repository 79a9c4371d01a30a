"""What a host needs to run Calico, each requirement probed for real.

Kernel features are tried, not looked up: an ipset plus an iptables rule matching it, an ip6tables
chain and an IP-in-IP link are created in a scratch network namespace (`unshare --net`), which the
kernel throws away when the probe exits, so nothing is left on the host whatever happens.  `lsmod`
would miss built-in modules and cannot tell whether autoloading works.

Each check returns a Check; `calicoctl checksystem` prints them all, `calicoctl node` refuses to
start while a required one fails.
"""

import glob
import os
import shutil
import subprocess
from dataclasses import dataclass

from calicoctl.dataplane import sysctl
from calicoctl.errors import CalicoError, DataplaneError

# Docker 20.10 (API 1.41) is the oldest engine calicoctl is built and tested for (Debian 12's
# docker.io): from 20.10 on there is no cluster store, so every host keeps its own copy of a
# network and the plugin treats same-named networks as one (README.md); older engines behave
# otherwise and are not tested.
MIN_DOCKER_API = (1, 41)
MIN_DOCKER_VERSION = "20.10"
# The agent's BIRD config needs BIRD 1.6 or later (felix/bird.py renders 1.x and 2 configs).
MIN_BIRD = (1, 6)
# BGP: the agent's BIRD listens here on every address of the host (calico-node shares the host's
# network), so any other listener on the port leaves BGP down.
BGP_PORT = 179
# Workload veths keep Docker's default MTU; an uplink smaller than this fragments or drops
# full-size packets between hosts.
VETH_MTU = 1500
# The IP-in-IP device carries 20 bytes of outer IPv4 header: 1440 leaves room on a 1460-byte
# cloud uplink, the value Calico has always given tunl0.
IPIP_MTU = 1440
IPIP_OVERHEAD = 20
PROBE = "calico-probe"

PROBE_XT_SET = ("ipset create {p} hash:ip && iptables -w -N {p} && "
                "iptables -w -A {p} -m set --match-set {p} src -j RETURN").format(p=PROBE)
PROBE_IP6TABLES = "ip6tables -w -N {p} && ip6tables -w -A {p} -j RETURN".format(p=PROBE)
PROBE_IPIP = "ip link add name {p} type ipip".format(p=PROBE)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str            # OK: what was found; not OK: what to do
    required: bool = True

    @property
    def failed(self):
        return self.required and not self.ok

    def line(self):
        status = "OK" if self.ok else ("FAIL" if self.required else "WARNING")
        return "%-28s %-8s %s" % (self.name, status, self.detail)


def probe_in_scratch_netns(script):
    """Run a shell script in a throwaway network namespace: (ok, last line of its errors)."""
    if shutil.which("unshare") is None:
        return False, "unshare (util-linux) is not installed"
    proc = subprocess.run(["unshare", "--net", "sh", "-c", script],
                          capture_output=True, text=True, timeout=30)
    err = (proc.stderr or proc.stdout).strip().splitlines()
    return proc.returncode == 0, (err[-1] if err else "exit %d" % proc.returncode)


def check_root(euid=None):
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return Check("running as root", True, "uid 0")
    return Check("running as root", False, "run calicoctl with sudo: it changes routes, "
                 "iptables and starts privileged containers")


def check_etcd(store):
    try:
        store.current_index()
    except CalicoError as exc:
        return Check("etcd reachable", False, str(exc))
    return Check("etcd reachable", True, store.settings.describe())


def docker_too_old(found):
    """What to say about an engine older than the oldest supported one: one line, naming what to
    install.  `found` describes the engine ("Docker 19.03.2 (API 1.40)")."""
    return ("%s is older than Docker %s (API %d.%d), the oldest calicoctl supports; install "
            "Docker %s or later (Debian: apt-get install docker.io)" % (
                (found, MIN_DOCKER_VERSION) + MIN_DOCKER_API + (MIN_DOCKER_VERSION,)))


def check_docker(client_factory):
    """client_factory() -> docker-py client (raises CalicoError when Docker is unreachable)."""
    try:
        client = client_factory()
        version = client.version()
    except CalicoError as exc:
        return Check("Docker reachable", False, str(exc))
    api = tuple(int(x) for x in str(version.get("ApiVersion", "0.0")).split(".")[:2])
    found = "Docker %s (API %s)" % (version.get("Version", "?"), version.get("ApiVersion", "?"))
    if api < MIN_DOCKER_API:
        return Check("Docker version", False, docker_too_old(found))
    return Check("Docker version", True, found)


def check_live_restore(client_factory):
    """With the plugin in a container of the same engine, a dockerd restart without live-restore
    stops the plugin too, and dockerd then retries the driver for 15 s per network and endpoint
    before its API answers (47 s for a few workloads in tests/st/test_restarts.py; 0.6 s with
    live-restore)."""
    try:
        enabled = bool(client_factory().info().get("LiveRestoreEnabled"))
    except CalicoError as exc:
        return Check("Docker live-restore", False, str(exc), required=False)
    if enabled:
        return Check("Docker live-restore", True, "enabled: containers and the plugin keep "
                     "running while dockerd restarts")
    return Check("Docker live-restore", False,
                 "disabled: a dockerd restart waits ~15 s per Calico network and endpoint for the "
                 "plugin; add \"live-restore\": true to /etc/docker/daemon.json", required=False)


def check_xt_set(probe=probe_in_scratch_netns):
    ok, err = probe(PROBE_XT_SET)
    if ok:
        return Check("kernel: ipset match (xt_set)", True, "ipset + iptables -m set work")
    return Check("kernel: ipset match (xt_set)", False,
                 "policy needs ipsets matched from iptables (%s); install ipset and iptables "
                 "and load the xt_set module (modprobe xt_set)" % err)


def check_ip6tables(probe=probe_in_scratch_netns):
    ok, err = probe(PROBE_IP6TABLES)
    if ok:
        return Check("kernel: ip6tables", True, "ip6tables works")
    return Check("kernel: ip6tables", False,
                 "IPv6 policy needs ip6tables (%s); install iptables and load ip6_tables"
                 % err, required=False)


def check_nftables(usable=None):
    """Which policy dataplane the agent's `--dataplane=auto` takes here: nftables when nft and
    the kernel accept a sample of its table (checked with `nft -c`, nothing committed)."""
    if usable is None:
        from calicoctl.felix.executor import nftables_usable as usable
    ok, why = usable()
    if ok:
        return Check("policy dataplane", True, "nftables (%s)" % why, required=False)
    return Check("policy dataplane", False, "iptables: %s; policy still works, but one new "
                 "endpoint costs more as endpoints grow" % why, required=False)


def check_ipip(probe=probe_in_scratch_netns):
    ok, err = probe(PROBE_IPIP)
    if ok:
        return Check("kernel: ipip", True, "IP-in-IP links can be made", required=False)
    return Check("kernel: ipip", False,
                 "no IP-in-IP on this kernel (%s): only pools without --ipip / networks without "
                 "ipip=true will work (modprobe ipip to enable); not required" % err,
                 required=False)


def check_rp_filter(read=sysctl.read):
    # The agent's anti-spoofing does not rest on this sysctl: a raw-table rpfilter match drops
    # any workload packet whose source is not routed back to its own veth (felix/raw.py).  Loose
    # filtering host-wide is still worth a warning: it lets anything else on the host (a veth the
    # agent does not manage) send from addresses that are not its own.
    value = read("net/ipv4/conf/all/rp_filter")
    if value == "2":
        return Check("reverse-path filtering", False,
                     "net.ipv4.conf.all.rp_filter is 2 (loose), which lets interfaces Calico does "
                     "not manage spoof other addresses; set it to 1 (sysctl -w "
                     "net.ipv4.conf.all.rp_filter=1)", required=False)
    return Check("reverse-path filtering", True,
                 "net.ipv4.conf.all.rp_filter=%s (workloads are held to their own addresses by "
                 "the agent's raw-table rpfilter rule)" % value, required=False)


def check_mtu(uplink):
    """uplink: a link dict from address.read_interfaces() (or None when unknown)."""
    if not uplink or not uplink.get("mtu"):
        return Check("uplink MTU", True, "uplink not identified; not checked", required=False)
    mtu = int(uplink["mtu"])
    problems = []
    if mtu < VETH_MTU:
        problems.append("workload veths use %d, more than %s's %d: set the network's "
                        "--opt mtu=%d" % (VETH_MTU, uplink["name"], mtu, mtu))
    if mtu < IPIP_MTU + IPIP_OVERHEAD:
        problems.append("IP-in-IP needs %d (tunnel %d + %d header)" % (
            IPIP_MTU + IPIP_OVERHEAD, IPIP_MTU, IPIP_OVERHEAD))
    if problems:
        return Check("uplink MTU", False, "%s has MTU %d; %s" % (
            uplink["name"], mtu, "; ".join(problems)), required=False)
    return Check("uplink MTU", True, "%s MTU %d >= veth %d and tunnel %d + %d" % (
        uplink["name"], mtu, VETH_MTU, IPIP_MTU, IPIP_OVERHEAD), required=False)


def read_os_release(path="/etc/os-release"):
    """/etc/os-release as a dict ({} when it cannot be read)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    return {k: v.strip().strip('"') for k, _, v in (line.partition("=") for line in lines)
            if k and not k.startswith("#")}


def bird_package(os_release):
    """What to install for a BIRD the agent can run, by distribution: Debian 13 and later (and
    testing, which has no VERSION_ID) have only BIRD 2 (bird2); Debian 12 and older have both."""
    if os_release.get("ID") != "debian":
        return "install BIRD 1.6 or later (the bird2 package on most distributions)"
    version = os_release.get("VERSION_ID", "")
    if version.isdigit() and int(version) <= 12:
        return "apt-get install bird2 (or bird, BIRD 1.6)"
    return "apt-get install bird2"


def check_host_bird(detect=None, os_release=None, required=True):
    """The host's own BIRD, which the agent runs when it runs on the host itself (`calicoctl
    node --runtime=none`, then `calicoctl felix serve`).  calico-node brings its own BIRD, so
    for it the host's does not matter: `calicoctl checksystem` only warns (required=False)."""
    if detect is None:
        from calicoctl.felix.birdproc import detect_version as detect
    advice = bird_package(read_os_release() if os_release is None else os_release)
    need = "the agent run on this host (--runtime=none) needs BIRD %d.%d or later" % MIN_BIRD \
        if required else "needed only where the agent runs on this host (calicoctl node " \
        "--runtime=none); calico-node brings its own"
    try:
        found = detect()
    except DataplaneError as exc:
        said = (exc.stderr or exc.stdout or "").strip().splitlines()
        what = "not installed" if "No such file" in exc.stderr else \
            "'%s' failed (exit %s%s)" % (" ".join(exc.cmd), exc.returncode,
                                         (": " + said[-1]) if said else "")
        return Check("BIRD on this host", False, "%s: %s; %s" % (what, need, advice),
                     required=required)
    text = ".".join(map(str, found))
    if found[:2] < MIN_BIRD:
        return Check("BIRD on this host", False, "BIRD %s is older than %d.%d: %s; %s" % (
            (text,) + MIN_BIRD + (need, advice)), required=required)
    return Check("BIRD on this host", True, "BIRD %s" % text, required=required)


# /proc/net/tcp{,6} columns: sl local_address rem_address st ... inode; state 0A is LISTEN.
TCP_LISTEN = "0A"


def tcp_listeners(port, net_dir="/proc/net"):
    """Inodes of the sockets listening on TCP `port` in this process's network namespace, IPv4
    and IPv6 (/proc/net is /proc/self/net: it shows the reader's namespace)."""
    inodes = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(os.path.join(net_dir, name)) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue      # no IPv6 on this kernel
        inodes.update(parse_tcp_listeners(rows, port))
    return inodes


def parse_tcp_listeners(rows, port):
    """The inodes of LISTEN rows of /proc/net/tcp text whose local port is `port`."""
    found = set()
    for row in rows:
        cols = row.split()
        if len(cols) > 9 and cols[3] == TCP_LISTEN and int(cols[1].rsplit(":", 1)[1], 16) == port:
            found.add(int(cols[9]))
    return found


def socket_holders(inodes, proc="/proc"):
    """[(pid, command name)] of the processes holding any of these socket inodes, from their
    open files (every process on the machine: inodes are unique across namespaces)."""
    wanted = {"socket:[%d]" % i for i in inodes}
    holders = []
    for fd_dir in glob.glob(os.path.join(proc, "[0-9]*", "fd")):
        pid = int(fd_dir.split(os.sep)[-2])
        try:
            held = any(os.readlink(os.path.join(fd_dir, fd)) in wanted
                       for fd in os.listdir(fd_dir))
        except OSError:
            continue      # gone meanwhile, or a kernel thread
        if held:
            try:
                with open(os.path.join(proc, str(pid), "comm")) as f:
                    holders.append((pid, f.read().strip()))
            except OSError:
                continue
    return sorted(holders)


def check_bgp_port(node_holds, listeners=None, holders=None):
    """Nothing but calico-node holds TCP 179 on this host.  Something else listening there (a
    BIRD left running by an earlier `calicoctl felix serve`, say) would keep calico-node's BIRD
    from listening, and BGP would stay down with nothing said.

    node_holds([pid, ...]) -> True when those processes (possibly none found) are the running
    calico-node's own, whose BIRD holds the port on an idempotent re-run.
    """
    inodes = (listeners or tcp_listeners)(BGP_PORT)
    if not inodes:
        return Check("BGP port %d free" % BGP_PORT, True, "nothing else listens there")
    found = (holders or socket_holders)(inodes)
    if node_holds([pid for pid, _ in found]):
        return Check("BGP port %d free" % BGP_PORT, True, "held by calico-node's own BIRD")
    who = ", ".join("%s (pid %d)" % (name, pid) for pid, name in found) or \
        "a process this host's /proc does not show"
    kill = " (kill %s)" % " ".join(str(pid) for pid, _ in found) if found else ""
    return Check("BGP port %d free" % BGP_PORT, False,
                 "TCP port %d is held by %s, not by calico-node, so its BIRD could not listen "
                 "and BGP would stay down; stop it first%s (a BIRD started by 'calicoctl felix "
                 "serve' on this host keeps running after the agent stops)" % (BGP_PORT, who, kill))


def check_plugin_dir(path="/run/docker/plugins"):
    """Docker finds remote plugins by socket in /run/docker/plugins."""
    parent = os.path.dirname(path)
    if os.path.isdir(path) or os.path.isdir(parent):
        return Check("Docker plugin directory", True, "%s usable" % path)
    return Check("Docker plugin directory", False, "%s does not exist and neither does %s: is "
                 "dockerd running on this host?" % (path, parent))


def system_checks(store=None, docker_factory=None, uplink=None, libnetwork=False,
                  host_bird=None, node_holds_bgp_port=None):
    """Every check, in the order a user fixes them.  store/docker_factory None: skipped.

    host_bird: True when the agent will run on the host itself (its BIRD is required), None when
    that is not known (a warning), False when calico-node brings BIRD (not checked).
    node_holds_bgp_port: given when calico-node is about to start: check_bgp_port's test for
    the running calico-node's own processes.
    """
    checks = [check_root()]
    if store is not None:
        checks.append(check_etcd(store))
    if docker_factory is not None:
        checks.append(check_docker(docker_factory))
    checks += [check_xt_set(), check_ip6tables(), check_nftables(), check_ipip(),
               check_rp_filter(), check_mtu(uplink)]
    if host_bird is not False:
        checks.append(check_host_bird(required=bool(host_bird)))
    if node_holds_bgp_port is not None:
        checks.append(check_bgp_port(node_holds_bgp_port))
    if libnetwork:
        checks.append(check_plugin_dir())
        if docker_factory is not None:
            checks.append(check_live_restore(docker_factory))
    return checks


def failures(checks):
    return [c for c in checks if c.failed]


def ipip_available(probe=probe_in_scratch_netns):
    return probe(PROBE_IPIP)[0]

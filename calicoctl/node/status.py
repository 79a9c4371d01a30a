"""`calicoctl status`: is this node's Calico running, and are its BGP sessions up?

Collecting (Docker, /proc, etcd, birdc) is kept apart from parsing BIRD's output
(`parse_bird_protocols`, pure) and from the printing the command does (commands/status.py, in
the original calicoctl's layout).

BIRD 1.x runs IPv4 sessions in bird and IPv6 ones in bird6 (asked through birdc6); BIRD 2 has
one daemon for both.  birdc's greeting ("BIRD 2.17.6 ready.") says which one answered.
"""

import ipaddress
import os
import subprocess
from dataclasses import dataclass, field

from calicoctl.errors import CalicoError
from calicoctl.felix.bird import bird_version, parse_protocols
from calicoctl.node import containers

FALLBACK_BIRD_SOCKETS = {4: "/var/run/calico/bird.ctl", 6: "/var/run/calico/bird6.ctl"}


def bird_socket(version=4):
    """Where the agent's BIRD listens for birdc (inside calico-node, or on a host that runs
    `calicoctl felix serve` itself).  The agent's birdproc module owns the path."""
    try:
        from calicoctl.felix.birdproc import BirdProcess
    except ImportError:
        return FALLBACK_BIRD_SOCKETS[version]
    return BirdProcess(version).ctl


@dataclass
class Item:
    what: str
    ok: bool
    detail: str


@dataclass
class Agent:
    """How this node's agent runs: in the calico-node container, else as a host process."""
    container: str = None     # the container's status as `docker ps -a` words it ("Up 15 hours",
                              # "Exited (1) 2 minutes ago"); None when there is no calico-node
    running: bool = False     # the container runs, or (no container) a host process does
    pid: int = None           # the host's `calicoctl felix serve` process, when no container
    version: str = None       # the calicoctl version the agent runs, when it could be asked
    problem: str = None       # why it is not running


@dataclass
class BGPSession:
    name: str
    peer: str
    state: str
    since: str
    info: str
    ip_version: int = 4       # the peer address's family: which status table it belongs in

    @property
    def established(self):
        return self.info.split(" ")[0] == "Established"


@dataclass
class Report:
    agent: Agent = None
    items: list = field(default_factory=list)     # the plugin, agent liveness, endpoints
    sessions: list = field(default_factory=list)
    bgp_error: str = None

    @property
    def problems(self):
        found = [self.agent.problem] if self.agent is not None and not self.agent.running else []
        found += ["%s: %s" % (i.what, i.detail) for i in self.items if not i.ok]
        found += ["BGP peer %s is %s" % (s.peer, s.info or s.state)
                  for s in self.sessions if not s.established]
        if self.bgp_error:
            found.append(self.bgp_error)
        return found


def parse_bird_protocols(text, ip_version=4):
    """BGPSessions from `birdc show protocols all` of BIRD 1.x or 2 (felix.bird reads the
    table, whose layout differs between them).  A session's family is its neighbor address's;
    ip_version (6 for bird6) only stands in where BIRD showed no address."""
    return [BGPSession(name=r["name"], peer=r["neighbor"] or r["name"], state=r["state"],
                       since=r["since"], info=r["info"],
                       ip_version=_address_version(r["neighbor"]) or ip_version)
            for r in parse_protocols(text) if r["proto"] == "BGP"]


def _address_version(text):
    try:
        # BIRD 2 may show a link-local neighbor with its interface: "fe80::1%eth0".
        return ipaddress.ip_address(text.split("%")[0]).version
    except ValueError:
        return None


def bird6_absent(rc, output):
    """Whether birdc6 failed because there is no bird6 to ask, rather than a broken one: the
    agent runs none on a node without an IPv6 address (its socket is missing then), and an
    image may lack birdc6 (docker exec answers 126/127)."""
    return rc in (126, 127) or "No such file or directory" in output \
        or "executable file not found" in output


def peer_type(name):
    for prefix, kind in (("Mesh_", "node-to-node mesh"), ("Global_", "global"),
                         ("Node_", "node specific")):
        if name.startswith(prefix):
            return kind
    return "peer"


def find_processes(*words):
    """pids whose command line contains every word (e.g. "felix", "serve"), among the processes
    in this network namespace: an agent serves the host whose network it is in, so one running
    for another namespace (a container's, a second host's on the same machine) is not ours."""
    found = []
    try:
        my_net = os.readlink("/proc/self/ns/net")
    except OSError:
        my_net = None
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        try:
            if my_net is not None and os.readlink("/proc/%s/ns/net" % pid) != my_net:
                continue
        except OSError:
            pass    # not ours to inspect (not root): counted, as before namespaces mattered
        if "calicoctl" in " ".join(argv[:3]) and all(w in argv for w in words):
            found.append(int(pid))
    return sorted(found)


def _birdc(version, container):
    birdc = "birdc" if version == 4 else "birdc6"
    cmd = [birdc, "-s", bird_socket(version), "show", "protocols", "all"]
    if container is not None:
        rc, output = container.exec_run(cmd)
        return rc, output.decode(errors="replace")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return proc.returncode, proc.stdout + proc.stderr


def bird_sessions(container=None):
    """(BGP sessions, None) of the agent's BIRD, or (what it has, a problem) when a BIRD does
    not answer.  container: the calico-node to ask in, None for this host."""
    def no_answer(version, rc, output):
        return "BIRD%s did not answer on %s: %s" % (
            "" if version == 4 else "6", bird_socket(version),
            (output.strip().splitlines() or ["exit %s" % rc])[-1])

    rc, output = _birdc(4, container)
    if rc != 0:
        return [], no_answer(4, rc, output)
    sessions = parse_bird_protocols(output)
    found = bird_version(output)
    if found is not None and found[0] < 2:
        rc, output = _birdc(6, container)
        if rc == 0:
            sessions += parse_bird_protocols(output, ip_version=6)
        elif not bird6_absent(rc, output):
            return sessions, no_answer(6, rc, output)
    return sessions, None


def ps_status(client, container):
    """The container's status as `docker ps -a` words it ("Up 15 hours"), which the original
    calicoctl printed; inspect only has the state ("running")."""
    listed = client.api.containers(all=True, filters={"id": container.id})
    return (listed[0].get("Status") if listed else None) or container.status


def agent_version(container):
    """`calicoctl version` inside calico-node: the agent's own version, which differs from this
    calicoctl's when calicoctl was upgraded and the node not restarted.  None if it does not
    answer (the original then left the version line out)."""
    import docker
    try:
        rc, output = container.exec_run(["calicoctl", "version"])
    except docker.errors.APIError:
        return None
    lines = output.decode(errors="replace").strip().splitlines()
    return lines[-1].strip() if rc == 0 and lines else None


def find_agent(client, docker_problem):
    """(Agent, the calico-node container to ask BIRD in or None).  The container counts when
    there is one; without it, a host `calicoctl felix serve` process."""
    node = containers.find_container(client, containers.NODE_CONTAINER) if client else None
    if node is not None:
        running = containers.container_running(node)
        words = ps_status(client, node)
        agent = Agent(container=words, running=running,
                      version=agent_version(node) if running else None,
                      problem=None if running else "calico-node container: %s" % words)
        return agent, node if running else None
    pids = find_processes("felix", "serve")
    if pids:
        from calicoctl import __version__   # a host process runs this host's calicoctl
        return Agent(running=True, pid=pids[0], version=__version__), None
    return Agent(problem="agent: neither a calico-node container nor a 'calicoctl felix serve' "
                 "process is running" + (" (%s)" % docker_problem if docker_problem else "") +
                 "; start it with 'calicoctl node'"), None


def collect(store, node_name, docker_factory=containers.docker_client):
    report = Report()
    client = None
    try:
        client = docker_factory()
    except CalicoError as exc:
        docker_problem = str(exc)
    else:
        docker_problem = None

    report.agent, exec_in = find_agent(client, docker_problem)

    from calicoctl.node import managed_plugin
    managed = managed_plugin.find(client) if client else None
    plugin = containers.find_container(client, containers.PLUGIN_CONTAINER) if client else None
    if managed is not None:
        # dockerd runs it and talks to its socket itself (under the plugin's own folder).
        report.items.append(Item("managed plugin %s" % managed_plugin.PLUGIN_NAME,
                                 managed.enabled, "enabled" if managed.enabled else
                                 "disabled; enable it with 'calicoctl node --libnetwork "
                                 "--managed-plugin'"))
    elif plugin is not None:
        running = containers.container_running(plugin)
        report.items.append(Item("calico-libnetwork container", running,
                                 ps_status(client, plugin)))
    elif find_processes("plugin", "serve"):
        report.items.append(Item("plugin process", True, "running"))
    if managed is None and (plugin is not None or find_processes("plugin", "serve")):
        answers = containers.plugin_answers()
        report.items.append(Item("plugin socket", answers, containers.PLUGIN_SOCKET + (
            " answers" if answers else " does not answer /Plugin.Activate")))

    from calicoctl.felix.status import agent_alive, agent_dataplane
    alive = agent_alive(store, node_name)
    report.items.append(Item("agent liveness", alive, "reported alive in etcd" if alive else
                             "no liveness report in etcd for node %s" % node_name))
    dataplane = agent_dataplane(store, node_name) if alive else None
    if dataplane:
        report.items.append(Item("policy dataplane", True, dataplane))

    from calicoctl.datastore import endpoints
    count = len(endpoints.list_endpoints(store, host=node_name))
    report.items.append(Item("endpoints", True, "%d on node %s" % (count, node_name)))

    if report.agent.running:
        report.sessions, report.bgp_error = bird_sessions(exec_in)
    return report

"""`calicoctl status` and `calicoctl diags` ask the right BIRD daemons: bird and bird6 on BIRD
1.x, the one bird on BIRD 2 (birdc's greeting says which), through a calico-node stand-in that
answers with output captured from real daemons (bird_output/).  `calicoctl status` prints them in
the original calicoctl's layout: its first lines, an IPv4 and an IPv6 table, then our health
lines, with DOWN lines on stderr and exit 1 when something is down."""

from pathlib import Path

import docker
import pytest

from calicoctl import __version__
from calicoctl.cli import main
from calicoctl.commands.status import report_lines
from calicoctl.node import diags, status

CAPTURED = Path(__file__).parent / "bird_output"


class Node:
    """A calico-node container's exec_run: birdc command -> (rc, output) from a table."""

    id = "c0ffee"

    def __init__(self, answers, state="running"):
        self.answers = answers
        self.asked = []
        self.status = state

    def reload(self):
        pass

    def exec_run(self, cmd):
        self.asked.append(cmd[0])
        rc, text = self.answers.get(cmd[0], (127, "exec: %r: executable file not found in "
                                                 "$PATH" % cmd[0]))
        return rc, text.encode()


def captured(name):
    return (CAPTURED / name).read_text()


def test_bird_1_6_sessions_come_from_bird_and_bird6():
    node = Node({"birdc": (0, captured("bird-1.6.8-show-protocols-all.txt")),
                 "birdc6": (0, captured("bird6-1.6.8-show-protocols-all.txt"))})
    sessions, problem = status.bird_sessions(node)
    assert problem is None
    assert [s.peer for s in sessions] == ["198.18.7.2", "198.18.7.9", "fd00:7::2", "fd00:7::9"]


def test_bird_2_sessions_come_from_one_daemon():
    node = Node({"birdc": (0, captured("bird-2.17.6-show-protocols-all.txt"))})
    sessions, problem = status.bird_sessions(node)
    assert problem is None and node.asked == ["birdc"]
    assert [(s.peer, s.established) for s in sessions] == [
        ("198.18.7.1", True), ("198.18.7.9", False), ("fd00:7::1", True), ("fd00:7::9", False)]


def test_no_bird6_is_fine_a_broken_one_is_a_problem():
    ipv4 = (0, captured("bird-1.6.8-show-protocols-all.txt"))
    # No IPv6 address: the agent runs no bird6, so its socket is missing.
    missing = (1, "Unable to connect to server control socket (/var/run/calico/bird6.ctl): "
                  "No such file or directory\n")
    sessions, problem = status.bird_sessions(Node({"birdc": ipv4, "birdc6": missing}))
    assert problem is None and len(sessions) == 2
    sessions, problem = status.bird_sessions(Node({"birdc": ipv4}))     # no birdc6 at all
    assert problem is None and len(sessions) == 2
    refused = (1, "Unable to connect to server control socket (/var/run/calico/bird6.ctl): "
                  "Connection refused\n")
    sessions, problem = status.bird_sessions(Node({"birdc": ipv4, "birdc6": refused}))
    assert len(sessions) == 2
    assert problem == "BIRD6 did not answer on /var/run/calico/bird6.ctl: Unable to connect " \
        "to server control socket (/var/run/calico/bird6.ctl): Connection refused"


def test_sessions_know_their_family():
    """From the neighbor address; where BIRD shows none, from the daemon (bird6: IPv6)."""
    node = Node({"birdc": (0, captured("bird-2.17.6-show-protocols-all.txt"))})
    assert [(s.peer, s.ip_version) for s in status.bird_sessions(node)[0]] == [
        ("198.18.7.1", 4), ("198.18.7.9", 4), ("fd00:7::1", 6), ("fd00:7::9", 6)]
    no_address = "\n".join(line for line in captured("bird6-1.6.8-show-protocols-all.txt")
                           .splitlines() if "Neighbor address" not in line)
    node = Node({"birdc": (0, captured("bird-1.6.8-show-protocols-all.txt")),
                 "birdc6": (0, no_address)})
    assert [(s.peer, s.ip_version) for s in status.bird_sessions(node)[0]] == [
        ("198.18.7.2", 4), ("198.18.7.9", 4), ("Mesh_fd00_7__2", 6), ("Global_fd00_7__9", 6)]


def test_bird_not_answering():
    sessions, problem = status.bird_sessions(Node({"birdc": (1, "Unable to connect to server "
                                                                 "control socket: refused\n")}))
    assert sessions == [] and problem.startswith("BIRD did not answer on ")


def run_in(node):
    def run(cmd):
        rc, output = node.exec_run(cmd)
        return rc, output.decode()
    return run


def test_diags_ask_bird6_only_on_bird_1_6():
    old = Node({"birdc": (0, captured("bird-1.6.8-show-protocols-all.txt")),
                "birdc6": (0, captured("bird6-1.6.8-show-protocols-all.txt"))})
    files = diags._bird(run_in(old))
    assert sorted(files) == ["bird-protocols.txt", "bird-routes.txt", "bird-status.txt",
                             "bird6-protocols.txt", "bird6-routes.txt", "bird6-status.txt"]
    assert "Mesh_fd00_7__2" in files["bird6-protocols.txt"]
    new = Node({"birdc": (0, captured("bird-2.17.6-show-protocols-all.txt"))})
    files = diags._bird(run_in(new))
    assert sorted(files) == ["bird-protocols.txt", "bird-routes.txt", "bird-status.txt"]
    assert "birdc6" not in new.asked


# ---- the original calicoctl's layout ----------------------------------------------------------

HEALTHY_ITEMS = [status.Item("calico-libnetwork container", True, "Up 15 hours"),
                 status.Item("plugin socket", True, "/run/docker/plugins/calico.sock answers"),
                 status.Item("agent liveness", True, "reported alive in etcd"),
                 status.Item("endpoints", True, "1 on node calico-01")]

EMPTY_TABLE = """\
+--------------+-----------+-------+-------+------+
| Peer address | Peer type | State | Since | Info |
+--------------+-----------+-------+-------+------+
+--------------+-----------+-------+-------+------+"""


def test_container_layout_is_the_originals_with_both_families_split():
    node = Node({"birdc": (0, captured("bird-2.17.6-show-protocols-all.txt"))})
    sessions, _ = status.bird_sessions(node)
    report = status.Report(agent=status.Agent(container="Up 15 hours", running=True,
                                              version="0.12.0"),
                           items=HEALTHY_ITEMS, sessions=sessions)
    assert "\n".join(report_lines(report)) == """\
calico-node container is running. Status: Up 15 hours
Running felix version 0.12.0

IPv4 BGP status
+--------------+-------------------+-------+--------------+-------------+
| Peer address |     Peer type     | State |    Since     |     Info    |
+--------------+-------------------+-------+--------------+-------------+
|  198.18.7.1  | node-to-node mesh |   up  | 16:22:00.652 | Established |
|  198.18.7.9  |       global      | start | 16:21:59.095 |   Connect   |
+--------------+-------------------+-------+--------------+-------------+

IPv6 BGP status
+--------------+-------------------+-------+--------------+-------------+
| Peer address |     Peer type     | State |    Since     |     Info    |
+--------------+-------------------+-------+--------------+-------------+
|  fd00:7::1   | node-to-node mesh |   up  | 16:22:00.773 | Established |
|  fd00:7::9   |       global      | start | 16:21:59.095 |   Connect   |
+--------------+-------------------+-------+--------------+-------------+

calico-libnetwork container: Up 15 hours
plugin socket: /run/docker/plugins/calico.sock answers
agent liveness: reported alive in etcd
endpoints: 1 on node calico-01"""


def test_the_original_example_renders_as_it_did():
    """The issue's example of the original's output: the same table, cell for cell."""
    session = status.BGPSession("Mesh_172_17_8_102", "172.17.8.102", "up", "23:29:03",
                                "Established")
    report = status.Report(agent=status.Agent(container="Up 15 hours", running=True,
                                              version="0.12.0"), sessions=[session])
    assert "\n".join(report_lines(report)) == """\
calico-node container is running. Status: Up 15 hours
Running felix version 0.12.0

IPv4 BGP status
+--------------+-------------------+-------+----------+-------------+
| Peer address |     Peer type     | State |  Since   |     Info    |
+--------------+-------------------+-------+----------+-------------+
| 172.17.8.102 | node-to-node mesh |   up  | 23:29:03 | Established |
+--------------+-------------------+-------+----------+-------------+

IPv6 BGP status
""" + EMPTY_TABLE + "\n"


def test_no_bird6_prints_an_empty_ipv6_table():
    node = Node({"birdc": (0, captured("bird-1.6.8-show-protocols-all.txt"))})
    sessions, _ = status.bird_sessions(node)
    lines = report_lines(status.Report(
        agent=status.Agent(running=True, pid=4242, version=__version__), sessions=sessions))
    assert lines[:2] == ["calico-node is running as a process (pid 4242)",
                         "Running felix version %s" % __version__]
    text = "\n".join(lines)
    assert "198.18.7.2" in text.split("IPv6 BGP status")[0]
    assert text.split("IPv6 BGP status\n")[1] == EMPTY_TABLE + "\n"     # and no items


def test_not_running_says_so_in_the_originals_words():
    """Like the original: the one line, no version and no BGP tables (no BIRD to ask)."""
    report = status.Report(agent=status.Agent(problem="agent: neither ..."), items=[
        status.Item("agent liveness", False, "no liveness report in etcd for node calico-01")])
    assert report_lines(report) == [
        "calico-node container not running", "",
        "agent liveness: DOWN, no liveness report in etcd for node calico-01"]
    assert report.problems == ["agent: neither ...",
                               "agent liveness: no liveness report in etcd for node calico-01"]


class Client:
    """docker-py's client as find_agent uses it: containers.get and the list API's Status."""

    def __init__(self, node=None, words="Up 15 hours"):
        self.node, self.words = node, words
        client = self

        class Containers:
            def get(self, name):
                if client.node is None or name != "calico-node":
                    raise docker.errors.NotFound(name)
                return client.node

        class API:
            def containers(self, all, filters):
                assert all and filters == {"id": client.node.id}
                return [{"Id": client.node.id, "Status": client.words}]

        self.containers, self.api = Containers(), API()


def test_find_agent_in_the_container_asks_it_for_its_version():
    node = Node({"calicoctl": (0, "0.11.0\n")})
    agent, exec_in = status.find_agent(Client(node), None)
    assert agent == status.Agent(container="Up 15 hours", running=True, version="0.11.0")
    assert exec_in is node
    agent, exec_in = status.find_agent(Client(Node({})), None)   # no calicoctl to ask
    assert agent.running and agent.version is None
    stopped = Node({}, state="exited")
    agent, exec_in = status.find_agent(Client(stopped, "Exited (1) 2 minutes ago"), None)
    assert (agent.running, exec_in, stopped.asked) == (False, None, [])
    assert agent.problem == "calico-node container: Exited (1) 2 minutes ago"


def test_find_agent_as_a_process_or_nowhere(monkeypatch):
    monkeypatch.setattr(status, "find_processes", lambda *words: [4242])
    agent, exec_in = status.find_agent(Client(), None)
    assert agent == status.Agent(running=True, pid=4242, version=__version__)
    monkeypatch.setattr(status, "find_processes", lambda *words: [])
    agent, _ = status.find_agent(None, "Cannot reach Docker at unix:///x (refused).")
    assert not agent.running and agent.problem.startswith("agent: neither a calico-node ")
    assert "(Cannot reach Docker" in agent.problem and "'calicoctl node'" in agent.problem


@pytest.fixture
def status_of(monkeypatch, capsys):
    """Run `calicoctl status` through main() on a given report: (exit, stdout, stderr)."""
    import calicoctl.datastore
    from calicoctl.datastore import migrate
    monkeypatch.setenv("CALICO_HOSTNAME", "calico-01")
    monkeypatch.setattr(calicoctl.datastore, "open_store", lambda: object())
    monkeypatch.setattr(migrate, "notes", lambda store: [])

    def run(report):
        monkeypatch.setattr(status, "collect", lambda store, name: report)
        code = main(["status"])
        captured_ = capsys.readouterr()
        return code, captured_.out, captured_.err
    return run


def test_status_exits_1_with_down_lines_on_stderr(status_of):
    node = Node({"birdc": (0, captured("bird-2.17.6-show-protocols-all.txt"))})
    sessions, _ = status.bird_sessions(node)
    code, out, err = status_of(status.Report(
        agent=status.Agent(container="Up 15 hours", running=True, version="0.12.0"),
        items=HEALTHY_ITEMS[:2] + [status.Item("agent liveness", False, "no liveness report "
                                               "in etcd for node calico-01")] +
        HEALTHY_ITEMS[3:], sessions=sessions))
    assert code == 1
    assert out.splitlines()[0] == "calico-node container is running. Status: Up 15 hours"
    assert "agent liveness: DOWN, no liveness report in etcd for node calico-01" in out
    assert err.splitlines() == [
        "DOWN: agent liveness: no liveness report in etcd for node calico-01",
        "DOWN: BGP peer 198.18.7.9 is Connect", "DOWN: BGP peer fd00:7::9 is Connect",
        "Calico on calico-01 is not healthy: 3 problems."]


def test_status_healthy_exits_0_with_nothing_on_stderr(status_of):
    session = status.BGPSession("Mesh_172_17_8_102", "172.17.8.102", "up", "23:29:03",
                                "Established")
    code, out, err = status_of(status.Report(
        agent=status.Agent(container="Up 15 hours", running=True, version="0.12.0"),
        items=HEALTHY_ITEMS, sessions=[session]))
    assert (code, err) == (0, "")
    assert out.endswith("endpoints: 1 on node calico-01\n")


def test_find_processes_counts_only_this_network_namespace(tmp_path):
    """An agent serves the host whose network it is in: one started in another network
    namespace (another namespace host on the same machine) is not this host's agent."""
    import subprocess
    import sys
    fake = tmp_path / "calicoctl"
    fake.write_text("import sys, time\nsys.stdout.write('ready\\n'); sys.stdout.flush()\n"
                    "time.sleep(120)\n")
    here = subprocess.Popen([sys.executable, str(fake), "felix", "serve", "here"],
                            stdout=subprocess.PIPE, text=True)
    elsewhere = subprocess.Popen(["unshare", "--net", sys.executable, str(fake), "felix",
                                  "serve", "elsewhere"], stdout=subprocess.PIPE, text=True)
    try:
        # Each says "ready" once its argv is final (unshare has exec'd python).
        assert here.stdout.readline() == "ready\n"
        assert elsewhere.stdout.readline() == "ready\n"
        assert status.find_processes("felix", "serve", "here") == [here.pid]
        assert status.find_processes("felix", "serve", "elsewhere") == []
        assert here.pid in status.find_processes("felix", "serve")
        assert elsewhere.pid not in status.find_processes("felix", "serve")
    finally:
        for proc in (here, elsewhere):
            proc.kill()
            proc.wait()

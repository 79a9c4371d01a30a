"""`calicoctl status` and `calicoctl diags` ask the right BIRD daemons: bird and bird6 on BIRD
1.x, the one bird on BIRD 2 (birdc's greeting says which), through a calico-node stand-in that
answers with output captured from real daemons (bird_output/)."""

from pathlib import Path

from calicoctl.node import diags, status

CAPTURED = Path(__file__).parent / "bird_output"


class Node:
    """A calico-node container's exec_run: birdc command -> (rc, output) from a table."""

    def __init__(self, answers):
        self.answers = answers
        self.asked = []

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

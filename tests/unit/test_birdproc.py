"""BirdProcess with this machine's real BIRD in a scratch network namespace: it finds which BIRD
is installed, starts it, reconfigures it in place, a new BirdProcess (a restarted agent) adopts
the running daemon instead of starting another, a config BIRD rejects never replaces the working
one, stop() ends it; and a daemon of the other major version found on the socket (adopted across
an upgrade) makes way for one of the installed BIRD."""

import json
import os
import signal
import subprocess
import sys
import textwrap

from calicoctl.felix.bird import BgpView, render_config
from tests.unit import bird_support

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Runs inside the namespace: BirdProcess starts BIRD as a plain child, in its own netns.
SCRIPT = textwrap.dedent(r'''
    import json, subprocess, sys
    from calicoctl.errors import DataplaneError
    from calicoctl.felix.birdproc import BirdProcess
    from tests.st.harness.procs import wait_for

    run_dir, texts, other = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    seen = {}

    def show(p, *what):
        return subprocess.run([p.birdc, "-s", p.ctl, "show"] + list(what), capture_output=True,
                              text=True).stdout

    p = BirdProcess(4, run_dir)
    seen["major"] = p.major
    p.configure(texts["one"])
    wait_for(p.answers, timeout=60, what="BIRD answering")
    p.configure(texts["one"])                 # rendered again: BIRD just keeps answering
    first_pid = p.pid()
    p.configure(texts["two"])                 # a change: `birdc configure`, same daemon
    seen["reconfigured"] = "Mesh_198_18_9_3" in show(p, "protocols") and p.pid() == first_pid

    q = BirdProcess(4, run_dir)               # the agent restarted
    q.configure(texts["two"])
    seen["adopted"] = q.proc is None and q.pid() == first_pid
    try:
        q.configure(texts["two"].replace("reject;", "rejekt;", 1))
        seen["rejected"] = False
    except DataplaneError:
        seen["rejected"] = open(q.conf).read() == texts["two"] and q.answers()
    q.stop()
    wait_for(lambda: not q.answers(), timeout=60, what="BIRD gone")

    # The other major version answering on our socket, as after an upgrade under a running BIRD.
    subprocess.Popen(other["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(q.answers, timeout=60, what="the other BIRD answering")
    seen["other_banner"] = show(q, "status").splitlines()[0]
    r = BirdProcess(4, run_dir)
    r.configure(texts["two"])
    wait_for(r.answers, timeout=60, what="the installed BIRD answering")
    seen["replaced_banner"] = show(r, "status").splitlines()[0]
    r.stop()
    wait_for(lambda: not r.answers(), timeout=60, what="BIRD gone")
    print(json.dumps(seen))
''')


def view(peers):
    nodes = {"me": {"ip4": "198.18.9.2"}}
    nodes.update({"n%d" % i: {"ip4": "198.18.9.%d" % (2 + i)} for i in range(1, peers + 1)})
    return BgpView(me="me", nodes=nodes)


def kill_birds(run_dir):
    """Whatever BIRD a failed run left: its pid file names it."""
    for name in os.listdir(run_dir):
        if name.endswith(".pid"):
            try:
                pid = int(open(os.path.join(run_dir, name)).read())
                if open("/proc/%d/comm" % pid).read().startswith("bird"):
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass


def test_start_reconfigure_adopt_reject_stop_and_replace_another_major():
    host, other = bird_support.real_birds()
    ns = bird_support.Namespace(bird_support.ns_name("p"))
    try:
        ns.ip("addr", "add", "198.18.9.2/24", "dev", "lo")
        # The run dir is inside the other BIRD's root, so both BIRDs see the same socket.
        with other.scratch() as (here, inside):
            (here / "other.cfg").write_text(render_config(view(1), other.major, 4))
            other_argv = other.argv("bird", "-f", "-c", inside + "/other.cfg",
                                    "-s", inside + "/bird.ctl", "-P", inside + "/bird.pid")
            texts = {"one": render_config(view(0), host.major, 4),
                     "two": render_config(view(1), host.major, 4)}
            try:
                proc = subprocess.run(
                    ["ip", "netns", "exec", ns.name, sys.executable, "-c", SCRIPT, str(here),
                     json.dumps(texts), json.dumps({"argv": other_argv})],
                    capture_output=True, text=True, cwd=REPO, timeout=600)
            finally:
                kill_birds(here)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            seen = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        ns.close()
    assert seen["major"] == host.major
    assert seen["reconfigured"] and seen["adopted"] and seen["rejected"]
    version = ".".join(map(str, other.version))
    assert seen["other_banner"] == "BIRD %s ready." % version
    assert seen["replaced_banner"] == "BIRD %s ready." % ".".join(map(str, host.version))

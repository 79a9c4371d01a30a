"""Checks that say in one line what is wrong and what to do: the host's own BIRD (for an agent
run on the host) and TCP port 179 held by something other than calico-node.

The port check runs for real in scratch network namespaces (`unshare --net`): a process there
really listens on 179, and the real check reads that namespace's /proc/net/tcp and every
process's open files.  The namespace, and the listener, end with the test's subprocess.
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from calicoctl.errors import DataplaneError
from calicoctl.felix.birdproc import detect_version
from calicoctl.node import checks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEBIAN_12 = {"ID": "debian", "VERSION_ID": "12", "VERSION_CODENAME": "bookworm"}
DEBIAN_13 = {"ID": "debian", "VERSION_ID": "13", "VERSION_CODENAME": "trixie"}
DEBIAN_TESTING = {"ID": "debian", "VERSION_CODENAME": "forky"}     # testing has no VERSION_ID
UBUNTU = {"ID": "ubuntu", "ID_LIKE": "debian", "VERSION_ID": "24.04"}


# --- BIRD on the host --------------------------------------------------------------------------

def test_bird_package_by_distribution():
    assert checks.bird_package(DEBIAN_13) == "apt-get install bird2"
    assert checks.bird_package(DEBIAN_TESTING) == "apt-get install bird2"
    assert checks.bird_package(DEBIAN_12) == "apt-get install bird2 (or bird, BIRD 1.6)"
    assert "bird2" in checks.bird_package(UBUNTU) and "1.6" in checks.bird_package(UBUNTU)


def test_os_release_is_read_as_the_shell_would(tmp_path):
    path = tmp_path / "os-release"
    path.write_text('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nID=debian\nVERSION_ID="13"\n'
                    "# a comment\n\n")
    assert checks.read_os_release(str(path)) == {
        "PRETTY_NAME": "Debian GNU/Linux 13 (trixie)", "ID": "debian", "VERSION_ID": "13"}
    assert checks.read_os_release(str(tmp_path / "none")) == {}
    # This machine's own file names a distribution.
    assert checks.read_os_release().get("ID")


def test_host_bird_verdicts():
    def found(*version):
        return lambda: version
    ok = checks.check_host_bird(found(2, 17, 6), DEBIAN_13)
    assert ok.ok and ok.detail == "BIRD 2.17.6"
    assert checks.check_host_bird(found(1, 6, 8), DEBIAN_12).ok
    old = checks.check_host_bird(found(1, 5, 0), DEBIAN_12)
    assert old.failed and "\n" not in old.detail
    assert old.detail.startswith("BIRD 1.5.0 is older than 1.6")
    assert old.detail.endswith("apt-get install bird2 (or bird, BIRD 1.6)")
    # checksystem does not know where the agent will run: only a warning there.
    warn = checks.check_host_bird(found(1, 5, 0), DEBIAN_13, required=False)
    assert not warn.ok and not warn.failed and "--runtime=none" in warn.detail


def test_missing_bird_names_the_package(tmp_path):
    # A BIRD binary that really is not there, asked the way the agent asks.
    absent = str(tmp_path / "bird")
    check = checks.check_host_bird(lambda: detect_version(absent), DEBIAN_13)
    assert check.failed
    assert check.detail == ("not installed: the agent run on this host (--runtime=none) needs "
                            "BIRD 1.6 or later; apt-get install bird2")
    check = checks.check_host_bird(lambda: detect_version(absent), DEBIAN_12)
    assert check.detail.endswith("apt-get install bird2 (or bird, BIRD 1.6)")


def test_broken_bird_says_what_it_printed(tmp_path):
    fake = tmp_path / "bird"
    fake.write_text("#!/bin/sh\necho 'error while loading shared libraries' >&2\nexit 127\n")
    fake.chmod(0o755)
    check = checks.check_host_bird(lambda: detect_version(str(fake)), DEBIAN_13)
    assert check.failed and "failed (exit 127: error while loading" in check.detail


def test_this_machines_bird_is_found():
    try:
        version = detect_version()
    except DataplaneError:
        pytest.fail("this machine's BIRD (Makefile system-deps) is not installed")
    check = checks.check_host_bird()
    assert check.ok and check.detail == "BIRD " + ".".join(map(str, version))


# --- TCP port 179 ------------------------------------------------------------------------------

TCP_ROWS = [
    # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
    "0: 00000000:00B3 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1001 1",
    "1: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1002 1",
    # An established session whose local port is 179 is not a listener.
    "2: 0B0012C6:00B3 0C0012C6:9C40 01 00000000:00000000 00:00000000 00000000 0 0 1003 1",
    # Another host's BIRD we dialled: remote port 179, local port ephemeral.
    "3: 0B0012C6:9C41 0C0012C6:00B3 01 00000000:00000000 00:00000000 00000000 0 0 1004 1",
]
TCP6_ROWS = [
    "0: 00000000000000000000000000000000:00B3 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000 0 0 2001 1",
]


def test_parse_tcp_listeners():
    assert checks.parse_tcp_listeners(TCP_ROWS, 179) == {1001}
    assert checks.parse_tcp_listeners(TCP_ROWS, 3306) == {1002}
    assert checks.parse_tcp_listeners(TCP6_ROWS, 179) == {2001}
    assert checks.parse_tcp_listeners([], 179) == set()


def test_bgp_port_verdicts():
    def listeners(inodes):
        return lambda port: inodes

    def holders(found):
        return lambda inodes: found
    free = checks.check_bgp_port(lambda pids: False, listeners(set()), holders([]))
    assert free.ok
    stray = checks.check_bgp_port(lambda pids: False, listeners({7}), holders([(4242, "bird")]))
    assert stray.failed and "\n" not in stray.detail
    assert "held by bird (pid 4242), not by calico-node" in stray.detail
    assert "kill 4242" in stray.detail and "calicoctl felix serve" in stray.detail
    unseen = checks.check_bgp_port(lambda pids: False, listeners({7}), holders([]))
    assert unseen.failed and "does not show" in unseen.detail
    # calico-node's own BIRD, on a re-run of `calicoctl node`.
    ours = checks.check_bgp_port(lambda pids: pids == [4242], listeners({7}),
                                 holders([(4242, "bird")]))
    assert ours.ok and "calico-node" in ours.detail


# Runs inside a scratch network namespace: a child listens on 179, the real check looks.
PORT_SCRIPT = textwrap.dedent(r'''
    import json, subprocess, sys
    from calicoctl.node import checks

    family, address = sys.argv[1], sys.argv[2]
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import socket, sys\n"
         "s = socket.socket(socket.%s)\n"
         "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
         "s.bind((%r, 179)); s.listen()\n"
         "print('listening', flush=True)\n"
         "sys.stdin.read()\n" % (family, address)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "listening"
        stray = checks.check_bgp_port(lambda pids: False)
        mine = checks.check_bgp_port(lambda pids: pids == [holder.pid])
    finally:
        holder.stdin.close()          # the holder exits when its stdin closes
        holder.wait(timeout=30)
    after = checks.check_bgp_port(lambda pids: False)
    print(json.dumps({"pid": holder.pid, "stray": [stray.ok, stray.detail],
                      "mine": [mine.ok, mine.detail], "after": [after.ok, after.detail]}))
''')


def _in_scratch_netns(*args):
    proc = subprocess.run(["unshare", "--net", sys.executable, "-c", PORT_SCRIPT, *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("family, address", [("AF_INET", "0.0.0.0"), ("AF_INET", "127.0.0.1"),
                                             ("AF_INET6", "::")])
def test_a_real_listener_on_179_is_named(family, address):
    seen = _in_scratch_netns(family, address)
    ok, detail = seen["stray"]
    assert not ok
    # The holder is named by its command (python, python3 or python3.11: how it was exec'd).
    assert re.search(r"TCP port 179 is held by python[\d.]* \(pid %d\), not by calico-node"
                     % seen["pid"], detail), detail
    assert "kill %d" % seen["pid"] in detail
    assert seen["mine"][0], seen["mine"]          # calico-node's own BIRD is no error
    assert seen["after"][0], seen["after"]        # gone with the process


def test_nftables_check_says_which_dataplane_auto_takes():
    ok = checks.check_nftables(lambda: (True, "nft and the kernel accept our table"))
    assert ok.ok and ok.detail.startswith("nftables") and not ok.required
    missing = checks.check_nftables(lambda: (False, "nft is not installed (apt-get install "
                                                    "nftables)"))
    assert not missing.ok and not missing.failed and not missing.required
    assert missing.detail.startswith("iptables") and "apt-get install nftables" in missing.detail
    # This machine has nft and a kernel that takes our table (the agent's tests load it).
    assert checks.check_nftables().ok

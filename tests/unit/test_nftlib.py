"""nftables through libnftables in this process (calicoctl/dataplane/nftlib.py), in a throwaway
network namespace (`unshare -n`): a script loads as `nft -f -` would load it, a refused one is
a DataplaneError with nft's own message and nothing of it applied, and every other command
still goes to the runner it falls back to."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nft"),
    reason="needs root, unshare and nft (loads nft tables in a throwaway namespace)")

SCRIPT = textwrap.dedent(r'''
    import json, subprocess
    from calicoctl.dataplane import nftlib
    from calicoctl.errors import DataplaneError

    def tables():
        return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True,
                              check=True).stdout.split()

    out = {"loaded": nftlib.shared() is not None}
    fallback_calls = []
    run = nftlib.runner(lambda cmd, text=None: fallback_calls.append(cmd) or "from fallback")
    run(["nft", "-f", "-"], "add table inet good\nadd set inet good s { type ipv4_addr; }\n"
                            "add element inet good s { 10.0.0.1 }\n")
    out["after_good"] = tables()
    out["elements"] = subprocess.run(["nft", "list", "set", "inet", "good", "s"],
                                     capture_output=True, text=True).stdout
    try:
        # One transaction: the table is not left behind when a later line is refused.
        run(["nft", "-f", "-"], "add table inet half\nadd chain inet half c\n"
                                "add rule inet half c ip saddr @missing accept\n")
        out["refused"] = None
    except DataplaneError as exc:
        out["refused"] = {"cmd": exc.cmd, "stderr": exc.stderr, "input": exc.input_text}
    out["after_refused"] = tables()
    out["other"] = run(["ipset", "list", "-n"])
    out["fallback_calls"] = fallback_calls
    print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def result():
    proc = subprocess.run(["unshare", "-n", sys.executable, "-c", SCRIPT], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_library_is_loaded_here(result):
    # Debian 12 and 13 both ship libnftables1 with nftables: the fallback is for elsewhere.
    assert result["loaded"]


def test_a_script_loads_as_one_transaction(result):
    assert "good" in result["after_good"]
    assert "10.0.0.1" in result["elements"]


def test_a_refused_script_is_nfts_error_and_leaves_nothing(result):
    refused = result["refused"]
    assert refused is not None
    assert refused["cmd"] == ["nft", "-f", "-"]
    assert "missing" in refused["stderr"]
    assert "add table inet half" in refused["input"]
    assert "half" not in result["after_refused"]


def test_other_commands_go_to_the_fallback(result):
    assert result["other"] == "from fallback"
    assert result["fallback_calls"] == [["ipset", "list", "-n"]]

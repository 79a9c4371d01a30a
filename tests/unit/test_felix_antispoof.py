"""Anti-spoofing before conntrack: the agent's raw-table rpfilter rule (calicoctl/felix/raw.py).

Packets of known flows are accepted before the per-endpoint address and MAC checks, so a workload
holding another's address could send into that workload's flows; the raw table's rpfilter rule
stops it first (tests/st/test_security.py shows the attack on live hosts)."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from calicoctl.datastore import keys
from calicoctl.felix.calc import DesiredState
from calicoctl.felix.raw import raw_chains
from calicoctl.felix.state import FelixState
from tests.unit.felix_support import agent, kernel, write_endpoint, write_profile  # noqa: F401


def test_one_rule_per_family_for_the_configured_prefix():
    state = FelixState("h1")
    changes = state.load_snapshot([(keys.READY, "true"),
                                   (keys.config("InterfacePrefix"), "tap")])
    desired = DesiredState()
    desired.update(state, changes, full=True)
    for v in (4, 6):
        assert desired.chains[("raw", v)] == {
            "felix-PREROUTING": ["-i tap+ -m rpfilter --invert -j DROP"]}


def test_agent_puts_the_jump_first_in_raw_prerouting(store, agent, kernel):  # noqa: F811
    write_profile(store, "net1")
    write_endpoint(store, "aa00000000000001", "10.0.0.1", ["net1"])
    agent.resync()
    for v in (4, 6):
        raw = kernel.table(v, "raw")
        assert raw["PREROUTING"] == ["-j felix-PREROUTING"]
        assert raw["felix-PREROUTING"] == raw_chains("cali")["felix-PREROUTING"]
    # Removed by hand: the refresh puts both back.
    kernel.table(4, "raw")["PREROUTING"].clear()
    agent.refresh()
    assert kernel.table(4, "raw")["PREROUTING"] == ["-j felix-PREROUTING"]


LOAD = textwrap.dedent(r'''
    import json, subprocess
    from calicoctl.felix.calc import DesiredState
    from calicoctl.felix.executor import AgentDataplane
    from calicoctl.felix.state import FelixState
    from calicoctl.datastore import keys
    state = FelixState("h1")
    desired = DesiredState()
    desired.update(state, state.load_snapshot([(keys.READY, "true")]), full=True)
    dp = AgentDataplane()
    dp.sync(desired, full=True)
    out = {v: subprocess.run([cmd, "-t", "raw"], capture_output=True, text=True).stdout
           for v, cmd in (("4", "iptables-save"), ("6", "ip6tables-save"))}
    out["again"] = dp.sync(desired, full=True)
    print(json.dumps(out))
''')


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare (loads real rules in a throwaway namespace)")
def test_real_kernel_takes_the_rule_in_canonical_form():
    import json
    from calicoctl.felix.executor import parse_save
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(["unshare", "-n", sys.executable, "-c", LOAD], capture_output=True,
                          text=True, cwd=repo, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for v in ("4", "6"):
        raw = parse_save(out[v])
        assert raw["PREROUTING"] == ["-j felix-PREROUTING"]
        assert raw["felix-PREROUTING"] == ["-i cali+ -m rpfilter --invert -j DROP"]
    assert out["again"] == 0, "the rule we render differs from iptables-save's form"

"""What the bench scripts share besides reporting (stats.py): a testbed for one run, and a
process's CPU and memory from /proc."""

import contextlib
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tests.st.harness import Testbed, cleanup_stale, exclusive  # noqa: E402


def progress(message):
    print("[testbed]", message, file=sys.stderr)


@contextlib.contextmanager
def testbed(n_hosts, suite="host"):
    """n_hosts namespace hosts on the chosen engine, under the machine's testbed lock (so no
    test session or other bench runs beside this one), left over ones cleared first and all
    of it torn down after, failed or not."""
    with exclusive():
        cleanup_stale(progress=lambda m: None)
        bed = Testbed(suite=suite).up(n_hosts=n_hosts, progress=progress)
        try:
            yield bed
        finally:
            bed.down(progress=lambda m: None)


def cpu_with_children(pid):
    """CPU seconds a process used so far, with its children that it has waited for (the
    agent's iptables-restore and ipset commands, the plugin's `ip`)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def cpu_and_rss(pid):
    """(CPU seconds used so far, resident set in MiB) of a process, from /proc."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open("/proc/%d/status" % pid) as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return cpu, rss / 1024.0

"""Running a host command (iptables-restore, ipset, birdc, modprobe) with one error type.

A failure, or a command that cannot be started, raises DataplaneError carrying the command,
its exit status, output and the input it was given, so callers report one line and tests can
say what the kernel refused.
"""

import subprocess

from calicoctl.errors import DataplaneError


def run_command(cmd, input_text=None):
    """Run cmd; return stdout; DataplaneError on failure."""
    try:
        proc = subprocess.run(cmd, input=input_text, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise DataplaneError(cmd, -1, "", str(exc), input_text)
    if proc.returncode != 0:
        raise DataplaneError(cmd, proc.returncode, proc.stdout, proc.stderr, input_text)
    return proc.stdout

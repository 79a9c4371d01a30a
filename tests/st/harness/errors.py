"""The harness's one error hierarchy."""


class HarnessError(Exception):
    """Something the testbed could not do; the message says what and why."""


class CommandError(HarnessError):
    """A command failed; carries everything needed to see why without re-running it."""

    def __init__(self, cmd, returncode, stdout="", stderr="", input=None):
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.input = input
        super().__init__(
            f"command {self.cmd!r} exited {returncode}\n"
            f"--- stdout ---\n{_tail(stdout)}\n--- stderr ---\n{_tail(stderr)}"
        )


def _tail(text, limit=4000):
    """Keep error messages readable when a daemon printed pages of output."""
    text = text or ""
    return text if len(text) <= limit else "...\n" + text[-limit:]

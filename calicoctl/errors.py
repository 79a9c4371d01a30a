"""The one exception hierarchy of the library.

Library code raises these; `calicoctl.cli.main` turns any CalicoError into a single line on stderr
and exit status 1.  Anything else is a bug and keeps its traceback.
"""


class CalicoError(Exception):
    """A failure the user can act on.  str(error) is the whole message, one line."""


class ValidationError(CalicoError):
    """Input (CLI argument, plugin request, stored value) is not acceptable."""


class DatastoreError(CalicoError):
    """etcd could not be reached or answered unexpectedly."""


class NotFoundError(CalicoError):
    """A named object (pool, profile, endpoint, peer) does not exist."""


class AlreadyExistsError(CalicoError):
    """Creating an object that already exists."""


class ConflictError(CalicoError):
    """A compare-and-swap kept losing; the caller may retry the whole operation."""


class PoolExhaustedError(CalicoError):
    """No address is left in the pools asked for."""


class DataplaneError(CalicoError):
    """A system command that changes the host failed.

    Carries everything needed to debug it: the command, its return code, output and input.
    """

    def __init__(self, cmd, returncode, stdout="", stderr="", input_text=None):
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.input_text = input_text
        detail = (stderr or stdout or "").strip().splitlines()
        super().__init__("%s failed (exit %s)%s" % (
            " ".join(self.cmd), returncode, (": " + detail[-1]) if detail else ""))

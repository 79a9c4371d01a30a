"""nftables transactions in this process, through libnftables (the library `nft` is built on).

`nft -f -` as a child process costs about 3 ms of CPU before it does anything (fork, exec, the
dynamic loader); one endpoint's elements then take 0.1 ms.  The agent loads one transaction
per batch of changes, on hosts where a container start is waiting for it and Docker wants the
same two cores, so it keeps one libnftables context and hands it the same script text `nft -f`
would read: the same parser, the same single transaction.

Where the library cannot be loaded (no libnftables1, an unexpected ABI), `runner` leaves every
command to the child process, and says so once in the log.
"""

import ctypes
import logging
import threading

from calicoctl.dataplane.commands import run_command
from calicoctl.errors import DataplaneError

log = logging.getLogger(__name__)

LIBRARY = "libnftables.so.1"
NFT_LOAD = ["nft", "-f", "-"]
# Scripts larger than this (a full table, not a batch of changes) are followed by a fresh
# context (Libnft._fresh_context).
FRESH_CONTEXT_ABOVE = 256 * 1024


class Libnft:
    """One libnftables context, its output and errors kept in buffers (never printed)."""

    def __init__(self, path=LIBRARY):
        lib = ctypes.CDLL(path)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self._lib = lib
        self._ctx = self._new_context()
        self._lock = threading.Lock()
        self._trim = getattr(ctypes.CDLL(None), "malloc_trim", None)   # glibc's

    def _new_context(self):
        lib = self._lib
        ctx = lib.nft_ctx_new(0)           # NFT_CTX_DEFAULT
        if not ctx:
            raise OSError("nft_ctx_new failed")
        if lib.nft_ctx_buffer_output(ctx) or lib.nft_ctx_buffer_error(ctx):
            lib.nft_ctx_free(ctx)
            raise OSError("libnftables cannot buffer its output")
        return ctx

    def run(self, script):
        """Run script as one transaction; its output.  DataplaneError (as from `nft -f -`,
        with nft's own message) when nftables refuses it."""
        with self._lock:
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
            # Reading a buffer also empties it for the next command.
            output = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(
                errors="replace")
            error = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(
                errors="replace")
            if len(script) > FRESH_CONTEXT_ABOVE:
                self._fresh_context()
        if rc != 0:
            raise DataplaneError(NFT_LOAD, rc, output, error or "libnftables refused the "
                                 "transaction", script)
        return output

    def _fresh_context(self):
        """A context keeps its cache of what it loaded: after a whole table of 10,000 endpoints
        that is about 50 MiB, which the agent would carry at rest.  A new context (and the
        freed memory handed back to the system) costs less than a millisecond, and the next
        small transaction reads only what it needs."""
        self._lib.nft_ctx_free(self._ctx)
        self._ctx = self._new_context()
        if self._trim is not None:
            self._trim(0)


_shared = None
_shared_lock = threading.Lock()


def shared():
    """This process's context, made on first use; None where libnftables cannot be loaded."""
    global _shared
    with _shared_lock:
        if _shared is None:
            try:
                _shared = Libnft()
            except (OSError, AttributeError) as exc:
                log.warning("libnftables cannot be used (%s); loading nftables through the "
                            "nft command instead", exc)
                _shared = False
        return _shared or None


def runner(fallback=run_command):
    """A command runner that loads `nft -f -` scripts in this process when it can and runs
    every other command (and every command when it cannot) through fallback."""
    def run(cmd, input_text=None):
        if list(cmd) == NFT_LOAD:
            lib = shared()
            if lib is not None:
                return lib.run(input_text or "")
        return fallback(cmd, input_text)
    return run

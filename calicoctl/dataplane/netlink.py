"""The one executor for netlink (pyroute2) calls; sysctls are `dataplane/sysctl.py`'s.

Each call names what it did in terms of the equivalent `ip` command, so a failure reads like
one (DataplaneError carries that command, the errno and the kernel's message).
"""

import errno
import logging
import os

from calicoctl.errors import DataplaneError

log = logging.getLogger(__name__)


class Executor:
    """Netlink in one network namespace (None = the caller's own; else a path such as
    /proc/<pid>/ns/net).  Use as a context manager so the socket is closed."""

    def __init__(self, netns=None):
        self.netns = netns
        self._ipr = None

    def __enter__(self):
        from pyroute2 import IPRoute  # deferred: only dataplane users pay for the import
        try:
            if self.netns is None:
                self._ipr = IPRoute()
            else:
                # flags=0: never create a namespace file; the path must already exist.
                self._ipr = IPRoute(netns=self.netns, flags=0)
        except OSError as exc:
            raise DataplaneError(["ip", "netns", "exec", str(self.netns)], exc.errno or 1,
                                 stderr=os.strerror(exc.errno) if exc.errno else str(exc))
        return self

    def __exit__(self, *exc):
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def call(self, what, fn, *args, ignore=(), **kwargs):
        """Run one netlink request.  `what` is the equivalent `ip` argv (for the error);
        errnos in `ignore` are treated as success (e.g. EEXIST for an idempotent add)."""
        from pyroute2.netlink.exceptions import NetlinkError
        try:
            return fn(*args, **kwargs)
        except NetlinkError as exc:
            if exc.code in ignore:
                return None
            raise DataplaneError(["ip", *what] + (["(netns %s)" % self.netns]
                                                 if self.netns else []),
                                 exc.code, stderr=os.strerror(exc.code) if exc.code else str(exc))

    # -- thin wrappers, named after the `ip` command they replace ---------------------------

    @property
    def ipr(self):
        return self._ipr

    def link_index(self, ifname):
        """Index of ifname, or None if there is no such link."""
        if self.netns is None:
            # The calling thread's namespace, like the socket's: one ioctl rather than a netlink
            # dump (a container start looks its veth up several times).
            return if_index(ifname)
        found = self._ipr.link_lookup(ifname=ifname)
        return found[0] if found else None

    def link_mtu(self, index):
        links = self.call(["link", "show", str(index)], self._ipr.link, "get", index=index)
        return links[0].get("IFLA_MTU")

    def default_route_link(self, family):
        """Index of the interface holding the default route (None if there is none)."""
        import socket
        fam = socket.AF_INET if family == 4 else socket.AF_INET6
        for route in self._ipr.get_routes(family=fam):
            if route["dst_len"] == 0 and route.get("RTA_OIF") and route["table"] == 254:
                return route.get("RTA_OIF")
        return None

    def link_del(self, ifname):
        """Delete a link if present; True if it was there."""
        index = self.link_index(ifname)
        if index is None:
            return False
        self.call(["link", "del", ifname], self._ipr.link, "del", index=index,
                  ignore=(errno.ENODEV,))
        return True


def if_index(ifname):
    """Index of ifname in the calling thread's network namespace, or None if there is none."""
    import socket
    try:
        return socket.if_nametoindex(ifname)
    except OSError:      # ENODEV; also a name the kernel could never hold (too long)
        return None


CLONE_NEWNET = 0x40000000


def run_in_netns(path, fn, *args, **kwargs):
    """Run fn in a thread that has joined the network namespace at `path`.

    A network namespace belongs to a thread, not a process, so a short-lived thread can enter
    one, make its netlink calls and sysctl writes there, and end, leaving the rest of the
    process (its etcd and Docker connections) where it was."""
    import ctypes
    import threading
    outcome = {}

    def target():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise DataplaneError(["nsenter", "--net=" + path], err,
                                         stderr=os.strerror(err))
            finally:
                os.close(fd)
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="netns")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")

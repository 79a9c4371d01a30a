"""Our sockets inside a workload's network namespace, and how to find that namespace.

A socket stays in the namespace it was made in, whatever thread later uses it, so a short-lived
thread enters the namespace (dataplane/netlink.run_in_netns), makes the sockets and ends; the
answering loop then serves every namespace from one thread.  Only a process inside the workload
can reach them: they are bound to 127.0.0.11, a loopback address no packet from outside the
namespace may carry.
"""

import errno
import os
import socket
import struct
from dataclasses import dataclass

from calicoctl.dataplane.netlink import run_in_netns
from calicoctl.dnsproxy.rules import MARK, RESOLVER_IP
from calicoctl.errors import CalicoError, DataplaneError

# Our listening port in every workload namespace.  Fixed, so that after a restart the same port
# is bound again and clients whose conntrack entries still point at it carry on; in the
# ephemeral range, where programs do not pick listening ports (Docker's resolver takes random
# ones there; if it holds this one, bind_first falls back to another).
PORT = 53153
LISTEN_BACKLOG = 16
# Linux's SO_MARK (socket.SO_MARK exists only from Python 3.12).
SO_MARK = getattr(socket, "SO_MARK", 36)


@dataclass
class Sockets:
    udp: socket.socket
    tcp: socket.socket
    forward: socket.socket      # UDP, marked, connected to Docker's resolver
    identity: tuple             # (st_dev, st_ino) of the namespace

    @property
    def ports(self):
        return self.udp.getsockname()[1], self.tcp.getsockname()[1]

    def close(self):
        for sock in (self.udp, self.tcp, self.forward):
            sock.close()


def in_netns(path, fn, *args):
    """fn(*args) in a thread inside the namespace at `path` (and anything it runs, too: a child
    process inherits the namespace of the thread that forks it).  A namespace that is gone, or
    going (its container is being removed while we look), is a DataplaneError like any other
    failure in it."""
    try:
        return run_in_netns(path, fn, *args)
    except OSError as exc:
        raise DataplaneError(["nsenter", "--net=" + path], exc.errno or 1,
                             stderr=exc.strerror or str(exc))


def identity(path):
    """(device, inode) of the network namespace bound at `path`, or None while there is none
    (Docker creates the file first and binds the namespace onto it at SetKey)."""
    try:
        seen = os.stat(path)
        nsfs = os.stat("/proc/self/ns/net")
    except OSError:
        return None
    return (seen.st_dev, seen.st_ino) if seen.st_dev == nsfs.st_dev else None


def open_sockets(path, port=PORT):
    return in_netns(path, _open_here, port)


def _open_here(port):
    here = os.stat("/proc/thread-self/ns/net")
    made = []
    try:
        udp = _bind_first(socket.SOCK_DGRAM, port, made)
        tcp = _bind_first(socket.SOCK_STREAM, port, made)
        tcp.listen(LISTEN_BACKLOG)
        forward = _forward_here(socket.SOCK_DGRAM)
        made.append(forward)
    except OSError as exc:
        for sock in made:
            sock.close()
        raise DataplaneError(["bind", "%s:%d" % (RESOLVER_IP, port)], exc.errno or 1,
                             stderr=os.strerror(exc.errno) if exc.errno else str(exc))
    for sock in made:
        sock.setblocking(False)
    return Sockets(udp, tcp, forward, (here.st_dev, here.st_ino))


def _bind_first(kind, port, made):
    sock = socket.socket(socket.AF_INET, kind)
    made.append(sock)
    if kind == socket.SOCK_STREAM:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # past TIME_WAITs
    try:
        sock.bind((RESOLVER_IP, port))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        sock.bind((RESOLVER_IP, 0))
    return sock


def _forward_here(kind, timeout=None):
    """A socket to Docker's resolver whose packets carry MARK, so they pass our DNAT and take
    Docker's, like every query before us."""
    sock = socket.socket(socket.AF_INET, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, MARK)
        sock.settimeout(timeout)
        sock.connect((RESOLVER_IP, 53))
    except OSError:
        sock.close()
        raise
    return sock


def forward_socket(path):
    """A new UDP forward socket (the old one's conntrack entry may point at a resolver port
    Docker no longer uses)."""
    sock = in_netns(path, _forward_here, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


def forward_stream(path, timeout):
    """A TCP connection to Docker's resolver, for a query that came over TCP."""
    return in_netns(path, _forward_here, socket.SOCK_STREAM, timeout)


def path_in_root(root, path, hops=40):
    """`path` as a process whose root is `root` sees it, e.g. root /proc/<pid>/root: each
    symlink resolved against that root.  The kernel would follow an absolute symlink inside
    /proc/<pid>/root into *our* root instead -- and Docker's sandbox paths start with
    /var/run, on Debian a symlink to /run."""
    if not root:
        return path
    parts = [p for p in path.split("/") if p]
    done = []
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        try:
            target = os.readlink(root + "/" + "/".join(done + [part]))
        except OSError:            # not a symlink, or not there (the caller finds out)
            done.append(part)
            continue
        hops -= 1
        if hops < 0:
            raise DataplaneError(["readlink", "-f", path], errno.ELOOP,
                                 stderr="too many symlinks under %s" % root)
        if target.startswith("/"):
            done = []
        parts = [p for p in target.split("/") if p] + parts
    return root + "/" + "/".join(done)


def dockerd_root(docker_socket):
    """The root, as this process sees it, of the mount namespace Docker's sandbox paths
    (/var/run/docker/netns/<id>) live in: /proc/<dockerd's pid>/root, found from the peer of
    Docker's socket.  Inside the calico-dns container (pid namespace of the host) that reaches
    the host's files without mounting them; "" where the peer is not visible (then the paths are
    taken as they are)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(5)
        sock.connect(docker_socket)
        pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  struct.calcsize("3i")))[0]
    except OSError as exc:
        raise CalicoError("Cannot reach Docker at %s (%s)." % (docker_socket, exc.strerror or exc))
    finally:
        sock.close()
    root = "/proc/%d/root" % pid
    return root if pid > 0 and os.path.isdir(root + "/") else ""

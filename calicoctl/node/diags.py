"""`calicoctl diags`: everything needed to debug a node, in one tar.gz.

Every command's output goes into its own file; a command that fails (or is not installed) writes
its error there instead, so one missing tool never loses the rest.
"""

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time

from calicoctl.errors import CalicoError

# (file name, command) run on the host.
HOST_COMMANDS = [
    ("date.txt", ["date", "-u"]),
    ("hostname.txt", ["hostname"]),
    ("uname.txt", ["uname", "-a"]),
    ("iptables-save.txt", ["iptables-save", "-c"]),
    ("ip6tables-save.txt", ["ip6tables-save", "-c"]),
    ("ipset-list.txt", ["ipset", "list"]),
    ("ip-route.txt", ["ip", "route", "show", "table", "all"]),
    ("ip6-route.txt", ["ip", "-6", "route", "show", "table", "all"]),
    ("ip-rule.txt", ["ip", "rule"]),
    ("ip-link.txt", ["ip", "-d", "link", "show"]),
    ("ip-addr.txt", ["ip", "addr", "show"]),
    ("ip-neigh.txt", ["ip", "neigh", "show"]),
    ("sysctl-net.txt", ["sysctl", "net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter",
                        "net.ipv6.conf.all.forwarding"]),
    ("docker-version.txt", ["docker", "version"]),
    ("docker-ps.txt", ["docker", "ps", "-a"]),
    ("docker-network-ls.txt", ["docker", "network", "ls"]),
    ("processes.txt", ["ps", "-eo", "pid,ppid,etime,rss,args"]),
]
BIRD_COMMANDS = [("show protocols all", "bird-protocols.txt"),
                 ("show route all", "bird-routes.txt"),
                 ("show status", "bird-status.txt")]


def _run(cmd, timeout=30):
    if shutil.which(cmd[0]) is None:
        return "%s is not installed\n" % cmd[0]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "%s: %s\n" % (" ".join(cmd), exc)
    text = proc.stdout
    if proc.returncode != 0:
        text += "\n[%s exited %d]\n%s" % (" ".join(cmd), proc.returncode, proc.stderr)
    return text


def _write(folder, name, text):
    with open(os.path.join(folder, name), "w") as f:
        f.write(text)


def dump_etcd(store):
    """Every key below /calico -> value, as JSON text (or the error)."""
    from calicoctl.datastore import keys
    try:
        return json.dumps({k: v for k, v, _ in store.children(keys.ROOT)}, indent=1,
                          sort_keys=True)
    except CalicoError as exc:
        return "could not read etcd: %s\n" % exc


def _bird(container_exec):
    """BIRD's state: bird-*.txt from bird; on BIRD 1.x (birdc's greeting says which BIRD
    answered) also bird6-*.txt from bird6, which holds the IPv6 sessions there.  BIRD 2 has
    one daemon for both families."""
    from calicoctl.felix.bird import bird_version
    from calicoctl.node.status import bird_socket

    def ask(birdc, version):
        texts = {}
        for command, name in BIRD_COMMANDS:
            cmd = [birdc, "-s", bird_socket(version)] + command.split()
            if version == 6:
                name = name.replace("bird-", "bird6-")
            if container_exec is not None:
                rc, text = container_exec(cmd)
                texts[name] = text + ("" if rc == 0 else "\n[exit %s]\n" % rc)
            else:
                texts[name] = _run(cmd)
        return texts

    out = ask("birdc", 4)
    found = bird_version(out[BIRD_COMMANDS[0][1]])
    if found is not None and found[0] < 2:
        out.update(ask("birdc6", 6))
    return out


def _nft_table(container_exec):
    """The agent's nft table (nftables dataplane), listed by the nft that wrote it: calico-node's
    when it runs (Debian 12's nft 1.0.6 crashes listing sets Debian 13's nft 1.1 wrote)."""
    cmd = ["nft", "list", "table", "inet", "calico"]
    if container_exec is None:
        return _run(cmd)
    rc, text = container_exec(cmd)
    return text + ("" if rc == 0 else "\n[exit %s]\n" % rc)


def collect(store, log_dir, docker_factory=None, out_dir=None):
    """Write the tar.gz and return its path."""
    from calicoctl import __version__
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = tempfile.mkdtemp(prefix="calico-diags-")
    folder = os.path.join(work, "diags-" + stamp)
    os.makedirs(folder)
    try:
        for name, cmd in HOST_COMMANDS:
            _write(folder, name, _run(cmd))
        _write(folder, "calicoctl-version.txt", __version__ + "\n")
        _write(folder, "etcd-calico.json", dump_etcd(store))
        container_exec = None
        if docker_factory is not None:
            container_exec = _node_exec(docker_factory)
        for name, text in _bird(container_exec).items():
            _write(folder, name, text)
        _write(folder, "nft-calico.txt", _nft_table(container_exec))
        if log_dir and os.path.isdir(log_dir):
            shutil.copytree(log_dir, os.path.join(folder, "logs"), symlinks=True,
                            ignore_dangling_symlinks=True)
        else:
            _write(folder, "logs-missing.txt", "log directory %s not found\n" % log_dir)
        out_dir = out_dir or tempfile.gettempdir()
        path = os.path.join(out_dir, "calico-diags-%s.tar.gz" % stamp)
        with tarfile.open(path, "w:gz") as tar:
            tar.add(folder, arcname=os.path.basename(folder))
        return path
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _node_exec(docker_factory):
    """exec(cmd) -> (rc, text) inside a running calico-node, or None."""
    from calicoctl.node import containers
    try:
        client = docker_factory()
    except CalicoError:
        return None
    node = containers.find_container(client, containers.NODE_CONTAINER)
    if node is None or node.status != "running":
        return None

    def run(cmd):
        rc, output = node.exec_run(cmd)
        return rc, output.decode(errors="replace")
    return run

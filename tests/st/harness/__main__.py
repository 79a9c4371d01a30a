"""Bring the testbed up and down by hand (and for `make demo`).

    python -m tests.st.harness up [--hosts N] [--no-etcd] [--no-dockerd] [--node-images]
    python -m tests.st.harness down
    python -m tests.st.harness status
    python -m tests.st.harness shell HOST [-- COMMAND...]

State lives in $CALICO_TESTBED_DIR (default /tmp/calico-testbed), so `down` works from any process.
"""

import argparse
import json
import os
import sys
import time

from .errors import HarnessError
from .hosts import check_host_support
from .testbed import STATE_DIR, Testbed, cleanup_stale, exclusive


def _err(*args):
    print(*args, file=sys.stderr, flush=True)


def cmd_up(args):
    with exclusive(STATE_DIR, timeout=args.lock_timeout):
        cleanup_stale(STATE_DIR, progress=_err)
        bed = Testbed(STATE_DIR).up(n_hosts=args.hosts, etcd=not args.no_etcd,
                                    dockerd=not args.no_dockerd, progress=_err)
        if args.node_images:
            from .node_images import load_node_images
            load_node_images(bed.hosts, progress=_err)
    print(_describe(bed))


def _describe(bed):
    lines = []
    if bed.etcd_url:
        authority = bed.etcd_url.split("//", 1)[1]
        lines.append(f"etcd: {bed.etcd_url}   (inside hosts: export ETCD_AUTHORITY={authority})")
    for h in bed.hosts:
        lines.append(f"{h.name}: {h.ip}  enter with: nsenter -t {h.pid} -n -u -m   "
                     f"or: python -m tests.st.harness shell {h.name}")
        lines.append(f"           docker: /usr/bin/docker -H {h.docker_url} ps")
    lines.append("tear down with: python -m tests.st.harness down")
    return "\n".join(lines)


def cmd_down(args):
    with exclusive(STATE_DIR, timeout=args.lock_timeout):
        t0 = time.monotonic()
        cleanup_stale(STATE_DIR, progress=_err, keep_logs=True)
        _err(f"logs kept in {STATE_DIR / 'hosts'}")
        _err(f"testbed down in {time.monotonic() - t0:.1f}s")


def cmd_status(args):
    bed = Testbed.load(STATE_DIR)
    print(json.dumps(bed.status() if bed else {"state_dir": str(STATE_DIR), "up": False},
                     indent=2))


def cmd_shell(args):
    bed = Testbed.load(STATE_DIR)
    if bed is None:
        raise HarnessError("the testbed is not up (python -m tests.st.harness up)")
    host = bed.host(args.host)
    if not host.alive:
        raise HarnessError(f"host {args.host} is not running")
    env = dict(os.environ)
    if bed.etcd_url:
        env["ETCD_AUTHORITY"] = bed.etcd_url.split("//", 1)[1]
    command = args.command or [os.environ.get("SHELL", "/bin/bash")]
    os.execvpe("nsenter", ["nsenter", "-t", str(host.pid), "-n", "-u", "-m", "--", *command], env)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.st.harness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lock-timeout", type=float, default=120,
                        help="seconds to wait for another session's testbed lock")
    sub = parser.add_subparsers(dest="command_name", required=True)
    up = sub.add_parser("up", help="etcd + bridge + hosts + dockerd + busybox")
    up.add_argument("--hosts", type=int, default=2)
    up.add_argument("--no-etcd", action="store_true")
    up.add_argument("--no-dockerd", action="store_true")
    up.add_argument("--node-images", action="store_true",
                    help="also load calico/node and calico/node-libnetwork (built if needed)")
    up.set_defaults(fn=cmd_up)
    sub.add_parser("down", help="tear everything down").set_defaults(fn=cmd_down)
    sub.add_parser("status", help="print the state as JSON").set_defaults(fn=cmd_status)
    shell = sub.add_parser("shell", help="a shell (or COMMAND) inside a host")
    shell.add_argument("host")
    shell.add_argument("command", nargs=argparse.REMAINDER)
    shell.set_defaults(fn=cmd_shell)
    args = parser.parse_args(argv)
    if args.command_name == "shell" and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if args.command_name in ("up", "down", "shell"):
        reason = check_host_support()
        if reason:
            _err(f"error: {reason}")
            return 1
    try:
        args.fn(args)
    except HarnessError as exc:
        _err(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

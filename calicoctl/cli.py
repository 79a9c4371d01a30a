"""calicoctl: the command-line entry point.

Usage:
  calicoctl [--debug] <command> [<args>...]
  calicoctl (-h | --help)
  calicoctl --version

Commands:
  node          Start, stop or remove the Calico node on this host; its BGP peers.
  status        Show whether this node's Calico services are running.
  pool          Configure IP pools.
  profile       Configure profiles (policy: tags and rules).
  endpoint      Show endpoints and change their profiles.
  container     Give a container a Calico interface (Docker's default networking).
  ipam          Inspect and release allocated addresses.
  bgp           Configure global BGP (peers, node mesh, default AS).
  config        Configure the agent, BGP and the node.
  plugin        Run Docker's network and IPAM driver (calicoctl plugin serve).
  felix         Run the per-host agent (calicoctl felix serve).
  checksystem   Check this host meets Calico's requirements.
  diags         Save diagnostics to a tar.gz file.
  version       Show the version.

Options:
  --debug       Show tracebacks and debug logging.

See 'calicoctl <command> --help' for a command's own usage.
Etcd is found through ETCD_ENDPOINTS or ETCD_AUTHORITY (default 127.0.0.1:2379).
"""

import importlib
import logging
import sys

# The explicit command table: name -> module in calicoctl.commands.  Each module's docstring is
# its docopt usage and `run(arguments)` its one entry function.  Modules are imported on demand so
# that `calicoctl pool show` never pays for docker-py or sh.
COMMANDS = {
    "node": "node",
    "status": "status",
    "pool": "pool",
    "profile": "profile",
    "endpoint": "endpoint",
    "container": "container",
    "ipam": "ipam",
    "bgp": "bgp",
    "config": "config",
    "plugin": "plugin",
    "felix": "felix",
    "checksystem": "checksystem",
    "diags": "diags",
    "version": "version",
}


def _parse(doc, argv):
    from docopt import DocoptExit, docopt
    try:
        return docopt(doc, argv=argv, help=False)
    except DocoptExit:
        return None


def main(argv=None):
    """Run one command; return its exit status (the console script exits with it)."""
    from calicoctl import __version__
    from calicoctl.errors import CalicoError
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv[:1]
    if debug:
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(__doc__.strip() + "\n")
        return 0 if argv else 1
    if argv[0] == "--version":
        print(__version__)
        return 0
    name = argv[0]
    if name not in COMMANDS:
        sys.stderr.write("Unknown command %r. Run 'calicoctl --help' for the list.\n" % name)
        return 1
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module = importlib.import_module("calicoctl.commands." + COMMANDS[name])
    doc = module.__doc__
    if any(a in ("-h", "--help") for a in argv[1:]):
        sys.stdout.write(doc.strip() + "\n")
        return 0
    arguments = _parse(doc, argv)
    if arguments is None:
        sys.stderr.write("Invalid arguments for 'calicoctl %s'. Usage:\n%s\n" % (
            name, _usage_section(doc)))
        return 1
    try:
        result = module.run(arguments)
    except CalicoError as exc:
        if debug:
            logging.exception("calicoctl %s failed", name)
        sys.stderr.write("%s\n" % exc)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0 if result is None else int(result)


def _usage_section(doc):
    lines = doc.strip().splitlines()
    out, inside = [], False
    for line in lines:
        if line.lower().startswith("usage:"):
            inside = True
        elif inside and not line.strip():
            break
        if inside:
            out.append(line)
    return "\n".join(out)


def console():
    sys.exit(main())


if __name__ == "__main__":
    console()

"""calicoctl: Project Calico for Docker: routed IP networking for containers, with policy.

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
  dns           Answer names across hosts inside workloads (calicoctl dns serve).
  checksystem   Check this host meets Calico's requirements.
  diags         Save diagnostics to a tar.gz file.
  datastore     Copy Calico's data from etcd's v2 keyspace to v3; which API is in use.
  version       Show the version.

Options:
  --debug       Show tracebacks and debug logging.

See 'calicoctl <command> --help' for a command's own usage.
Etcd is found through ETCD_ENDPOINTS or ETCD_AUTHORITY (default 127.0.0.1:2379); its v2 API
is used where etcd serves it, else v3 (ETCD_API=2 or ETCD_API=3 forces one).
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
    "dns": "dns",
    "checksystem": "checksystem",
    "diags": "diags",
    "datastore": "datastore",
    "version": "version",
}


def _parse(doc, argv):
    from docopt import DocoptExit, DocoptLanguageError, docopt
    narrowed = _narrow_usage(doc, argv)
    if narrowed is not None:
        try:
            return _with_absent_keys(docopt(narrowed, argv=argv, help=False), doc)
        except (DocoptExit, DocoptLanguageError):
            pass   # the full usage decides (and a usage error is reported against all of it)
    try:
        return docopt(doc, argv=argv, help=False)
    except DocoptExit:
        return None


# docopt expands every alternative of a usage into its own list and compares them pairwise:
# for `profile` (the rule grammar) that is ~12 ms, a tenth of a command's run.  So first parse
# against only the usage lines whose leading fixed words fit argv.  That is exact: docopt
# matches leading commands and arguments against the first positional words in order, so a
# line whose leading words do not fit cannot match.  Whenever unsure, parse the full usage.
_PATTERN_END = ("[", "(", "|", "-")


def _narrow_usage(doc, argv):
    """doc with its usage cut down to the lines that can match argv, or None."""
    if any(a.startswith("-") and "=" not in a for a in argv):
        return None     # an option may take the next word as its value: positions unknown
    from docopt import printable_usage
    usage = printable_usage(doc)
    if "..." in usage:
        return None     # a repeated argument's default ([] not None) is the full usage's call
    words = usage.split()
    program = words[1]
    lines = []
    for word in words[1:]:
        if word == program:
            lines.append([])
        else:
            lines[-1].append(word)
    positional = [a for a in argv if not a.startswith("-")]
    kept = [line for line in lines if _leading_words_fit(line, positional)]
    if not kept or len(kept) == len(lines):
        return None
    section = "Usage:\n" + "\n".join("  %s %s" % (program, " ".join(line)) for line in kept)
    return doc.replace(usage, section, 1)


def _leading_words_fit(line, positional):
    for i, word in enumerate(line):
        if word.startswith(_PATTERN_END) or "..." in word:
            return True
        if i >= len(positional):
            return False
        if not (word.startswith("<") and word.endswith(">")) and word != positional[i]:
            return False
    return len(line) == len(positional)


def _with_absent_keys(arguments, doc):
    """Give the result every key the full usage has (commands False, arguments None)."""
    from docopt import Argument, Command, Option, formal_usage, parse_defaults, parse_pattern, \
        printable_usage
    pattern = parse_pattern(formal_usage(printable_usage(doc)), parse_defaults(doc))
    for leaf in pattern.flat(Argument, Command, Option):
        arguments.setdefault(leaf.name, leaf.value)
    return arguments


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
        # One line, like every other user error; the usage is one --help away.
        sys.stderr.write("Invalid arguments for 'calicoctl %s'; run 'calicoctl %s --help' for "
                         "its usage.\n" % (name, name))
        return 1
    try:
        result = module.run(arguments)
    except CalicoError as exc:
        if debug:
            logging.exception("calicoctl %s failed", name)
        # Messages may quote user input holding newlines; the contract is one line.
        sys.stderr.write("%s\n" % " ".join(str(exc).split()))
        return 1
    except KeyboardInterrupt:
        return 130
    return 0 if result is None else int(result)



def console():
    sys.exit(main())


if __name__ == "__main__":
    console()

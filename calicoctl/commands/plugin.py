"""Run Docker's network and IPAM driver for Calico.

Usage:
  calicoctl plugin serve [--socket=<PATH>] [--interface-prefix=<PREFIX>] [--felix-wait=<SECONDS>] [--log-level=<LEVEL>]

Description:
  Serves Docker's remote network driver and IPAM driver, both named "calico", on a unix socket
  that Docker finds by name (create networks with `docker network create --driver calico
  [--ipam-driver calico] <NAME>`).  Runs in the foreground; SIGTERM stops it and removes the
  socket.  Learns network and container names from Docker (DOCKER_HOST or the default socket)
  in the background, and on start-up removes endpoints Docker no longer knows.

Options:
  --socket=<PATH>               Socket to serve [default: /run/docker/plugins/calico.sock].
  --interface-prefix=<PREFIX>   Containers see their Calico interfaces as <PREFIX><n>
                                [default: eth].
  --felix-wait=<SECONDS>        When the agent runs on this host, wait up to this long in Join
                                for it to report the endpoint programmed [default: 5].
  --log-level=<LEVEL>           debug, info, warning or error [default: info]; debug logs every
                                call with its answer and duration (and the libraries' own
                                debug lines stay off).
"""

import logging
import re

from calicoctl.errors import ValidationError

_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,9}$")   # leaves room for <n> in IFNAMSIZ


def run(arguments):
    from calicoctl.datastore import open_store
    from calicoctl.nodename import node_name
    from calicoctl.plugin import server

    level = arguments["--log-level"].upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValidationError("--log-level must be debug, info, warning or error.")
    prefix = arguments["--interface-prefix"]
    if not _PREFIX.match(prefix):
        raise ValidationError("--interface-prefix must be a letter then up to 9 letters, digits, "
                              "'-' or '_' (e.g. eth).")
    try:
        felix_wait = float(arguments["--felix-wait"])
    except ValueError:
        felix_wait = -1
    if not 0 <= felix_wait <= 60:
        raise ValidationError("--felix-wait must be a number of seconds from 0 to 60.")
    # Debug is our own: the libraries' debug lines (a few per netlink or etcd request) would
    # cost more CPU on every call than the call's own work.  Setting their loggers' levels is
    # not enough: pyroute2 resets its own when first imported.
    logging.getLogger().setLevel(max(getattr(logging, level), logging.INFO))
    logging.getLogger("calicoctl").setLevel(getattr(logging, level))
    for noisy in ("urllib3", "docker", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    app, learner, _ = server.build(open_store(), node_name(), prefix, felix_wait)
    server.serve(arguments["--socket"], app, learner)

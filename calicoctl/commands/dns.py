"""Answer names across hosts inside this host's Calico workloads.

Usage:
  calicoctl dns serve [--log-level=<LEVEL>] [--ready-file=<PATH>]

Description:
  From every Calico workload on this host, `<container>` and `<container>.<network>` of a
  workload on another host resolve to its address in that network, for the networks the asker
  is in, as Docker's embedded DNS resolves them for containers of its own host.  Everything
  else goes to Docker's resolver as before.  Runs in the foreground (`calicoctl node
  --libnetwork` runs it in the calico-dns container); SIGTERM stops it and hands every workload
  back to Docker's resolver alone.  Needs etcd, Docker (DOCKER_HOST or the default socket) and
  root in the host's network and pid namespaces.

Options:
  --log-level=<LEVEL>   debug, info, warning or error [default: info].
  --ready-file=<PATH>   Write this file (holding the pid) once answering, remove it on exit.
"""

import logging
import signal

from calicoctl.errors import ValidationError


def run(arguments):
    from calicoctl.datastore import open_store
    from calicoctl.dnsproxy.service import DnsService
    from calicoctl.node.containers import docker_socket_path
    from calicoctl.nodename import node_name

    level = arguments["--log-level"].upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValidationError("--log-level must be debug, info, warning or error.")
    logging.getLogger("calicoctl").setLevel(getattr(logging, level))
    service = DnsService(open_store(), node_name(), docker_socket_path(),
                         ready_file=arguments["--ready-file"])

    def _stop(signum, frame):
        service.stop()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    service.run()

"""Save diagnostics to a tar.gz file.

Usage:
  calicoctl diags [--log-dir=<LOG_DIR>]

Description:
  Collects Calico's logs, iptables-save, ipset list, routes, links, BIRD's state, the Docker and
  calicoctl versions and a dump of /calico from etcd into one tar.gz, and prints where it is.

Options:
  --log-dir=<LOG_DIR>  The folder holding Calico's logs [default: /var/log/calico].
"""

from calicoctl.output import msg, out


def run(arguments):
    from calicoctl.datastore import open_store
    from calicoctl.node import containers, diags
    msg("Collecting diagnostics...")
    path = diags.collect(open_store(), arguments["--log-dir"] or "/var/log/calico",
                         docker_factory=containers.docker_client)
    out(path)
    msg("Diagnostics saved to %s" % path)

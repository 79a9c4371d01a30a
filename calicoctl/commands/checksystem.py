"""Check this host meets Calico's requirements.

Usage:
  calicoctl checksystem [--libnetwork]

Description:
  Probes each requirement for real (kernel features are tried in a throwaway network namespace,
  not looked up) and prints OK or what to do: root, etcd, Docker's version (20.10 or later),
  the ipset match (xt_set), ip6tables, IP-in-IP (reported, not required), loose reverse-path
  filtering, the uplink MTU and the host's own BIRD (1.6 or later; reported, not required: only
  an agent run on the host itself, 'calicoctl node --runtime=none', uses it).  Exits 1 when a
  required one fails.

Options:
  --libnetwork  Also check what the libnetwork plugin needs.
"""

from calicoctl.output import out


def run(arguments):
    from calicoctl.datastore import open_store
    from calicoctl.errors import CalicoError
    from calicoctl.node import address, checks, containers
    try:
        links = address.read_interfaces()
        uplink = address.interface_of(address.autodetect(4, None, links), links)
    except CalicoError:
        uplink = None
    from calicoctl.datastore import migrate
    store = open_store()
    results = checks.system_checks(store=store, docker_factory=containers.docker_client,
                                   uplink=uplink, libnetwork=arguments["--libnetwork"])
    for check in results:
        out(check.line())
    if any(c.name == "etcd reachable" and c.ok for c in results):
        for line in migrate.notes(store):
            out(line)        # which etcd API, and whether Calico's data waits in v2
    failed = checks.failures(results)
    if failed:
        raise CalicoError("%d requirement%s not met: %s." % (
            len(failed), "" if len(failed) == 1 else "s", ", ".join(c.name for c in failed)))
    out("This host can run Calico.")

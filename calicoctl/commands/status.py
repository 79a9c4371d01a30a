"""Show whether this node's Calico services are running.

Usage:
  calicoctl status

Description:
  Shows the calico-node and calico-libnetwork containers (or the agent and plugin processes when
  they run outside Docker), whether the agent reports itself alive in etcd, this node's BGP
  sessions as BIRD sees them and how many endpoints the node has.  Exits 1 when something is
  down, saying what.
"""

from calicoctl.output import msg, out, table


def run(arguments):
    from calicoctl.datastore import open_store
    from calicoctl.errors import CalicoError
    from calicoctl.node import status
    from calicoctl.nodename import node_name
    from calicoctl.datastore import migrate
    name = node_name()
    store = open_store()
    report = status.collect(store, name)
    out(table(["Node %s" % name, "Status", "Detail"],
              [[i.what, "ok" if i.ok else "DOWN", i.detail] for i in report.items]))
    if report.sessions:
        out(table(["Peer address", "Peer type", "State", "Since", "Info"],
                  [[s.peer, status.peer_type(s.name), s.state, s.since, s.info]
                   for s in report.sessions]))
    elif not report.bgp_error:
        out("No BGP peers.")
    for line in migrate.notes(store)[1:]:
        msg(line)            # v3 is empty but v2 holds Calico's data: name the migration
    problems = report.problems
    if problems:
        for problem in problems:
            msg("DOWN: %s" % problem)
        raise CalicoError("Calico on %s is not healthy: %d problem%s." % (
            name, len(problems), "" if len(problems) == 1 else "s"))

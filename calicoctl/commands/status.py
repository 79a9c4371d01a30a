"""Show whether this node's Calico services are running.

Usage:
  calicoctl status

Description:
  Prints what the original calicoctl printed, in its layout: whether the calico-node container
  is running (or the agent as a 'calicoctl felix serve' process), the felix version it runs,
  then "IPv4 BGP status" and "IPv6 BGP status", each a table of this node's BGP sessions as BIRD
  sees them (Peer address, Peer type, State, Since, Info), printed even when empty.  One line
  each follows for the calico-libnetwork container (or plugin process) and its socket, whether
  the agent reports itself alive in etcd, and how many endpoints the node has.  Exits 1 when
  something is down, with one "DOWN: ..." line on stderr for each problem.
"""

from calicoctl.output import msg, out, table

BGP_HEADERS = ["Peer address", "Peer type", "State", "Since", "Info"]


def agent_line(agent):
    """The original's first line; its wording for the container, which scripts look for."""
    if agent.running and agent.container is not None:
        return "calico-node container is running. Status: %s" % agent.container
    if agent.running:
        return "calico-node is running as a process (pid %d)" % agent.pid
    return "calico-node container not running"


def report_lines(report):
    """The report as stdout lines: the original calicoctl's layout, then our health lines.
    Like the original, the version and BGP tables only when the agent runs (nothing to ask
    otherwise), and both tables even when empty."""
    from calicoctl.node.status import peer_type
    lines = [agent_line(report.agent)]
    if report.agent.running:
        if report.agent.version:
            lines.append("Running felix version %s" % report.agent.version)
        for version in (4, 6):
            # Centred, as the original's PrettyTable printed by default.
            lines += ["", "IPv%d BGP status" % version, table(
                BGP_HEADERS, [[s.peer, peer_type(s.name), s.state, s.since, s.info]
                              for s in report.sessions if s.ip_version == version], align="c")]
    lines.append("")
    lines += ["%s: %s%s" % (i.what, "" if i.ok else "DOWN, ", i.detail) for i in report.items]
    return lines


def run(arguments):
    from calicoctl.datastore import open_store
    from calicoctl.errors import CalicoError
    from calicoctl.node import status
    from calicoctl.nodename import node_name
    from calicoctl.datastore import migrate
    name = node_name()
    store = open_store()
    report = status.collect(store, name)
    out("\n".join(report_lines(report)))
    for line in migrate.notes(store)[1:]:
        msg(line)            # v3 is empty but v2 holds Calico's data: name the migration
    problems = report.problems
    if problems:
        for problem in problems:
            msg("DOWN: %s" % problem)
        raise CalicoError("Calico on %s is not healthy: %d problem%s." % (
            name, len(problems), "" if len(problems) == 1 else "s"))

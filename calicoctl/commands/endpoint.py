"""Show endpoints and change the profiles applied to them.

Usage:
  calicoctl endpoint show [--host=<HOSTNAME>] [--orchestrator=<ORCHESTRATOR_ID>] [--workload=<WORKLOAD_ID>] [--endpoint=<ENDPOINT_ID>] [--detailed]
  calicoctl endpoint <ENDPOINT_ID> [--host=<HOSTNAME>] [--orchestrator=<ORCHESTRATOR_ID>] [--workload=<WORKLOAD_ID>] profile (append|remove|set) [<PROFILES>...]
  calicoctl endpoint <ENDPOINT_ID> [--host=<HOSTNAME>] [--orchestrator=<ORCHESTRATOR_ID>] [--workload=<WORKLOAD_ID>] profile show

Description:
  Configure or show endpoints assigned to existing containers.  An endpoint's profiles are
  applied in list order.  The filters are optional; they find the endpoint faster.

Options:
 --detailed                         Show additional information
 --host=<HOSTNAME>                  Filters endpoints on a specific host
 --orchestrator=<ORCHESTRATOR_ID>   Filters endpoints created on a specific orchestrator
 --workload=<WORKLOAD_ID>           Filters endpoints on a specific workload
 --endpoint=<ENDPOINT_ID>           Filters endpoints with a specific endpoint ID

Examples:
    Show all endpoints belonging to 'host1':
        $ calicoctl endpoint show --host=host1

    Add a profile called 'profile-A' to the endpoint a1b2c3d4:
        $ calicoctl endpoint a1b2c3d4 profile append profile-A
"""

from calicoctl.datastore import endpoints, open_store, profiles
from calicoctl.datastore.rules import validate_name
from calicoctl.errors import NotFoundError, ValidationError
from calicoctl.output import msg, out, table

# Fields an orchestrator may store beside the endpoint (kept in Endpoint.extra) that tell a user
# which container it belongs to.
CONTAINER_FIELDS = ("container_name", "container_id")


def _filters(arguments):
    """The optional filters, each a single etcd key segment (they become part of a key)."""
    filters = {}
    for name, option, what in (("host", "--host", "host name"),
                               ("orchestrator", "--orchestrator", "orchestrator id"),
                               ("workload", "--workload", "workload id")):
        if arguments[option] is not None:
            filters[name] = validate_name(arguments[option], what)
    return filters


def run(arguments):
    filters = _filters(arguments)
    if not arguments["profile"]:
        endpoint_id = arguments["--endpoint"]
        if endpoint_id is not None:
            validate_name(endpoint_id, "endpoint id")
        return endpoint_show(open_store(), filters, endpoint_id, arguments["--detailed"])
    endpoint_id = validate_name(arguments["<ENDPOINT_ID>"], "endpoint id")
    if arguments["show"]:
        return endpoint_profile_show(open_store(), endpoint_id, filters)
    names = [validate_name(p, "profile") for p in arguments["<PROFILES>"]]
    duplicates = sorted({p for p in names if names.count(p) > 1})
    if duplicates:
        raise ValidationError("Profile %s is listed more than once." % ", ".join(duplicates))
    action = next(a for a in ("append", "remove", "set") if arguments[a])
    return endpoint_profile_change(open_store(), endpoint_id, filters, action, names)


def endpoint_show(store, filters, endpoint_id, detailed):
    eps = sorted(endpoints.list_endpoints(store, endpoint_id=endpoint_id, **filters),
                 key=lambda e: (e.host, e.orchestrator, e.workload, e.endpoint_id))
    if not detailed:
        summary = {}
        for ep in eps:
            workloads, count = summary.get((ep.host, ep.orchestrator), (set(), 0))
            workloads.add(ep.workload)
            summary[(ep.host, ep.orchestrator)] = (workloads, count + 1)
        out(table(["Hostname", "Orchestrator ID", "Number of Workloads", "Number of Endpoints"],
                  [[host, orch, len(w), n] for (host, orch), (w, n) in sorted(summary.items())],
                  align="c"))
        return
    headers = ["Hostname", "Orchestrator ID", "Workload ID", "Endpoint ID", "Addresses", "MAC",
               "Profiles", "State"]
    with_container = any(ep.extra.get(f) for ep in eps for f in CONTAINER_FIELDS)
    if with_container:
        headers.append("Container")
    rows = []
    for ep in eps:
        row = [ep.host, ep.orchestrator, ep.workload, ep.endpoint_id,
               "\n".join(list(ep.ipv4_nets) + list(ep.ipv6_nets)), ep.mac,
               ",".join(ep.profile_ids), ep.state]
        if with_container:
            row.append(_container(ep))
        rows.append(row)
    out(table(headers, rows, align="c"))


def _container(ep):
    """'name (id)' from the orchestrator's extra fields, or whichever of the two is there."""
    name, cid = (ep.extra.get(f) for f in CONTAINER_FIELDS)
    if name and cid:
        return "%s (%s)" % (name, cid[:12])   # 12: Docker's short container id
    return name or (cid[:12] if cid else "")


def endpoint_profile_show(store, endpoint_id, filters):
    ep = endpoints.get_endpoint(store, endpoint_id, **filters)
    if not ep.profile_ids:
        out("Endpoint has no profiles associated")
        return
    # Listed in the order they apply (which is the order that matters), not sorted.
    out(table(["Name"], [[p] for p in ep.profile_ids], align="c"))


def endpoint_profile_change(store, endpoint_id, filters, action, names):
    """append / remove / set the endpoint's profiles: checked, then one compare-and-swap."""
    if action in ("append", "set"):
        for name in names:
            if not profiles.profile_exists(store, name):
                raise NotFoundError("Profile %s does not exist; create it with "
                                    "'calicoctl profile add %s'." % (name, name))
    elif not names:
        raise ValidationError("Name the profiles to remove.")
    ep = endpoints.get_endpoint(store, endpoint_id, **filters)

    def change(current):
        if action == "append":
            present = [p for p in names if p in current.profile_ids]
            if present:
                raise ValidationError("Profile %s is already in endpoint profile list."
                                      % ", ".join(present))
            current.profile_ids = current.profile_ids + names
        elif action == "remove":
            missing = [p for p in names if p not in current.profile_ids]
            if missing:
                raise ValidationError("Profile %s is not in endpoint profile list."
                                      % ", ".join(missing))
            current.profile_ids = [p for p in current.profile_ids if p not in names]
        else:
            current.profile_ids = list(names)
        return current
    endpoints.update_endpoint(store, ep, change)
    if not names:
        msg("Profiles cleared for %s." % endpoint_id)
        return
    past = {"append": "appended to", "remove": "removed from", "set": "set for"}[action]
    msg("Profiles %s %s %s." % (", ".join(names), past, endpoint_id))

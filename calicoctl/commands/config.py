"""Configure the agent (Felix) and BIRD: global settings and this node's own.

Usage:
  calicoctl config felix <NAME> [<VALUE>|--remove] [--force]
  calicoctl config bgp <NAME> [<VALUE>|--remove] [--force]
  calicoctl config node bgp <NAME> [<VALUE>|--remove] [--force]

Description:
  Configure or show low-level component configuration for Felix and BGP.  With neither a
  value nor --remove, the current value is shown.  'config node' applies to this node only
  (its name: CALICO_HOSTNAME, else the hostname).

Options:
 --remove  Remove the configuration entry.
 --force   Force update of configuration entry even if key value is unknown,
           or the value is not recognized as valid.

Valid configuration:
  Command         | <NAME>   | <VALUE>s
------------------+----------+-----------------------------------------
  config felix    | loglevel | none debug info warning error critical
  config bgp      | loglevel | none debug info
  config node bgp | loglevel | none debug info

Warnings:
  -  Changing the global BGP logging levels using the `calicoctl config bgp`
     command may cause all BGP sessions to bounce potentially resulting in a
     transient loss of service.  If you need to change the logging level for
     BGP, it is recommended to change the levels on a per-node basis using
     the `calicoctl config node bgp` command.
"""

from calicoctl.datastore import config, open_store
from calicoctl.datastore.rules import validate_name
from calicoctl.errors import ValidationError
from calicoctl.output import msg, out

# name the user types -> (name stored in etcd, accepted values, how a value is stored).
# Felix reads its log levels in upper case (the defaults we write are "INFO"); BIRD's loglevel
# is read by the node's BIRD config template in lower case.
FELIX_CONFIG = {
    "loglevel": ("LogSeverityScreen", ("none", "debug", "info", "warning", "error", "critical"),
                 str.upper),
}
BGP_CONFIG = {
    "loglevel": ("loglevel", ("none", "debug", "info"), str.lower),
}


def run(arguments):
    component = "felix" if arguments["felix"] else "node bgp" if arguments["node"] else "bgp"
    known = FELIX_CONFIG if component == "felix" else BGP_CONFIG
    name, value = resolve(component, known, arguments["<NAME>"], arguments["<VALUE>"],
                          arguments["--force"])
    host = None
    if component == "node bgp":
        from calicoctl.nodename import node_name
        host = validate_name(node_name(), "node")
    store = open_store()
    if component == "felix":
        get, put = config.get_config, config.set_config
    else:
        get, put = config.get_bgp_config, config.set_bgp_config
    if arguments["--remove"]:
        msg("Value removed" if put(store, name, None, host=host) else "No value configured")
    elif value is not None:
        from calicoctl.datastore.globals import ensure_defaults
        ensure_defaults(store)
        put(store, name, value, host=host)
    else:
        current = get(store, name, host=host)
        out("No value configured" if current is None else current)


def resolve(component, known, name, value, force):
    """(stored name, stored value or None): refuses unknown names and values unless forced."""
    if name not in known:
        if not force:
            raise ValidationError("The configuration %r is not recognized as a valid option "
                                  "for 'config %s'; known: %s. Use the --force option to "
                                  "override." % (name, component, ", ".join(sorted(known))))
        # Forced names are written as given, but must stay one etcd key segment.
        return validate_name(name, "configuration"), _check_forced_value(value)
    stored_name, valid, convert = known[name]
    if value is None:
        return stored_name, None
    if value.lower() in valid:
        return stored_name, convert(value.lower())
    if not force:
        raise ValidationError("The configuration value %r is not recognized as a valid value "
                              "for %s (use one of: %s). Use the --force option to override."
                              % (value, name, " ".join(valid)))
    return stored_name, _check_forced_value(value)


def _check_forced_value(value):
    if value is not None and (not value.strip() or "\n" in value):
        raise ValidationError("A configuration value must be non-empty and on one line.")
    return value

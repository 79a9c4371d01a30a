"""Cluster-wide defaults: written on first use, never overwriting what an operator set."""

from calicoctl.datastore import keys

DEFAULT_CONFIG = {
    "InterfacePrefix": "cali",
    "LogSeverityFile": "INFO",
    "LogSeverityScreen": "INFO",
    "LogFilePath": "/var/log/calico/felix.log",
}
DEFAULT_AS = "64511"


def ensure_defaults(store):
    """Write absent global defaults, then mark the cluster Ready (agents wait for it)."""
    # One recursive read tells what is already there, so a second run costs one round trip.
    present = {k for k, _, _ in store.children(keys.CONFIG_DIR)}
    for name, value in DEFAULT_CONFIG.items():
        if keys.config(name) not in present:
            store.create(keys.config(name), value)
    if store.get(keys.bgp_global_as()) is None:
        store.create(keys.bgp_global_as(), DEFAULT_AS)
    if store.get(keys.bgp_node_mesh()) is None:
        store.create(keys.bgp_node_mesh(), '{"enabled": true}')
    if store.get(keys.READY) != "true":
        store.set(keys.READY, "true")

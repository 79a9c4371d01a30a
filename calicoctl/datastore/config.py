"""Agent configuration: global (/calico/v1/config) and per host (/calico/v1/host/<h>/config)."""

from calicoctl.datastore import keys


def get_config(store, name, host=None):
    return store.get(keys.host_config(host, name) if host else keys.config(name))


def set_config(store, name, value, host=None):
    key = keys.host_config(host, name) if host else keys.config(name)
    if value is None:
        return store.delete(key)
    store.set(key, value)
    return True


def get_bgp_config(store, name, host=None):
    """A BGP setting (e.g. loglevel), global or for one node."""
    return store.get(keys.bgp_host_config(host, name) if host else keys.bgp_global_config(name))


def set_bgp_config(store, name, value, host=None):
    """Set (or with value None, remove) a BGP setting.  True if something was set or removed."""
    key = keys.bgp_host_config(host, name) if host else keys.bgp_global_config(name)
    if value is None:
        return store.delete(key)
    store.set(key, value)
    return True

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

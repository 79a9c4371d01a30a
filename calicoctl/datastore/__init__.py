"""The datastore: etcd key layout (keys), typed models, and one module per kind of object.

Use `open_store()` for a store configured from the environment.
"""


def open_store(timeout=None):
    from calicoctl.datastore.store import DEFAULT_TIMEOUT, EtcdStore
    return EtcdStore(timeout=timeout or DEFAULT_TIMEOUT)

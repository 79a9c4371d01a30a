"""Docker's remote network driver and IPAM driver (`calicoctl plugin serve`).

app.py maps each libnetwork call to a handler (requests checked by schemas.py);
network_driver.py and ipam_driver.py hold the driver logic; records.py the plugin's own etcd
records beside its network records, which are calicoctl/datastore/networks.py's
(docs/datamodel.md); names.py learns names from Docker's event stream (never from inside
a callback); reconcile.py cleans up after crashes; pending.py keeps teardown calls made while
etcd is down; server.py serves it all on a unix socket.
"""

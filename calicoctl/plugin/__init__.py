"""Docker's remote network driver and IPAM driver (`calicoctl plugin serve`).

app.py maps each libnetwork call to a handler; network.py and ipam.py hold the driver logic;
records.py the plugin's own etcd records; names.py learns names from Docker's event stream (never
from inside a callback); reconcile.py cleans up after crashes; server.py serves it all on a unix
socket.
"""

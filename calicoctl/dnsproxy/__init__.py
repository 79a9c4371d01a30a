"""Names across hosts (`calicoctl dns serve`): `<container>` and `<container>.<network>` of a
Calico workload on another host resolve from every workload that shares a network with it.

Docker 20.10 and later have no cluster store, so each engine's embedded DNS (127.0.0.11 in every
container) knows only its own host's containers.  This answers in front of it, inside each local
workload's own network namespace, so the asker is known exactly and everything else still goes
to Docker:

  wire.py      DNS messages: the one query shape we answer, answers, query ids (pure)
  catalog.py   etcd's endpoint and network records -> who may resolve which name to what (pure)
  rules.py     the nat OUTPUT rules that send a workload's port-53 traffic to us (pure text,
               applied inside the workload's namespace)
  sandboxes.py our sockets inside a workload's network namespace
  server.py    the answerer: one loop over every sandbox's sockets, forwarding to Docker
  service.py   the composition root: etcd snapshot and watch -> catalog -> sandboxes adopted
"""

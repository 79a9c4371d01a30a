"""Project Calico's Docker integration, rebuilt in Python.

The package is layered so the architecture reads from the tree:
  commands/   one module per `calicoctl` subcommand (docopt usage + thin handler)
  datastore/  the only owner of the etcd key layout, typed models, the etcd client
  ipam/       block-affinity address allocation on top of the datastore
  plugin/     Docker's remote network + IPAM driver (calicoctl plugin serve)
  felix/      the per-host agent (calicoctl felix serve): desired state + executor
  dataplane/  host networking shared by the plugin and `calicoctl container`
  node/       starting and registering a Calico node (calicoctl node)
Nothing below commands/ imports the command layer.
"""

__version__ = "0.12.0"

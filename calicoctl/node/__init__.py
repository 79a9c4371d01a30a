"""Starting and registering a Calico node (`calicoctl node`), and looking after it.

  address       which of the host's addresses BGP speaks from
  checks        what the host needs, probed for real (also `calicoctl checksystem`)
  registration  the node's keys in etcd: register, list, remove (IPAM affinities included)
  containers    calico-node and calico-libnetwork through docker-py: desired spec, health
  starter       `calicoctl node` end to end
  status        `calicoctl status`
  diags         `calicoctl diags`
"""

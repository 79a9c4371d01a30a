"""The per-host agent (`calicoctl felix serve`): Calico's Felix plus the BIRD part of calico/node.

Pure modules compute desired state (policy, ipsets, nat, routes, bird); `executor` is the one
place with side effects; `agent` is the composition root.
"""

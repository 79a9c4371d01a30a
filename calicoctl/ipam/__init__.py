"""IP address management: block-affinity allocation over the datastore."""

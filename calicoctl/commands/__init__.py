"""One module per calicoctl subcommand: docstring = docopt usage, `run(arguments)` = handler.

Handlers validate and convert arguments, call the library, and print.  No etcd keys, docker calls
or iptables lines here.
"""

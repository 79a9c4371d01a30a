"""The one source of a node's name, shared by the CLI, the plugin and the agent.

Calico keys everything per host by this name, so the three must agree.  CALICO_HOSTNAME overrides
the kernel's hostname (as HOSTNAME did for the original calico/node container).
"""

import os
import socket


def node_name():
    return os.environ.get("CALICO_HOSTNAME") or socket.gethostname()

"""Multi-host test harness: namespace "hosts" with their own dockerd, joined by a bridge, and a
throwaway etcd. Used by the system tests (tests/st/conftest.py), `make demo` and images/build.py.

    from tests.st.harness import Testbed, cleanup_stale, exclusive
    with exclusive():
        cleanup_stale()
        bed = Testbed().up(n_hosts=2)
        bed.host("calico-01").docker("run", "--rm", "busybox", "true")
        bed.down()
"""

from .errors import CommandError, HarnessError
from .etcd_server import EtcdServer, free_port
from .hosts import Host, check_host_support, pick_storage_driver
from .images import (BUSYBOX_IMAGE, busybox_tarball, copy_images, import_busybox,
                     load_images, save_images)
from .network import DEFAULT_UNDERLAY, Underlay
from .procs import wait_for
from .testbed import STATE_DIR, Testbed, cleanup_stale, exclusive, host_name

__all__ = [
    "BUSYBOX_IMAGE", "CommandError", "DEFAULT_UNDERLAY", "EtcdServer", "HarnessError", "Host",
    "STATE_DIR",
    "Testbed", "busybox_tarball", "check_host_support", "cleanup_stale", "copy_images",
    "exclusive", "free_port", "host_name", "import_busybox", "load_images",
    "pick_storage_driver", "save_images", "Underlay", "wait_for",
]

"""The unit tests' etcd: the harness's EtcdServer on loopback, so there is one implementation.

Kept as a module because the unit fixtures, the etcd cluster helper and the benchmarks import
`EtcdServer` and `free_port` from here; `start()` returns the server (chaining) rather than its URL.
"""

from tests.st.harness.etcd_server import EtcdServer as _HarnessEtcd
from tests.st.harness.etcd_server import free_port

__all__ = ["EtcdServer", "free_port"]


class EtcdServer(_HarnessEtcd):
    """enable_v2=False: an etcd that serves only the v3 API (the conftest's "v3" backend)."""

    def __init__(self, name="test", enable_v2=True):
        super().__init__("127.0.0.1", name=name, enable_v2=enable_v2)

    @property
    def client_port(self):
        return self.port

    def start(self, timeout=30):
        super().start(timeout)
        return self

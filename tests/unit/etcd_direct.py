"""The unit tests' direct view of etcd: the harness's DirectEtcd, so there is one implementation
(the system-test helpers use it too)."""

from tests.st.harness.etcd_direct import DirectEtcd

__all__ = ["DirectEtcd"]

"""Running the installed calicoctl inside a namespace host as a user would for `calicoctl node`:
a clean environment apart from etcd, so the host's own hostname is the node name and Docker is
the host's default socket. Shared by the system tests of `calicoctl node`."""

import pytest

from tests.st.calico_stack import store_for
from tests.st.demo import default_calicoctl


@pytest.fixture(scope="module")
def env(testbed):
    return {"authority": testbed.etcd_url.split("//", 1)[1], "calicoctl": default_calicoctl()}


@pytest.fixture
def store(testbed):
    return store_for(testbed.etcd)


def calicoctl(host, env, *args, timeout=180):
    argv = ["env", "-u", "DOCKER_HOST", "-u", "CALICO_HOSTNAME", "-u", "ETCD_ENDPOINTS",
            "ETCD_AUTHORITY=" + env["authority"], env["calicoctl"], *args]
    return host.run(argv, check=False, timeout=timeout)

"""TLS and etcd users through the real CLI: certificates made by the test, etcd serving https
with and without client-certificate authentication, and etcd users: v2 authentication where the
cluster serves v2, v3 users and roles (a token from /v3/auth/authenticate) where it serves v3
alone.  Every cluster here serves the API of the conftest's test etcd, so each test runs once per
API.  A wrong or missing certificate, key, CA or password is one line on stderr and exit
status 1."""

import subprocess

import pytest

from tests.unit.etcd_cluster import EtcdCluster, make_certs

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(str(tmp_path_factory.mktemp("certs")))


@pytest.fixture(scope="module")
def mutual(certs, etcd_server):
    """etcd that requires a client certificate signed by our CA."""
    c = EtcdCluster(1, tls=certs, client_cert_auth=True,
                    enable_v2=etcd_server.enable_v2).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def ca_only(certs, etcd_server):
    """etcd on https that takes any client (the client still checks etcd's certificate)."""
    c = EtcdCluster(1, tls=certs, enable_v2=etcd_server.enable_v2).start()
    yield c
    c.stop()


def point_at(monkeypatch, env):
    for name in ("ETCD_ENDPOINTS", "ETCD_AUTHORITY", "ETCD_SCHEME", "ETCD_CA_CERT_FILE",
                 "ETCD_CERT_FILE", "ETCD_KEY_FILE", "ETCD_USERNAME", "ETCD_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def one_line_failure(r):
    assert r.code == 1, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r
    assert "Traceback" not in r.err
    return lines[0]


def add_and_show(cli, cidr):
    r = cli("pool", "add", cidr)
    assert r.code == 0, r
    r = cli("pool", "show")
    assert r.code == 0 and cidr in r.out, r


# -- working set-ups --------------------------------------------------------------------------

def test_mutual_tls_works(cli, mutual, monkeypatch):
    point_at(monkeypatch, mutual.env())
    add_and_show(cli, "10.30.0.0/16")
    # The agent's watch too: on v3 each stream is a session of its own, given the same files.
    from calicoctl.datastore.store import EtcdStore
    store = EtcdStore()
    index = store.current_index() + 1
    store.set("/calico/v1/test/tls", "1")
    assert store.watch("/calico/v1/test", index, timeout=5).value == "1"


def test_ca_only_tls_works(cli, ca_only, certs, monkeypatch):
    point_at(monkeypatch, {"ETCD_ENDPOINTS": ca_only.endpoints[0], "ETCD_CA_CERT_FILE": certs.ca})
    add_and_show(cli, "10.31.0.0/16")


def test_ca_only_through_authority_and_scheme(cli, ca_only, certs, monkeypatch):
    point_at(monkeypatch, {"ETCD_AUTHORITY": ca_only.endpoints[0].split("//")[1],
                           "ETCD_SCHEME": "https", "ETCD_CA_CERT_FILE": certs.ca})
    add_and_show(cli, "10.32.0.0/16")


def test_client_certificate_offered_to_ca_only_etcd_is_fine(cli, ca_only, certs, monkeypatch):
    point_at(monkeypatch, {"ETCD_ENDPOINTS": ca_only.endpoints[0], "ETCD_CA_CERT_FILE": certs.ca,
                           "ETCD_CERT_FILE": certs.client_cert,
                           "ETCD_KEY_FILE": certs.client_key})
    add_and_show(cli, "10.33.0.0/16")


# -- what goes wrong, one line each -----------------------------------------------------------

BAD = {
    # name: (env builder, words the line must contain)
    "no client certificate": (
        lambda c, m: {"ETCD_ENDPOINTS": m, "ETCD_CA_CERT_FILE": c.ca}, "ETCD_CERT_FILE"),
    "no CA": (
        lambda c, m: {"ETCD_ENDPOINTS": m, "ETCD_CERT_FILE": c.client_cert,
                      "ETCD_KEY_FILE": c.client_key}, "ETCD_CA_CERT_FILE"),
    "wrong CA": (
        lambda c, m: {"ETCD_ENDPOINTS": m, "ETCD_CA_CERT_FILE": c.other_ca,
                      "ETCD_CERT_FILE": c.client_cert, "ETCD_KEY_FILE": c.client_key},
        "not signed by ETCD_CA_CERT_FILE"),
    "client certificate from another CA": (
        lambda c, m: {"ETCD_ENDPOINTS": m, "ETCD_CA_CERT_FILE": c.ca,
                      "ETCD_CERT_FILE": c.other_client_cert,
                      "ETCD_KEY_FILE": c.other_client_key}, "refused our client certificate"),
    "key of another certificate": (
        lambda c, m: {"ETCD_ENDPOINTS": m, "ETCD_CA_CERT_FILE": c.ca,
                      "ETCD_CERT_FILE": c.client_cert, "ETCD_KEY_FILE": c.other_client_key},
        "ETCD_KEY_FILE is not the key"),
    "CA file that is no certificate": (
        lambda c, m: {"ETCD_ENDPOINTS": m, "ETCD_CA_CERT_FILE": "/etc/hostname"},
        "holds no certificate"),
    "certificate file that is no certificate": (
        lambda c, m: {"ETCD_ENDPOINTS": m, "ETCD_CA_CERT_FILE": c.ca,
                      "ETCD_CERT_FILE": "/etc/hostname", "ETCD_KEY_FILE": "/etc/hostname"},
        "not a PEM"),
    "missing certificate file": (
        lambda c, m: {"ETCD_ENDPOINTS": m, "ETCD_CA_CERT_FILE": c.ca,
                      "ETCD_CERT_FILE": "/nonexistent/client.pem",
                      "ETCD_KEY_FILE": c.client_key}, "does not exist"),
    "certificate without key": (
        lambda c, m: {"ETCD_ENDPOINTS": m, "ETCD_CA_CERT_FILE": c.ca,
                      "ETCD_CERT_FILE": c.client_cert}, "together"),
    "plain http to an https etcd": (
        lambda c, m: {"ETCD_ENDPOINTS": m.replace("https:", "http:")}, "https"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_tls_is_one_line(cli, mutual, certs, monkeypatch, case):
    make_env, words = BAD[case]
    point_at(monkeypatch, make_env(certs, mutual.endpoints[0]))
    line = one_line_failure(cli("pool", "show"))
    assert words in line, line


# -- etcd users (v2 auth, or v3 users and roles) -----------------------------------------------

def etcdctl(api, endpoint, *args):
    subprocess.run(["etcdctl", "--endpoints", endpoint, *args], check=True,
                   env={"ETCDCTL_API": api, "PATH": "/usr/bin:/bin"},
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def add_users(api, endpoint):
    """root, and user calico whose role may use /calico* only; no credentials may do nothing
    (v2: the guest role loses its rights; v3 has no guest)."""
    if api == "2":
        etcdctl("2", endpoint, "user", "add", "root:rootpw")
        etcdctl("2", endpoint, "auth", "enable")
        root = ("--username", "root:rootpw")
        etcdctl("2", endpoint, *root, "role", "revoke", "guest", "--path", "/*", "--rw")
        etcdctl("2", endpoint, *root, "role", "add", "calico")
        etcdctl("2", endpoint, *root, "role", "grant", "calico", "--path", "/calico*", "--rw")
        etcdctl("2", endpoint, *root, "user", "add", "calico:calicopw")
        etcdctl("2", endpoint, *root, "user", "grant", "calico", "--roles", "calico")
        return
    # What the v3 docs tell an operator: a prefix permission on /calico for Calico's role.
    etcdctl("3", endpoint, "user", "add", "root:rootpw")
    etcdctl("3", endpoint, "user", "grant-role", "root", "root")
    etcdctl("3", endpoint, "role", "add", "calico")
    etcdctl("3", endpoint, "role", "grant-permission", "--prefix=true", "calico", "readwrite",
            "/calico")
    etcdctl("3", endpoint, "user", "add", "calico:calicopw")
    etcdctl("3", endpoint, "user", "grant-role", "calico", "calico")
    etcdctl("3", endpoint, "auth", "enable")


@pytest.fixture(scope="module")
def with_users(etcd_server):
    c = EtcdCluster(1, enable_v2=etcd_server.enable_v2).start()
    add_users(c.api, c.endpoints[0])
    yield c
    c.stop()


def test_username_and_password_work(cli, with_users, monkeypatch):
    point_at(monkeypatch, {"ETCD_ENDPOINTS": with_users.endpoints[0],
                           "ETCD_USERNAME": "calico", "ETCD_PASSWORD": "calicopw"})
    add_and_show(cli, "10.34.0.0/16")
    from calicoctl.datastore.store import EtcdStore
    store = EtcdStore()
    assert store.api == with_users.api
    assert store.current_index() > 0  # the index without reading etcd's root
    # The agent's watch goes through the same credentials.
    index = store.current_index() + 1
    store.set("/calico/v1/test/auth", "1")
    assert store.watch("/calico/v1/test", index, timeout=5).value == "1"


@pytest.mark.parametrize("env, words", [
    ({"ETCD_USERNAME": "calico", "ETCD_PASSWORD": "wrong"}, "refused user calico"),
    ({"ETCD_USERNAME": "nobody", "ETCD_PASSWORD": "x"}, "refused user nobody"),
    ({}, "requires a user name and password"),
    ({"ETCD_USERNAME": "calico"}, "together"),
])
def test_bad_credentials_are_one_line(cli, with_users, monkeypatch, env, words):
    point_at(monkeypatch, dict(env, ETCD_ENDPOINTS=with_users.endpoints[0]))
    line = one_line_failure(cli("pool", "show"))
    assert words in line, line

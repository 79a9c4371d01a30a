"""Which etcd API a store speaks: v2 where the cluster serves it, v3 where it does not.

Calico's data has always lived in the v2 keyspace, so a cluster that still serves the v2 API
(etcd 3.4 or 3.5 started with --enable-v2=true) is spoken to in v2; one that does not (etcd 3.4
and 3.5 by default, 3.6 and later always) in v3.  The two keyspaces are separate: the same key in
each is a different key, which is why the choice must be the same in every component and why
`calicoctl datastore migrate` exists.  ETCD_API=2 or ETCD_API=3 overrides the choice.

The probe is one GET of /v2/keys/ per process (cached per endpoint list): a v2 server answers
it with JSON (200, or an error such as 401 that still has etcd's errorCode); a server without
the v2 API answers 404 with a plain-text body.
"""

import json
import threading

from calicoctl.datastore.etcd_errors import classify_transport
from calicoctl.datastore.failover import CONNECT_TIMEOUT
from calicoctl.errors import DatastoreError

_detected = {}            # tuple(endpoints) -> "2" or "3", for this process
_lock = threading.Lock()


def choose(settings, endpoints):
    """The API to speak ("2" or "3") and how it was chosen, as (api, reason)."""
    if settings.api:
        return settings.api, "ETCD_API=%s" % settings.api
    api = detected(settings, endpoints)
    return api, ("detected: the cluster serves the v2 API" if api == "2" else
                 "detected: the cluster does not serve the v2 API")


def serves_v2(settings, endpoints):
    """Whether the cluster answers the v2 API (whatever ETCD_API says)."""
    return detected(settings, endpoints) == "2"


def detected(settings, endpoints):
    """"2" if the cluster serves the v2 API, else "3": probed once per process."""
    key = tuple(settings.endpoints)
    with _lock:
        api = _detected.get(key)
    if api is None:
        api = probe(settings, endpoints)
        with _lock:
            _detected[key] = api
    return api


def forget():
    """Drop what this process detected (a test that restarts etcd with the other API)."""
    with _lock:
        _detected.clear()


def probe(settings, endpoints):
    """Ask the cluster (failing over between members) whether it serves the v2 API."""
    import urllib3
    pool = _pool(settings, endpoints.timeout)

    def attempt(endpoint, _):
        resp = pool.request("GET", endpoint + "/v2/keys/", redirect=False, retries=False,
                            preload_content=True)
        return _answer(endpoint, resp.status, resp.data)

    def classify(exc):
        if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
            return classify_transport(exc)
        return None, None
    try:
        return endpoints.run(attempt, classify)
    finally:
        pool.clear()


def _answer(endpoint, status, body):
    if status == 404:
        try:
            json.loads(body)
        except ValueError:
            return "3"       # no v2 API: the router's own "404 page not found"
        return "2"           # v2's own "key not found"
    if status < 500:
        try:
            json.loads(body)
        except ValueError:
            text = body.decode(errors="replace").strip().splitlines()
            if status == 400 and text and "https" in text[0].lower():
                # Go's answer to plain HTTP on a TLS port.
                raise DatastoreError(
                    "etcd at %s serves https; use an https:// endpoint or ETCD_SCHEME=https."
                    % endpoint)
            raise DatastoreError("%s is not etcd: GET /v2/keys/ answered %d %s" % (
                endpoint, status, text[0] if text else "")) from None
        return "2"
    # A member that is up but not ready; let the failover loop try another.
    import urllib3
    raise urllib3.exceptions.ProtocolError("etcd answered %d" % status)


def _pool(settings, timeout):
    import urllib3
    kwargs = pool_options(settings)
    kwargs["timeout"] = urllib3.Timeout(connect=min(CONNECT_TIMEOUT, timeout), read=timeout)
    return urllib3.PoolManager(num_pools=len(settings.endpoints), **kwargs)


def pool_options(settings):
    """urllib3's TLS options for the settings' CA, certificate and key."""
    kwargs = {}
    if settings.ca_cert:
        kwargs["ca_certs"] = settings.ca_cert
        kwargs["cert_reqs"] = "CERT_REQUIRED"
    if settings.cert:
        kwargs["cert_file"] = settings.cert
        kwargs["key_file"] = settings.key
    return kwargs

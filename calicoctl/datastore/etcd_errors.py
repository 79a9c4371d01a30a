"""How etcd clients' failures read to a user, and what the store should do about each.

`classify` (python-etcd, the v2 API), `classify_v3` (etcd3gw over the v3 JSON gateway) and
`classify_transport` (the HTTP layer under both, and the API probe) sort a failure into
unreachable / tls / transient / auth / fatal (failover.py fails over on the first three);
`tls_hint` turns OpenSSL's reason into the setting to fix.  Kept apart from the backends so they
read as what they do, not as error tables.
"""

import logging

log = logging.getLogger("calicoctl.datastore.store")


def quiet_python_etcd():
    """python-etcd logs every failed request at ERROR; we fail over and say so ourselves, so its
    lines would only repeat ours (and break the one-line error of a CLI command)."""
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("etcd.client").setLevel(logging.CRITICAL)


# etcd v2 error codes and messages that mean "the cluster is busy, ask again": raft internal
# error, leader election, and etcd 3's v2 emulation messages for a lost or changing leader.
_TRANSIENT_CODES = (300, 301)
_TRANSIENT_TEXT = ("request timed out", "leader changed", "no leader", "timed out",
                   "election", "server stopped", "too many requests", "not capable")


def classify(exc):
    """(kind, one-line reason) for a python-etcd failure other than an etcd answer; (None, None)
    for an exception that is no etcd failure at all.

    kind: "unreachable" (the request never reached etcd), "unanswered" (the connection was not
    accepted in time: the request never left, but asking again may work), "tls" (the TLS
    handshake failed),
    "transient" (connection lost mid-request, timeout, cluster busy: the request may have been
    applied), "auth" (bad credentials) or "fatal" (etcd refused the request itself).
    """
    import etcd
    if isinstance(exc, etcd.EtcdInsufficientPermissions):
        return "auth", one_line(exc)
    if isinstance(exc, etcd.EtcdLeaderElectionInProgress):
        return "transient", one_line(exc)
    if isinstance(exc, etcd.EtcdConnectionFailed):
        cause = exc.cause
        if cause is None:
            return "transient", one_line(exc)
        return classify_transport(cause)
    if not isinstance(exc, etcd.EtcdException):
        return None, None    # not a failure of etcd's: a bug, which keeps its traceback
    payload = exc.payload if isinstance(getattr(exc, "payload", None), dict) else {}
    reason = one_line(exc)
    if payload.get("errorCode") in _TRANSIENT_CODES or payload.get("status", 0) >= 500:
        return "transient", reason
    if "http request to an https server" in reason.lower():
        return "tls", "it serves https; use an https:// endpoint or ETCD_SCHEME=https"
    if "404 page not found" in reason.lower():
        # The v2 client (ETCD_API=2) meeting an etcd whose v2 API is off.
        return "fatal", ("it does not serve etcd's v2 API; unset ETCD_API (calicoctl then "
                         "speaks v3) or start etcd with --enable-v2=true")
    if any(t in reason.lower() for t in _TRANSIENT_TEXT):
        return "transient", reason
    return "fatal", reason


def classify_transport(cause):
    """(kind, reason) for an HTTP-level failure (urllib3, requests, or the OSError under them)."""
    import ssl

    import urllib3.exceptions as u3
    reason = _root_reason(cause)
    timed_out = isinstance(cause, u3.ReadTimeoutError) or "read timed out" in reason.lower()
    if timed_out:
        reason = "no answer in time (%s)" % reason
    if isinstance(cause, (u3.SSLError, ssl.SSLError)) or _mentions_tls(reason):
        return "tls", reason
    if isinstance(cause, u3.ConnectTimeoutError) or _innermost_is(cause, u3.NewConnectionError,
                                                                   u3.ConnectTimeoutError):
        # urllib3's NewConnectionError is a ConnectTimeoutError: tell a refusal (nobody
        # listens) from silence (the SYN or its answer was lost, or the listener is full).
        if _innermost_is(cause, TimeoutError) or reason.lower().endswith("timed out"):
            return "unanswered", reason
        return "unreachable", reason
    if isinstance(cause, u3.LocationValueError):
        return "fatal", reason
    if isinstance(cause, OSError) and not isinstance(cause, TimeoutError) and not timed_out:
        # Raised before the request was sent: e.g. a certificate file python cannot load.
        return ("tls" if _mentions_tls(reason) else "unreachable"), reason
    return "transient", reason


# gRPC status codes the v3 JSON gateway reports in its error bodies ("code").
GRPC_INVALID_ARGUMENT = 3
GRPC_DEADLINE_EXCEEDED = 4
GRPC_PERMISSION_DENIED = 7
GRPC_RESOURCE_EXHAUSTED = 8
GRPC_OUT_OF_RANGE = 11
GRPC_UNAVAILABLE = 14
GRPC_UNAUTHENTICATED = 16
# etcd's INVALID_ARGUMENT answers that are about credentials rather than the request.
_AUTH_TEXT = ("user name is empty", "authentication failed", "invalid auth token",
              "user name not found", "auth: ")


def gateway_error(exc):
    """(gRPC code, message) of an etcd3gw exception that carries etcd's answer, else None."""
    import json
    text = getattr(exc, "detail_text", None)
    if not text or not isinstance(text, str) or not text.lstrip().startswith("{"):
        return None
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    return body.get("code"), one_line(body.get("message") or body.get("error") or text)


def classify_v3(exc):
    """(kind, reason) for a v3 failure; (None, None) for what is no etcd failure."""
    import etcd3gw.exceptions as e3
    import requests
    import urllib3
    if isinstance(exc, requests.RequestException):
        return classify_transport(_requests_cause(exc))
    if not isinstance(exc, e3.Etcd3Exception):
        return None, None
    # etcd3gw turns a requests failure into its own exception, raised while handling it; the
    # backend's own requests (store_v3._unary) do the same with urllib3's.
    if isinstance(exc.__context__, requests.RequestException):
        return classify_transport(_requests_cause(exc.__context__))
    if isinstance(exc.__context__, (urllib3.exceptions.HTTPError, OSError)):
        return classify_transport(exc.__context__)
    answer = gateway_error(exc)
    if answer is None:
        text = one_line(getattr(exc, "detail_text", None) or exc)
        if "http request to an https server" in text.lower():
            return "tls", "it serves https; use an https:// endpoint or ETCD_SCHEME=https"
        if isinstance(exc, (e3.ConnectionFailedError, e3.ConnectionTimeoutError,
                            e3.InternalServerError)):
            return "transient", text
        return "fatal", text
    code, reason = answer
    if code in (GRPC_UNAUTHENTICATED, GRPC_PERMISSION_DENIED) or (
            code == GRPC_INVALID_ARGUMENT and any(t in reason for t in _AUTH_TEXT)):
        return "auth", reason
    if code in (GRPC_UNAVAILABLE, GRPC_DEADLINE_EXCEEDED, GRPC_RESOURCE_EXHAUSTED) or any(
            t in reason.lower() for t in _TRANSIENT_TEXT):
        return "transient", reason
    return "fatal", reason


def is_read_timeout(exc):
    """Whether exc (from requests or urllib3) is a read that got no answer in time."""
    import urllib3.exceptions as u3
    cause = _requests_cause(exc) if not isinstance(exc, u3.HTTPError) else exc
    return _innermost_is(cause, u3.ReadTimeoutError, TimeoutError)


def _requests_cause(exc):
    """The urllib3 error under a requests exception (requests wraps it in its own)."""
    inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
    inner = getattr(inner, "reason", None) or inner
    return inner if isinstance(inner, BaseException) else exc


def _innermost_is(error, *types):
    for _ in range(10):
        if isinstance(error, types):
            return True
        inner = getattr(error, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((a for a in getattr(error, "args", ()) if isinstance(a, BaseException)),
                         None)
        if inner is None:
            return False
        error = inner
    return False


def _root_reason(error):
    """The innermost error's message: '[Errno 111] Connection refused' rather than urllib3's
    paragraph about pools and retries."""
    for _ in range(10):  # a cause chain is short; never loop on a cycle
        inner = getattr(error, "reason", None)
        if not isinstance(inner, BaseException):
            inner = error.__cause__
        if not isinstance(inner, BaseException):
            # urllib3's ProtocolError('Connection aborted.', ConnectionResetError(...))
            inner = next((a for a in error.args if isinstance(a, BaseException)), None)
        if inner is None:
            break
        error = inner
    text = str(error)
    # urllib3 prefixes its own connection object: keep what the system said.
    if "Failed to establish a new connection: " in text:
        text = text.split("Failed to establish a new connection: ", 1)[1]
    return one_line(text) if text else error.__class__.__name__


def tls_hint(settings, reason):
    """What to do about a failed TLS handshake, from OpenSSL's reason."""
    text = reason.lower()
    if "wrong version number" in text or "record layer failure" in text:
        return "the endpoint does not speak TLS; use http:// or check the port"
    if "ip address mismatch" in text or "hostname mismatch" in text:
        return "etcd's certificate is not valid for the address in ETCD_ENDPOINTS"
    if "certificate verify failed" in text:
        if not settings.ca_cert:
            return "etcd's certificate is not trusted; set ETCD_CA_CERT_FILE to its CA"
        return "etcd's certificate is not signed by ETCD_CA_CERT_FILE (%s)" % settings.ca_cert
    if "key values mismatch" in text:
        return "ETCD_KEY_FILE is not the key of ETCD_CERT_FILE"
    if "no certificate or crl found" in text:
        return "ETCD_CA_CERT_FILE (%s) holds no certificate" % settings.ca_cert
    if "pem lib" in text or "no start line" in text:
        return "ETCD_CERT_FILE or ETCD_KEY_FILE is not a PEM certificate and key"
    if any(s in text for s in ("eof occurred", "certificate required", "bad certificate",
                               "unknown ca", "handshake failure", "reset by peer")):
        if not settings.cert:
            return "etcd wants a client certificate; set ETCD_CERT_FILE and ETCD_KEY_FILE"
        return ("etcd refused our client certificate %s; is it signed by a CA etcd trusts "
                "(--trusted-ca-file)?" % settings.cert)
    return "check ETCD_CA_CERT_FILE, ETCD_CERT_FILE and ETCD_KEY_FILE"


def _mentions_tls(text):
    text = text.lower()
    return any(s in text for s in ("ssl", "certificate", "tls", "pem", "wrong version number"))


def one_line(exc):
    text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not text:
        return exc.__class__.__name__ if isinstance(exc, BaseException) else ""
    return " ".join(text)

"""How python-etcd's failures read to a user, and what the store should do about each.

`classify` sorts a failure into unreachable / tls / transient / auth / fatal (the store fails over
on the first three); `tls_hint` turns OpenSSL's reason into the setting to fix.  Kept apart from
store.py so the store reads as the failover logic alone.
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
    """(kind, one-line reason) for a python-etcd failure other than an etcd answer.

    kind: "unreachable" (the request never reached etcd), "tls" (the TLS handshake failed),
    "transient" (connection lost mid-request, timeout, cluster busy: the request may have been
    applied), "auth" (bad credentials) or "fatal" (etcd refused the request itself).
    """
    import ssl

    import etcd
    import urllib3.exceptions as u3
    if isinstance(exc, etcd.EtcdInsufficientPermissions):
        return "auth", one_line(exc)
    if isinstance(exc, etcd.EtcdLeaderElectionInProgress):
        return "transient", one_line(exc)
    if isinstance(exc, etcd.EtcdConnectionFailed):
        cause = exc.cause
        reason = _root_reason(cause) if cause is not None else one_line(exc)
        if isinstance(cause, u3.ReadTimeoutError):
            reason = "no answer in time (%s)" % reason
        if isinstance(cause, (u3.SSLError, ssl.SSLError)) or _mentions_tls(reason):
            return "tls", reason
        if isinstance(cause, u3.ConnectTimeoutError):  # NewConnectionError is one too
            return "unreachable", reason
        if isinstance(cause, u3.LocationValueError):
            return "fatal", reason
        if isinstance(cause, OSError) and not isinstance(cause, TimeoutError):
            # Raised before the request was sent: e.g. a certificate file python cannot load.
            return ("tls" if _mentions_tls(reason) else "unreachable"), reason
        return "transient", reason
    payload = exc.payload if isinstance(getattr(exc, "payload", None), dict) else {}
    reason = one_line(exc)
    if payload.get("errorCode") in _TRANSIENT_CODES or payload.get("status", 0) >= 500:
        return "transient", reason
    if "http request to an https server" in reason.lower():
        return "tls", "it serves https; use an https:// endpoint or ETCD_SCHEME=https"
    if any(t in reason.lower() for t in _TRANSIENT_TEXT):
        return "transient", reason
    return "fatal", reason


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

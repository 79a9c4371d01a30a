"""Failover between etcd members, shared by both API backends and the API probe.

Every request goes to the endpoint that last worked; when it fails with a connection problem or a
transient cluster error (leader election, raft timeout) the request moves on to the next member,
with one log line.  The client libraries' own reconnect logic is not used: python-etcd's needs the
cluster's advertised member list, and both retry writes blindly.  What a failure means is the
backend's to say (a `classify` function); what to do about it is decided here, once.
"""

import logging
import threading
import time

from calicoctl.datastore.etcd_errors import tls_hint
from calicoctl.errors import DatastoreError

log = logging.getLogger("calicoctl.datastore.store")

# Connecting is the quick part: a member that does not accept a TCP connection in a second is
# down or unreachable, and waiting longer per endpoint would multiply by the number of endpoints.
# A connection that timed out is still tried again until the operation's deadline: the kernel
# resends a lost SYN only after a second, so one lost packet (or a listener whose accept queue
# is momentarily full) must not end the operation.  A refused connection ends it at once.
CONNECT_TIMEOUT = 1.0
# Total time one operation may spend across endpoints, as a multiple of the per-request timeout:
# enough for a killed leader to be replaced (raft election plus one retry) but still "a few
# seconds" for a user whose whole cluster is down.
TOTAL_TIMEOUT_FACTOR = 2
# Pause between passes over the endpoint list while the cluster answers but is not ready (no
# leader yet); doubled per pass up to the cap.
RETRY_PAUSE = 0.05
RETRY_PAUSE_MAX = 0.5


_tallies = threading.local()


class RequestTally:
    """Within `with RequestTally() as t:`, t.count and t.seconds sum the etcd operations this
    thread made (each with its failovers and retries) and the time they took: how much of a
    plugin call was the datastore (plugin/app.py logs it with each call)."""

    def __init__(self):
        self.count = 0
        self.seconds = 0.0

    def __enter__(self):
        self._outer = getattr(_tallies, "current", None)
        _tallies.current = self
        return self

    def __exit__(self, *exc):
        _tallies.current = self._outer


class Endpoints:
    """The members of one etcd cluster and which of them to ask first."""

    def __init__(self, settings, timeout):
        self.settings = settings
        self.timeout = timeout
        self.index = 0

    @property
    def current(self):
        return self.settings.endpoints[self.index]

    def _rotation(self):
        """Endpoint indexes to try, starting with the one that last worked."""
        n = len(self.settings.endpoints)
        return [(self.index + i) % n for i in range(n)]

    def auth_message(self, endpoint, reason):
        if not self.settings.username:
            return ("etcd at %s requires a user name and password (%s); set ETCD_USERNAME and "
                    "ETCD_PASSWORD." % (endpoint, reason))
        return ("etcd at %s refused user %s (%s): check ETCD_USERNAME and ETCD_PASSWORD, and "
                "that the user's roles may read and write /calico." % (
                    endpoint, self.settings.username, reason))

    @staticmethod
    def _report_failover(problems, endpoint):
        """The one log line a user sees when a member fails and another takes over."""
        failed = ["%s (%s)" % (e, r) for e, r in problems.items() if e != endpoint]
        if failed:
            log.warning("etcd %s failed; continuing with %s.", ", ".join(failed), endpoint)

    def run(self, attempt, classify, answers=(), passthrough=(), budget=None):
        """_run (below), counted in this thread's RequestTally, if one is open."""
        tally = getattr(_tallies, "current", None)
        if tally is None:
            return self._run(attempt, classify, answers, passthrough, budget)
        started = time.monotonic()
        try:
            return self._run(attempt, classify, answers, passthrough, budget)
        finally:
            tally.count += 1
            tally.seconds += time.monotonic() - started

    def _run(self, attempt, classify, answers, passthrough, budget):
        """attempt(endpoint, retried) on the members in turn until one answers; its result.
        retried says whether an earlier attempt failed after it may have reached etcd.

        An exception in `answers` is etcd's answer (key not found, compare failed, ...): it is
        re-raised for the caller to interpret, carrying `calico_retried = True` when an earlier
        attempt failed after it may have reached etcd.  One in `passthrough` (a watch that timed
        out) is re-raised as it is.  Anything else goes to classify(exc) -> (kind, reason), kind
        one of "unreachable" (the request never reached etcd), "unanswered" (nor did it, but the
        member may accept the next connection), "tls", "transient" (it may have been applied),
        "auth" or "fatal"; the last two end the operation at once, and a pass that met only
        "unreachable" or "tls" ends it too.
        """
        endpoints = self.settings.endpoints
        deadline = time.monotonic() + (budget or self.timeout * TOTAL_TIMEOUT_FACTOR)
        retried = False
        pause = RETRY_PAUSE
        problems = {}
        while True:
            kinds = set()
            for index in self._rotation():
                endpoint = endpoints[index]
                try:
                    result = attempt(endpoint, retried)
                except answers as exc:
                    self.index = index  # an answer from etcd: this endpoint works
                    exc.calico_retried = retried
                    self._report_failover(problems, endpoint)
                    raise
                except passthrough as exc:
                    exc.calico_retried = retried
                    raise
                except DatastoreError:
                    raise
                except Exception as exc:  # noqa: BLE001 - classify decides; a bug is "fatal"
                    kind, reason = classify(exc)
                    if kind is None:
                        raise
                    if kind == "fatal":
                        raise DatastoreError("etcd at %s refused the request: %s" % (
                            endpoint, reason)) from None
                    if kind == "auth":
                        raise DatastoreError(self.auth_message(endpoint, reason)) from None
                    if kind == "transient" and problems.get(endpoint) == reason and any(
                            s in reason for s in ("without response", "reset by peer")):
                        # A dying member drops a connection once; one that does it on every
                        # pass is no etcd we can talk to (e.g. a TLS port spoken to in HTTP).
                        kind = "unreachable"
                    kinds.add(kind)
                    # Said once, when another member answers (or in the final error).
                    log.debug("etcd endpoint %s failed (%s); trying the next one.",
                              endpoint, reason)
                    problems[endpoint] = reason
                    # Unreachable or unanswered means the request never left; anything else
                    # may have landed.
                    retried = retried or kind not in ("unreachable", "unanswered")
                    if time.monotonic() >= deadline:
                        break
                    continue
                self.index = index
                self._report_failover(problems, endpoint)
                return result
            self._give_up(kinds, problems, deadline)
            # Members answer but the cluster is not ready (electing a leader): pass again soon.
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, RETRY_PAUSE_MAX)

    def _give_up(self, kinds, problems, deadline):
        """Raise the one-line error for a pass in which no member answered, unless another pass
        may still succeed."""
        endpoints = self.settings.endpoints
        detail = "; ".join("%s: %s" % (e, problems[e]) for e in endpoints if e in problems)
        if kinds == {"tls"}:
            raise DatastoreError("TLS with etcd failed: %s (%s)." % (
                tls_hint(self.settings, detail), detail))
        if kinds <= {"unreachable", "tls"} or time.monotonic() >= deadline:
            hint = ""
            if "without response" in detail and any(e.startswith("http:") for e in endpoints):
                # What etcd's TLS listener does to a plain-HTTP request.
                hint = " If etcd serves https, use https:// endpoints or ETCD_SCHEME=https."
            raise DatastoreError(
                "Cannot reach etcd at %s (%s). Start etcd or point ETCD_ENDPOINTS / "
                "ETCD_AUTHORITY at a running member.%s" % (
                    self.settings.describe(), detail, hint))


class QuietWatches:
    """When a quiet watch should ask its member something quick.

    A watch that times out without an event looks exactly like a member that stopped
    answering, so the backends ask that member something quick (which moves them to another
    member if it is wedged).  The agent watches in short slices (it polls its interfaces
    between them), so asking after every quiet slice was several requests a second at rest:
    a member is asked only once its watches have been quiet, with nothing else heard from it,
    for as long as any request may take (the store's timeout).
    """

    def __init__(self, after):
        self.after = after
        self._local = threading.local()

    def heard(self):
        """An event (or a probe's answer) came: the member is alive now."""
        self._local.since = time.monotonic()

    def probe_due(self, watch_started):
        """After a quiet watch that began at watch_started (time.monotonic()): has the member
        been quiet long enough to ask?"""
        since = getattr(self._local, "since", None)
        if since is None:        # this thread's first quiet watch: quiet since it began
            since = self._local.since = watch_started
        return time.monotonic() - since >= self.after

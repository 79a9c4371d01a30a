"""Both tiers: in CI a skipped test is a failure, unless the kernel decided it (tests/skips.py).

A developer's `make test` still skips what the machine cannot run and prints why (-rs); CI
(.ci/run sets CALICO_STRICT_SKIPS=1, and CI=true means the same) must never land green on a
machine where system tests, etcd or namespaces quietly did not run.
"""

import os

import pytest

from tests.skips import KERNEL_FEATURE


def strict_skips():
    return os.environ.get("CALICO_STRICT_SKIPS") == "1" or os.environ.get("CI") == "true"


def _reason(report):
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_if_not_allowed(report):
    if report.skipped and strict_skips() and not hasattr(report, "wasxfail"):
        reason = _reason(report)
        if not reason.startswith(KERNEL_FEATURE):
            report.outcome = "failed"
            report.longrepr = (f"skipped where CI must run every test: {reason} "
                               f"(only '{KERNEL_FEATURE} ...' skips are allowed; install or start "
                               f"what is missing)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_if_not_allowed(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_if_not_allowed(outcome.get_result())

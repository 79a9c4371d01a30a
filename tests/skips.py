"""The one kind of skip CI accepts: a kernel feature this machine lacks (or has, where a test
shows the path taken without it). Everything else a test needs, the suite sets up itself; in CI
(CI=true or CALICO_STRICT_SKIPS=1) any other skip fails the test (tests/conftest.py)."""

import pytest

KERNEL_FEATURE = "kernel feature:"


def kernel_feature(text):
    """Skip because of what this kernel has or lacks, e.g. kernel_feature('no ipip module ...')."""
    pytest.skip(f"{KERNEL_FEATURE} {text}")

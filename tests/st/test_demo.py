"""The seed's libnetwork demonstration (tests/st/demo.py) on the session's testbed: every step
must do what the seed says, and the who-reaches-whom table must match what is expected."""

import sys

import pytest

from tests.st.demo import Demo

# Every supported engine (`make demo` runs this machine's own, which is one of them):
# Docker 20.10 with BIRD 1.6, 26.1 and 28.5 with BIRD 2 (tests/st/harness/suites.py).
pytestmark = pytest.mark.engines("bookworm", "trixie", "forky")


def run_demo(testbed, managed=False):
    """The demonstration with its transcript on stderr; (exit code, transcript, outcomes that
    ran).  The nodes are stopped afterwards, failed or not."""
    lines = []

    def out(text=""):
        lines.append(text)
        print(text, file=sys.stderr)

    demo = Demo(testbed, out=out, managed=managed)
    try:
        code = demo.run()
    finally:
        demo.stop_nodes()
    return code, "\n".join(lines), [o for o in demo.outcomes if not o.skipped]


def test_libnetwork_demonstration(testbed, node_images, capsys):
    code, transcript, ran = run_demo(testbed)
    assert code == 0, transcript[-6000:]
    assert len(ran) >= 2                       # default IPAM and Calico IPAM, at least
    for outcome in ran:
        assert len(outcome.rows) == 20 and not outcome.failures


def test_libnetwork_demonstration_with_the_managed_plugin(testbed, node_images):
    """The same demonstration with the driver as the Docker managed plugin (`MANAGED=1 make
    demo`): `calicoctl node --libnetwork --managed-plugin`, networks on calico:latest."""
    code, transcript, ran = run_demo(testbed, managed=True)
    assert code == 0, transcript[-6000:]
    assert "calico:latest" in transcript and "calico-libnetwork" not in transcript
    assert len(ran) >= 2
    for outcome in ran:
        assert len(outcome.rows) == 20 and not outcome.failures

"""CI's skip policy (tests/conftest.py), on a real pytest run in a subprocess: any skip but a
kernel feature fails under CALICO_STRICT_SKIPS=1, and a developer's run still only skips."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

TESTS = textwrap.dedent('''
    import pytest
    from tests.skips import kernel_feature

    def test_needs_etcd():
        pytest.skip("etcd is not installed")

    def test_needs_ipip():
        kernel_feature("no ipip module")

    @pytest.mark.skipif(True, reason="needs root")
    def test_marked():
        pass

    def test_runs():
        assert True
''')


def _run(tmp_path, strict):
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F401,F403\n")
    (tmp_path / "test_sample.py").write_text(TESTS)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "CALICO_STRICT_SKIPS")}
    env["PYTHONPATH"] = str(REPO)
    if strict:
        env["CALICO_STRICT_SKIPS"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           str(tmp_path)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)


def test_strict_run_fails_every_skip_but_a_kernel_feature(tmp_path):
    result = _run(tmp_path, strict=True)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    # A skip in the call phase becomes a failure, one in set-up (a skipif mark) an error.
    assert "1 failed, 1 passed, 1 skipped, 1 error" in out, out
    assert "skipped where CI must run every test: etcd is not installed" in out
    assert "skipped where CI must run every test: needs root" in out
    assert "kernel feature: no ipip module" in out


def test_developer_run_skips_with_reasons(tmp_path):
    result = _run(tmp_path, strict=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "1 passed, 3 skipped" in out, out
    assert "etcd is not installed" in out and "needs root" in out

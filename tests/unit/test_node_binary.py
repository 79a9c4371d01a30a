"""The one-file binary (calicoctl.spec): built with PyInstaller, then run with an empty
environment from another folder, so nothing of the venv or the source tree can help it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from calicoctl.cli import COMMANDS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def binary(tmp_path_factory):
    # Session-scoped: the v2/v3 parametrisation of the etcd fixtures would otherwise make
    # pytest rebuild a module-scoped binary for each (30 s a build).
    pyinstaller = shutil.which("pyinstaller", path=str(Path(sys.executable).parent))
    if pyinstaller is None:
        pytest.skip("PyInstaller is not installed (pip install -e '.[binary]')")
    work = tmp_path_factory.mktemp("pyinstaller")
    built = subprocess.run([pyinstaller, "--clean", "--noconfirm", "--log-level", "ERROR",
                            "--distpath", str(work / "dist"), "--workpath", str(work / "build"),
                            str(REPO / "calicoctl.spec")], cwd=REPO, timeout=600,
                           capture_output=True, text=True)
    # PyInstaller's own words say what the machine lacks (objdump, libpython3.X).
    assert built.returncode == 0, built.stderr[-3000:]
    path = work / "dist" / "calicoctl"
    assert path.is_file() and os.access(path, os.X_OK)
    return path


def _run(binary, cwd, *args, env=None):
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    base.update(env or {})
    return subprocess.run([str(binary), *args], capture_output=True, text=True, env=base,
                          cwd=cwd, timeout=60)


def test_binary_has_every_command(binary, tmp_path):
    existing = [name for name, module in COMMANDS.items()
                if (REPO / "calicoctl" / "commands" / (module + ".py")).exists()]
    for name in existing:
        r = _run(binary, tmp_path, name, "--help")
        assert r.returncode == 0, (name, r.stderr[-2000:])
        assert "Usage:" in r.stdout, name


def test_binary_talks_to_etcd(binary, tmp_path, etcd_env):
    env = {"ETCD_AUTHORITY": etcd_env.authority, "CALICO_HOSTNAME": "binhost"}
    assert _run(binary, tmp_path, "version").stdout.strip()
    r = _run(binary, tmp_path, "pool", "add", "10.9.0.0/16", env=env)
    assert r.returncode == 0, r.stderr
    assert "10.9.0.0/16" in _run(binary, tmp_path, "pool", "show", env=env).stdout
    r = _run(binary, tmp_path, "node", "bgp", "peer", "add", "198.18.0.200", "as", "64513",
             env=env)
    assert r.returncode == 0, r.stderr
    assert "198.18.0.200" in _run(binary, tmp_path, "node", "bgp", "peer", "show",
                                  env=env).stdout
    r = _run(binary, tmp_path, "pool", "add", "nonsense", env=env)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr

"""The package as users install it: build a wheel, install it into a fresh virtualenv, run `deployer`.

The wheel is built from a copy of the sources (no build/ or egg-info left in the checkout) without build
isolation (the dev dependencies provide setuptools and wheel, so no download is needed). The fresh
virtualenv gets the wheel only; its dependencies (invoke, paramiko, pydantic, ...) are made importable
from the current environment through a .pth file *after* the install, so the `deployer` that runs is the
wheel's and not this checkout's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import deployer

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
def test_wheel_installs_a_working_deployer_command(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for tree in ("deployer", "tests"):  # tests/ beside it: the wheel must still hold the tool only
        shutil.copytree(REPO / tree, source / tree, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

    dist = tmp_path / "dist"
    built = _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)], cwd=source)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    # The distribution is otp-deployer (`deployer` on PyPI is another project); the package and command: deployer.
    wheels = list(dist.glob("otp_deployer-*.whl"))
    assert [w.name for w in wheels] == [f"otp_deployer-{deployer.__version__}-py3-none-any.whl"]
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "deployer = deployer.cli.program:console" in wheel.read(entry_points).decode()
    assert {"deployer/cli/program.py", "deployer/tasks.py", "deployer/testing.py"} <= set(names)
    shipped_harness = [n for n in names if n.startswith("tests/") or "fleet" in n or "proxy" in n or "examples" in n]
    assert shipped_harness == [], f"the wheel ships test tooling: {shipped_harness}"

    venv = tmp_path / "venv"
    created = _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)  # with pip (ensurepip: offline)
    assert created.returncode == 0, created.stderr
    python = venv / "bin" / "python"
    installed = _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheels[0])], cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    site = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp_path).stdout.strip()
    )
    # The dependencies, from the current environment (a plain path: its .pth files, including this
    # checkout's editable install, are not processed).
    (site / "_deployer_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")

    script = venv / "bin" / "deployer"
    assert script.is_file()
    where = _run([str(python), "-c", "import deployer, sys; print(deployer.__file__)"], cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout

    listed = _run([str(script), "--list"], cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    for name in ("deploy", "rollback", "init", "status"):
        assert f"  {name} " in listed.stdout
    assert "fleet." not in listed.stdout and "bench" not in listed.stdout
    helped = _run([str(script), "deploy", "--help"], cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "Usage: deployer deploy [--flags]" in helped.stdout
    assert "--dry-run" in helped.stdout
    version = _run([str(script), "--version"], cwd=tmp_path)
    assert version.stdout.strip() == f"deployer {deployer.__version__}"

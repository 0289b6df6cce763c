"""End to end: the compatibility preflight refuses a release the hosts cannot run, before any upload, naming
the hosts; `invoke deploy --force` proceeds anyway.

Two simulations of a release built elsewhere: its build record (the `.platform.json` sidecar) claims an
aarch64 build machine, and a copy of the tarball whose beam.smp asks for a glibc newer than any host's.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer.core.artifact import inspect_tarball, sha256_file
from deployer.core.compat import BuildPlatform, write_sidecar
from deployer.operations import release as api
from tests.harness.examples import build_hello_erl
from tests.harness.fleet import Fleet

from .build_support import make_erl_app
from .support import App, explain, remove_app

REPO = Path(__file__).resolve().parents[2]
_names = itertools.count(1)


@pytest.fixture
def compat_app(session_fleet: Fleet, tmp_path: Path) -> Iterator[App]:
    deployment = make_erl_app(session_fleet, tmp_path, f"compat{next(_names)}")
    yield deployment
    remove_app(deployment)


def nothing_uploaded(app: App) -> bool:
    return all(
        app.sh(h.name, f"ls -A {app.deploy_to}/artifacts 2>/dev/null || true").strip() == "" for h in app.fleet.hosts
    )


def unlocked(app: App) -> bool:
    return all(
        app.sh(h.name, f"test -d {app.deploy_to}/.lock && echo locked || echo free").strip() == "free"
        for h in app.fleet.hosts
    )


def newer_glibc_copy(source: Path, dest: Path) -> Path:
    """A copy of ``source`` whose beam.smp references GLIBC_2.99 instead of GLIBC_2.34 (same length)."""
    with tarfile.open(source, "r:gz") as src, tarfile.open(dest, "w:gz", compresslevel=1) as out:
        for member in src:
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if data is not None and member.name.endswith("/bin/beam.smp"):
                assert b"GLIBC_2.34\0" in data
                data = data.replace(b"GLIBC_2.34\0", b"GLIBC_2.99\0")
            out.addfile(member, io.BytesIO(data) if data is not None else None)
    return dest


def test_a_release_built_for_another_machine_is_refused_before_upload(compat_app: App, tmp_path: Path) -> None:
    app = compat_app
    tarball = tmp_path / "hello_erl-0.1.0.tar.gz"
    shutil.copyfile(build_hello_erl("0.1.0", migrations=2), tarball)
    write_sidecar(
        tarball,
        BuildPlatform(arch="aarch64", libc="ldd (GNU libc) 2.36", strategy="host", machine="arm-builder"),
        sha256_file(tarball),
    )

    refused = api.deploy(app.inventory(), inspect_tarball(tarball, "hello_erl")).report
    assert not refused.ok
    assert refused.error is not None and "cannot run on 3 of 3 host(s)" in refused.error
    for host in ("h1", "h2", "h3"):
        assert f"{host}: the release was built on arm-builder (aarch64), the host is x86_64" in refused.error
    assert "--force" in refused.error
    assert nothing_uploaded(app) and unlocked(app)

    # --force proceeds (the sidecar lied: the tarball's own ERTS is x86_64) and says what it overrode.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "--search-root",
            str(REPO),
            "deploy",
            "--env",
            "e2e",
            "--inventory-dir",
            str(app.inventory_dir),
            "--tarball",
            str(tarball),
            "--force",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert any("--force" in w and "aarch64" in w for w in report["warnings"]), report["warnings"]
    assert app.versions() == {h.name: "0.1.0" for h in app.fleet.hosts}


def test_a_release_needing_a_newer_glibc_is_refused(compat_app: App, tmp_path: Path) -> None:
    app = compat_app
    tarball = newer_glibc_copy(build_hello_erl("0.1.0", migrations=2), tmp_path / "hello_erl-0.1.0.tar.gz")
    refused = api.deploy(app.inventory(), inspect_tarball(tarball, "hello_erl")).report
    assert not refused.ok, explain(refused)
    assert refused.error is not None
    assert "h1: the release needs glibc >= 2.99 (erts-" in refused.error and "the host has glibc 2." in refused.error
    assert nothing_uploaded(app) and unlocked(app)

"""Issue 18: ``check`` and ``deploy --dry-run`` report a missing secret, secrets file or identity file up
front, with the file and key path, before any build or connection."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from deployer.cli.program import main

from .helpers import BASE, release_tarball, write_inventory


def run(*args: str) -> int:
    try:
        main(["deployer", *args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HELLO_SECRET", raising=False)
    monkeypatch.delenv("DATABASE_URL_EU", raising=False)
    release_tarball(tmp_path / "hello-0.1.0.tar.gz")
    return tmp_path


def commands(tarball: str) -> list[list[str]]:
    return [
        ["deploy", "--env", "prod", "--dry-run", "--tarball", tarball],
        ["check", "--env", "prod"],
    ]


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, "inventory/prod.yml: env.secret.HELLO_SECRET: HELLO_SECRET is not set in the environment"),
        (
            {"env": {"secret": ["HELLO_SECRET"], "secrets_file": "/nonexistent/nope.env"}},
            "inventory/prod.yml: env.secrets_file: the secrets file /nonexistent/nope.env does not exist",
        ),
        (
            {"ssh": {"identity_file": "keys/missing"}},
            "inventory/prod.yml: ssh.identity_file: keys/missing does not exist",
        ),
    ],
)
def test_problems_are_reported_before_any_work(
    project: Path, capsys: pytest.CaptureFixture[str], which: int, change: dict[str, Any], expected: str
) -> None:
    data: dict[str, Any] = {**copy.deepcopy(BASE), **change}
    write_inventory(project / "inventory", data, env="prod")
    status = run(*commands(str(project / "hello-0.1.0.tar.gz"))[which])
    captured = capsys.readouterr()
    assert status == 2
    assert expected in captured.err + captured.out

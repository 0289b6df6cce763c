"""``confirm: true``: a protected environment asks before any host work, names env, operation and hosts."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest

from deployer.build import builder
from deployer.operations import node as ops
from deployer.operations import release as api

from .helpers import BASE, deployer_cli, release_tarball, write_inventory


class Terminal(io.StringIO):
    """stdin as a person at a terminal: answers with ``text``."""

    def isatty(self) -> bool:
        return True


class Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A protected environment ``test`` (three hosts) as the current project; records the work started."""
    write_inventory(tmp_path / "inventory", {**BASE, "confirm": True})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HELLO_SECRET", "s3cr3t-value")
    done: list[str] = []

    def recorder(name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> Any:
            done.append(name)
            raise SystemExit(0)

        return record

    monkeypatch.setattr(builder, "build", recorder("build"))
    for name in ("deploy", "rollback", "migrate"):
        monkeypatch.setattr(api, name, recorder(name))
    monkeypatch.setattr(ops, "lifecycle", recorder("lifecycle"))
    return done


def test_no_terminal_without_yes_is_refused_before_any_work(
    work: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", Pipe(""))
    assert deployer_cli("deploy", "--env", "test") == 2
    err = capsys.readouterr().err
    assert "test is protected (confirm: true): deploy on 3 host(s): web1, web2, web3" in err
    assert "no terminal to ask on: add --yes" in err and "nothing was done" in err
    assert work == []  # not even the build


def test_yes_skips_the_question(work: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", Pipe(""))
    assert deployer_cli("restart", "--env", "test", "--yes") == 0
    assert work == ["lifecycle"]


def test_the_question_names_env_operation_and_hosts_and_needs_the_env_name(
    work: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    assert deployer_cli("rollback", "--env", "test", "--hosts", "web2") == 1
    captured = capsys.readouterr()
    assert "test is protected (confirm: true): rollback on 1 host(s): web2" in captured.err
    assert "Type 'test' to go on" in captured.err and "not confirmed" in captured.err
    assert captured.out == ""  # the question is for people: stderr
    assert work == []

    monkeypatch.setattr(sys, "stdin", Terminal("test\n"))
    assert deployer_cli("rollback", "--env", "test", "--hosts", "web2") == 0
    assert work == ["rollback"]


def test_the_question_comes_before_the_build(
    work: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", Terminal(""))  # Ctrl-D at the question
    assert deployer_cli("deploy", "--env", "test") == 1
    assert work == []
    monkeypatch.setattr(sys, "stdin", Terminal("test\n"))
    assert deployer_cli("deploy", "--env", "test") == 0
    assert work == ["build"]


def test_a_dry_run_is_never_asked(work: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "stdin", Pipe(""))
    tarball = release_tarball(tmp_path / "hello-0.1.0.tar.gz")
    assert deployer_cli("deploy", "--env", "test", "--tarball", str(tarball), "--dry-run") == 0
    assert work == ["deploy"]


def test_an_unprotected_environment_is_not_asked(
    work: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_inventory(tmp_path / "inventory", BASE)
    monkeypatch.setattr(sys, "stdin", Pipe(""))
    assert deployer_cli("migrate", "--env", "test") == 0
    assert work == ["migrate"]

"""Who deployed which commit: git state of the build, recorded in revisions.log, shown by history and check."""

from __future__ import annotations

import io
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from deployer import __version__
from deployer.build.provenance import git_source
from deployer.cli.render import history_document, print_history
from deployer.core.artifact import inspect_tarball
from deployer.core.facts import parse_probe
from deployer.core.history import History
from deployer.core.plan import plan_deploy, plan_rollback
from deployer.core.provenance import NOT_A_CHECKOUT, PREBUILT, Source
from deployer.operations.node import CheckRow, check_document
from deployer.operations.status import HostStatus

from .helpers import inventory, release_tarball

COMMIT = "3f2a9c1d0b7e4a5f6e7d8c9b0a1f2e3d4c5b6a79"
OLD_LINE = '2026-11-01T00:00:00Z\t{"release":"20261101000000-0.1.0","event":"deploy","outcome":"success","by":"a@b"}'
NEW_LINE = "2026-11-02T00:00:00Z\t" + json.dumps(
    {
        "release": "20261102000000-0.2.0",
        "event": "deploy",
        "outcome": "success",
        "version": "0.2.0",
        "by": "c@d",
        "commit": COMMIT,
        "dirty": "yes",
        "deployer": "0.1.0",
    }
)


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True, capture_output=True
    )


def test_git_source_reads_commit_and_dirty_and_says_when_there_is_no_checkout(tmp_path: Path) -> None:
    assert git_source(tmp_path).describe() == NOT_A_CHECKOUT
    repo = tmp_path / "project"
    repo.mkdir()
    git(repo, "init", "-q")
    assert git_source(repo).commit is None  # a repository without commits has nothing to name
    (repo / "mix.exs").write_text("v1\n")
    git(repo, "add", "mix.exs")
    git(repo, "commit", "-qm", "one")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    clean = git_source(repo)
    assert (clean.commit, clean.dirty) == (head, False)
    (repo / "notes.txt").write_text("untracked files do not make it dirty\n")
    assert git_source(repo).dirty is False
    (repo / "mix.exs").write_text("v2\n")
    dirty = git_source(repo)
    assert dirty.commit == head and dirty.dirty and dirty.describe() == head[:12] + " (dirty)"


def test_old_revisions_log_lines_stay_readable_next_to_new_ones() -> None:
    old, new = History.from_lines([OLD_LINE, NEW_LINE]).revisions
    assert old.built_from is None and old.deployer is None and old.by == "a@b"
    assert new.built_from == Source(COMMIT, dirty=True) and new.deployer == "0.1.0"
    assert Source.from_fields({"source": NOT_A_CHECKOUT}) == Source(note=NOT_A_CHECKOUT)


def _probe(*lines: str, current: str = "20261102000000-0.2.0") -> str:
    releases = "release=20261101000000-0.1.0\nrelease=20261102000000-0.2.0\n"
    return f"now=1\nexists=1\nwritable=1\ncurrent=releases/{current}\n{releases}" + "".join(
        f"rev={line}\n" for line in lines
    )


def test_a_deploy_records_commit_dirty_and_deployer_version(tmp_path: Path) -> None:
    inv = inventory(tmp_path)
    artifact = inspect_tarball(release_tarball(tmp_path / "hello-0.3.0.tar.gz", version="0.3.0"), "hello")
    built = replace(artifact, source=Source(COMMIT, dirty=True))
    plan = plan_deploy(inv, built, {"web1": parse_probe(_probe(OLD_LINE, NEW_LINE))}, who="me@here", cookie=None)
    script = plan.host("web1").activate.render()
    assert f'\\"commit\\":\\"{COMMIT}\\"' in script or f'"commit":"{COMMIT}"' in script
    assert '"dirty":"yes"' in script.replace('\\"', '"')
    assert f'"deployer":"{__version__}"' in script.replace('\\"', '"')
    prebuilt = replace(artifact, source=Source(note=PREBUILT))
    plan = plan_deploy(inv, prebuilt, {"web1": parse_probe(_probe(OLD_LINE))}, who="me@here", cookie=None)
    text = plan.host("web1").activate.render().replace('\\"', '"')
    assert '"source":"prebuilt tarball' in text and '"commit"' not in text


def test_a_rollback_records_the_commit_its_target_was_built_from(tmp_path: Path) -> None:
    inv = inventory(tmp_path)
    older = NEW_LINE.replace("20261102000000-0.2.0", "20261101000000-0.1.0").replace("2026-11-02", "2026-11-01")
    newer = OLD_LINE.replace("20261101000000-0.1.0", "20261102000000-0.2.0").replace("2026-11-01", "2026-11-02")
    plan = plan_rollback(inv, {"web1": parse_probe(_probe(older, newer))}, who="me@here")
    text = plan.host("web1").activate.render().replace('\\"', '"')
    assert f'"commit":"{COMMIT}"' in text and '"event":"rollback"' in text


def test_history_shows_commit_and_version_in_text_and_json(tmp_path: Path) -> None:
    facts = parse_probe(_probe(OLD_LINE, NEW_LINE))
    rows = [HostStatus("web1", True, facts), HostStatus("web2", False, None, error="unreachable: refused")]
    buffer = io.StringIO()
    print_history(Console(file=buffer, width=300), rows)
    text = buffer.getvalue()
    assert "from unknown  deployer ?" in text  # the old line
    assert f"from {COMMIT[:12]} (dirty)  deployer 0.1.0" in text
    document = history_document(rows, "test")
    old, new = document["hosts"][0]["revisions"]
    assert (old["commit"], old["dirty"], old["deployer"]) == (None, None, None)
    assert (new["commit"], new["dirty"], new["deployer"]) == (COMMIT, True, "0.1.0")
    assert document["hosts"][1] == {
        "host": "web2",
        "reachable": False,
        "error": "unreachable: refused",
        "revisions": [],
    }


@pytest.mark.parametrize(("lines", "expected"), [((OLD_LINE, NEW_LINE), f"{COMMIT[:12]} (dirty)"), ((OLD_LINE,), None)])
def test_check_shows_what_each_host_runs_was_built_from(lines: tuple[str, ...], expected: str | None) -> None:
    current = "20261102000000-0.2.0" if len(lines) == 2 else "20261101000000-0.1.0"
    facts = parse_probe(_probe(*lines, current=current))
    row = check_document([CheckRow("web1", True, [], facts)])["hosts"][0]
    assert row["release"] == current
    assert row["built_from"] == (expected or "unknown")

"""Every operator error ends with a pointer to its entry in docs/errors.md, and the pointer resolves."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import markdown
import pytest
import yaml

from deployer.cli import catalogue
from deployer.cli.error_index import ENTRIES

from .helpers import BASE, deployer_cli, write_inventory

REPO = Path(__file__).resolve().parents[2]
ERRORS = REPO / "docs" / "errors.md"


def _built_ids() -> set[str]:
    """The ids of docs/errors.md as the manual's build renders it (mkdocs.yml's Markdown extensions)."""

    class _Tagged(yaml.SafeLoader):
        pass

    _Tagged.add_multi_constructor("", lambda loader, suffix, node: None)  # !!python/name tags in mkdocs.yml
    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=_Tagged)
    names = [e if isinstance(e, str) else next(iter(e)) for e in config["markdown_extensions"]]
    assert {"attr_list", "def_list", "toc"} <= set(names)  # what gives each entry its anchor
    html = markdown.markdown(ERRORS.read_text(), extensions=["attr_list", "def_list", "toc", "tables"])
    return set(re.findall(r'\sid="([^"]+)"', html))


def test_every_catalogued_error_has_a_unique_anchor() -> None:
    lines = ERRORS.read_text().splitlines()
    terms = [line for line, after in itertools.pairwise(lines) if line.startswith("`") and after.startswith(": ")]
    assert len(terms) > 90
    missing = [t for t in terms if not re.search(r"\{#[a-z0-9-]+\}\s*$", t)]
    assert missing == [], (
        "give these entries an anchor (python -m deployer.cli.catalogue --add-anchors, then regenerate the index):\n"
        + "\n".join(missing)
    )
    codes = [re.search(r"\{#([a-z0-9-]+)\}\s*$", t).group(1) for t in terms]  # type: ignore[union-attr]
    assert len(codes) == len(set(codes)), [c for c in codes if codes.count(c) > 1]


def test_new_entries_get_an_anchor_and_existing_anchors_stay() -> None:
    text = "## Locks {#locks}\n\n`<host>: the lock is <state>` {#lock-state}\n: a.\n\n`a new message about <x>`\n: b.\n"
    anchored = catalogue.add_anchors(text)
    assert "`<host>: the lock is <state>` {#lock-state}\n" in anchored
    assert "`a new message about <x>` {#new-message-about}\n" in anchored
    assert catalogue.add_anchors(anchored) == anchored


def test_the_shipped_index_is_current() -> None:
    assert catalogue.index(ERRORS.read_text()) == ENTRIES, (
        "run: python -m deployer.cli.catalogue > deployer/cli/error_index.py && ruff format deployer/cli/error_index.py"
    )


def test_every_link_printed_resolves_to_an_anchor_of_the_built_page() -> None:
    ids = _built_ids()
    codes = {code for code, _, _ in ENTRIES} | {catalogue.FALLBACK, "locks", "inventory-and-flags"}
    assert codes - ids == set()


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("inventory/prod.yml: no such inventory file\n  -> environments here: staging", "no-such-inventory-file"),
        ("another operation holds the deploy lock:\n  web1: ops@ci (pid 7) running deploy since 3s ago", "lock-held"),
        (
            "another operation holds the deploy lock:\n"
            "  web1: alice@laptop locked it by hand: 'db' running lock since 1m ago",
            "lock-held-manual",
        ),
        ("web1: cannot connect to 10.0.0.1:22: Connection refused", "cannot-connect-timed-out-after"),
        ("a message nobody catalogued", catalogue.FALLBACK),
    ],
)
def test_a_message_finds_its_entry(message: str, code: str) -> None:
    assert catalogue.code_for(message) == code


def test_the_pointer_is_a_docs_path_offline_and_a_link_with_the_site_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEPLOYER_DOCS_URL", raising=False)
    assert catalogue.link("lock-held") == "docs/errors.md#lock-held"
    monkeypatch.setenv("DEPLOYER_DOCS_URL", "https://deployer.example/manual/")
    assert catalogue.link("lock-held") == "https://deployer.example/manual/errors/#lock-held"


def test_the_cli_ends_errors_with_the_pointer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from deployer.operations import release as api
    from deployer.testing import FakeFleet

    monkeypatch.delenv("DEPLOYER_DOCS_URL", raising=False)
    write_inventory(tmp_path / "inventory", BASE)
    monkeypatch.chdir(tmp_path)
    assert deployer_cli("rollback", "--env", "nope") == 2
    err = capsys.readouterr().err
    assert "no such inventory file" in err and "see: docs/errors.md#no-such-inventory-file" in err

    held = {"who": "alice", "host": "laptop", "operation": "lock", "since": 1, "message": "db maintenance"}
    fake = FakeFleet(probe_output={"web1": "now=100\nlock=" + json.dumps(held) + "\n"})
    real = api.rollback
    monkeypatch.setattr(api, "rollback", lambda inv, to, options: real(inv, to, _with(options, fake)))
    assert deployer_cli("rollback", "--env", "test") == 1
    err = capsys.readouterr().err
    assert "db maintenance" in err
    # The pointer ends the error itself (the line after its `->` hint), before the verdict.
    assert "lifts the lock\n  see: docs/errors.md#lock-held-manual\nrollback: FAILED" in err


def _with(options: object, fake: object) -> object:
    options.connector = fake.connect  # type: ignore[attr-defined]
    return options

"""The generated inventory reference in docs/ must match the models."""

from pathlib import Path

from deployer.cli.docgen import render

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_inventory_reference_is_current() -> None:
    assert (DOCS / "inventory.md").read_text() == render(), "run: python -m deployer.cli.docgen > docs/inventory.md"


def test_every_section_and_key_is_documented() -> None:
    text = render()
    for key in (
        "`deploy_to`",
        "`keep_releases`",
        "## `hosts[]`",
        "`identity_file`",
        "`secrets_file`",
        "## `migrate`",
        "`deadline`",
        "`max_fail`",
        "`stop_timeout`",
        "`keepalive_count`",
    ):
        assert key in text


def test_defaults_are_shown_as_yaml_not_python_literals() -> None:
    text = render()
    assert "| `flavour` | `mix` \\| `rebar3` \\| `distillery` | `mix` |" in text
    assert "| `use_user_known_hosts` | bool | `true` |" in text
    assert "| `forward_agent` | bool | `false` |" in text
    assert "| `roles` | list of str | `[app]` |" in text
    for literal in ("`'", "`True`", "`False`", "`None`", "['"):
        assert literal not in text, literal

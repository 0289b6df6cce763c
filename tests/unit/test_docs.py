"""The generated inventory reference in docs/ must match the models."""

import ast
import re
from pathlib import Path

import pytest
import yaml

from deployer.cli.docgen import render
from deployer.cli.program import main

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


# --- the manual as a whole (issue 18) ------------------------------------------------------------------------

REPO = DOCS.parent
ERROR_KINDS = {
    "DeployerError",
    "InventoryError",
    "ArtifactError",
    "ConnectError",
    "HostKeyError",
    "RemoteCommandError",
    "LockedError",
    "PlanError",
    "CompatibilityError",
    "InitError",
}


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("`", "")).strip()


def _literal_parts(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    if isinstance(node, ast.BinOp):
        return _literal_parts(node.left) + _literal_parts(node.right)
    return []


def _error_messages() -> list[tuple[str, str]]:
    """(where, the longest fixed part) of every operator error raised in deployer/, the fake transport aside."""
    found = []
    for path in sorted((REPO / "deployer").rglob("*.py")):
        if path.name == "testing.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ERROR_KINDS):
                continue
            if not node.args:
                continue
            # ConnectError(host, message), RemoteCommandError(host, step, message): the message comes last.
            message = (
                node.args[-1]
                if node.func.id in {"ConnectError", "HostKeyError", "RemoteCommandError"}
                else node.args[0]
            )
            parts = [_normalise(p).strip(" :;,.()") for p in _literal_parts(message)]
            parts = [p for p in parts if len(p) >= 8]
            if parts:
                found.append((f"{path.relative_to(REPO)}:{node.lineno}", max(parts, key=len)))
    return found


def test_the_error_catalogue_lists_every_message_the_tool_raises() -> None:
    messages = _error_messages()
    assert len(messages) > 60  # the scan itself works: deployer raises many operator errors
    catalogue = _normalise((DOCS / "errors.md").read_text())
    missing = [f"{where}: {text!r}" for where, text in messages if text not in catalogue]
    assert missing == [], "add these messages to docs/errors.md (what it means, what to do):\n" + "\n".join(missing)


def test_the_manual_speaks_deployer_and_mentions_invoke_only_as_the_alternative() -> None:
    """`invoke <task>` appears only where the paragraph is about Invoke (a tasks.py) or the repository's fleet."""
    offenders = []
    for page in sorted(DOCS.glob("*.md")):
        for paragraph in re.split(r"\n\s*\n", page.read_text()):
            for match in re.finditer(r"\binvoke (?!fleet\.)[a-z-]+", paragraph):
                if not re.search(r"tasks\.py|Invoke", paragraph):
                    offenders.append(f"{page.name}: {match.group(0)!r}")
    assert offenders == []
    text = "\n".join(p.read_text() for p in DOCS.glob("*.md") if p.name != "tasks-reference.md")
    assert len(re.findall(r"\bdeployer [a-z]+ --env", text)) > 5 * len(re.findall(r"\binvoke [a-z]+ --env", text))


def test_no_literal_backslash_before_a_pipe_inside_code_in_hand_written_tables() -> None:
    for page in sorted(DOCS.glob("*.md")):
        if page.name in {"inventory.md", "tasks-reference.md"}:
            continue  # generated; `\|` there is outside code spans, where Markdown removes the backslash
        for span in re.findall(r"`[^`\n]*`", page.read_text()):
            assert "\\|" not in span, f"{page.name}: {span} renders the backslash"


def test_diagrams_need_no_network() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    assert config["theme"]["font"] is False  # no web fonts from a CDN
    for script in config["extra_javascript"]:
        assert (DOCS / script).is_file(), script
    bundle = (DOCS / "assets" / "javascripts" / "mermaid.min.js").read_text()
    # Material uses a global `mermaid` when one is loaded, and fetches version 11 from a CDN otherwise.
    assert 'globalThis["mermaid"]' in bundle
    fences = [
        f
        for e in config["markdown_extensions"]
        if isinstance(e, dict)
        for f in e.get("pymdownx.superfences", {}).get("custom_fences", [])
    ]
    assert {"name": "mermaid", "class": "mermaid"} in fences
    assert "```mermaid" in (DOCS / "concepts.md").read_text()


def _deployer(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the `deployer` program in-process (as the console script does) and return what it printed."""
    with pytest.raises(SystemExit) as exited:
        main(["deployer", *argv])
    assert exited.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_completion_commands_the_manual_documents_work(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    script = _deployer(capsys, "--print-completion-script", shell)
    # Each shell's script asks `deployer ... --complete -- <words>` for the candidates at every <TAB>.
    assert re.search(r"\bdeployer\b[^\n]*--complete --", script), script
    assert "_complete_deployer" in script
    assert f"--print-completion-script {shell}" in (DOCS / "completion.md").read_text()


def test_completion_offers_tasks_and_their_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert "deploy" in _deployer(capsys, "--complete", "--", "deployer", "dep").split()
    flags = set(_deployer(capsys, "--complete", "--", "deployer", "deploy", "--").split())
    assert {"--env", "--batch-size", "--canary"} <= flags

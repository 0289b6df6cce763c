"""Every operator error points at its entry in the error catalogue (``docs/errors.md``).

Each entry of the catalogue is a definition-list term holding the message (placeholders in ``<angle
brackets>``, ``…`` for a free tail) and a stable anchor: ``{#lock-held}``. This module turns those terms into
patterns (generated into :mod:`deployer.cli.error_index`, shipped in the wheel, drift-tested) and finds the
entry a printed message belongs to. The pointer works offline: ``see: docs/errors.md#lock-held`` names the
page of the manual and the entry; with ``DEPLOYER_DOCS_URL`` set (the manual's site) it becomes a link,
``<url>/errors/#lock-held``.

Regenerate after editing the catalogue: ``python -m deployer.cli.catalogue --add-anchors`` (anchors for new
entries, in place) then ``python -m deployer.cli.catalogue > deployer/cli/error_index.py``.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

FALLBACK = "anything-else"
"""The catalogue's last section: what to do with a message it does not list."""

_TERM = re.compile(r"^(`.*?)\s*\{#([a-z0-9-]+)\}\s*$")
_HEADING = re.compile(r"^## (.*?)(?:\s*\{#([a-z0-9-]+)\})?\s*$")
_SPAN = re.compile(r"`([^`]+)`")
_PLACEHOLDER = re.compile(r"<[^<>\s][^<>]*>|…")


@dataclass(frozen=True)
class Entry:
    """One catalogued message: its anchor and the patterns of its wording."""

    code: str
    section: str
    patterns: tuple[tuple[tuple[str, ...], int], ...]
    """(the fixed parts of a wording, in order; their length: the longer, the more specific) per message span."""


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def _patterns(span: str) -> list[tuple[tuple[str, ...], int]]:
    """Regexes for one message span: the whole wording (placeholders match anything), scored by its fixed
    characters; and its opening words alone, scored just below, for a message whose variable part differs
    from the catalogue's example (the opening is what names the error)."""
    span = _squeeze(span)
    fixed = _PLACEHOLDER.split(span)
    size = sum(len(part.strip()) for part in fixed)
    if size < 8 or span.startswith("->"):
        return []
    found = [(tuple(fixed), size)]
    head = fixed[0].strip()
    if len(fixed) > 1 and len(head) >= 15:
        found.append(((head,), len(head) - 1))
    return found


def index(text: str) -> tuple[tuple[str, tuple[str, ...], int], ...]:
    """(anchor, fixed parts, specificity) of every wording in the catalogue ``text``: the generated index."""
    return tuple((entry.code, parts, size) for entry in parse(text) for parts, size in entry.patterns)


def parse(text: str) -> list[Entry]:
    """The catalogue's entries, in page order (terms without an anchor are skipped: the test names them)."""
    entries: list[Entry] = []
    section = ""
    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading:
            section = heading.group(2) or ""
            continue
        term = _TERM.match(line)
        if term is None:
            continue
        patterns = tuple(p for span in _SPAN.findall(term.group(1)) for p in _patterns(span))
        entries.append(Entry(term.group(2), section, patterns))
    return entries


def code_for(message: str) -> str:
    """The anchor of the catalogue entry ``message`` belongs to (the most specific match), else the fallback."""
    from deployer.cli.error_index import ENTRIES

    best, best_size = FALLBACK, 0
    text = _squeeze(message)
    for code, parts, size in ENTRIES:
        if size > best_size and re.search(".*?".join(re.escape(part) for part in parts), text):
            best, best_size = code, size
    return best


def link(code: str) -> str:
    """Where the entry is: ``docs/errors.md#<code>``, or ``$DEPLOYER_DOCS_URL/errors/#<code>`` when set."""
    base = os.environ.get("DEPLOYER_DOCS_URL", "").strip()
    if base:
        return f"{base.rstrip('/')}/errors/#{code}"
    return f"docs/errors.md#{code}"


def pointer(message: str) -> str:
    """The line that ends an error: ``see: docs/errors.md#lock-held``."""
    return f"see: {link(code_for(message))}"


def render_index(text: str) -> str:
    """The generated :mod:`deployer.cli.error_index` for the catalogue ``text``."""
    lines = [
        "# ruff: noqa: E501",
        '"""Generated from docs/errors.md by ``python -m deployer.cli.catalogue``: do not edit (a test checks it).',
        "",
        "(anchor, the fixed parts of a message in order, how specific the match is) per catalogued wording.",
        '"""',
        "",
        "ENTRIES: tuple[tuple[str, tuple[str, ...], int], ...] = (",
    ]
    lines += [f"    ({code!r}, {parts!r}, {size})," for code, parts, size in index(text)]
    lines.append(")")
    return "\n".join(lines) + "\n"


_STOP = frozenset(["the", "a", "an", "of", "to", "is", "in", "on", "for", "and", "or", "by", "it", "its", "be", "not"])


def add_anchors(text: str) -> str:
    """``text`` with an anchor ``{#code}`` on every entry that has none: a code made of the first words of
    its message (kept unique). Existing anchors are never changed: they are what printed pointers name."""
    lines = text.splitlines()
    used = {m.group(1) for m in re.finditer(r"\{#([a-z0-9-]+)\}", text)}
    out = []
    for line, after in zip(lines, [*lines[1:], ""], strict=True):
        if line.startswith("`") and after.startswith(": ") and not _TERM.match(line):
            spans = _SPAN.findall(line) or [line]
            words = [
                w for w in re.findall(r"[a-z0-9]+", " ".join(_PLACEHOLDER.split(spans[0])).lower()) if w not in _STOP
            ]
            base = "-".join(words[:5]) or "error"
            code, n = base, 2
            while code in used:
                code, n = f"{base}-{n}", n + 1
            used.add(code)
            line = f"{line} {{#{code}}}"
        out.append(line)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def main() -> None:
    """Print the index for the repository's docs/errors.md; ``--add-anchors`` first gives every entry
    without one an anchor, in place (after merging new entries: then regenerate the index)."""
    args = sys.argv[1:]
    anchor = "--add-anchors" in args
    args = [a for a in args if a != "--add-anchors"]
    path = Path(args[0]) if args else Path(__file__).resolve().parents[2] / "docs" / "errors.md"
    if anchor:
        path.write_text(add_anchors(path.read_text()))
        return
    sys.stdout.write(render_index(path.read_text()))


if __name__ == "__main__":
    main()


__all__ = ["FALLBACK", "Entry", "add_anchors", "code_for", "link", "parse", "pointer", "render_index"]

"""Turn a captured run of deployer (plain text, as in a CI log) into the terminal picture the manual shows.

Usage: ``python scripts/docs_run_svg.py docs/assets/runs/deploy-rolling.txt "deployer deploy --env local ..."``
writes ``docs/assets/runs/deploy-rolling.svg`` beside the capture. The colours are the ones deployer uses on a
terminal (phases bold, ``done`` green, failures red); the text is the capture, byte for byte. No web fonts:
the SVG must render offline.
"""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

from rich.console import Console
from rich.terminal_theme import MONOKAI
from rich.text import Text

STYLES = (
    (r"^==> \S+", "bold cyan"),
    (r"\bdone\b", "green"),
    (r"\b(failed|reverted|FAILED|error:)\b", "bold red"),
    (r"\b(success|OK)\b", "bold green"),
    (r"\bwarning:", "yellow"),
    (r"^\$ .*", "bold"),
)


def render(capture: Path, command: str) -> Path:
    lines = capture.read_text().rstrip("\n").splitlines()
    width = max(len(line) for line in [*lines, command]) + 2
    console = Console(record=True, width=width, force_terminal=True, color_system="truecolor", file=io.StringIO())
    for line in [f"$ {command}", *lines]:
        text = Text(line)
        for pattern, style in STYLES:
            text.highlight_regex(re.compile(pattern, re.M), style)
        console.print(text, soft_wrap=True, highlight=False)
    svg = console.export_svg(title=command, theme=MONOKAI)
    # rich points @font-face at a CDN: drop it (the manual works offline; a monospace font is enough).
    svg = re.sub(r"@font-face \{.*?\}\s*", "", svg, flags=re.S)
    target = capture.with_suffix(".svg")
    target.write_text(svg)
    return target


if __name__ == "__main__":
    print(render(Path(sys.argv[1]), sys.argv[2]))

"""The browser check of the manual (scripts/docs_check.py) finds what it claims to find, in real Chromium.

A small site is written with one fault per page (and one clean page); the check must report each fault on
its page and nothing on the clean one. The real manual is checked by scripts/docs-check.sh.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/docs-check.sh installs it)")


def _checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_check", REPO / "scripts" / "docs_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["docs_check"] = module
    spec.loader.exec_module(module)
    return module


def _page(body: str, head: str = "") -> str:
    return (
        "<!doctype html><html><head><title>t</title><link rel='icon' href='data:,'>"
        f"{head}</head><body><div class='md-content md-typeset'>{body}</div></body></html>"
    )


def _site(root: Path) -> Path:
    # The vendored Mermaid bundle: pages with a diagram load it like the real manual does.
    mermaid = "<script src='/mermaid.min.js'></script>"
    draw = "<script>mermaid.run({querySelector: 'div.mermaid'})</script>"
    pages = {
        "clean": _page(
            "<h2 id='here'>here</h2><a href='/clean/#here'>self</a><a href='/images/'>images</a>"
            "<img src='/ok.svg' alt='ok'><pre><code>short line</code></pre>"
            "<table><tr><td><code>keep_releases</code></td><td>x</td></tr></table>"
        ),
        "console": _page("<script>console.error('boom from the page')</script>"),
        "exception": _page("<script>undefinedFunction()</script>"),
        "images": _page("<img src='/missing.svg' alt='missing'>"),
        "links": _page("<a href='/nowhere/'>a</a><a href='/clean/#not-an-anchor'>b</a>"),
        "wide": _page("<pre><code style='display:block;width:300px;overflow:auto'>" + "x" * 400 + "</code></pre>"),
        "wrap": _page(
            "<table style='width:60px'><tr><td style='width:20px'><code style='word-break:break-all'>"
            "keep_releases_with_a_long_name</code></td><td>meaning</td></tr></table>"
        ),
        "external": _page("<img src='http://127.0.0.2:9/pixel.png' alt='elsewhere'>"),
        "mermaid": _page(
            "<pre class='mermaid'>flowchart LR\n  a --> </pre><div class='mermaid'>flowchart LR\n  a --> b</div>",
            mermaid,
        )
        + draw,
    }
    site = root / "site"
    for name, html in pages.items():
        (site / name).mkdir(parents=True)
        (site / name / "index.html").write_text(html)
    (site / "ok.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'></svg>")
    shutil.copy(REPO / "docs" / "assets" / "javascripts" / "mermaid.min.js", site / "mermaid.min.js")
    return site


def test_the_browser_check_reports_each_fault_on_its_page_and_nothing_on_a_clean_page(tmp_path: Path) -> None:
    checker = _checker()
    site = _site(tmp_path)
    assert CHROMIUM is not None
    problems = checker.check(site, CHROMIUM, None)
    text = "\n".join(problems)

    def on(page: str) -> list[str]:
        return [p for p in problems if p.startswith(f"/{page}/:")]

    assert on("clean") == [], text
    assert any("console error: boom from the page" in p for p in on("console")), text
    assert any("uncaught exception" in p and "undefinedFunction" in p for p in on("exception")), text
    assert any("image does not load: /missing.svg" in p for p in on("images")), text
    assert any("404" in p and "missing.svg" in p for p in on("images")), text
    assert any("broken link /nowhere/" in p for p in on("links")), text
    assert any("broken anchor /clean/#not-an-anchor" in p for p in on("links")), text
    assert any("code block cut off" in p for p in on("wide")), text
    assert any("keep_releases_with_a_long_name` wraps mid-word" in p for p in on("wrap")), text
    assert any("requests http://127.0.0.2:9/pixel.png" in p for p in on("external")), text
    assert any("Mermaid diagram 1:" in p for p in on("mermaid")), text


def test_the_manual_pages_are_all_found() -> None:
    checker = _checker()
    site = REPO / "site"
    if not (site / "index.html").is_file():
        pytest.skip("site/ is not built (scripts/test.sh builds it with mkdocs build --strict)")
    pages = checker.pages_of(site)
    for page in ("/", "/concepts/", "/architecture/", "/errors/", "/ci/", "/upgrading/", "/completion/"):
        assert page in pages

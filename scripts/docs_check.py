"""Check the built manual (site/) in a real browser: headless Chromium driven over its DevTools protocol.

Usage: ``python scripts/docs_check.py [--site site] [--chromium /usr/bin/chromium] [--screenshots DIR]``

Serves ``site/`` on 127.0.0.1 with ``python -m http.server``, loads every page at 1280x900 and fails
(exit 1, one line per problem) on:

* a console error or an uncaught exception (this includes Mermaid failing to draw a diagram);
* a request that fails or answers >= 400, or any request leaving 127.0.0.1 (the manual must work offline);
* an image (``<img>``, SVG included) that does not load;
* a Mermaid source that does not parse, or a diagram that was not drawn;
* a code block wider than the content column (it would be cut off: the reader has to scroll sideways);
* a key in the first column of a table broken over two lines (``keep_rele`` / ``ases``);
* an internal link, or its ``#anchor``, that does not resolve to a page of the site.

With ``--screenshots DIR`` it also saves a PNG of every diagram (``<page>-<n>.png``) and of each page
(``<page>.png``), for a person to look at. Only the standard library and ``websocket-client``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import websocket

WIDTH, HEIGHT = 1280, 900
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    f"--window-size={WIDTH},{HEIGHT}",
)

# Run in the page after load: everything the check needs to know about it, as one JSON value.
INSPECT = r"""
(async () => {
  const deadline = Date.now() + 20000;
  const html = await (await fetch(location.href)).text();
  const sources = [...new DOMParser().parseFromString(html, "text/html").querySelectorAll("pre.mermaid")]
    .map(p => p.textContent);
  // Material replaces each pre.mermaid with a div.mermaid holding the drawn SVG (in a closed shadow root).
  const drawn = () => [...document.querySelectorAll("div.mermaid")].filter(d => d.offsetHeight > 20);
  while (drawn().length < sources.length && Date.now() < deadline) {
    await new Promise(r => setTimeout(r, 100));
  }
  const parseErrors = [];
  for (const [i, src] of sources.entries()) {
    try { await window.mermaid.parse(src); } catch (e) { parseErrors.push(`diagram ${i + 1}: ${e.message || e}`); }
  }
  await Promise.all([...document.images].map(img => img.complete ? null :
    new Promise(r => { img.onload = img.onerror = r; setTimeout(r, 5000); })));
  const rect = el => { const b = el.getBoundingClientRect();
    return {x: b.left + scrollX, y: b.top + scrollY, width: b.width, height: b.height}; };
  return JSON.stringify({
    title: document.title,
    mermaidSources: sources.length,
    diagrams: drawn().map(rect),
    parseErrors,
    brokenImages: [...document.images].filter(i => !i.complete || i.naturalWidth === 0)
      .map(i => i.getAttribute("src")),
    overflowingCode: [...document.querySelectorAll(".md-content pre > code")]
      .filter(c => c.scrollWidth > c.clientWidth + 1)
      .map(c => `${c.textContent.split("\n").reduce((a, b) => (b.length > a.length ? b : a), "").trim()}`
        + ` (${c.scrollWidth}px in ${c.clientWidth}px)`),
    wrappedKeys: [...document.querySelectorAll(".md-typeset table td:first-child code")]
      .filter(c => c.getClientRects().length > 1).map(c => c.textContent),
    links: [...document.querySelectorAll("a[href]")].map(a => a.href),
    height: document.documentElement.scrollHeight,
  });
})()
"""


class _Ids(HTMLParser):
    """Collects every ``id`` (and legacy ``name``) attribute of a page: the anchors a link may target."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in ("id", "name") and value:
                self.ids.add(value)


class Page:
    """A DevTools connection to one browser tab: send commands, collect the events that matter."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.links: list[str] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.settimeout(90)
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
            if "method" in message:
                self.events.append(message)

    def wait_for(self, event: str, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(e["method"] == event for e in self.events):
                return
            self.ws.settimeout(max(0.1, end - time.monotonic()))
            with contextlib.suppress(websocket.WebSocketTimeoutException):
                message = json.loads(self.ws.recv())
                if "method" in message:
                    self.events.append(message)
        raise TimeoutError(f"no {event} within {timeout:g}s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout: float = 30.0) -> bytes:
    end = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return bytes(response.read())
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


@contextlib.contextmanager
def _process(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` in a process group of its own, and end that whole group afterwards.

    Chromium starts helper processes (renderers, zygotes) that may outlive the main one by a moment and
    still write into the profile directory: ending the group, and waiting for it, makes cleanup safe.
    """
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; give its helpers a moment to follow before the group is killed for good.
            end = time.monotonic() + 5
            while time.monotonic() < end and _group_alive(proc.pid):
                time.sleep(0.05)
            if not _group_alive(proc.pid):
                break


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def pages_of(site: Path) -> list[str]:
    """Every page of the built site, as a URL path (``/``, ``/concepts/``, ...)."""
    paths = []
    for html in sorted(site.rglob("index.html")):
        rel = html.parent.relative_to(site).as_posix()
        paths.append("/" if rel == "." else f"/{rel}/")
    return paths


def _target_file(site: Path, path: str) -> Path | None:
    candidate = site / urllib.parse.unquote(path).lstrip("/")
    if candidate.is_dir():
        candidate = candidate / "index.html"
    return candidate if candidate.is_file() else None


def check(site: Path, chromium: str, screenshots: Path | None, *, verbose: bool = False) -> list[str]:
    """Load every page of ``site`` in Chromium; return the problems found (empty: all good)."""
    problems: list[str] = []
    http_port = _free_port()
    origin = f"http://127.0.0.1:{http_port}"
    ids_cache: dict[Path, set[str]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="docs-check-", ignore_cleanup_errors=True) as profile,
        _process(
            [sys.executable, "-m", "http.server", str(http_port), "--bind", "127.0.0.1", "--directory", str(site)]
        ),
        _process([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0"]),
    ):
        _wait_http(f"{origin}/")
        port_file = Path(profile) / "DevToolsActivePort"
        end = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > end:
                return [f"{chromium} did not open its DevTools port within 60s"]
            time.sleep(0.1)
        devtools = int(port_file.read_text().split()[0])
        request = urllib.request.Request(f"http://127.0.0.1:{devtools}/json/new?about:blank", method="PUT")
        target = json.loads(_wait_http_request(request))
        page = Page(target["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.call(f"{domain}.enable")
        page.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)
        for path in pages_of(site):
            started = time.monotonic()
            problems.extend(_check_page(page, origin, path, screenshots))
            if verbose:
                print(f"docs-check: {path} {time.monotonic() - started:.1f}s", file=sys.stderr)
            for link in page.links:
                problems.extend(_check_link(site, origin, path, link, ids_cache))
    return problems


def _wait_http_request(request: urllib.request.Request) -> bytes:
    end = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return bytes(response.read())
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


def _check_page(page: Page, origin: str, path: str, screenshots: Path | None) -> list[str]:
    problems: list[str] = []
    page.events.clear()
    page.call("Page.navigate", url=origin + path)
    page.wait_for("Page.loadEventFired")
    result = page.call("Runtime.evaluate", expression=INSPECT, awaitPromise=True, returnByValue=True, timeout=60000)
    if "exceptionDetails" in result:
        return [f"{path}: the check's own script failed: {result['exceptionDetails'].get('text')}"]
    info = json.loads(result["result"]["value"])
    page.links = info["links"]
    for event in page.events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            problems.append(f"{path}: console error: {text[:300]}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            problems.append(f"{path}: uncaught exception: {text[:300]}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            problems.append(f"{path}: browser error: {entry.get('text', '')[:200]} {entry.get('url', '')}")
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if url.startswith(("http:", "https:", "ws:", "wss:")) and not url.startswith(origin):
                problems.append(f"{path}: requests {url} (the manual must not load anything from elsewhere)")
        elif method == "Network.responseReceived" and params.get("response", {}).get("status", 200) >= 400:
            problems.append(f"{path}: {params['response']['status']} for {params['response'].get('url')}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            problems.append(f"{path}: a request failed: {params.get('errorText')}")
    problems.extend(f"{path}: image does not load: {src}" for src in info["brokenImages"])
    problems.extend(f"{path}: Mermaid {error}" for error in info["parseErrors"])
    if len(info["diagrams"]) != info["mermaidSources"]:
        problems.append(f"{path}: {info['mermaidSources']} Mermaid diagram(s), {len(info['diagrams'])} drawn")
    problems.extend(f"{path}: code block cut off at {WIDTH}px: {line}" for line in info["overflowingCode"])
    problems.extend(f"{path}: `{key}` wraps mid-word in the first column of a table" for key in info["wrappedKeys"])
    if screenshots is not None:
        name = path.strip("/").replace("/", "-") or "index"
        for index, clip in enumerate(info["diagrams"], start=1):
            _screenshot(page, screenshots / f"{name}-{index}.png", {**clip, "scale": 1})
        full = {"x": 0, "y": 0, "width": WIDTH, "height": min(info["height"], 8000), "scale": 1}
        _screenshot(page, screenshots / f"{name}.png", full)
    return problems


def _screenshot(page: Page, target: Path, clip: dict[str, float]) -> None:
    shot = page.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
    target.write_bytes(base64.b64decode(shot["data"]))


def _check_link(site: Path, origin: str, path: str, link: str, ids_cache: dict[Path, set[str]]) -> list[str]:
    if not link.startswith(origin):
        return []  # external links are not followed (no network here); mkdocs --strict checks the Markdown
    parsed = urllib.parse.urlsplit(link)
    target = _target_file(site, parsed.path)
    if target is None:
        return [f"{path}: broken link {parsed.path}"]
    if parsed.fragment and target.suffix == ".html":
        if target not in ids_cache:
            parser = _Ids()
            parser.feed(target.read_text(errors="replace"))
            ids_cache[target] = parser.ids
        if urllib.parse.unquote(parsed.fragment) not in ids_cache[target]:
            return [f"{path}: broken anchor {parsed.path}#{parsed.fragment}"]
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--site", type=Path, default=Path("site"))
    parser.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    parser.add_argument("--screenshots", type=Path)
    parser.add_argument("--verbose", action="store_true", help="print how long each page took")
    args = parser.parse_args()
    if args.screenshots is not None:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    pages = pages_of(args.site)
    if not pages:
        print(f"docs-check: no pages under {args.site}: run mkdocs build first", file=sys.stderr)
        return 1
    problems = sorted(set(check(args.site.resolve(), args.chromium, args.screenshots, verbose=args.verbose)))
    for problem in problems:
        print(f"docs-check: {problem}", file=sys.stderr)
    verdict = f"{len(problems)} problem(s)" if problems else "OK"
    print(f"docs-check: {len(pages)} pages in Chromium, {verdict} ({time.monotonic() - started:.1f}s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

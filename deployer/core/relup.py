"""Hot code upgrades, the pure part: what a release's relup allows, what a running node reports, and
whether a host can be upgraded in place.

A release built with ``rebar3 relup`` (relx) carries ``releases/<vsn>/relup``: the instructions
``release_handler`` follows to go from each listed older version to ``<vsn>`` (up) and back (down). A
host can be upgraded in place when its node runs, reports (over rpc) a version the relup upgrades from,
and is not already running the new version. Everything here is decided from data: the tarball read
locally and the node's answer to :func:`deployer.remote.relup.node_release`.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from deployer.core.history import History

__all__ = [
    "HOT_DOWNGRADE",
    "HOT_UPGRADE",
    "NodeRelease",
    "Relup",
    "TermError",
    "hot_refusal",
    "hot_root",
    "parse_node_release",
    "parse_term",
    "read_relup",
]


HOT_UPGRADE = "hot-upgrade"
"""The ``revisions.log`` event of a release installed in a running node (it kept its OS pid)."""
HOT_DOWNGRADE = "hot-downgrade"
"""The ``revisions.log`` event of a rollback done in the running node through the relup's down instructions."""


class TermError(ValueError):
    """Text that is not an Erlang term this module can read."""


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>"(?:\\.|[^"\\])*")
    | (?P<qatom>'(?:\\.|[^'\\])*')
    | (?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
    | (?P<atom>[a-z][A-Za-z0-9_@]*)
    | (?P<punct><<|>>|[{}\[\],|.])
    )""",
    re.X,
)

Term = object
"""A parsed term: str (string), Atom, int/float, tuple (Erlang tuple), list (Erlang list)."""


class Atom(str):
    """An Erlang atom (a ``str`` subclass, so it compares with plain strings)."""


def _tokens(source: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = re.sub(r"%[^\n]*", "", source)  # comments
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None:
            raise TermError(f"unexpected text at offset {pos}: {text[pos : pos + 20]!r}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


def parse_term(source: str) -> Term:
    """Parse one Erlang term (optionally ended by a full stop): strings become ``str``, atoms :class:`Atom`,
    tuples ``tuple``, lists ``list``. Raises :class:`TermError` on anything else (pids, funs, maps)."""
    tokens = _tokens(source)
    pos = 0

    def term() -> Term:
        nonlocal pos
        if pos >= len(tokens):
            raise TermError("the term ends early")
        kind, value = tokens[pos]
        pos += 1
        if kind == "string":
            return bytes(value[1:-1], "utf-8").decode("unicode_escape")
        if kind == "qatom":
            return Atom(value[1:-1])
        if kind == "atom":
            return Atom(value)
        if kind == "number":
            return float(value) if "." in value or "e" in value.lower() else int(value)
        if value in ("{", "["):
            close = "}" if value == "{" else "]"
            items: list[Term] = []
            if tokens[pos : pos + 1] == [("punct", close)]:
                pos += 1
            else:
                while True:
                    items.append(term())
                    if pos >= len(tokens):
                        raise TermError(f"missing {close}")
                    sep = tokens[pos][1]
                    pos += 1
                    if sep == close:
                        break
                    if sep == "|" and close == "]":
                        items.append(term())
                        if pos >= len(tokens) or tokens[pos][1] != "]":
                            raise TermError("missing ] after a list tail")
                        pos += 1
                        break
                    if sep != ",":
                        raise TermError(f"expected , or {close}, got {sep!r}")
            return tuple(items) if close == "}" else items
        raise TermError(f"unexpected {value!r}")

    result = term()
    if pos < len(tokens) and tokens[pos] == ("punct", "."):
        pos += 1
    if pos != len(tokens):
        raise TermError(f"unexpected text after the term: {tokens[pos][1]!r}")
    return result


@dataclass(frozen=True)
class Relup:
    """The upgrade instructions a release carries (``releases/<version>/relup``)."""

    version: str
    up_from: tuple[str, ...]
    """Versions a running node can be upgraded from."""
    down_to: tuple[str, ...]
    """Versions a running node of ``version`` can be downgraded to (what a rollback can use)."""


def _versions(entries: object) -> tuple[str, ...]:
    if not isinstance(entries, list):
        raise TermError("expected a list of {Vsn, Descr, Instructions}")
    out = []
    for entry in entries:
        if not (isinstance(entry, tuple) and entry and isinstance(entry[0], str) and not isinstance(entry[0], Atom)):
            raise TermError("expected {Vsn, Descr, Instructions} with Vsn a string")
        out.append(entry[0])
    return tuple(out)


def parse_relup(text: str) -> Relup:
    """``{Vsn, [{UpFromVsn, Descr, Instrs}], [{DownToVsn, Descr, Instrs}]}.`` -> :class:`Relup`."""
    term = parse_term(text)
    if not (isinstance(term, tuple) and len(term) == 3 and isinstance(term[0], str)):
        raise TermError("a relup is {Vsn, UpFrom, DownTo}")
    return Relup(version=term[0], up_from=_versions(term[1]), down_to=_versions(term[2]))


def read_relup(tarball: Path, version: str) -> Relup | None:
    """The relup ``tarball`` carries for ``version`` (``releases/<version>/relup``), or None when it has none.

    Raises :class:`TermError` (with the member's name) when the file is there but unreadable.
    """
    wanted = f"releases/{version}/relup"
    with tarfile.open(tarball, "r:*") as tar:
        for member in tar:
            if member.isfile() and member.name.lstrip("./") == wanted:
                handle = tar.extractfile(member)
                if handle is None:
                    return None
                try:
                    relup = parse_relup(handle.read().decode("utf-8", "replace"))
                except TermError as exc:
                    raise TermError(f"{tarball.name}: {wanted}: {exc}") from None
                if relup.version != version:
                    raise TermError(f"{tarball.name}: {wanted} is the relup of {relup.version}, not {version}")
                return relup
    return None


@dataclass(frozen=True)
class NodeRelease:
    """What a running node says about itself (:func:`deployer.remote.relup.node_release`)."""

    root: str
    """The node's ``code:root_dir()``: the release directory it was started from."""
    os_pid: int
    releases: tuple[tuple[str, str], ...]
    """``release_handler:which_releases()``: (version, status) pairs; status is permanent, current, old or
    unpacked."""
    down_to: tuple[str, ...] = ()
    """Versions the running release's relup (in the node's root) can downgrade to."""

    @property
    def running(self) -> str | None:
        """The version the node runs: the installed (``current``) one, else the ``permanent`` one."""
        for wanted in ("current", "permanent"):
            for vsn, status in self.releases:
                if status == wanted:
                    return vsn
        return None

    @property
    def permanent(self) -> str | None:
        return next((vsn for vsn, status in self.releases if status == "permanent"), None)

    @property
    def root_release(self) -> str:
        """The release id of the node's root (``releases/<id>`` under deploy_to): its last path component."""
        return self.root.rstrip("/").rsplit("/", 1)[-1]


def parse_node_release(output: str) -> NodeRelease | None:
    """The node's answer (printed by relx's ``eval``), or None when there is none (no node, no answer)."""
    start = output.find("{deployer_node,")
    if start < 0:
        return None
    try:
        term = parse_term(output[start:].strip())
    except TermError:
        return None
    if not (isinstance(term, tuple) and len(term) == 5 and isinstance(term[1], str) and isinstance(term[2], str)):
        return None
    pairs, down = term[3], term[4]
    if not isinstance(pairs, list):
        return None
    releases = tuple(
        (str(p[0]), str(p[1])) for p in pairs if isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
    )
    try:
        pid = int(term[2])
    except ValueError:
        return None
    downs = tuple(v for v in down if isinstance(v, str)) if isinstance(down, list) else ()
    return NodeRelease(root=term[1], os_pid=pid, releases=releases, down_to=downs)


def hot_refusal(
    *,
    flavour: str,
    relup: Relup | None,
    version: str,
    node: NodeRelease | None,
    node_error: str | None = None,
) -> str | None:
    """Why this host cannot be upgraded in place to ``version`` (an operator's sentence), or None when it can."""
    if flavour != "rebar3":
        return f"hot upgrades need a relx (rebar3) release; app.flavour is {flavour}"
    if relup is None:
        return f"the release {version} carries no relup (releases/{version}/relup): it has no upgrade instructions"
    if node is None:
        why = f": {node_error}" if node_error else ""
        return f"no running node answered with its release version{why}"
    running = node.running
    if running is None:
        return "the running node reports no installed release (release_handler:which_releases/0)"
    if running == version:
        return f"the node already runs {version}"
    if running not in relup.up_from:
        return (
            f"the node runs {running}, and the relup of {version} upgrades only from "
            f"{', '.join(relup.up_from) or 'no version'}"
        )
    if node.permanent != running:
        return f"the node runs {running}, installed but not made permanent: finish or undo that upgrade first"
    return None


def hot_root(history: History, current: str | None) -> str | None:
    """The release directory a hot-upgraded node of ``current`` runs from, when the host's last recorded
    change is a successful hot upgrade to ``current`` in an older root; None otherwise. (A restart is not
    recorded: after one the node runs from ``current`` itself, whatever this says.)"""
    changes = [r for r in history.revisions if r.event != "migrate"]
    if not changes or current is None:
        return None
    last = changes[-1]
    if last.event == HOT_UPGRADE and last.ok and last.release == current and last.root and last.root != current:
        return last.root
    return None

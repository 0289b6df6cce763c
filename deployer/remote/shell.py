"""Remote commands as data: a :class:`Script` is built by pure functions and rendered later.

Quoting and secret masking happen only when rendering. A template marks every
interpolated value with ``{{name}}``; each value is ``shlex.quote``-d at render
time, so nothing from an inventory, a tarball or the operator's environment is
ever pasted into a shell line unquoted. A :class:`Secret` renders as its value
only for the transport (the script travels on the SSH channel's stdin, never in
argv) and as ``********`` everywhere else: ``--dry-run``, ``--verbose``, errors.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pydantic import SecretStr

MASK = "********"

ENV_FILE_HEADER = "# deployer env 2: NAME=value lines, backslash and newline escaped; read by deployer's launcher\n"
"""First line of every env file; the launcher refuses a file without it (older deployers wrote shell)."""
_PLACEHOLDER = re.compile(r"\{\{([a-z_][a-z0-9_]*)\}\}")


@dataclass(frozen=True)
class Secret:
    """A value that must never appear in output. ``label`` names it in masked renderings."""

    label: str
    value: SecretStr = field(repr=False)

    def reveal(self) -> str:
        return self.value.get_secret_value()


@dataclass(frozen=True)
class Quoted:
    """A value to be single-quoted at render time. ``value`` may be a secret or built from secrets."""

    value: str | Secret | SecretText


@dataclass(frozen=True)
class SecretText:
    """Text assembled from plain strings and secrets (e.g. an env file), masked piecewise."""

    parts: tuple[str | Secret, ...]

    def render(self, *, reveal: bool) -> str:
        return "".join(part if isinstance(part, str) else (part.reveal() if reveal else MASK) for part in self.parts)

    @property
    def secrets(self) -> tuple[Secret, ...]:
        return tuple(part for part in self.parts if isinstance(part, Secret))


Value = str | int | float | Secret | SecretText
Part = str | Quoted


def _render_value(value: str | Secret | SecretText, *, reveal: bool) -> str:
    if isinstance(value, Secret):
        return shlex.quote(value.reveal()) if reveal else MASK
    if isinstance(value, SecretText):
        return shlex.quote(value.render(reveal=reveal))
    return shlex.quote(value)


def template(text: str, **values: Value) -> tuple[Part, ...]:
    """Split ``text`` at ``{{name}}`` placeholders; every value becomes a quoted part.

    Lists are not accepted on purpose: build them with :func:`words`. A placeholder without a value,
    or a value without a placeholder, is a programming error and raises immediately.
    """
    parts: list[Part] = []
    used: set[str] = set()
    pos = 0
    for match in _PLACEHOLDER.finditer(text):
        parts.append(text[pos : match.start()])
        name = match.group(1)
        if name not in values:
            raise KeyError(f"template placeholder {{{{{name}}}}} has no value")
        used.add(name)
        value = values[name]
        parts.append(Quoted(str(value) if isinstance(value, int | float) else value))
        pos = match.end()
    parts.append(text[pos:])
    unused = set(values) - used
    if unused:
        raise KeyError(f"template values never used: {', '.join(sorted(unused))}")
    return tuple(p for p in parts if p != "")


def words(values: Iterable[str]) -> tuple[Part, ...]:
    """Space-separated quoted words (e.g. a list of paths for ``rm -rf``)."""
    parts: list[Part] = []
    for value in values:
        if parts:
            parts.append(" ")
        parts.append(Quoted(value))
    return tuple(parts)


@dataclass(frozen=True)
class Script:
    """A POSIX ``sh`` script run on one host over one SSH session.

    ``stdin`` scripts are piped to ``sh -s`` (secrets allowed: they never reach argv). An ``argv`` script
    (``stdin=False``) is passed as ``sh -c <script>`` so the channel's stdin stays free for data, e.g. an
    upload; it must not contain secrets.
    """

    name: str
    parts: tuple[Part, ...]
    timeout: float | None = None
    stdin: bool = True
    run_id: str | None = None
    """Set on scripts that run detached on the host: where their outcome can be read again."""

    def __post_init__(self) -> None:
        if not self.stdin and self.secrets:
            raise ValueError(f"script {self.name!r} passes secrets in argv")

    def render(self, *, reveal: bool = False) -> str:
        """The script text; secrets are masked unless ``reveal`` (used only by the transport)."""
        return "".join(
            part if isinstance(part, str) else _render_value(part.value, reveal=reveal) for part in self.parts
        )

    @property
    def secrets(self) -> tuple[Secret, ...]:
        found: list[Secret] = []
        for part in self.parts:
            if isinstance(part, Quoted):
                if isinstance(part.value, Secret):
                    found.append(part.value)
                elif isinstance(part.value, SecretText):
                    found.extend(part.value.secrets)
        return tuple(found)

    def remote_command(self) -> str:
        """What goes into the SSH exec request (and so into the remote process list)."""
        if self.stdin:
            return "sh -s"
        return "sh -c " + shlex.quote(self.render(reveal=False))


def join(*chunks: Iterable[Part]) -> tuple[Part, ...]:
    """Concatenate template chunks into one part sequence."""
    out: list[Part] = []
    for chunk in chunks:
        out.extend(chunk)
    return tuple(out)


def encode_env_value(value: str) -> str:
    """One env file value on one line: ``\\`` becomes ``\\\\`` and a newline ``\\n`` (the launcher decodes)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def env_file_text(values: Mapping[str, str | Secret]) -> SecretText:
    """The node's env file: :data:`ENV_FILE_HEADER`, then ``NAME=value`` lines (secrets kept as masked parts).

    Names must be shell identifiers (the inventory checks them); values may hold any character but NUL.
    """
    parts: list[str | Secret] = [ENV_FILE_HEADER]
    for name, value in values.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"{name!r} is not an environment variable name")
        if isinstance(value, Secret):
            parts.append(f"{name}=")
            parts.append(Secret(value.label, SecretStr(encode_env_value(value.reveal()))))
            parts.append("\n")
        else:
            parts.append(f"{name}={encode_env_value(value)}\n")
    return SecretText(tuple(parts))

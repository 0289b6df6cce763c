"""The release artifact: build it, find the tarball, read name and version, hash and validate it.

Validation happens locally before anything is uploaded and names the offending
member: absolute paths, ``..`` components, links escaping the release, device
files and FIFOs, setuid/setgid bits, a missing ``bin/<app>``, or a version that
differs from the one the build reported.

Links are judged the way extraction will see them, not by their text: a model of
the release directory (:class:`ExtractionCheck`) replays the members in order,
following every symlink created so far, so a chain such as ``a -> .``,
``a/b -> ..`` is refused although each link looks harmless on its own.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import stat
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NoReturn

from deployer.core import compat
from deployer.core.paths import VERSION_RE
from deployer.core.provenance import Source
from deployer.errors import ArtifactError


@dataclass(frozen=True)
class Artifact:
    """A validated release tarball."""

    path: Path
    name: str
    version: str
    sha256: str
    size: int
    unpacked_size: int = 0
    erts_version: str | None = None
    source: Source | None = None
    """The git commit it was built from (set by whoever built it; None: not known)."""
    migrations: tuple[str, ...] | None = None
    """File names of the migrations it ships (None: not read; :func:`inspect_tarball` reads them)."""
    requirements: compat.Requirements | None = None
    """What its native files need from a host (None: not read; :func:`inspect_tarball` reads it)."""

    @property
    def short_sha(self) -> str:
        return self.sha256[:12]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _normalise(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


# The kernel gives up after 40 symlinks in one lookup (ELOOP); the model does the same.
MAX_SYMLINKS = 40


class _Escape(Exception):
    """A lookup left the release directory (or hit an absolute symlink)."""


class _Loop(Exception):
    """A lookup followed more than MAX_SYMLINKS symlinks."""


@dataclass
class _Node:
    """One entry of the modelled release directory."""

    kind: str  # "dir", "file" or "link"
    target: str = ""
    children: dict[str, _Node] = field(default_factory=dict)


@dataclass
class ExtractionCheck:
    """The release directory as ``tar -x`` builds it, member by member, to judge where each member lands.

    Paths are resolved as the kernel resolves them: symlinks in every component but the last are
    followed (the last too for link targets), ``..`` is physical, a component that does not exist
    (yet) is taken literally. Any lookup that climbs above the release directory, or meets an
    absolute symlink, escapes. GNU tar replaces an existing entry of another kind (a symlink by a
    directory, a file by a symlink); the model does the same, and refuses replacing a directory,
    which tar would fail on or merge in ways not worth modelling.
    """

    where: str
    root: _Node = field(default_factory=lambda: _Node("dir"))

    def add(self, member: tarfile.TarInfo) -> None:
        """Record ``member`` as extraction would; raise :class:`ArtifactError` if it is unsafe."""
        raw = member.name
        name = _normalise(raw)
        if raw.startswith("/") or name.startswith("/"):
            self._refuse(f"member {raw!r} has an absolute path")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            self._refuse(f"member {raw!r} contains '..'")
        if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
            self._refuse(f"member {raw!r} is a device file or FIFO")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            self._refuse(f"member {raw!r} has an unsupported type {member.type!r}")
        if member.mode & (stat.S_ISUID | stat.S_ISGID):
            self._refuse(f"member {raw!r} has the setuid/setgid bit")
        if not parts:
            if not member.isdir():
                self._refuse(f"member {raw!r} would replace the release directory itself")
            return
        try:
            parent = self._resolve((), parts[:-1])
        except _Escape:
            self._refuse(f"member {raw!r} would be written outside the release through a symlinked directory")
        except _Loop:
            self._refuse(f"member {raw!r} is reached through a symlink loop")
        directory = self._make_dirs(raw, parent)
        leaf = parts[-1]
        existing = directory.children.get(leaf)
        if existing is not None and existing.kind == "dir" and not member.isdir():
            self._refuse(f"member {raw!r} would replace a directory of the same name")
        if member.isdir():
            if existing is None or existing.kind != "dir":
                directory.children[leaf] = _Node("dir")
        elif member.issym():
            self._check_symlink(raw, parent, member.linkname)
            directory.children[leaf] = _Node("link", target=member.linkname)
        elif member.islnk():
            directory.children[leaf] = self._hard_link_source(raw, member.linkname)
        else:
            directory.children[leaf] = _Node("file")

    def finish(self) -> None:
        """Check every symlink against the complete tree: a link may dangle while it is added and
        point elsewhere once later members exist."""
        for path, node in self._links((), self.root):
            self._check_symlink("/".join(path), path[:-1], node.target)

    def _check_symlink(self, raw: str, parent: tuple[str, ...], target: str) -> None:
        try:
            self._resolve(parent, target.split("/") if not target.startswith("/") else None)
        except _Escape:
            self._refuse(f"symlink {raw!r} -> {target!r} points outside the release")
        except _Loop:
            self._refuse(f"symlink {raw!r} -> {target!r} is part of a symlink loop")

    def _hard_link_source(self, raw: str, linkname: str) -> _Node:
        source = _normalise(linkname)
        parts = [p for p in source.split("/") if p not in ("", ".")]
        if linkname.startswith("/") or ".." in parts or not parts:
            self._refuse(f"hard link {raw!r} -> {linkname!r} points outside the release")
        try:
            # link(2) follows symlinks in the directories of the source, not the source itself.
            parent = self._resolve((), parts[:-1])
        except (_Escape, _Loop):
            self._refuse(f"hard link {raw!r} -> {linkname!r} points outside the release")
        directory = self._node(parent)
        node = directory.children.get(parts[-1]) if directory is not None and directory.kind == "dir" else None
        if node is None:
            self._refuse(f"hard link {raw!r} -> {linkname!r} refers to a member not extracted before it")
        if node.kind != "file":
            self._refuse(f"hard link {raw!r} -> {linkname!r} must refer to a regular file, not a {node.kind}")
        return node

    def _resolve(
        self, start: tuple[str, ...], parts: list[str] | None, budget: list[int] | None = None
    ) -> tuple[str, ...]:
        """Physical path (components below the release directory) of ``parts`` looked up from ``start``,
        following every symlink met; ``None`` stands for an absolute path."""
        if parts is None:
            raise _Escape
        budget = budget if budget is not None else [MAX_SYMLINKS]
        current = list(start)
        for part in parts:
            if part in ("", "."):
                continue
            if part == "..":
                if not current:
                    raise _Escape
                current.pop()
                continue
            node = self._node(tuple(current))
            child = node.children.get(part) if node is not None and node.kind == "dir" else None
            if child is not None and child.kind == "link":
                budget[0] -= 1
                if budget[0] < 0:
                    raise _Loop
                target = child.target
                current = list(
                    self._resolve(tuple(current), target.split("/") if not target.startswith("/") else None, budget)
                )
            else:
                current.append(part)
        return tuple(current)

    def _make_dirs(self, raw: str, path: tuple[str, ...]) -> _Node:
        """The directory at ``path``, created with its missing parents as tar creates them."""
        node = self.root
        for part in path:
            child = node.children.setdefault(part, _Node("dir"))
            if child.kind != "dir":
                # tar fails on such a member ("Not a directory"); refusing is simpler than modelling that.
                self._refuse(f"member {raw!r} is inside {part!r}, which is not a directory")
            node = child
        return node

    def _node(self, path: tuple[str, ...]) -> _Node | None:
        node: _Node | None = self.root
        for part in path:
            if node is None or node.kind != "dir":
                return None
            node = node.children.get(part)
        return node

    def _links(self, path: tuple[str, ...], node: _Node) -> list[tuple[tuple[str, ...], _Node]]:
        found: list[tuple[tuple[str, ...], _Node]] = []
        for name, child in node.children.items():
            if child.kind == "link":
                found.append(((*path, name), child))
            elif child.kind == "dir":
                found.extend(self._links((*path, name), child))
        return found

    def _refuse(self, message: str) -> NoReturn:
        raise ArtifactError(f"{self.where}: {message}")


class _HashingReader:
    """A file read once, front to back, hashed as it goes: the gzip reader on top sees ordinary reads."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self.digest.update(data)
        return data

    def seek(self, offset: int, whence: int = 0, /) -> int:
        # Only a gzip rewind would seek, and the reads are never rewound: hashing relies on that.
        raise OSError("the tarball is read once, front to back")

    def finish(self) -> str:
        """Hash what nobody read (the gzip trailer, padding after the archive) and return the digest."""
        while self.read(1 << 20):
            pass
        return self.digest.hexdigest()


def is_migration_file(name: str) -> bool:
    """``lib/<app>-<vsn>/priv/<repo>/migrations/<file>``: a migration the release ships."""
    parts = name.split("/")
    return len(parts) >= 5 and parts[0] == "lib" and parts[2] == "priv" and parts[-2] == "migrations"


def inspect_tarball(path: Path | str, app: str, *, expected_version: str | None = None) -> Artifact:
    """Validate ``path`` as a release of ``app`` and return its identity. Raises :class:`ArtifactError`.

    One pass over the file: it is hashed, decompressed and read member by member once, and everything
    the plan needs later (the migration files it ships, what its native files need from a host) is
    collected on the way, so planning never reads the tarball again.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise ArtifactError(f"{path}: no such tarball")
    where = path.name
    start_erl: str | None = None
    release_dirs: set[str] = set()
    erts: str | None = None
    has_bin = False
    unpacked = 0
    migrations: set[str] = set()
    natives: dict[str, compat.ElfInfo] = {}
    try:
        with path.open("rb") as raw:
            hashing = _HashingReader(raw)
            # A gzip reader handles multi-member files (`cat a.gz b.gz`) as GNU tar does; tarfile's own
            # stream mode would stop at the end of the first member.
            with (
                gzip.GzipFile(fileobj=hashing, mode="rb") as unzipped,
                tarfile.open(fileobj=unzipped, mode="r|") as tar,
            ):
                check = ExtractionCheck(where)
                for member in tar:
                    raw_name = member.name
                    name = _normalise(raw_name)
                    unpacked += max(member.size, 0) + 512
                    check.add(member)
                    if name == f"bin/{app}" and (member.isfile() or member.issym()):
                        has_bin = True
                    elif name == "releases/start_erl.data" and member.isfile():
                        handle = tar.extractfile(member)
                        if handle is not None:
                            start_erl = handle.read(4096).decode("utf-8", "replace")
                    elif member.isfile() and is_migration_file(name):
                        migrations.add(name.rsplit("/", 1)[-1])
                    elif compat.is_native_member(member, name):
                        handle = tar.extractfile(member)
                        info = compat.read_elf(handle.read()) if handle is not None else None
                        if info is not None:
                            natives[name] = info
                    parts = name.split("/")
                    if len(parts) >= 2 and parts[0] == "releases" and member.isdir():
                        release_dirs.add(parts[1])
                    if len(parts) >= 1 and parts[0].startswith("erts-"):
                        erts = parts[0].removeprefix("erts-")
                check.finish()
            sha256 = hashing.finish()
    except gzip.BadGzipFile as exc:
        raise ArtifactError(
            f"{where}: not a readable tarball: it is not gzip-compressed ({exc})",
            hint="the hosts extract releases with `tar -xz`: ship the .tar.gz your release tool writes",
        ) from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ArtifactError(f"{where}: not a readable tarball: {exc}") from None
    if not has_bin:
        raise ArtifactError(
            f"{where}: no bin/{app} in the tarball",
            hint=f"is app.name ({app!r}) the release name? The tarball must be the release's own tarball",
        )
    version = _version_from(start_erl, release_dirs, where)
    if not VERSION_RE.fullmatch(version):
        raise ArtifactError(f"{where}: release version {version!r} is not a safe version string")
    if expected_version is not None and version != expected_version:
        raise ArtifactError(
            f"{where}: the tarball holds version {version!r} but the build reported {expected_version!r}",
            hint="rebuild; a stale tarball may have been picked up",
        )
    return Artifact(
        path=path,
        name=app,
        version=version,
        sha256=sha256,
        size=path.stat().st_size,
        unpacked_size=unpacked,
        erts_version=erts,
        migrations=tuple(sorted(migrations)),
        requirements=compat.combine(natives),
    )


def _version_from(start_erl: str | None, release_dirs: set[str], where: str) -> str:
    if start_erl:
        fields = start_erl.split()
        if len(fields) == 2:
            return fields[1]
    candidates = sorted(d for d in release_dirs if d and d[0].isdigit())
    if len(candidates) == 1:
        return candidates[0]
    raise ArtifactError(f"{where}: cannot tell the release version (no releases/start_erl.data)")


def version_from_filename(path: Path, app: str) -> str | None:
    """``hello-0.2.0.tar.gz`` -> ``0.2.0``: what the build reported, checked against the contents."""
    match = re.fullmatch(rf"{re.escape(app)}-(.+)\.tar\.gz", path.name)
    return match.group(1) if match else None


def find_tarball(project: Path, pattern: str, *, since: float | None = None) -> Path:
    """The newest file matching ``pattern`` (written after ``since`` when given)."""
    matches = [p for p in project.glob(pattern) if p.is_file()]
    if since is not None:
        matches = [p for p in matches if p.stat().st_mtime >= since]
    if not matches:
        raise ArtifactError(
            f"no tarball matching {pattern!r} under {project}" + (" was written by the build" if since else ""),
            hint="set build.tarball to where your build writes the release tarball",
        )
    return max(matches, key=lambda p: p.stat().st_mtime)

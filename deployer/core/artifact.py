"""The release artifact: build it, find the tarball, read name and version, hash and validate it.

Validation happens locally before anything is uploaded and names the offending
member: absolute paths, ``..`` components, links escaping the release, device
files and FIFOs, setuid/setgid bits, a missing ``bin/<app>``, or a version that
differs from the one the build reported.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from deployer.core.config import InventoryConfig
from deployer.core.paths import VERSION_RE
from deployer.errors import ArtifactError
from deployer.remote.flavours import flavour


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


def _escapes(base_dir: str, target: str) -> bool:
    if target.startswith("/"):
        return True
    joined = posixpath.normpath(posixpath.join(base_dir, target))
    return joined == ".." or joined.startswith("../")


def inspect_tarball(path: Path | str, app: str, *, expected_version: str | None = None) -> Artifact:
    """Validate ``path`` as a release of ``app`` and return its identity. Raises :class:`ArtifactError`."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ArtifactError(f"{path}: no such tarball")
    where = path.name
    start_erl: str | None = None
    release_dirs: set[str] = set()
    erts: str | None = None
    has_bin = False
    unpacked = 0
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                raw = member.name
                name = _normalise(raw)
                unpacked += max(member.size, 0) + 512
                if raw.startswith("/") or name.startswith("/"):
                    raise ArtifactError(f"{where}: member {raw!r} has an absolute path")
                if ".." in name.split("/"):
                    raise ArtifactError(f"{where}: member {raw!r} contains '..'")
                if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
                    raise ArtifactError(f"{where}: member {raw!r} is a device file or FIFO")
                if member.mode & (stat.S_ISUID | stat.S_ISGID):
                    raise ArtifactError(f"{where}: member {raw!r} has the setuid/setgid bit")
                if member.issym() and _escapes(posixpath.dirname(name), member.linkname):
                    raise ArtifactError(f"{where}: symlink {raw!r} -> {member.linkname!r} points outside the release")
                if member.islnk() and _escapes("", _normalise(member.linkname)):
                    raise ArtifactError(f"{where}: hard link {raw!r} -> {member.linkname!r} points outside the release")
                if name == f"bin/{app}" and (member.isfile() or member.issym()):
                    has_bin = True
                elif name == "releases/start_erl.data" and member.isfile():
                    handle = tar.extractfile(member)
                    if handle is not None:
                        start_erl = handle.read(4096).decode("utf-8", "replace")
                parts = name.split("/")
                if len(parts) >= 2 and parts[0] == "releases" and member.isdir():
                    release_dirs.add(parts[1])
                if len(parts) >= 1 and parts[0].startswith("erts-"):
                    erts = parts[0].removeprefix("erts-")
    except (tarfile.TarError, OSError, EOFError) as exc:
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
        sha256=sha256_file(path),
        size=path.stat().st_size,
        unpacked_size=unpacked,
        erts_version=erts,
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


def build_release(config: InventoryConfig, *, cwd: Path | None = None, echo: bool = False) -> Path:
    """Run the configured build command and return the tarball it wrote."""
    project = (cwd or Path.cwd()) / config.build.path
    if not project.is_dir():
        raise ArtifactError(f"build.path: {project} is not a directory")
    spec = flavour(config.app.flavour)
    command = config.build.command or spec.default_build
    pattern = (config.build.tarball or spec.default_tarball).format(app=config.app.name)
    env = {**os.environ, **config.build.env}
    started = time.time()
    proc = subprocess.run(
        ["sh", "-c", command],
        cwd=project,
        env=env,
        stdout=None if echo else subprocess.PIPE,
        stderr=subprocess.STDOUT if not echo else None,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout or "").splitlines()[-30:])
        raise ArtifactError(
            f"build failed: `{command}` in {project} exited {proc.returncode}" + (f"\n{tail}" if tail else ""),
            hint="fix the build, or deploy a prebuilt tarball with --tarball PATH",
        )
    return find_tarball(project, pattern, since=started - 2)


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

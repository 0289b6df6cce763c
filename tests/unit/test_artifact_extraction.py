"""Property: whatever the tarball validator accepts, GNU tar extracts without leaving the release.

Hypothesis generates member lists (directories, files, symlink chains, hard links) over a tiny
alphabet so that names collide and links build on each other. Every accepted tarball is extracted
with the host's own command line (``tar -xzf … --no-same-owner --no-same-permissions``) inside a
bubblewrap sandbox where only a scratch directory is writable; afterwards nothing outside the
release directory may have changed and every extracted path must resolve (``os.path.realpath``)
inside it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from deployer.core.artifact import inspect_tarball
from deployer.errors import ArtifactError

from .helpers import release_tarball

BWRAP = shutil.which("bwrap")

pytestmark = pytest.mark.skipif(BWRAP is None, reason="needs bubblewrap (apt-get install bubblewrap) to sandbox tar")

NAMES = st.lists(st.sampled_from(["a", "b", "c", "."]), min_size=1, max_size=3).map("/".join)
TARGETS = st.one_of(
    st.lists(st.sampled_from(["a", "b", "c", ".", "..", ""]), min_size=1, max_size=4).map("/".join),
    st.sampled_from(["/", "/tmp", "bin", "releases/.."]),
)


@st.composite
def members(draw: st.DrawFn) -> list[tarfile.TarInfo]:
    result: list[tarfile.TarInfo] = []
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        info = tarfile.TarInfo(draw(NAMES))
        kind = draw(st.sampled_from(["dir", "file", "sym", "sym", "sym", "hard"]))
        if kind == "dir":
            info.type, info.mode = tarfile.DIRTYPE, 0o755
        elif kind == "file":
            info.type, info.mode, info.size = tarfile.REGTYPE, 0o644, 1
        elif kind == "sym":
            info.type, info.linkname = tarfile.SYMTYPE, draw(TARGETS)
        else:
            info.type, info.linkname = tarfile.LNKTYPE, draw(st.one_of(NAMES, TARGETS))
        result.append(info)
    return result


def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, str]]:
    """Every path under ``root`` except ``skip`` and what it is (mode, link target)."""
    seen: dict[str, tuple[int, str]] = {}
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(directory, d) != skip]
        for name in dirs + files:
            path = Path(directory, name)
            info = path.lstat()
            seen[str(path)] = (info.st_mode, os.readlink(path) if path.is_symlink() else "")
    return seen


def extract_in_sandbox(tarball: Path, sandbox: Path, release: Path) -> subprocess.CompletedProcess[str]:
    assert BWRAP is not None
    command = [BWRAP, "--ro-bind", "/", "/", "--bind", str(sandbox), str(sandbox), "--dev", "/dev", "--"]
    command += ["tar", "-xzf", str(tarball), "-C", str(release), "--no-same-owner", "--no-same-permissions"]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members())
def test_accepted_tarballs_extract_inside_the_release(generated: list[tarfile.TarInfo]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        tarball = release_tarball(Path(scratch) / "hello-0.1.0.tar.gz", extra=generated)
        try:
            inspect_tarball(tarball, "hello")
        except ArtifactError:
            event("refused")
            return
        event("accepted")
        sandbox = Path(scratch) / "sandbox"
        release = sandbox / "deploy" / "releases" / ".partial-x"
        release.mkdir(parents=True)
        (sandbox / "deploy" / "revisions.log").write_text("keep me\n")
        before = snapshot(sandbox, release)
        result = extract_in_sandbox(tarball, sandbox, release)
        listing = "\n".join(f"  {m.name} ({m.type!r}) -> {m.linkname!r}" for m in generated)
        assert snapshot(sandbox, release) == before, f"tar changed files outside the release for:\n{listing}"
        real_release = os.path.realpath(release)
        for directory, dirs, files in os.walk(release):
            for name in dirs + files:
                path = os.path.join(directory, name)
                resolved = os.path.realpath(path)
                assert resolved == real_release or resolved.startswith(real_release + os.sep), (
                    f"{os.path.relpath(path, release)} resolves to {resolved}, outside the release, for:\n{listing}\n"
                    f"tar said: {result.stderr}"
                )

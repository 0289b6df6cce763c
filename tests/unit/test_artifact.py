"""Tarball validation refuses hostile releases and names the offending member."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from deployer.core.artifact import find_tarball, inspect_tarball, sha256_file, version_from_filename
from deployer.errors import ArtifactError

from .helpers import release_tarball


def member(
    name: str, *, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644, size: int = 1
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = mode
    info.size = size if kind == tarfile.REGTYPE else 0
    return info


def test_good_release(tmp_path: Path) -> None:
    path = release_tarball(tmp_path / "hello-0.1.0.tar.gz")
    artifact = inspect_tarball(path, "hello", expected_version="0.1.0")
    assert artifact.version == "0.1.0"
    assert artifact.sha256 == sha256_file(path)
    assert artifact.erts_version == "13.1.5"
    assert artifact.unpacked_size > 0


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (member("/etc/passwd"), "member '/etc/passwd' has an absolute path"),
        (member("lib/../../etc/cron.d/x"), "contains '..'"),
        (member("lib/evil", kind=tarfile.SYMTYPE, link="/etc/shadow"), "points outside the release"),
        (member("lib/evil", kind=tarfile.SYMTYPE, link="../../outside"), "points outside the release"),
        (member("lib/hard", kind=tarfile.LNKTYPE, link="../outside"), "hard link 'lib/hard'"),
        (member("lib/dev", kind=tarfile.CHRTYPE), "is a device file or FIFO"),
        (member("lib/fifo", kind=tarfile.FIFOTYPE), "is a device file or FIFO"),
        (member("bin/suid", mode=0o4755), "has the setuid/setgid bit"),
        (member("bin/sgid", mode=0o2755), "has the setuid/setgid bit"),
    ],
)
def test_hostile_members_are_refused(tmp_path: Path, bad: tarfile.TarInfo, message: str) -> None:
    path = release_tarball(tmp_path / "hello-0.1.0.tar.gz", extra=[bad])
    with pytest.raises(ArtifactError, match=r"hello-0\.1\.0\.tar\.gz: ") as info:
        inspect_tarball(path, "hello")
    assert message in str(info.value)


def test_symlink_inside_the_release_is_fine(tmp_path: Path) -> None:
    link = member("lib/current", kind=tarfile.SYMTYPE, link="../releases/0.1.0")
    path = release_tarball(tmp_path / "hello-0.1.0.tar.gz", extra=[link])
    assert inspect_tarball(path, "hello").version == "0.1.0"


def test_missing_bin_is_refused(tmp_path: Path) -> None:
    path = release_tarball(tmp_path / "hello-0.1.0.tar.gz", with_bin=False)
    with pytest.raises(ArtifactError, match="no bin/hello in the tarball"):
        inspect_tarball(path, "hello")


def test_version_mismatch_is_refused(tmp_path: Path) -> None:
    path = release_tarball(tmp_path / "hello-0.2.0.tar.gz", version="0.1.0")
    with pytest.raises(ArtifactError, match=r"holds version '0\.1\.0' but the build reported '0\.2\.0'"):
        inspect_tarball(path, "hello", expected_version=version_from_filename(path, "hello"))


def test_unsafe_version_is_refused(tmp_path: Path) -> None:
    path = release_tarball(tmp_path / "x.tar.gz", version="1.0;rm")
    with pytest.raises(ArtifactError, match="not a safe version string"):
        inspect_tarball(path, "hello")


def test_not_a_tarball(tmp_path: Path) -> None:
    path = tmp_path / "junk.tar.gz"
    path.write_bytes(b"not a tarball at all")
    with pytest.raises(ArtifactError, match="not a readable tarball"):
        inspect_tarball(path, "hello")


def test_find_tarball_prefers_newest(tmp_path: Path) -> None:
    old = release_tarball(tmp_path / "hello-0.1.0.tar.gz")
    new = release_tarball(tmp_path / "hello-0.2.0.tar.gz", version="0.2.0")
    import os

    os.utime(old, (1, 1))
    assert find_tarball(tmp_path, "hello-*.tar.gz") == new
    with pytest.raises(ArtifactError, match="no tarball matching"):
        find_tarball(tmp_path, "nothing-*.tar.gz")

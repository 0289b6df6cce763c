"""Tarball validation refuses hostile releases and names the offending member."""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

import pytest

from deployer.core.artifact import find_tarball, inspect_tarball, sha256_file, version_from_filename
from deployer.errors import ArtifactError

from .helpers import add_file, release_tarball


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
    assert artifact.migrations == ()


def test_the_one_pass_finds_the_migrations_the_release_ships(tmp_path: Path) -> None:
    migration = member("lib/hello-0.1.0/priv/repo/migrations/20260101_create_users.exs")
    elsewhere = member("lib/hello-0.1.0/priv/static/migrations.txt")
    path = release_tarball(tmp_path / "hello-0.1.0.tar.gz", extra=[migration, elsewhere])
    assert inspect_tarball(path, "hello").migrations == ("20260101_create_users.exs",)


def test_a_tarball_that_is_not_gzip_is_refused_saying_so(tmp_path: Path) -> None:
    path = tmp_path / "hello-0.1.0.tar.gz"
    with tarfile.open(path, "w") as tar:  # plain tar under a .tar.gz name: `tar -xz` fails on the hosts
        add_file(tar, "bin/hello", b"#!/bin/sh\n", 0o755)
    with pytest.raises(ArtifactError, match="not a readable tarball: it is not gzip-compressed") as raised:
        inspect_tarball(path, "hello")
    assert raised.value.hint is not None and "tar -xz" in raised.value.hint


def test_the_hash_covers_every_byte_of_a_multi_member_gzip(tmp_path: Path) -> None:
    """`cat a.gz b.gz` is one gzip file to GNU tar: the members of the second part are validated, and
    the hash is the file's, trailing bytes after the archive included."""
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    with tarfile.open(first, "w", format=tarfile.GNU_FORMAT) as tar:
        add_file(tar, "bin/hello", b"#!/bin/sh\n", 0o755)
        add_file(tar, "releases/start_erl.data", b"13.1.5 0.1.0\n")
    with tarfile.open(second, "w", format=tarfile.GNU_FORMAT) as tar:
        add_file(tar, "lib/../../escape", b"x")
    # The first archive without its end-of-archive blocks, so the second one's members follow it.
    body = first.read_bytes()
    end = len(body)
    while end >= 512 and body[end - 512 : end] == bytes(512):
        end -= 512
    path = tmp_path / "hello-0.1.0.tar.gz"
    path.write_bytes(gzip.compress(body[:end]) + gzip.compress(second.read_bytes()))
    with pytest.raises(ArtifactError, match=r"contains '\.\.'"):
        inspect_tarball(path, "hello")

    with tarfile.open(second, "w", format=tarfile.GNU_FORMAT) as tar:
        add_file(tar, "lib/padding/blob", b"y" * 1000)
    path.write_bytes(gzip.compress(body[:end]) + gzip.compress(second.read_bytes()) + b"\0" * 37)
    artifact = inspect_tarball(path, "hello")
    assert artifact.sha256 == sha256_file(path)
    assert artifact.unpacked_size >= 1000


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


def sym(name: str, target: str) -> tarfile.TarInfo:
    return member(name, kind=tarfile.SYMTYPE, link=target)


def directory(name: str) -> tarfile.TarInfo:
    return member(name, kind=tarfile.DIRTYPE, mode=0o755)


def hard(name: str, target: str) -> tarfile.TarInfo:
    return member(name, kind=tarfile.LNKTYPE, link=target)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        # The chain from issue 13: each link looks harmless on its own; through `a -> .` they climb out.
        ([sym("a", "."), sym("a/b", "..")], "symlink 'a/b' -> '..' points outside the release"),
        ([sym("a", "."), sym("a/c", "b/.."), sym("a/b", "..")], "symlink 'a/b' -> '..' points outside"),
        ([directory("x"), sym("x/b", "."), sym("x/c", "b/../..")], "symlink 'x/c' -> 'b/../..' points outside"),
        ([directory("d"), sym("d/up", "../d/../.."), sym("d/e", "up")], "points outside the release"),
        # Links through an earlier symlinked directory land where that directory points.
        ([directory("lib"), sym("lib/here", "."), sym("lib/here/here/x", "../..")], "points outside"),
        ([directory("lib"), sym("l", "lib"), sym("l/x", "../..")], "symlink 'l/x' -> '../..' points outside"),
        # A link that dangles when added and escapes once later members exist.
        ([sym("a", "b/c/../../.."), directory("b")], "points outside the release"),
        ([directory("b"), sym("b/c", "../q"), sym("q", "..")], "symlink 'q' -> '..' points outside"),
        ([sym("later", "x/.."), sym("x", "..")], "symlink 'x' -> '..' points outside"),
        ([sym("loop1", "loop2"), sym("loop2", "loop1")], "symlink loop"),
        # Hard links: to outside, through a symlinked directory, to what is not extracted yet, to a symlink.
        ([hard("h", "/etc/passwd")], "hard link 'h' -> '/etc/passwd' points outside the release"),
        ([hard("h", "lib/not-yet"), member("lib/not-yet")], "refers to a member not extracted before it"),
        ([sym("s", "bin/hello"), hard("h", "s")], "must refer to a regular file, not a link"),
        ([directory("lib"), hard("h", "lib")], "must refer to a regular file, not a dir"),
        # Replacing a directory: tar would fail or merge; refused.
        ([directory("lib"), member("lib/f"), sym("lib", "bin")], "would replace a directory"),
        ([member("f"), member("f/g")], "is inside 'f', which is not a directory"),
        (
            [member("lib/p", kind=tarfile.CONTTYPE), member("lib/b", kind=tarfile.BLKTYPE)],
            "is a device file or FIFO",
        ),
    ],
)
def test_link_chains_are_resolved_as_extraction_would(
    tmp_path: Path, members: list[tarfile.TarInfo], message: str
) -> None:
    path = release_tarball(tmp_path / "hello-0.1.0.tar.gz", extra=members)
    with pytest.raises(ArtifactError, match=r"^hello-0\.1\.0\.tar\.gz: ") as info:
        inspect_tarball(path, "hello")
    assert message in str(info.value)


@pytest.mark.parametrize(
    "members",
    [
        [directory("lib"), sym("lib/current", "../releases/0.1.0")],
        [directory("lib/a-1.0/priv"), sym("lib/a", "a-1.0"), member("lib/a/priv/f"), sym("top", "lib/a/priv/../../..")],
        [member("lib/one"), hard("lib/two", "lib/one"), hard("three", "./lib/one")],
        [sym("rel", "releases"), hard("start", "rel/start_erl.data")],
        [sym("dangling", "nowhere/yet"), sym("x", "y"), sym("y", "bin/../releases")],
        [directory("lib"), sym("lib/self", "."), member("lib/self/self/ok")],
        [member("bin/hello"), sym("bin/hello", "../erts-13.1.5/bin/beam.smp")],
        [directory("./"), directory("."), sym("./dot", "./.")],
    ],
)
def test_links_that_stay_inside_are_accepted(tmp_path: Path, members: list[tarfile.TarInfo]) -> None:
    path = release_tarball(tmp_path / "hello-0.1.0.tar.gz", extra=members)
    assert inspect_tarball(path, "hello").version == "0.1.0"


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

"""The compatibility preflight: ELF facts of a release, the build record, host facts, the refusal message."""

from __future__ import annotations

import glob
import io
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from deployer.core.artifact import Artifact, inspect_tarball, sha256_file
from deployer.core.compat import (
    BuildPlatform,
    CompatibilityError,
    ElfInfo,
    Requirements,
    check,
    combine,
    normalise_arch,
    parse_libc,
    read_elf,
    read_sidecar,
    refuse_mismatches,
    requirements_of,
    write_sidecar,
)
from deployer.core.facts import HostFacts, parse_probe
from deployer.core.inventory import Inventory
from deployer.core.paths import RemoteLayout
from deployer.operations import release as api
from deployer.remote import release as rc
from deployer.testing import FakeFleet

from .helpers import add_file, inventory, release_tarball

DEBIAN12 = "ldd (Debian GLIBC 2.36-9+deb12u7) 2.36"
UBUNTU20 = "ldd (Ubuntu GLIBC 2.31-0ubuntu9.16) 2.31"
ALPINE = "musl libc (x86_64)"
SYSTEM_BEAM = sorted(glob.glob("/usr/lib/erlang/erts-*/bin/beam.smp"))
SYSTEM_CRYPTO = sorted(glob.glob("/usr/lib/erlang/lib/crypto-*/priv/lib/crypto.so"))


def elf_header(machine: int, *, little: bool = True, is64: bool = True) -> bytes:
    """A bare ELF header (no program or section headers)."""
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1 if little else 2, 1]) + bytes(9)
    endian = "<" if little else ">"
    rest = struct.pack(endian + "HHI", 3, machine, 1)
    return (ident + rest).ljust(64, b"\0")


def host(arch: str | None = "x86_64", libc: str | None = DEBIAN12, crypto: set[str] | None = None) -> HostFacts:
    return HostFacts(arch=arch, libc=libc, libcrypto=frozenset(crypto) if crypto is not None else None)


NEEDS = Requirements(
    arch="x86_64", libc="glibc", glibc=(2, 34), glibc_from="erts-13.1.5/bin/beam.smp", libcrypto=("libcrypto.so.3",)
)


# --- reading the release -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("machine", "little", "arch"),
    [(62, True, "x86_64"), (183, True, "aarch64"), (40, True, "arm"), (21, True, "ppc64le"), (21, False, "ppc64")],
)
def test_elf_machine(machine: int, little: bool, arch: str) -> None:
    info = read_elf(elf_header(machine, little=little))
    assert info is not None and info.arch == arch


def test_not_elf() -> None:
    assert read_elf(b"#!/bin/sh\n" + bytes(100)) is None
    assert read_elf(b"\x7fELF") is None


@pytest.mark.skipif(not SYSTEM_BEAM or not SYSTEM_CRYPTO, reason="no system Erlang to read")
def test_real_beam_and_crypto_nif() -> None:
    beam = read_elf(Path(SYSTEM_BEAM[-1]).read_bytes())
    assert beam is not None and beam.libc == "glibc" and beam.interpreter and "ld-linux" in beam.interpreter
    assert beam.glibc_required is not None and beam.glibc_required >= (2, 17)
    crypto = read_elf(Path(SYSTEM_CRYPTO[-1]).read_bytes())
    assert crypto is not None and any(n.startswith("libcrypto.so.") for n in crypto.needed)


@pytest.mark.skipif(not SYSTEM_BEAM or not SYSTEM_CRYPTO, reason="no system Erlang to read")
def test_requirements_of_a_release_tarball(tmp_path: Path) -> None:
    path = tmp_path / "hello-0.1.0.tar.gz"
    beam = Path(SYSTEM_BEAM[-1]).read_bytes()
    with tarfile.open(path, "w:gz") as tar:
        add_file(tar, "bin/hello", b"#!/bin/sh\n", 0o755)
        add_file(tar, "releases/start_erl.data", b"13.1.5 0.1.0\n")
        add_file(tar, "erts-13.1.5/bin/beam.smp", beam.replace(b"GLIBC_2.17\0", b"GLIBC_2.77\0"), 0o755)
        add_file(tar, "lib/crypto-5.1.2/priv/lib/crypto.so", Path(SYSTEM_CRYPTO[-1]).read_bytes())
        add_file(tar, "lib/hello-0.1.0/priv/data.so", b"not an elf file")
    needs = requirements_of(path)
    # The deploy's one pass over the tarball finds the same, without reading it again.
    assert inspect_tarball(path, "hello").requirements == needs
    assert needs.arch == normalise_arch(read_elf(beam).arch)  # type: ignore[union-attr]
    assert needs.libc == "glibc"
    assert needs.glibc == (2, 77) and needs.glibc_from == "erts-13.1.5/bin/beam.smp"
    assert needs.libcrypto and needs.libcrypto[0].startswith("libcrypto.so.")
    assert set(needs.files) == {"erts-13.1.5/bin/beam.smp", "lib/crypto-5.1.2/priv/lib/crypto.so"}


def test_a_release_without_native_files_needs_nothing(tmp_path: Path) -> None:
    assert requirements_of(release_tarball(tmp_path / "hello-0.1.0.tar.gz")) == Requirements()
    assert inspect_tarball(tmp_path / "hello-0.1.0.tar.gz", "hello").requirements == Requirements()
    assert requirements_of(tmp_path / "missing.tar.gz") == Requirements()


def test_combine_prefers_the_vm_and_takes_the_newest_glibc() -> None:
    needs = combine(
        {
            "lib/a/priv/a.so": ElfInfo("x86_64", None, ("libc.so.6",), ("GLIBC_2.38",)),
            "erts-1/bin/beam.smp": ElfInfo("x86_64", "/lib64/ld-linux-x86-64.so.2", (), ("GLIBC_2.2.5", "GLIBC_2.34")),
        }
    )
    assert (needs.arch, needs.libc, needs.glibc, needs.glibc_from) == ("x86_64", "glibc", (2, 38), "lib/a/priv/a.so")


def test_musl_is_recognised() -> None:
    assert ElfInfo("x86_64", "/lib/ld-musl-x86_64.so.1").libc == "musl"
    assert ElfInfo("aarch64", None, ("libc.musl-aarch64.so.1",)).libc == "musl"


# --- facts -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        (DEBIAN12, ("glibc", (2, 36))),
        ("ldd (GNU libc) 2.39", ("glibc", (2, 39))),
        ("ldd (Ubuntu GLIBC 2.35-0ubuntu3.8) 2.35", ("glibc", (2, 35))),
        ("glibc 2.36", ("glibc", (2, 36))),  # getconf GNU_LIBC_VERSION, what the host probe asks first
        (ALPINE, ("musl", None)),
        ("", (None, None)),
        (None, (None, None)),
        ("sh: ldd: not found", (None, None)),
    ],
)
def test_parse_libc(line: str | None, parsed: tuple[str | None, tuple[int, ...] | None]) -> None:
    assert parse_libc(line) == parsed


@pytest.mark.parametrize(("name", "arch"), [("amd64", "x86_64"), ("arm64", "aarch64"), ("armv7l", "arm"), (None, None)])
def test_normalise_arch(name: str | None, arch: str | None) -> None:
    assert normalise_arch(name) == arch


def test_the_host_probe_reads_this_machines_libc_and_libcrypto(tmp_path: Path) -> None:
    """The probe's fragment in a real shell: glibc's version from getconf, each libcrypto soname once."""
    rendered = rc.probe(RemoteLayout(str(tmp_path / "app"), "hello")).render()
    done = subprocess.run(["sh", "-c", rendered], capture_output=True, text=True, check=True)
    facts = parse_probe(done.stdout)
    ldd = subprocess.run(["ldd", "--version"], capture_output=True, text=True, check=False).stdout.splitlines()[0]
    assert facts.libc is not None and facts.libc.startswith("glibc ")
    assert parse_libc(facts.libc) == parse_libc(ldd) != (None, None)
    found = {p.name for d in ("/lib", "/usr/lib") for p in Path(d).glob("*/libcrypto.so.*")}
    assert facts.libcrypto == frozenset(found)


def test_probe_reports_libcrypto() -> None:
    assert parse_probe("libcrypto=libcrypto.so.3 libcrypto.so.1.1 \n").libcrypto == {
        "libcrypto.so.3",
        "libcrypto.so.1.1",
    }
    assert parse_probe("libcrypto=\n").libcrypto == frozenset()
    assert parse_probe("arch=x86_64\n").libcrypto is None  # an older probe: unknown, not "none"


# --- the check -------------------------------------------------------------------------------------------


def test_hosts_like_the_build_pass() -> None:
    assert check(NEEDS, None, {"a": host(crypto={"libcrypto.so.3"}), "b": host(libc="ldd (GNU libc) 2.39")}) == {}


def test_every_mismatch_is_named() -> None:
    problems = check(
        NEEDS,
        None,
        {
            "ok": host(crypto={"libcrypto.so.3"}),
            "arm": host(arch="aarch64"),
            "old": host(libc=UBUNTU20),
            "alpine": host(libc=ALPINE),
            "ssl1": host(crypto={"libcrypto.so.1.1"}),
        },
    )
    assert problems == {
        "arm": ["the release's ERTS is built for x86_64, the host is aarch64"],
        "old": ["the release needs glibc >= 2.34 (erts-13.1.5/bin/beam.smp), the host has glibc 2.31"],
        "alpine": ["the release is linked against glibc, the host has musl"],
        "ssl1": ["the crypto NIF links libcrypto.so.3 (OpenSSL), the host has libcrypto.so.1.1"],
    }


def test_unknown_host_facts_pass() -> None:
    assert check(NEEDS, None, {"quiet": host(arch=None, libc=None, crypto=None)}) == {}


def test_the_build_record_speaks_when_the_tarball_cannot() -> None:
    built = BuildPlatform(arch="aarch64", libc="ldd (GNU libc) 2.39", machine="arm-ci")
    problems = check(Requirements(), built, {"web1": host()})
    assert problems == {
        "web1": [
            "the release was built on arm-ci (aarch64), the host is x86_64",
            "the release was built on arm-ci with glibc 2.39, the host has glibc 2.36",
        ]
    }
    # The binaries' own symbol versions are more precise than the build machine's glibc.
    assert check(NEEDS, BuildPlatform(arch="x86_64", libc="ldd (GNU libc) 2.39"), {"web1": host()}) == {}


def test_refusal_message_and_force() -> None:
    facts = {"web1": host(), "web2": host(arch="aarch64"), "web3": host(libc=UBUNTU20)}
    with pytest.raises(CompatibilityError) as info:
        refuse_mismatches(NEEDS, None, facts)
    assert str(info.value) == (
        "the release cannot run on 2 of 3 host(s):\n"
        "  web2: the release's ERTS is built for x86_64, the host is aarch64\n"
        "  web3: the release needs glibc >= 2.34 (erts-13.1.5/bin/beam.smp), the host has glibc 2.31\n"
        "  -> build where the targets are (build.strategy: host or docker, see docs/building.md); "
        "--force deploys anyway"
    )
    warnings = refuse_mismatches(NEEDS, None, facts, force=True)
    assert len(warnings) == 1 and warnings[0].startswith("--force: deploying anyway although the release cannot run")
    assert refuse_mismatches(NEEDS, None, {"web1": host()}) == []


def test_sidecar_round_trip_is_bound_to_the_tarball(tmp_path: Path) -> None:
    tarball = tmp_path / "hello-0.1.0.tar.gz"
    tarball.write_bytes(b"release")
    written = write_sidecar(tarball, BuildPlatform(arch="x86_64", libc=DEBIAN12, strategy="local"), "a" * 64)
    assert written.name == "hello-0.1.0.tar.gz.platform.json"
    assert read_sidecar(tarball, "a" * 64) == BuildPlatform(arch="x86_64", libc=DEBIAN12, strategy="local")
    assert read_sidecar(tarball, "b" * 64) is None
    written.write_text("not json")
    assert read_sidecar(tarball) is None


# --- in a deploy: refused before any upload ------------------------------------------------------------


def probe(arch: str) -> str:
    return f"now=1\narch={arch}\nlibc={DEBIAN12}\nexists=1\nwritable=1\ndisk_free_kb=99999999\ncookie=1\n"


@pytest.fixture
def claimed_arm(tmp_path: Path) -> tuple[Inventory, Artifact]:
    path = release_tarball(tmp_path / "hello-0.2.0.tar.gz", version="0.2.0")
    write_sidecar(path, BuildPlatform(arch="x86_64", machine="ci"), sha256_file(path))
    return inventory(tmp_path), inspect_tarball(path, "hello")


def test_deploy_refuses_before_upload_and_unlocks(claimed_arm: tuple[Inventory, Artifact]) -> None:
    inv, artifact = claimed_arm
    fleet = FakeFleet(probe_output={"web1": probe("x86_64"), "web2": probe("aarch64"), "web3": probe("arm64")})
    report = api.deploy(inv, artifact, api.Options(connector=fleet.connect)).report  # type: ignore[arg-type]
    assert not report.ok
    assert report.error is not None and report.error.startswith("the release cannot run on 2 of 3 host(s):\n")
    assert "  web2: the release was built on ci (x86_64), the host is aarch64\n" in report.error
    assert "  web3: the release was built on ci (x86_64), the host is aarch64\n" in report.error
    for name in ("web1", "web2", "web3"):
        assert fleet.names(name) == ["lock+probe", "unlock"]


def test_deploy_with_force_proceeds_and_reports_it(claimed_arm: tuple[Inventory, Artifact]) -> None:
    inv, artifact = claimed_arm
    fleet = FakeFleet(probe_output={"web1": probe("x86_64"), "web2": probe("aarch64"), "web3": probe("x86_64")})
    report = api.deploy(inv, artifact, api.Options(connector=fleet.connect, force=True)).report  # type: ignore[arg-type]
    assert report.ok, report.error
    assert "upload" in fleet.names("web2")
    assert any(w.startswith("--force: deploying anyway") and "web2" in w for w in report.warnings)


def test_tarball_members_named_like_native_files_are_only_read_when_elf(tmp_path: Path) -> None:
    path = tmp_path / "x.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("erts-1/bin/beam.smp")
        data = elf_header(183)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert requirements_of(path).arch == "aarch64"

"""Will this release run there? The compatibility preflight: CPU architecture, libc, OpenSSL.

An OTP release bundles a native ERTS (``erts-*/bin/beam.smp``) and native NIFs
(``lib/*/priv/**/*.so``, e.g. crypto's, linked against ``libcrypto.so.N``): it
runs only where the architecture matches, the C library is the same kind
(glibc or musl) and at least as new as the symbols the binaries use, and the
shared libraries they need exist.

What the release needs comes from two places:

* the tarball itself (always): the ELF headers of its native files give the
  architecture, the dynamic loader (glibc or musl), the highest ``GLIBC_x.y``
  symbol version they reference and the ``libcrypto`` they link;
* a sidecar ``<tarball>.platform.json`` written by :mod:`deployer.build.builder` when
  the release is built (locally or on a build host): the build machine's
  ``uname -m``, ``ldd --version`` and ``openssl version``. It is trusted only
  for the tarball whose sha256 it records.

Each target's facts come from the deploy's probe (``uname -m``,
``ldd --version``, the ``libcrypto.so.*`` it has). :func:`check` compares them
before anything is uploaded and :func:`refuse_mismatches` names every host that
cannot run the release; ``deployer deploy --force`` proceeds anyway. ``deployer check --tarball``
runs the same check (:func:`findings`); hosts are never compared with the machine running deployer,
which may not be where the release was built.
"""

from __future__ import annotations

import json
import platform as _platform
import re
import shutil
import struct
import subprocess
import tarfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deployer.core.facts import HostFacts
from deployer.errors import PlanError

SIDECAR_SUFFIX = ".platform.json"
# Native files larger than this are not read (no ERTS binary comes close).
MAX_ELF_BYTES = 256 * 2**20

# e_machine values (elf.h) -> `uname -m` names.
_MACHINES = {
    3: "x86",
    8: "mips",
    20: "ppc",
    21: "ppc64",
    22: "s390x",
    40: "arm",
    62: "x86_64",
    183: "aarch64",
    243: "riscv64",
    258: "loongarch64",
}
# `uname -m` spellings of the same architecture.
_ARCH_ALIASES = {
    "amd64": "x86_64",
    "x64": "x86_64",
    "arm64": "aarch64",
    "aarch64_be": "aarch64",
    "i386": "x86",
    "i486": "x86",
    "i586": "x86",
    "i686": "x86",
    "armv6l": "arm",
    "armv7l": "arm",
    "armv7": "arm",
    "armhf": "arm",
    "ppc64le": "ppc64le",
    "s390": "s390x",
}

PT_INTERP = 3
SHT_DYNAMIC = 6
SHT_GNU_VERNEED = 0x6FFFFFFE
DT_NEEDED = 1


def normalise_arch(name: str | None) -> str | None:
    """``amd64`` -> ``x86_64``, ``arm64`` -> ``aarch64``, ``armv7l`` -> ``arm``; None stays None."""
    if not name:
        return None
    text = name.strip().lower()
    return _ARCH_ALIASES.get(text, text)


def parse_version(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)*)", text.strip())
    return tuple(int(part) for part in match.group(1).split(".")) if match else None


def _show(version: tuple[int, ...] | None) -> str:
    return ".".join(str(part) for part in version) if version else "?"


# --- ELF ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ElfInfo:
    """What one native file says about where it can run."""

    arch: str
    interpreter: str | None = None
    needed: tuple[str, ...] = ()
    versions: tuple[str, ...] = ()
    """Symbol versions it requires (``GLIBC_2.34``, ``OPENSSL_3.0.0``...)."""

    @property
    def libc(self) -> str | None:
        names = [self.interpreter or "", *self.needed]
        if any("musl" in name for name in names):
            return "musl"
        if any(name.startswith("libc.so.6") or "ld-linux" in name for name in names) or any(
            v.startswith("GLIBC_") for v in self.versions
        ):
            return "glibc"
        return None

    @property
    def glibc_required(self) -> tuple[int, ...] | None:
        found = [parse_version(v.removeprefix("GLIBC_")) for v in self.versions if v.startswith("GLIBC_")]
        known = [v for v in found if v is not None]
        return max(known) if known else None


def _cstr(data: bytes, offset: int) -> str:
    end = data.find(b"\0", offset)
    return data[offset : end if end >= 0 else len(data)].decode("ascii", "replace")


def read_elf(data: bytes) -> ElfInfo | None:
    """Parse an ELF file's header, program and section headers; None when ``data`` is not ELF.

    Pure Python, tolerant: a truncated or odd file yields what could be read.
    """
    if len(data) < 64 or data[:4] != b"\x7fELF":
        return None
    is64 = data[4] == 2
    endian = "<" if data[5] == 1 else ">"
    (machine,) = struct.unpack_from(endian + "H", data, 18)
    arch = _MACHINES.get(machine, f"elf-machine-{machine}")
    if arch == "ppc64" and endian == "<":
        arch = "ppc64le"
    try:
        if is64:
            phoff, shoff = struct.unpack_from(endian + "QQ", data, 32)
            phentsize, phnum, shentsize, shnum = struct.unpack_from(endian + "HHHH", data, 54)
        else:
            phoff, shoff = struct.unpack_from(endian + "II", data, 28)
            phentsize, phnum, shentsize, shnum = struct.unpack_from(endian + "HHHH", data, 42)
    except struct.error:
        return ElfInfo(arch=arch)
    interpreter = None
    for index in range(phnum):
        base = phoff + index * phentsize
        try:
            if is64:
                p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(endian + "IIQQQQ", data, base)
            else:
                p_type, p_offset, _, _, p_filesz = struct.unpack_from(endian + "IIIII", data, base)
        except struct.error:
            break
        if p_type == PT_INTERP:
            interpreter = data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode("ascii", "replace")
    sections: list[tuple[int, int, int, int]] = []  # (type, offset, size, link)
    for index in range(shnum):
        base = shoff + index * shentsize
        try:
            if is64:
                _, sh_type, _, _, sh_offset, sh_size, sh_link = struct.unpack_from(endian + "IIQQQQI", data, base)
            else:
                _, sh_type, _, _, sh_offset, sh_size, sh_link = struct.unpack_from(endian + "IIIIIII", data, base)
        except struct.error:
            break
        sections.append((sh_type, sh_offset, sh_size, sh_link))
    needed: list[str] = []
    versions: list[str] = []
    for sh_type, offset, size, link in sections:
        if link >= len(sections):
            continue
        strtab = sections[link][1]
        if sh_type == SHT_DYNAMIC:
            entry = 16 if is64 else 8
            for pos in range(offset, offset + size - entry + 1, entry):
                tag, value = struct.unpack_from(endian + ("qQ" if is64 else "iI"), data, pos)
                if tag == 0:
                    break
                if tag == DT_NEEDED:
                    needed.append(_cstr(data, strtab + value))
        elif sh_type == SHT_GNU_VERNEED:
            pos = offset
            for _ in range(4096):
                try:
                    _, count, _, aux, following = struct.unpack_from(endian + "HHIII", data, pos)
                except struct.error:
                    break
                apos = pos + aux
                for _ in range(count):
                    try:
                        _, _, _, name, anext = struct.unpack_from(endian + "IHHII", data, apos)
                    except struct.error:
                        break
                    versions.append(_cstr(data, strtab + name))
                    if not anext:
                        break
                    apos += anext
                if not following:
                    break
                pos += following
    return ElfInfo(arch=arch, interpreter=interpreter, needed=tuple(needed), versions=tuple(sorted(set(versions))))


# --- what a release needs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Requirements:
    """What the release's native files need from a host (None: nothing known / nothing native)."""

    arch: str | None = None
    libc: str | None = None
    glibc: tuple[int, ...] | None = None
    glibc_from: str | None = None
    """The file that needs the newest glibc (for the message)."""
    libcrypto: tuple[str, ...] = ()
    """``libcrypto.so.N`` sonames the crypto NIF links (empty when OpenSSL is linked statically)."""
    files: tuple[str, ...] = ()

    @property
    def known(self) -> bool:
        return self.arch is not None


def is_native_candidate(name: str) -> bool:
    """Whether a release member may be native code whose needs matter: the VM, or a NIF under priv."""
    parts = name.split("/")
    if len(parts) == 3 and parts[0].startswith("erts-") and parts[1] == "bin" and parts[2] == "beam.smp":
        return True
    return parts[0] == "lib" and "priv" in parts and name.endswith(".so")


def is_native_member(member: tarfile.TarInfo, name: str) -> bool:
    """Whether tarball member ``member`` (called ``name``, without a leading ``./``) is read as ELF."""
    return member.isfile() and member.size <= MAX_ELF_BYTES and is_native_candidate(name)


def requirements_of(path: Path | str) -> Requirements:
    """Read the native files of a release tarball. Never raises for an odd tarball: unknown is unknown."""
    infos: dict[str, ElfInfo] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if not is_native_member(member, name):
                    continue
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                info = read_elf(handle.read())
                if info is not None:
                    infos[name] = info
    except (tarfile.TarError, OSError, EOFError):
        return Requirements()
    return combine(infos)


def combine(infos: Mapping[str, ElfInfo]) -> Requirements:
    """Requirements of a set of native files: the VM's architecture, the newest glibc any of them needs."""
    if not infos:
        return Requirements()
    beam = next((info for name, info in infos.items() if name.endswith("/beam.smp")), None)
    arch = beam.arch if beam is not None else next(iter(infos.values())).arch
    libcs = {info.libc for info in infos.values()} - {None}
    libc = (beam.libc if beam is not None else None) or (libcs.pop() if len(libcs) == 1 else None)
    glibc: tuple[int, ...] | None = None
    glibc_from = None
    for name, info in sorted(infos.items()):
        needed = info.glibc_required
        if needed is not None and (glibc is None or needed > glibc):
            glibc, glibc_from = needed, name
    crypto = sorted({n for info in infos.values() for n in info.needed if n.startswith("libcrypto.so")})
    return Requirements(
        arch=arch, libc=libc, glibc=glibc, glibc_from=glibc_from, libcrypto=tuple(crypto), files=tuple(sorted(infos))
    )


# --- the build machine (sidecar) --------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildPlatform:
    """Where a release was built, as recorded next to its tarball."""

    arch: str | None = None
    libc: str | None = None
    """First line of ``ldd --version`` on the build machine."""
    openssl: str | None = None
    """``openssl version`` on the build machine."""
    strategy: str | None = None
    machine: str | None = None
    """Where: ``local``, the build host's name, or the Docker image."""
    sha256: str | None = field(default=None, compare=False)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> BuildPlatform:
        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) and value else None

        return cls(
            arch=text("arch"),
            libc=text("libc"),
            openssl=text("openssl"),
            strategy=text("strategy"),
            machine=text("machine"),
            sha256=text("sha256"),
        )

    @classmethod
    def parse_probe(cls, output: str, **extra: str | None) -> BuildPlatform:
        """From ``arch=``, ``libc=`` and ``openssl=`` lines (what :data:`PLATFORM_PROBE` prints)."""
        values: dict[str, object] = dict(extra)
        for line in output.splitlines():
            key, sep, value = line.partition("=")
            if sep and key in ("arch", "libc", "openssl") and value.strip():
                values[key] = value.strip()
        return cls.from_mapping(values)


PLATFORM_PROBE = (
    'echo "arch=$(uname -m)"\n'
    'echo "libc=$( (ldd --version 2>&1 || true) | head -n 1)"\n'
    'echo "openssl=$( (openssl version 2>/dev/null || true) | head -n 1)"\n'
)
"""Shell lines printing the machine's platform (the same facts the deploy probe gathers)."""


def local_platform(*, strategy: str = "local") -> BuildPlatform:
    """This machine's platform."""
    libc = None
    if shutil.which("ldd"):
        done = subprocess.run(["ldd", "--version"], capture_output=True, text=True, check=False)
        lines = (done.stdout or done.stderr).splitlines()
        libc = lines[0].strip() if lines else None
    openssl = None
    if shutil.which("openssl"):
        done = subprocess.run(["openssl", "version"], capture_output=True, text=True, check=False)
        openssl = done.stdout.strip() or None
    return BuildPlatform(
        arch=_platform.machine() or None, libc=libc, openssl=openssl, strategy=strategy, machine="local"
    )


def sidecar_path(tarball: Path | str) -> Path:
    path = Path(tarball)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def write_sidecar(tarball: Path | str, build: BuildPlatform, sha256: str) -> Path:
    """Record where ``tarball`` (with this sha256) was built."""
    path = sidecar_path(tarball)
    record = BuildPlatform(**{**asdict(build), "sha256": sha256})
    path.write_text(record.to_json())
    return path


def read_sidecar(tarball: Path | str, sha256: str | None = None) -> BuildPlatform | None:
    """The sidecar of ``tarball``, if there is one for this very tarball (same sha256)."""
    path = sidecar_path(tarball)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    record = BuildPlatform.from_mapping(data)
    if sha256 is not None and record.sha256 != sha256:
        return None
    return record


# --- hosts ----------------------------------------------------------------------------------------------


def parse_libc(line: str | None) -> tuple[str | None, tuple[int, ...] | None]:
    """The first line of ``ldd --version`` -> (``glibc``/``musl``/None, version).

    ``ldd (Debian GLIBC 2.36-9+deb12u7) 2.36`` -> ("glibc", (2, 36)); ``musl libc (x86_64)`` -> ("musl", None).
    """
    if not line:
        return None, None
    text = line.strip()
    lower = text.lower()
    if "musl" in lower:
        return "musl", None
    if "glibc" in lower or "gnu libc" in lower or "gnu c library" in lower or lower.startswith("ldd"):
        match = re.search(r"(\d+\.\d+(?:\.\d+)?)\s*$", text) or re.search(r"(\d+\.\d+)", text)
        return "glibc", parse_version(match.group(1)) if match else None
    return None, None


# --- the check ------------------------------------------------------------------------------------------


class CompatibilityError(PlanError):
    """The release's native code cannot run on some of the target hosts."""


def check(
    requirements: Requirements, build: BuildPlatform | None, facts: Mapping[str, HostFacts]
) -> dict[str, list[str]]:
    """Host -> reasons the release cannot run there (hosts that fit are absent). Unknown facts pass."""
    problems: dict[str, list[str]] = {}
    build_arch = normalise_arch(build.arch) if build else None
    build_libc, build_glibc = parse_libc(build.libc) if build else (None, None)
    where = f"built on {build.machine}" if build and build.machine else "the build machine"
    for host, fact in facts.items():
        reasons: list[str] = []
        host_arch = normalise_arch(fact.arch)
        host_libc, host_glibc = parse_libc(fact.libc)
        if host_arch is not None:
            if requirements.arch is not None and normalise_arch(requirements.arch) != host_arch:
                reasons.append(f"the release's ERTS is built for {requirements.arch}, the host is {host_arch}")
            elif build_arch is not None and build_arch != host_arch:
                reasons.append(f"the release was {where} ({build_arch}), the host is {host_arch}")
        wanted_libc = requirements.libc or build_libc
        if wanted_libc and host_libc and wanted_libc != host_libc:
            reasons.append(f"the release is linked against {wanted_libc}, the host has {host_libc}")
        elif host_libc == "glibc" and host_glibc is not None:
            if requirements.glibc is not None:
                if requirements.glibc > host_glibc:
                    reasons.append(
                        f"the release needs glibc >= {_show(requirements.glibc)} ({requirements.glibc_from}), "
                        f"the host has glibc {_show(host_glibc)}"
                    )
            elif build_glibc is not None and build_glibc > host_glibc:
                # Without the binaries' own symbol versions, the build machine's glibc is the bound.
                reasons.append(
                    f"the release was {where} with glibc {_show(build_glibc)}, the host has glibc {_show(host_glibc)}"
                )
        if requirements.libcrypto and fact.libcrypto is not None and not set(requirements.libcrypto) & fact.libcrypto:
            have = ", ".join(sorted(fact.libcrypto)) or "none"
            reasons.append(f"the crypto NIF links {' or '.join(requirements.libcrypto)} (OpenSSL), the host has {have}")
        if reasons:
            problems[host] = reasons
    return problems


def describe(problems: Mapping[str, list[str]], total: int) -> str:
    lines = [f"the release cannot run on {len(problems)} of {total} host(s):"]
    for host, reasons in problems.items():
        lines.extend(f"  {host}: {reason}" for reason in reasons)
    return "\n".join(lines)


def refuse_mismatches(
    requirements: Requirements, build: BuildPlatform | None, facts: Mapping[str, HostFacts], *, force: bool = False
) -> list[str]:
    """Raise :class:`CompatibilityError` naming every host that cannot run the release; with ``force``,
    return the same findings as warnings instead."""
    problems = check(requirements, build, facts)
    if not problems:
        return []
    message = describe(problems, len(facts))
    if force:
        return [f"--force: deploying anyway although {message}"]
    raise CompatibilityError(
        message,
        hint="build where the targets are (build.strategy: host or docker, see docs/building.md); "
        "--force deploys anyway",
    )


def preflight(
    tarball: Path | str,
    sha256: str,
    facts: Mapping[str, HostFacts],
    *,
    force: bool = False,
    requirements: Requirements | None = None,
) -> list[str]:
    """The deploy's compatibility check of ``tarball`` against the probed ``facts`` (see
    :func:`refuse_mismatches`); returns the warnings to report when ``force`` let a mismatch through.
    ``requirements``: what the tarball's native files need, when already read (else it is read now)."""
    needs = requirements if requirements is not None else requirements_of(tarball)
    return refuse_mismatches(needs, read_sidecar(tarball, sha256), facts, force=force)


def findings(tarball: Path | str, sha256: str, facts: Mapping[str, HostFacts]) -> dict[str, list[str]]:
    """The same check as :func:`preflight`, as data (``deployer check --tarball``): host -> reasons."""
    return check(requirements_of(tarball), read_sidecar(tarball, sha256), facts)

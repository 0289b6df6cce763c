"""Build the example OTP release (``examples/hello``) for tests.

The example is a dependency-free Mix project; :func:`build_hello` runs
``MIX_ENV=prod mix release --overwrite`` with the build-time knobs
(``HELLO_VERSION``, ``HELLO_VARIANT``, ``HELLO_MIGRATIONS``) and returns the
resulting tarball. Builds are cached per (version, variant, migrations, source
fingerprint) under ``<repo>/.cache/examples`` and serialised across processes
with an ``fcntl`` lock, so concurrent test workers can call it safely.

The tarball has no top-level directory (``bin/``, ``erts-*/``, ``lib/``,
``releases/`` at its root): extract it straight into the release directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

__all__ = [
    "HELLO_ERL_PROJECT_DIR",
    "HELLO_PG_PROJECT_DIR",
    "HELLO_PG_VARIANTS",
    "HELLO_PROJECT_DIR",
    "HELLO_VARIANTS",
    "build_hello",
    "build_hello_erl",
    "build_hello_pg",
    "build_hello_relup",
    "hello_source_fingerprint",
]

REPO_ROOT: Final[Path] = Path(__file__).resolve().parents[2]
"""Root of the deployer repository."""

HELLO_PROJECT_DIR: Final[Path] = REPO_ROOT / "examples" / "hello"
"""The Mix project of the example application."""

HELLO_ERL_PROJECT_DIR: Final[Path] = REPO_ROOT / "examples" / "hello_erl"
"""The rebar3 (relx) project of the Erlang example application."""

DEFAULT_CACHE_DIR: Final[Path] = REPO_ROOT / ".cache" / "examples"
"""Where built tarballs are kept between runs (git-ignored)."""

HELLO_VARIANTS: Final[tuple[str, ...]] = ("", "crash", "unhealthy", "bad_migration", "dies_after_health")
"""Build variants: normal, halts 2 s after boot, /health 503, migrate raises, halts ``HELLO_DIE_AFTER_MS``
(run-time env, default 1000) after its first healthy ``/health`` answer."""

BUILD_TIMEOUT_S: Final[float] = 900.0
_OUTPUT_TAIL_LINES: Final[int] = 60
_VERSION_RE: Final[re.Pattern[str]] = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
# Files of the project that determine the build output.
_SOURCE_GLOBS: Final[tuple[str, ...]] = ("mix.exs", "config/**/*", "lib/**/*", "priv/**/*", "rel/**/*")
# Mix settings from the caller's environment that would redirect or alter the build.
_SCRUBBED_ENV: Final[tuple[str, ...]] = (
    "MIX_BUILD_PATH",
    "MIX_BUILD_ROOT",
    "MIX_DEPS_PATH",
    "MIX_EXS",
    "MIX_LOCKFILE",
    "MIX_TARGET",
    "MIX_PROFILE",
    "MIX_QUIET",
    "ERL_AFLAGS",
    "ERL_FLAGS",
    "ERL_ZFLAGS",
    "ELIXIR_ERL_OPTIONS",
)


def _variant_tag(variant: str) -> str:
    """Name used for ``variant`` in paths (``normal`` for the empty variant)."""
    return variant or "normal"


def _validate(version: str, variant: str, migrations: int) -> None:
    """Reject arguments that mix would refuse or that are unsafe in file names."""
    if not _VERSION_RE.fullmatch(version):
        raise ValueError(f"version must be a semantic version like 1.2.3, got {version!r}")
    if variant not in HELLO_VARIANTS:
        raise ValueError(f"variant must be one of {HELLO_VARIANTS!r}, got {variant!r}")
    if isinstance(migrations, bool) or not isinstance(migrations, int) or migrations < 0:
        raise ValueError(f"migrations must be a non-negative int, got {migrations!r}")


def _source_fingerprint(project: Path, globs: tuple[str, ...]) -> str:
    """A short SHA-256 over the files of ``project`` matching ``globs`` (names and contents)."""
    digest = hashlib.sha256()
    files: set[Path] = set()
    for pattern in globs:
        files.update(p for p in project.glob(pattern) if p.is_file())
    for path in sorted(files):
        digest.update(path.relative_to(project).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def hello_source_fingerprint() -> str:
    """Return a short SHA-256 over the example's source files (names and contents).

    It is part of the cache key, so editing the example invalidates cached
    tarballs.
    """
    return _source_fingerprint(HELLO_PROJECT_DIR, _SOURCE_GLOBS)


def _built_tarball(version: str, variant: str, migrations: int) -> Path:
    """Where ``mix release`` leaves the tarball (mirrors ``build_path`` in mix.exs)."""
    build_dir = HELLO_PROJECT_DIR / "_build" / f"{version}-{_variant_tag(variant)}-{migrations}"
    return build_dir / "prod" / f"hello-{version}.tar.gz"


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``lock_path`` (created if missing)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _build_env(version: str, variant: str, migrations: int, mix_home: Path) -> dict[str, str]:
    """Environment for an offline, reproducible ``mix release`` of the example."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV and not k.startswith("HELLO_")}
    env.update(
        {
            "MIX_ENV": "prod",
            "MIX_HOME": str(mix_home),
            "HEX_OFFLINE": "1",
            "HEX_HOME": str(mix_home / "hex"),
            "LC_ALL": "C.UTF-8",
            "LANG": "C.UTF-8",
            "HELLO_VERSION": version,
            "HELLO_VARIANT": variant,
            "HELLO_MIGRATIONS": str(migrations),
        }
    )
    return env


def _check_tarball(tarball: Path, version: str) -> None:
    """Make sure ``tarball`` is a release of ``version`` (fails loudly otherwise)."""
    with tarfile.open(tarball, "r:gz") as tar:
        names = set(tar.getnames())
    for required in ("bin/hello", f"releases/{version}/start.boot", "releases/start_erl.data"):
        if required not in names:
            raise RuntimeError(f"{tarball} is not a hello {version} release: {required} missing")


def _run_mix_release(version: str, variant: str, migrations: int, mix_home: Path) -> Path:
    """Run the build; return the tarball mix produced. Raise RuntimeError on failure."""
    mix = shutil.which("mix")
    if mix is None:
        raise RuntimeError("cannot build examples/hello: `mix` (Elixir) is not on PATH")
    built = _built_tarball(version, variant, migrations)
    built.unlink(missing_ok=True)  # never mistake an older tarball for this build's
    cmd = [mix, "release", "--overwrite"]
    try:
        proc = subprocess.run(
            cmd,
            cwd=HELLO_PROJECT_DIR,
            env=_build_env(version, variant, migrations, mix_home),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
        raise RuntimeError(
            f"building hello {version} variant={variant!r} migrations={migrations} "
            f"timed out after {BUILD_TIMEOUT_S:.0f}s; output tail:\n{_tail(out)}"
        ) from exc
    if proc.returncode != 0 or not built.is_file():
        reason = f"exit status {proc.returncode}" if proc.returncode else f"no tarball at {built}"
        raise RuntimeError(
            f"building hello {version} variant={variant!r} migrations={migrations} failed "
            f"({reason}): MIX_ENV=prod {' '.join(cmd)} in {HELLO_PROJECT_DIR}; output tail:\n"
            f"{_tail(proc.stdout)}"
        )
    _check_tarball(built, version)
    return built


def _tail(output: str) -> str:
    """Last lines of a build's output."""
    return "\n".join(output.splitlines()[-_OUTPUT_TAIL_LINES:])


def _cached_build(target: Path, fingerprint: str, project_dir: Path, build: Callable[[], Path]) -> Path:
    """``target`` if it was built from sources with ``fingerprint``; else ``build()`` it under the project's
    exclusive lock (one lock per example project: all builds share its ``_build/`` tree) and publish it
    with an atomic rename, so nobody ever sees a partial file. The ``.src`` stamp beside the tarball
    records the fingerprint it was built from."""
    stamp = target.with_name(target.name + ".src")

    def cached() -> bool:
        try:
            return target.is_file() and stamp.read_text().strip() == fingerprint
        except FileNotFoundError:
            return False

    if cached():
        return target
    with _exclusive_lock(project_dir / "_build" / ".deployer-build.lock"):
        if cached():  # built by another process while we waited
            return target
        built = build()
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            shutil.copyfile(built, tmp)
            os.chmod(tmp, 0o644)
            stamp.unlink(missing_ok=True)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        stamp_tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}.{time.monotonic_ns()}")
        stamp_tmp.write_text(fingerprint + "\n")
        os.replace(stamp_tmp, stamp)
    return target


def build_hello(
    version: str = "0.1.0",
    variant: str = "",
    migrations: int = 2,
    *,
    cache_dir: Path | None = None,
) -> Path:
    """Build (or fetch from the cache) the example release and return its tarball.

    Args:
        version: Release version (``HELLO_VERSION``), a semantic version.
        variant: ``""`` (normal), ``"crash"``, ``"unhealthy"`` or ``"bad_migration"``.
        migrations: Number of migrations the build knows (``HELLO_MIGRATIONS``).
        cache_dir: Where tarballs are cached; default ``<repo>/.cache/examples``.

    Returns:
        Absolute path of ``hello-<version>-<variant or 'normal'>-<migrations>.tar.gz``
        in ``cache_dir``. Treat it as read-only: it is shared by every caller.

    Raises:
        ValueError: For an invalid version, variant or migration count.
        RuntimeError: If ``mix`` is missing or the build fails (with the tail of
            the build's output).

    The cache is keyed on the arguments and on a fingerprint of the example's
    sources (stored beside the tarball), so a second call is instant and an
    edited example is rebuilt. Concurrent callers, in any process, are
    serialised by an exclusive ``fcntl`` lock; the tarball is published with an
    atomic rename, so nobody ever sees a partial file.
    """
    _validate(version, variant, migrations)
    cache = (cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).resolve()
    target = cache / f"hello-{version}-{_variant_tag(variant)}-{migrations}.tar.gz"
    return _cached_build(
        target,
        hello_source_fingerprint(),
        HELLO_PROJECT_DIR,
        lambda: _run_mix_release(version, variant, migrations, HELLO_PROJECT_DIR / "_build" / "mix-home"),
    )


# --- the Erlang example (rebar3 / relx) -------------------------------------------------------------------

_ERL_SOURCE_GLOBS: Final[tuple[str, ...]] = ("rebar.config", "rebar.config.script", "config/**/*", "src/**/*")
# rebar3 settings from the caller's environment that would redirect or alter the build.
_SCRUBBED_REBAR_ENV: Final[tuple[str, ...]] = (
    "REBAR_BASE_DIR",
    "REBAR_CONFIG",
    "REBAR_PROFILE",
    "REBAR_GLOBAL_CONFIG_DIR",
    "ERL_AFLAGS",
    "ERL_FLAGS",
    "ERL_ZFLAGS",
    "ERL_LIBS",
)


def hello_erl_source_fingerprint() -> str:
    """A short SHA-256 over the Erlang example's sources (part of its cache key)."""
    return _source_fingerprint(HELLO_ERL_PROJECT_DIR, _ERL_SOURCE_GLOBS)


def hello_erl_build_env(version: str, migrations: int, base_dir: Path) -> dict[str, str]:
    """Environment for an offline ``rebar3 as prod tar`` of the Erlang example into ``base_dir``."""
    env = {
        k: v for k, v in os.environ.items() if k not in _SCRUBBED_REBAR_ENV and not k.startswith(("HELLO_", "RELX_"))
    }
    env.update(
        {
            "REBAR_BASE_DIR": str(base_dir),
            "REBAR_CACHE_DIR": str(HELLO_ERL_PROJECT_DIR / "_build" / "rebar3-cache"),
            "REBAR_OFFLINE": "1",
            "LC_ALL": "C.UTF-8",
            "LANG": "C.UTF-8",
            "HELLO_ERL_VERSION": version,
            "HELLO_ERL_MIGRATIONS": str(migrations),
        }
    )
    return env


def _rebar3(args: list[str], env: dict[str, str], what: str, project: Path) -> None:
    """``rebar3 as prod ARGS`` in ``project``; RuntimeError with the output's tail when it fails."""
    rebar3 = shutil.which("rebar3")
    if rebar3 is None:
        raise RuntimeError(f"cannot build {project.name}: `rebar3` is not on PATH")
    cmd = [rebar3, "as", "prod", *args]
    try:
        proc = subprocess.run(
            cmd,
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
        raise RuntimeError(f"building {what} timed out; output tail:\n{_tail(out)}") from exc
    if proc.returncode != 0:
        raise RuntimeError(
            f"building {what} failed (exit status {proc.returncode}): {' '.join(cmd)} in "
            f"{project}; output tail:\n{_tail(proc.stdout)}"
        )


def _run_rebar3_tar(version: str, migrations: int) -> Path:
    # One build directory per (version, migrations): rebar3 does not track the environment.
    base = HELLO_ERL_PROJECT_DIR / "_build" / f"{version}-{migrations}"
    built = base / "prod" / "rel" / "hello_erl" / f"hello_erl-{version}.tar.gz"
    built.unlink(missing_ok=True)
    what = f"hello_erl {version} migrations={migrations}"
    _rebar3(["tar"], hello_erl_build_env(version, migrations, base), what, HELLO_ERL_PROJECT_DIR)
    if not built.is_file():
        raise RuntimeError(f"building {what} failed: no tarball at {built}")
    with tarfile.open(built, "r:gz") as tar:
        names = set(tar.getnames())
    for required in ("bin/hello_erl", f"releases/{version}/start.boot", "releases/start_erl.data"):
        if required not in names:
            raise RuntimeError(f"{built} is not a hello_erl {version} release: {required} missing")
    return built


def build_hello_erl(version: str = "0.1.0", migrations: int = 2, *, cache_dir: Path | None = None) -> Path:
    """Build (or fetch from the cache) the Erlang example release with ``rebar3 as prod tar``.

    Args:
        version: Release and application version (``HELLO_ERL_VERSION``).
        migrations: Number of migrations the build knows (``HELLO_ERL_MIGRATIONS``), numbered ``1..N``.
        cache_dir: Where tarballs are cached; default ``<repo>/.cache/examples``.

    Returns:
        Absolute path of ``hello_erl-<version>-<migrations>.tar.gz`` in ``cache_dir`` (read-only, shared).

    Raises:
        ValueError: For an invalid version or migration count.
        RuntimeError: If ``rebar3`` is missing or the build fails (with the tail of its output).

    Cached and serialised like :func:`build_hello`: keyed on the arguments and a fingerprint of the
    example's sources, built under an exclusive ``fcntl`` lock, published with an atomic rename.
    """
    _validate(version, "", migrations)
    cache = (cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).resolve()
    target = cache / f"hello_erl-{version}-{migrations}.tar.gz"
    return _cached_build(
        target, hello_erl_source_fingerprint(), HELLO_ERL_PROJECT_DIR, lambda: _run_rebar3_tar(version, migrations)
    )


# --- the hot-upgrade example (rebar3 / relx, with a relup) -------------------------------------------------

HELLO_RELUP_PROJECT_DIR: Final[Path] = REPO_ROOT / "examples" / "hello_relup"
"""The rebar3 (relx) project of the hot-upgrade example: two code generations and a hand-written appup."""

HELLO_RELUP_VARIANTS: Final[tuple[str, ...]] = ("", "bad_code_change")
"""Build variants of hello_relup: normal, or generation 2's ``code_change/3`` fails (an install that fails)."""

_RELUP_SOURCE_GLOBS: Final[tuple[str, ...]] = (*_ERL_SOURCE_GLOBS, "ebin/*.appup")


def hello_relup_source_fingerprint() -> str:
    """A short SHA-256 over the hot-upgrade example's sources (part of its cache key)."""
    return _source_fingerprint(HELLO_RELUP_PROJECT_DIR, _RELUP_SOURCE_GLOBS)


def _run_relup_build(version: str, variant: str, relup_from: str | None) -> Path:
    """``rebar3 as prod tar`` of ``version``; with ``relup_from``, first the release of that version in the
    same build directory, then ``rebar3 relup`` from it, so the tarball carries ``releases/<vsn>/relup``."""
    base = HELLO_RELUP_PROJECT_DIR / "_build" / f"{version}-{_variant_tag(variant)}-from-{relup_from or 'none'}"
    what = f"hello_relup {version} variant={variant!r} relup from {relup_from or 'nothing'}"

    def env(vsn: str, variant: str) -> dict[str, str]:
        values = hello_erl_build_env(vsn, 0, base)
        values.pop("HELLO_ERL_VERSION", None)
        values.pop("HELLO_ERL_MIGRATIONS", None)
        values["REBAR_CACHE_DIR"] = str(HELLO_RELUP_PROJECT_DIR / "_build" / "rebar3-cache")
        values["HELLO_RELUP_VERSION"] = vsn
        values["HELLO_RELUP_VARIANT"] = variant
        return values

    built = base / "prod" / "rel" / "hello_relup" / f"hello_relup-{version}.tar.gz"
    shutil.rmtree(base, ignore_errors=True)  # the relup must see exactly the two releases built here
    if relup_from is not None:
        _rebar3(["release"], env(relup_from, ""), what, HELLO_RELUP_PROJECT_DIR)
        # rebar3 tracks neither the environment nor the macros it selects: compile the application afresh.
        shutil.rmtree(base / "prod" / "lib" / "hello_relup", ignore_errors=True)
        _rebar3(["release"], env(version, variant), what, HELLO_RELUP_PROJECT_DIR)
        _rebar3(
            ["relup", "-n", "hello_relup", "-v", version, "-u", relup_from],
            env(version, variant),
            what,
            HELLO_RELUP_PROJECT_DIR,
        )
        _rebar3(["tar", "-n", "hello_relup", "-v", version], env(version, variant), what, HELLO_RELUP_PROJECT_DIR)
    else:
        _rebar3(["tar"], env(version, variant), what, HELLO_RELUP_PROJECT_DIR)
    if not built.is_file():
        raise RuntimeError(f"building {what}: no tarball at {built}")
    with tarfile.open(built, "r:gz") as tar:
        names = set(tar.getnames())
    required = ["bin/hello_relup", f"releases/{version}/start.boot", "releases/RELEASES"]
    if relup_from is not None:
        required.append(f"releases/{version}/relup")
    for name in required:
        if name not in names:
            raise RuntimeError(f"{built} is not a hello_relup {version} release: {name} missing")
    return built


def build_hello_relup(
    version: str = "1.0.0", variant: str = "", *, relup_from: str | None = None, cache_dir: Path | None = None
) -> Path:
    """Build (or fetch from the cache) the hot-upgrade example release (``examples/hello_relup``).

    Args:
        version: Release and application version; 1.1.0 and later run code generation 2.
        variant: ``""`` or ``"bad_code_change"`` (generation 2's ``code_change/3`` fails).
        relup_from: Build a relup from this version into the tarball (``releases/<version>/relup``);
            None for a tarball without one.
        cache_dir: Where tarballs are cached; default ``<repo>/.cache/examples``.

    Returns:
        Absolute path of ``hello_relup-<version>-<variant>-from-<relup_from or none>.tar.gz`` (read-only).

    Cached and serialised like :func:`build_hello`.
    """
    _validate(version, "", 0)
    if relup_from is not None:
        _validate(relup_from, "", 0)
    if variant not in HELLO_RELUP_VARIANTS:
        raise ValueError(f"variant must be one of {HELLO_RELUP_VARIANTS!r}, got {variant!r}")
    cache = (cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).resolve()
    target = cache / f"hello_relup-{version}-{_variant_tag(variant)}-from-{relup_from or 'none'}.tar.gz"
    return _cached_build(
        target,
        hello_relup_source_fingerprint(),
        HELLO_RELUP_PROJECT_DIR,
        lambda: _run_relup_build(version, variant, relup_from),
    )


# --- the PostgreSQL-backed example (Mix, Debian's erlang-p1-pgsql) ------------------------------------------

HELLO_PG_PROJECT_DIR: Final[Path] = REPO_ROOT / "examples" / "hello_pg"
"""The Mix project of the PostgreSQL-backed example application."""

HELLO_PG_VARIANTS: Final[tuple[str, ...]] = ("", "bad_migration")
"""Build variants of hello_pg: normal, or the newest migration raises inside its transaction."""

HELLO_PG_MAX_MIGRATIONS: Final[int] = 3
"""How many migrations examples/hello_pg defines (a build knows the first N)."""

# The driver's application, copied by `mix release` from the system OTP lib dir.
_PG_DRIVER_APP: Final[str] = "p1_pgsql"


def hello_pg_source_fingerprint() -> str:
    """A short SHA-256 over hello_pg's sources (part of its cache key)."""
    return _source_fingerprint(HELLO_PG_PROJECT_DIR, _SOURCE_GLOBS)


def _run_hello_pg_release(version: str, variant: str, migrations: int) -> Path:
    mix = shutil.which("mix")
    if mix is None:
        raise RuntimeError("cannot build examples/hello_pg: `mix` (Elixir) is not on PATH")
    build_dir = HELLO_PG_PROJECT_DIR / "_build" / f"{version}-{_variant_tag(variant)}-{migrations}"
    built = build_dir / "prod" / f"hello_pg-{version}.tar.gz"
    built.unlink(missing_ok=True)
    mix_home = HELLO_PG_PROJECT_DIR / "_build" / "mix-home"
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV and not k.startswith("HELLO_")}
    env.update(
        {
            "MIX_ENV": "prod",
            "MIX_HOME": str(mix_home),
            "HEX_OFFLINE": "1",
            "HEX_HOME": str(mix_home / "hex"),
            "LC_ALL": "C.UTF-8",
            "LANG": "C.UTF-8",
            "HELLO_PG_VERSION": version,
            "HELLO_PG_VARIANT": variant,
            "HELLO_PG_MIGRATIONS": str(migrations),
        }
    )
    cmd = [mix, "release", "--overwrite"]
    what = f"hello_pg {version} variant={variant!r} migrations={migrations}"
    try:
        proc = subprocess.run(
            cmd,
            cwd=HELLO_PG_PROJECT_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
        raise RuntimeError(f"building {what} timed out; output tail:\n{_tail(out)}") from exc
    if proc.returncode != 0 or not built.is_file():
        reason = f"exit status {proc.returncode}" if proc.returncode else f"no tarball at {built}"
        hint = ""
        if _PG_DRIVER_APP in proc.stdout:
            hint = " (is erlang-p1-pgsql installed? run scripts/install-test-deps.sh)"
        raise RuntimeError(
            f"building {what} failed ({reason}){hint}: MIX_ENV=prod {' '.join(cmd)} in {HELLO_PG_PROJECT_DIR}; "
            f"output tail:\n{_tail(proc.stdout)}"
        )
    with tarfile.open(built, "r:gz") as tar:
        names = tar.getnames()
    required = ["bin/hello_pg", f"releases/{version}/start.boot", "releases/start_erl.data"]
    for name in required:
        if name not in names:
            raise RuntimeError(f"{built} is not a hello_pg {version} release: {name} missing")
    # The driver must travel inside the release: the hosts need no Erlang packages of their own.
    if not any(re.fullmatch(rf"lib/{_PG_DRIVER_APP}-[^/]+/ebin/{_PG_DRIVER_APP}\.app", n) for n in names):
        raise RuntimeError(f"{built}: the {_PG_DRIVER_APP} driver was not copied into the release")
    return built


def build_hello_pg(
    version: str = "0.1.0", variant: str = "", migrations: int = 2, *, cache_dir: Path | None = None
) -> Path:
    """Build (or fetch from the cache) the PostgreSQL-backed example release (``examples/hello_pg``).

    Args:
        version: Release version (``HELLO_PG_VERSION``), a semantic version.
        variant: ``""`` (normal) or ``"bad_migration"`` (the newest migration raises inside its
            transaction).
        migrations: How many of the example's migrations the build knows (``HELLO_PG_MIGRATIONS``,
            at most :data:`HELLO_PG_MAX_MIGRATIONS`).
        cache_dir: Where tarballs are cached; default ``<repo>/.cache/examples``.

    Returns:
        Absolute path of ``hello_pg-<version>-<variant or 'normal'>-<migrations>.tar.gz`` in
        ``cache_dir`` (read-only, shared). It contains Debian's ``p1_pgsql`` driver.

    Raises:
        ValueError: For an invalid version, variant or migration count.
        RuntimeError: If ``mix`` or the driver is missing or the build fails (with its output's tail).

    Cached and serialised like :func:`build_hello`.
    """
    if not _VERSION_RE.fullmatch(version):
        raise ValueError(f"version must be a semantic version like 1.2.3, got {version!r}")
    if variant not in HELLO_PG_VARIANTS:
        raise ValueError(f"variant must be one of {HELLO_PG_VARIANTS!r}, got {variant!r}")
    if (
        isinstance(migrations, bool)
        or not isinstance(migrations, int)
        or not 0 <= migrations <= HELLO_PG_MAX_MIGRATIONS
    ):
        raise ValueError(f"migrations must be an int in 0..{HELLO_PG_MAX_MIGRATIONS}, got {migrations!r}")
    cache = (cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).resolve()
    target = cache / f"hello_pg-{version}-{_variant_tag(variant)}-{migrations}.tar.gz"
    return _cached_build(
        target,
        hello_pg_source_fingerprint(),
        HELLO_PG_PROJECT_DIR,
        lambda: _run_hello_pg_release(version, variant, migrations),
    )

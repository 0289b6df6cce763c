"""Where the release is built: on this machine, on a build host over SSH, or in a container.

A release bundles a native ERTS, so it must be built on a machine like the
targets (same architecture, a libc no newer than theirs). ``build.strategy``:

``local`` (default)
    ``build.command`` in ``build.path`` here (:func:`build_locally`, its output streamed).
``host``
    The project's source (without ``_build``, ``deps``, ``.git`` and the output
    directory) is streamed as a tarball to a fresh directory on the build host
    (strict host keys, like any target), ``build.command`` runs there, and the
    tarball it wrote is fetched back over the same connection (``cat`` on a
    channel, checked against the sha256 the host computed) into
    ``build.output``; the remote directory is removed afterwards.
``docker``
    ``<engine> build --network host --output type=local,dest=<build.output>``
    with the configured Dockerfile, ``<engine>`` being ``build.engine``
    (``docker`` or ``podman``; ``auto`` picks the first whose ``info``
    answers): a multi-stage build whose exported stage holds the release
    tarball. :mod:`deployer.build.dockerfile` renders such a Dockerfile
    (``deployer init --docker``); its build stage also exports the container's
    platform, which becomes the sidecar below.

Every strategy records where it built next to the tarball
(``<tarball>.platform.json``, see :mod:`deployer.core.compat`); the tarball itself is
validated by :func:`deployer.core.artifact.inspect_tarball` like any other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import secrets
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from deployer.build.dockerfile import PLATFORM_FILE
from deployer.core.artifact import find_tarball, sha256_file
from deployer.core.compat import PLATFORM_PROBE, BuildPlatform, local_platform, write_sidecar
from deployer.core.config import HostConfig, InventoryConfig
from deployer.core.inventory import Inventory
from deployer.errors import ArtifactError, DeployerError
from deployer.remote.flavours import flavour
from deployer.remote.release import PRELUDE
from deployer.remote.shell import Part, Script, join, template
from deployer.ssh.transport import Endpoint, SSHTransport

Log = Callable[[str], None]

# Never sent to a build host: build output, fetched dependencies, version control.
EXCLUDED_ANYWHERE = frozenset({"_build", ".git", ".elixir_ls", "erl_crash.dump", "rebar3.crashdump"})
EXCLUDED_AT_TOP = frozenset({"deps", "_checkouts"})
FETCH_CHUNK = 1 << 20


def _quiet(_: str) -> None:
    pass


def build(inventory: Inventory, *, cwd: Path | None = None, log: Log | None = None, output: Log | None = None) -> Path:
    """Build the release with the inventory's ``build.strategy``; return the local tarball.

    ``log`` gets deployer's own lines (what is being done), ``output`` (default: ``log``) each line of the
    build command's or the container engine's output as it comes. The build machine's platform is
    recorded in ``<tarball>.platform.json``.
    """
    from deployer.operations.hooks import run_build_hooks  # the build module is imported by operations

    config = inventory.config
    log = log or _quiet
    output = output or log
    project = (cwd or Path.cwd()) / config.build.path
    strategy = config.build.strategy
    run_build_hooks(inventory, "before_build")
    if strategy == "host":
        path, platform = build_on_host(inventory, project, log=log)
    elif strategy == "docker":
        path, platform = build_in_docker(config, project, log=log, output=output)
    else:
        path = build_locally(config, project, output=output)
        platform = local_platform()
    write_sidecar(path, platform, sha256_file(path))
    run_build_hooks(inventory, "after_build", tarball=str(path))
    return path


def _output_dir(config: InventoryConfig, project: Path) -> Path:
    """``build.output`` under the project, emptied (it only ever holds what a build put there)."""
    out = project / config.build.output
    if out.resolve() == project.resolve() or project.resolve() not in out.resolve().parents:
        raise ArtifactError(f"build.output: {out} must be a directory inside {project}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return out


# --- build host ------------------------------------------------------------------------------------------


def build_host_endpoint(inventory: Inventory) -> Endpoint:
    """How to reach the build host: an inventory host by name, or its own name/address/port/user, both with
    the inventory's ``ssh`` settings (strict host keys), and ``build.timeout`` as the command deadline."""
    from deployer.ssh.endpoints import endpoint

    config = inventory.config
    spec = config.build.host
    if spec is None:
        raise ArtifactError("build.strategy is `host` but build.host is not set")
    if isinstance(spec, str):
        host = next((h for h in config.hosts if h.name == spec), None)
        if host is None:
            raise ArtifactError(f"build.host: no host named {spec!r} in hosts")
    else:
        host = HostConfig(name=spec.name, address=spec.address, port=spec.port, user=spec.user)
    return dataclasses.replace(endpoint(inventory, host), command_timeout=config.build.timeout)


def _excluded(relative: PurePosixPath, extra: Iterable[PurePosixPath]) -> bool:
    if any(part in EXCLUDED_ANYWHERE for part in relative.parts):
        return True
    if relative.parts and relative.parts[0] in EXCLUDED_AT_TOP:
        return True
    return any(relative == e or e in relative.parents for e in extra)


def source_archive(project: Path, dest: Path, *, exclude: Iterable[str] = ()) -> list[str]:
    """Write the project's source to ``dest`` (tar.gz) without ``_build``, ``deps``, ``.git`` (and
    ``exclude``, paths relative to the project); owners are dropped. Returns the archived names."""
    extra = [PurePosixPath(e) for e in exclude]
    names: list[str] = []

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(dest, "w:gz", compresslevel=6) as tar:
        for root, dirs, files in os.walk(project):
            base = Path(root)
            rel_root = PurePosixPath(base.relative_to(project).as_posix())
            kept = []
            for name in sorted(dirs):
                rel = rel_root / name if rel_root != PurePosixPath(".") else PurePosixPath(name)
                if _excluded(rel, extra):
                    continue
                if (base / name).is_symlink():
                    tar.add(base / name, arcname=rel.as_posix(), recursive=False, filter=clean)
                    names.append(rel.as_posix())
                    continue
                kept.append(name)
                tar.add(base / name, arcname=rel.as_posix(), recursive=False, filter=clean)
                names.append(rel.as_posix())
            dirs[:] = kept
            for name in sorted(files):
                rel = rel_root / name if rel_root != PurePosixPath(".") else PurePosixPath(name)
                path = base / name
                if _excluded(rel, extra) or not (path.is_file() or path.is_symlink()):
                    continue
                tar.add(path, arcname=rel.as_posix(), recursive=False, filter=clean)
                names.append(rel.as_posix())
    return names


def receive_source_script(workdir: str) -> Script:
    """Unpack the source tarball arriving on stdin into a fresh ``workdir`` (argv script: stdin is data)."""
    parts = join(
        (PRELUDE,),
        template(
            'w={{workdir}}\nmkdir -p "${w%/*}"\nmkdir "$w"\ntar -xzf - -C "$w" --no-same-owner\necho received=1\n',
            workdir=workdir,
        ),
    )
    return Script(name="send-source", parts=parts, stdin=False)


def remote_build_script(workdir: str, command: str, tarball_glob: str, env: dict[str, str], timeout: float) -> Script:
    """Run the build in ``workdir`` (its output on stderr), then print ``tarball=``, ``size=``, ``sha256=`` of
    the newest file matching ``tarball_glob`` and the build host's platform."""
    exports: list[Part] = []
    for name, value in sorted(env.items()):
        exports.extend(template(f"{name}={{{{value}}}}; export {name}\n", value=value))
    parts = join(
        (PRELUDE,),
        template('w={{workdir}}\ncd "$w"\n', workdir=workdir),
        tuple(exports),
        template(
            "step build\n"
            "sh -c {{command}} </dev/null 1>&2\n"
            "step find-tarball\n"
            "pattern={{glob}}\n"
            "newest=\n"
            # Unquoted on purpose: pathname expansion of the configured glob (no command substitution).
            "for f in $pattern; do\n"
            '  [ -f "$f" ] || continue\n'
            '  if [ -z "$newest" ] || [ "$f" -nt "$newest" ]; then newest=$f; fi\n'
            "done\n"
            '[ -n "$newest" ] || fail "the build wrote no tarball matching $pattern (set build.tarball)"\n'
            'echo "tarball=$w/$newest"\n'
            'echo "size=$(wc -c < "$newest" | tr -d " ")"\n'
            'echo "sha256=$(sha256sum "$newest" | cut -d " " -f 1)"\n',
            command=command,
            glob=tarball_glob,
        ),
        (PLATFORM_PROBE,),
    )
    return Script(name="build", parts=parts, timeout=timeout)


def cleanup_script(workdir: str) -> Script:
    return Script(name="clean-build", parts=join((PRELUDE,), template("rm -rf {{w}}\n", w=workdir)), timeout=120)


def parse_build_output(stdout: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("tarball", "size", "sha256"):
            values[key] = value.strip()
    missing = {"tarball", "size", "sha256"} - set(values)
    if missing or not values["size"].isdigit() or len(values["sha256"]) != 64:
        raise ArtifactError(f"the build host did not report the tarball it built: {stdout[-500:]!r}")
    return values


def fetch_file(transport: SSHTransport, remote: str, dest: Path, *, size: int, sha256: str, timeout: float) -> None:
    """Copy ``remote`` to ``dest`` with ``cat`` on a channel of ``transport``; verify size and sha256."""
    channel = transport.paramiko_transport.open_session(timeout=transport.endpoint.connect_timeout + 20)
    transport.sessions += 1
    digest = hashlib.sha256()
    received = 0
    deadline = time.monotonic() + timeout
    partial = dest.with_name(dest.name + ".partial")
    try:
        channel.exec_command("cat -- " + shlex.quote(remote))
        channel.settimeout(30)
        with partial.open("wb") as out:
            while True:
                if time.monotonic() > deadline:
                    raise ArtifactError(f"fetching {remote} from {transport.name} timed out after {timeout:g}s")
                data = channel.recv(FETCH_CHUNK)
                if not data:
                    break
                out.write(data)
                digest.update(data)
                received += len(data)
        status = channel.recv_exit_status()
        errors = b""
        while channel.recv_stderr_ready():
            errors += channel.recv_stderr(65536)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ArtifactError(f"fetching {remote} from {transport.name} failed: {exc}") from None
    finally:
        channel.close()
    if status != 0 or received != size or digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise ArtifactError(
            f"fetching {remote} from {transport.name}: got {received} of {size} bytes, exit {status}, "
            f"sha256 {digest.hexdigest()[:12]} (expected {sha256[:12]}) {errors.decode(errors='replace')[-300:]}"
        )
    partial.rename(dest)


def build_on_host(
    inventory: Inventory,
    project: Path,
    *,
    log: Log = _quiet,
    connect: Callable[[Endpoint], SSHTransport] = SSHTransport,
) -> tuple[Path, BuildPlatform]:
    """``build.strategy: host``: send the source, build on the build host, fetch the tarball back."""
    config = inventory.config
    if not project.is_dir():
        raise ArtifactError(f"build.path: {project} is not a directory")
    spec = flavour(config.app.flavour)
    command = config.build.command or spec.default_build
    pattern = (config.build.tarball or spec.default_tarball).format(app=config.app.name)
    endpoint = build_host_endpoint(inventory)
    workdir = f"{config.build.remote_path}/{config.app.name}-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(4)}"
    out = _output_dir(config, project)
    log(f"build host {endpoint.name} ({endpoint.user}@{endpoint.address}:{endpoint.port}): {workdir}")
    transport = connect(endpoint)
    try:
        with tempfile.TemporaryDirectory(prefix="deployer-source-") as tmp:
            archive = Path(tmp) / "source.tar.gz"
            names = source_archive(project, archive, exclude=[config.build.output])
            log(f"sending the source: {len(names)} entries, {archive.stat().st_size / 2**20:.1f} MiB")
            sent = transport.upload(receive_source_script(workdir), archive)
            if not sent.ok:
                raise ArtifactError(f"{endpoint.name}: could not unpack the source in {workdir}: {sent.stderr[-500:]}")
        try:
            log(f"building: {command}")
            done = transport.run(
                remote_build_script(workdir, command, pattern, dict(config.build.env), config.build.timeout)
            )
            if not done.ok:
                tail = "\n".join(done.stderr.splitlines()[-30:])
                raise ArtifactError(
                    f"build failed on {endpoint.name}: `{command}` in {workdir} exited {done.exit_status}\n{tail}",
                    hint="fix the build (the build host needs the build tools), or deploy a prebuilt --tarball",
                )
            found = parse_build_output(done.stdout)
            dest = out / PurePosixPath(found["tarball"]).name
            log(f"fetching {found['tarball']} ({int(found['size']) / 2**20:.1f} MiB)")
            fetch_file(
                transport,
                found["tarball"],
                dest,
                size=int(found["size"]),
                sha256=found["sha256"],
                timeout=config.build.timeout,
            )
            platform = BuildPlatform.parse_probe(done.stdout, strategy="host", machine=endpoint.name)
        finally:
            try:
                transport.run(cleanup_script(workdir))
            except DeployerError as exc:
                log(f"warning: could not remove {workdir} on {endpoint.name}: {exc}")
    finally:
        transport.close()
    return dest, platform


# --- docker ----------------------------------------------------------------------------------------------

ENGINES = ("docker", "podman")
"""What ``build.engine: auto`` tries, in order."""
# podman (buildah) prints these for each Dockerfile step; Docker's classic builder prints the same
# "Step n/m" / "Using cache" pair, BuildKit prints "#n [stage n/m] ..." and "#n CACHED".
_STEP_RE = re.compile(r"^(?:\[\d+/\d+\] )?STEP \d+/\d+: (?P<step>.*)$|^Step \d+/\d+ : (?P<classic>.*)$")
_CACHE_RE = re.compile(r"^(?:--->|-->) Using cache\b")


def docker_command(config: InventoryConfig, project: Path, dest: Path, *, engine: str = "docker") -> list[str]:
    """The exact ``<engine> build`` argv: the local exporter writes the exported stage's files to ``dest``
    (BuildKit's with Docker, buildah's with podman). ``build.env`` names become value-less ``--build-arg
    NAME`` (the engine reads the value from the environment, so it is not in argv)."""
    build_config = config.build
    cmd = [engine, "build", "--file", str(project / build_config.dockerfile)]
    if build_config.network != "default":
        cmd += ["--network", build_config.network]
    if build_config.target:
        cmd += ["--target", build_config.target]
    if build_config.platform:
        cmd += ["--platform", build_config.platform]
    if build_config.image:
        cmd += ["--build-arg", f"BUILDER_IMAGE={build_config.image}"]
    for name in sorted(build_config.env):
        cmd += ["--build-arg", name]
    cmd += ["--output", f"type=local,dest={dest}", str(project)]
    return cmd


def _engine_unavailable(engine: str) -> str | None:
    found = shutil.which(engine)
    if found is None:
        return f"the {engine} command is not installed"
    try:
        done = subprocess.run([found, "info"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{engine} info` failed: {exc}"
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        return f"no engine answers `{found} info`: {last[-1] if last else 'exit ' + str(done.returncode)}"
    return None


def resolve_engine(engine: str = "auto") -> tuple[str | None, str | None]:
    """``(command, None)`` for the engine to build with, or ``(None, why not)``.

    ``auto`` is the first of :data:`ENGINES` whose ``info`` works (a ``docker`` CLI without a daemon
    does not count); any other value is that command, which must answer ``info``."""
    if engine != "auto":
        why = _engine_unavailable(engine)
        return (engine, None) if why is None else (None, why)
    reasons = []
    for candidate in ENGINES:
        why = _engine_unavailable(candidate)
        if why is None:
            return candidate, None
        reasons.append(why)
    return None, "; ".join(reasons)


def docker_unavailable(engine: str = "auto") -> str | None:
    """Why the configured container engine (``build.engine``) cannot build here; None when it can."""
    return resolve_engine(engine)[1]


def cached_steps(lines: Iterable[str]) -> list[tuple[str, bool]]:
    """Each Dockerfile step of a podman (or classic ``docker build``) log, and whether its layer came
    from the cache (``--> Using cache``), in order."""
    steps: list[tuple[str, bool]] = []
    for line in lines:
        text = line.strip()
        match = _STEP_RE.match(text)
        if match:
            steps.append(((match.group("step") or match.group("classic")).strip(), False))
        elif _CACHE_RE.match(text) and steps:
            steps[-1] = (steps[-1][0], True)
    return steps


def pick_tarball(dest: Path, app: str) -> Path:
    """The release tarball among the exported files: the only ``*.tar.gz``, or the only ``<app>*.tar.gz``."""
    found = sorted(p for p in dest.rglob("*.tar.gz") if p.is_file())
    if len(found) > 1:
        found = [p for p in found if p.name.startswith(app)]
    if len(found) != 1:
        listed = ", ".join(str(p.relative_to(dest)) for p in found) or "none"
        raise ArtifactError(
            f"the exported Docker stage must hold exactly one release tarball; found: {listed}",
            hint="COPY only the release tarball into the exported stage (see docs/building.md)",
        )
    return found[0]


def _run_streaming(
    cmd: list[str], env: dict[str, str], timeout: float, log: Log, *, cwd: Path | None = None
) -> tuple[int, list[str]]:
    """Run ``cmd`` with stdout and stderr merged, each line passed to ``log`` as it comes (a build takes
    minutes: the operator sees it progress); killed after ``timeout`` seconds."""
    lines: list[str] = []
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        proc.kill()

    timer = threading.Timer(timeout, expire)
    timer.start()
    try:
        for line in proc.stdout or ():
            line = line.rstrip("\n")
            lines.append(line)
            log(line)
        status = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if expired.is_set():
        lines.append(f"(killed: the build took longer than build.timeout, {timeout:g}s)")
    return status, lines


def build_locally(config: InventoryConfig, project: Path, *, output: Log = _quiet) -> Path:
    """``build.strategy: local``: ``build.command`` in ``project``, its output streamed line by line to
    ``output``; a failure carries the output's last lines. Killed after ``build.timeout``."""
    if not project.is_dir():
        raise ArtifactError(f"build.path: {project} is not a directory")
    spec = flavour(config.app.flavour)
    command = config.build.command or spec.default_build
    pattern = (config.build.tarball or spec.default_tarball).format(app=config.app.name)
    env = {**os.environ, **config.build.env}
    started = time.time()
    status, lines = _run_streaming(["sh", "-c", command], env, config.build.timeout, output, cwd=project)
    if status != 0:
        tail = "\n".join(lines[-30:])
        raise ArtifactError(
            f"build failed: `{command}` in {project} exited {status}" + (f"\n{tail}" if tail else ""),
            hint="fix the build, or deploy a prebuilt tarball with --tarball PATH",
        )
    return find_tarball(project, pattern, since=started - 2)


def _docker_platform(config: InventoryConfig, out: Path) -> BuildPlatform:
    """The platform the build container reported (:data:`deployer.build.dockerfile.PLATFORM_FILE`, written
    by Dockerfiles ``deployer init --docker`` renders); else the architecture asked for by
    ``build.platform``, if any."""
    machine = config.build.image or config.build.dockerfile
    probe = out / PLATFORM_FILE
    if probe.is_file():
        text = probe.read_text(errors="replace")
        probe.unlink()
        return BuildPlatform.parse_probe(text, strategy="docker", machine=machine)
    # `linux/arm64/v8` -> arm64: the architecture the image was built for, when one was asked for.
    parts = (config.build.platform or "").split("/")
    arch = (parts[1] if len(parts) > 1 else parts[0]) or None
    return BuildPlatform(arch=arch, strategy="docker", machine=machine)


def build_in_docker(
    config: InventoryConfig, project: Path, *, log: Log = _quiet, output: Log | None = None
) -> tuple[Path, BuildPlatform]:
    """``build.strategy: docker``: a multi-stage ``<engine> build`` exporting the release stage's files;
    the engine's output goes to ``output`` (default: ``log``) line by line."""
    if not project.is_dir():
        raise ArtifactError(f"build.path: {project} is not a directory")
    if not (project / config.build.dockerfile).is_file():
        raise ArtifactError(f"build.dockerfile: {project / config.build.dockerfile} does not exist")
    engine, why = resolve_engine(config.build.engine)
    if engine is None:
        raise ArtifactError(
            f"cannot build with a container engine (build.engine: {config.build.engine}): {why}",
            hint="install Docker or podman (scripts/podman-setup.sh), set build.engine, "
            "use build.strategy local or host, or deploy a prebuilt --tarball",
        )
    out = _output_dir(config, project)
    cmd = docker_command(config, project, out, engine=engine)
    log(f"{engine} build: " + shlex.join(cmd))
    env = {**os.environ, **config.build.env, "DOCKER_BUILDKIT": "1"}
    status, lines = _run_streaming(cmd, env, config.build.timeout, output or log)
    if status != 0:
        tail = "\n".join(lines[-30:])
        raise ArtifactError(
            f"{engine} build failed (exit {status}) in {project}\n{tail}",
            hint="the last lines above are the engine's; fix the Dockerfile step that failed",
        )
    steps = cached_steps(lines)
    if steps:
        log(f"{sum(cached for _, cached in steps)} of {len(steps)} build steps reused cached layers")
    return pick_tarball(out, config.app.name), _docker_platform(config, out)


__all__ = [
    "build",
    "build_host_endpoint",
    "build_in_docker",
    "build_locally",
    "build_on_host",
    "cached_steps",
    "docker_command",
    "docker_unavailable",
    "resolve_engine",
    "source_archive",
]

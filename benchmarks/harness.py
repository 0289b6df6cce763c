"""The machinery of the benchmark: deployments of the example app on a fleet, the deployer and a raw
OpenSSH baseline doing the same work, measured alternately in the same run.

A *scenario* is N hosts reached directly (LAN) or through one :class:`LatencyProxy` per host, and an
artifact size. It makes two deployments of the example app on those hosts (each with its own
``deploy_to``, HTTP port and node name): one driven by deployer, one by the baseline (scenarios on
the same hosts share them, see :class:`Bench`). Both first deploy a warm-up variant of the release (a
*first deploy*, recorded, not compared) and upgrade once untimed; then each repeat deploys a new
variant (a different sha256, so it must be uploaded) as an *upgrade* of a running node, deployer and
baseline alternating who goes first. Finally deployer re-deploys the last variant, which every host
already has (0 bytes uploaded).

The baseline does per host, all hosts in parallel: one ``scp`` (tarball + env file) and one ``ssh``
running a shell script that verifies the sha256, extracts into a new release directory, migrates
(on the migrator only, after every host has prepared, before any switch), switches ``current``
atomically, stops the old VM (SIGTERM + wait), starts the new one as a daemon with the same
environment and waits for ``/health`` with curl. The coordination between hosts (prepared →
migrate → go) travels on that one ssh session's stdin, so the baseline uses two connections and
two sessions per host — the least a script can do.
"""

from __future__ import annotations

import compileall
import contextlib
import gzip
import io
import json
import math
import os
import platform
import queue
import resource
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from benchmarks.hostcpu import HostCpu, ProcessAccounting
from deployer.core.inventory import Inventory, load_inventory
from deployer.core.plan import node_env
from deployer.remote.shell import Secret
from tests.harness.fleet import Fleet, FleetHost
from tests.harness.fleet_tasks import common_dir, local_inventory, prepare_fleet_files
from tests.harness.proxy import LatencyProxy

REPO = Path(__file__).resolve().parents[1]
ENV = "bench"
APP = "hello"
MIGRATE_EXPR = "Hello.Release.migrate()"
PADDING_MEMBER = "lib/padding/priv/blob.bin"

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# --- artifacts -------------------------------------------------------------------------------------------


class VariantMaker:
    """Makes variants of a release tarball: the same release plus ``lib/padding/priv/blob.bin``.

    Every variant has its own random blob, hence its own sha256 (hosts must upload it). The blob is
    outside the release's boot path (no ``ebin``), so each variant is still a valid, bootable release.
    To make variants cheaply, the base tar stream (without its end-of-archive blocks) is gzipped once
    and each variant appends a second gzip member holding the padding entries and the end-of-archive
    marker: a multi-member gzip whose decompressed stream is one ordinary tar (gzip, GNU tar and
    Python's tarfile all read it).
    """

    def __init__(self, base: Path, workdir: Path) -> None:
        self.base = base
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(base, "r:gz") as tar:
            for _ in tar:
                pass
            end = tar.offset  # where the end-of-archive blocks start
        with gzip.open(base, "rb") as raw:
            prefix = raw.read(end)
        self._prefix = gzip.compress(prefix, compresslevel=6, mtime=0)
        self._count = 0

    def make(self, pad_bytes: int, tag: str) -> Path:
        self._count += 1
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for directory in ("lib/padding", "lib/padding/priv"):
                info = tarfile.TarInfo(directory)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
                tar.addfile(info)
            info = tarfile.TarInfo(PADDING_MEMBER)
            info.size, info.mode, info.mtime = pad_bytes, 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(os.urandom(pad_bytes)))
        # Random bytes do not compress; level 1 keeps making a 50 MB variant fast.
        suffix = gzip.compress(buffer.getvalue(), compresslevel=1, mtime=0)
        path = self.workdir / f"hello-0.1.0-{tag}-{self._count}.tar.gz"
        path.write_bytes(self._prefix + suffix)
        return path


def sha256_of(path: Path) -> str:
    from deployer.core.artifact import sha256_file

    return sha256_file(path)


# --- reaching the hosts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """Where clients connect to reach one fleet host."""

    host: FleetHost
    address: str
    port: int


class Network:
    """Routes to some hosts of a fleet, direct or through a :class:`LatencyProxy` each (``delay_s`` per
    direction), with a known_hosts file and OpenSSH argv that match them (strict host key checking)."""

    def __init__(self, fleet: Fleet, hosts: Sequence[FleetHost], workdir: Path, delay_s: float = 0.0) -> None:
        self.fleet = fleet
        self.delay_s = delay_s
        self.proxies: list[LatencyProxy] = []
        self.routes: list[Route] = []
        if delay_s <= 0:
            self.known_hosts = fleet.known_hosts
            self.routes = [Route(h, h.address, h.port) for h in hosts]
            return
        keys = {}
        for line in fleet.known_hosts.read_text().splitlines():
            name, keytype, blob = line.split()[:3]
            keys[name] = f"{keytype} {blob}"
        lines = []
        try:
            for host in hosts:
                proxy = LatencyProxy(host.address, host.port, delay_s=delay_s).start()
                self.proxies.append(proxy)
                self.routes.append(Route(host, "127.0.0.1", proxy.port))
                lines.append(f"[127.0.0.1]:{proxy.port} {keys[host.address]}")
        except BaseException:
            self.close()
            raise
        workdir.mkdir(parents=True, exist_ok=True)
        self.known_hosts = workdir / f"known_hosts.proxied.{secrets.token_hex(3)}"
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def route(self, name: str) -> Route:
        return next(r for r in self.routes if r.host.name == name)

    def ssh_argv(self, route: Route) -> list[str]:
        """``Fleet.ssh_argv`` pointed at the route (the proxy) with the matching known_hosts."""
        argv = self.fleet.ssh_argv(route.host)
        out: list[str] = []
        skip = False
        for index, arg in enumerate(argv):
            if skip:
                skip = False
                continue
            if arg.startswith("UserKnownHostsFile="):
                arg = f"UserKnownHostsFile={self.known_hosts}"
            elif arg == "-p":
                out += ["-p", str(route.port)]
                skip = True
                continue
            elif index == len(argv) - 1:
                arg = f"{arg.rpartition('@')[0]}@{route.address}"
            out.append(arg)
        return out

    def scp_argv(self, route: Route, sources: Sequence[Path], dest_dir: str) -> list[str]:
        """``scp`` with the same options as :meth:`ssh_argv` (OpenSSH's default: the SFTP protocol)."""
        ssh = self.ssh_argv(route)
        options = ["-P" if a == "-p" else a for a in ssh[1:-1]]
        return ["scp", "-q", *options, *map(str, sources), f"{ssh[-1]}:{dest_dir}/"]

    def close(self) -> None:
        if self.proxies:
            # Let the delayed FINs of the last connections through: a proxy stopped with live
            # connections cancels their tasks, which asyncio reports as errors.
            time.sleep(4 * self.delay_s + 0.5)
        for proxy in self.proxies:
            proxy.stop()
        self.proxies.clear()


# --- deployments ----------------------------------------------------------------------------------------


@dataclass
class Deployment:
    """One deployment of the example app on some hosts: own deploy_to, HTTP port, node name, inventory."""

    name: str
    port: int
    network: Network
    inventory_dir: Path
    data: dict[str, Any]

    @property
    def deploy_to(self) -> str:
        return str(self.data["deploy_to"])

    @property
    def hosts(self) -> list[FleetHost]:
        return [r.host for r in self.network.routes]

    def inventory(self) -> Inventory:
        return load_inventory(ENV, self.inventory_dir)

    def local_dir(self, host: FleetHost) -> Path:
        """The deployment's directory on this machine (host_dir is bind-mounted at the deploy root)."""
        return host.host_dir / self.name


_ports = iter(range(4600, 5600))


def make_deployment(fleet: Fleet, network: Network, workdir: Path, name: str) -> Deployment:
    prepare_fleet_files(fleet)
    port = next(_ports)
    data = local_inventory(fleet, project=str(REPO / "examples" / "hello"), port=port)
    data["hosts"] = [
        {"name": r.host.name, "address": r.address, "port": r.port, "roles": ["app", "migrator"] if i == 0 else ["app"]}
        for i, r in enumerate(network.routes)
    ]
    data["ssh"]["known_hosts"] = str(network.known_hosts)
    data["deploy_to"] = f"{fleet.deploy_root}/{name}"
    data["keep_releases"] = 2
    data["node"] = {"name": f"{name}@127.0.0.1", "stop_timeout": 20}
    data["env"]["clear"]["HELLO_DATA_DIR"] = str(common_dir(fleet.runid) / name)
    directory = workdir / "inventories" / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{ENV}.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    return Deployment(name=name, port=port, network=network, inventory_dir=directory, data=data)


def retarget(deployment: Deployment, network: Network) -> None:
    """Point an existing deployment's inventory at ``network`` (same hosts, other routes)."""
    deployment.network = network
    for entry, route in zip(deployment.data["hosts"], network.routes, strict=True):
        entry["address"], entry["port"] = route.address, route.port
    deployment.data["ssh"]["known_hosts"] = str(network.known_hosts)
    (deployment.inventory_dir / f"{ENV}.yml").write_text(yaml.safe_dump(deployment.data, sort_keys=False))


def kill_nodes(fleet: Fleet, deployment: Deployment) -> None:
    """SIGKILL every VM of ``deployment`` and remove its files (between scenarios; not timed)."""
    d = shlex.quote(deployment.deploy_to)
    script = (
        'for p in /proc/[0-9]*; do case "$(readlink $p/exe 2>/dev/null)" in '
        f"{d}/releases/*) kill -KILL ${{p#/proc/}} 2>/dev/null;; esac; done; true"
    )

    def one(host: FleetHost) -> None:
        with contextlib.suppress(Exception):
            fleet.exec(host.name, script, check=False, timeout=30)
        shutil.rmtree(deployment.local_dir(host), ignore_errors=True)

    _in_parallel(one, deployment.hosts)
    shutil.rmtree(common_dir(fleet.runid) / deployment.name, ignore_errors=True)


def _in_parallel(work: Callable[[FleetHost], None], hosts: Sequence[FleetHost]) -> None:
    threads = [threading.Thread(target=work, args=(h,), daemon=True) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# --- CPU accounting ------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds spent by the fleet's hosts and by this process's children (the deploy clients).

    A host's processes are those in its network namespace. The sum of utime+stime+cutime+cstime over
    the live ones covers every process that ran there since: an exited process's time moves into its
    parent's cutime when it is reaped, and every host process is reaped inside the host (by sshd, a
    shell, or the host's init). Exact on a machine shared with other work, unlike wall time.
    """

    def __init__(self, fleet: Fleet) -> None:
        self.inodes = set()
        for host in fleet.hosts:
            with contextlib.suppress(OSError):
                self.inodes.add(os.stat(f"/run/netns/{host.netns}").st_ino)

    def hosts(self) -> float:
        ticks = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if os.stat(f"/proc/{entry.name}/ns/net").st_ino not in self.inodes:
                    continue
                with open(f"/proc/{entry.name}/stat") as handle:
                    fields = handle.read().rpartition(")")[2].split()
            except OSError:
                continue
            ticks += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
        return ticks / _TICK

    @staticmethod
    def clients() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    @staticmethod
    def machine() -> float:
        """CPU seconds the whole machine has been busy (all processes, kernel included)."""
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        return (sum(values) - values[3] - values[4]) / _TICK  # minus idle and iowait

    def snapshot(self) -> tuple[float, float, float, float]:
        return self.hosts(), self.clients(), self.machine(), time.monotonic()

    def since(self, before: tuple[float, float, float, float]) -> dict[str, float]:
        hosts, clients = self.hosts() - before[0], self.clients() - before[1]
        # Everything else the machine did meanwhile (other work on a shared machine, this process, the
        # latency proxies, kernel threads), in cores: how noisy this run's wall time is.
        others = max(0.0, self.machine() - before[2] - hosts - clients)
        return {
            "hosts": round(hosts, 2),
            "client": round(clients, 2),
            "total": round(hosts + clients, 2),
            "others_cores": round(others / max(1e-3, time.monotonic() - before[3]), 2),
        }

    def settle(self, quiet: float = 0.1, window: float = 0.5, limit: float = 15.0) -> float:
        """Wait (up to ``limit`` s) until the hosts use less than ``quiet`` of a core: the nodes a deploy
        just started finish booting before the next run is timed. Returns the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < limit:
            before = self.hosts()
            time.sleep(window)
            if (self.hosts() - before) / window < quiet:
                break
        return round(time.monotonic() - started, 2)


# --- deployer side ---------------------------------------------------------------------------------------


def compile_bytecode() -> None:
    """Byte-compile deployer (and the worker) as ``pip install`` does for an installed wheel.

    A checkout run with ``PYTHONDONTWRITEBYTECODE=1`` (set on these machines) never writes its ``.pyc``
    files, so every deployer process would compile its ~45 modules from source (~0.25 s) before doing
    anything: a cost no installed copy has. Compiling once here makes the worker start like one.
    """
    for package in ("deployer", "benchmarks"):
        compileall.compile_dir(REPO / package, quiet=1)


def run_deployer(deployment: Deployment, tarball: Path, timeout: float = 900) -> dict[str, Any]:
    """``api.deploy`` in a child process (benchmarks.worker); returns its summary plus process wall time."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    argv = [
        sys.executable,
        "-m",
        "benchmarks.worker",
        "--inventory-dir",
        str(deployment.inventory_dir),
        "--env",
        ENV,
        "--tarball",
        str(tarball),
    ]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.monotonic() - started
    try:
        summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"deployer worker failed (exit {done.returncode}):\n{done.stderr[-3000:]}") from None
    if not summary.get("ok"):
        failed = [h for h in summary["hosts"] if h["outcome"] != "success"]
        raise RuntimeError(f"deployer run failed: {summary['error']}; {failed[:3]}")
    hosts = summary["hosts"]
    summary.update(
        side="deployer",
        seconds=summary["api_seconds"],
        process_seconds=round(wall, 4),
        bytes_uploaded=sum(h["uploaded_bytes"] for h in hosts),
        # first upload start to last upload end (the worker's events); each host's own upload time is
        # in its timings["upload"]
        upload_phase=summary.get("upload_phase"),
        sessions={h["host"]: h["sessions"] for h in hosts},
        outcomes={o: sum(1 for h in hosts if h["outcome"] == o) for o in sorted({h["outcome"] for h in hosts})},
    )
    return summary


# --- baseline side ---------------------------------------------------------------------------------------

BASELINE_SCRIPT = r"""set -eu
d={d}; rid={rid}; sha={sha}; app={app}
in="$d/incoming"; a="$d/artifacts/$sha.tar.gz"; r="$d/releases/$rid"
load_env() {{ set -a; . "$d/shared/env/$rid.env"; set +a; }}
actual=$(openssl dgst -sha256 -r "$in/$sha.tar.gz" | cut -d ' ' -f 1)
[ "$actual" = "$sha" ] || {{ echo "checksum mismatch: $actual" >&2; exit 1; }}
mkdir -p "$d/artifacts" "$d/releases" "$d/shared/tmp"
(umask 077; mkdir -p "$d/shared/env")
mv -f "$in/$sha.tar.gz" "$a"
mv -f "$in/$rid.env" "$d/shared/env/$rid.env"
mkdir "$r"
tar -xzf "$a" -C "$r" --no-same-owner
echo prepared
read -r cmd
if [ "$cmd" = migrate ]; then
  ( load_env; cd "$d/shared"; "$r/bin/$app" eval {migrate} ) >&2
  echo migrated
  read -r cmd
fi
[ "$cmd" = go ] || {{ rm -rf "$r"; echo "aborted" >&2; exit 3; }}
ln -sfn "releases/$rid" "$d/current.tmp"
mv -T "$d/current.tmp" "$d/current"
old=$(pgrep -f "^$d/releases/[^ ]*/beam.smp" || true)
if [ -n "$old" ]; then
  kill -TERM $old 2>/dev/null || true
  for p in $old; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
fi
( load_env; cd "$d/shared"; exec "$d/current/bin/$app" daemon )
end=$(( $(date +%s) + {deadline} ))
until curl -fsS -o /dev/null --max-time 5 {url} 2>/dev/null; do
  [ "$(date +%s)" -lt "$end" ] || {{ echo "not healthy after {deadline}s" >&2; exit 4; }}
  sleep {interval}
done
n=0
while [ "$n" -lt {stable_polls} ]; do
  sleep {interval}
  curl -fsS -o /dev/null --max-time 5 {url} 2>/dev/null || {{ echo "unhealthy during stable_for" >&2; exit 4; }}
  n=$((n + 1))
done
ls -1dt "$d"/releases/*/ | tail -n +3 | xargs -r rm -rf
ls -1t "$d"/artifacts/*.tar.gz | tail -n +3 | xargs -r rm -f
echo done
"""


@dataclass
class _HostRun:
    route: Route
    proc: subprocess.Popen[bytes] | None = None
    scp_seconds: float | None = None
    lines: list[str] = field(default_factory=list)
    error: str | None = None
    exit: int | None = None
    stderr: str = ""


def baseline_env(deployment: Deployment, inventory: Inventory, host: FleetHost, rid: str, cookie: str) -> str:
    """The node's environment, as deployer computes it (same values), plus the cookie, written the way a
    hand-made script does it: a shell file it sources with ``set -a`` (deployer's own env file is data
    read by its launcher, not shell)."""
    config = next(h for h in inventory.hosts if h.name == host.name)
    # deployer's launcher adds DEPLOYER_RELEASE_ID when the node starts; a script writes it into its file.
    values = {**node_env(inventory, config), "DEPLOYER_RELEASE_ID": rid}
    lines = [f"{k}={shlex.quote(v.reveal() if isinstance(v, Secret) else v)}" for k, v in values.items()]
    return "".join(f"{line}\n" for line in lines) + f"RELEASE_COOKIE={shlex.quote(cookie)}\n"


def run_baseline(
    deployment: Deployment,
    tarball: Path,
    sha: str,
    workdir: Path,
    timeout: float = 900,
    mark: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Deploy ``tarball`` with scp + ssh to every host in parallel; returns timings like :func:`run_deployer`.

    ``mark`` (for profiling) is called with ``prepared``, ``migrated`` and ``done`` as the run gets there.
    """
    # Timed from here: what a script does before its first connection (read its configuration, write the
    # env file) counts, as deployer's inventory load and artifact checks count on its side.
    started_at = time.time()
    started = time.monotonic()
    mark = mark or _quiet
    inventory = deployment.inventory()
    health = inventory.config.health
    rid = f"{datetime.now(timezone.utc):%Y%m%d%H%M%S}-0.1.0-{secrets.token_hex(3)}"
    cookie_file = workdir / f"{deployment.name}.cookie"
    if not cookie_file.exists():
        cookie_file.write_text(secrets.token_hex(20))
    cookie = cookie_file.read_text()
    stage = workdir / "stage" / rid
    stage.mkdir(parents=True)
    (stage / f"{sha}.tar.gz").symlink_to(tarball.resolve())
    env_path = stage / f"{rid}.env"
    env_path.touch(mode=0o600)
    # Same values on every host of the example, so one file serves them all.
    env_path.write_text(baseline_env(deployment, inventory, deployment.hosts[0], rid, cookie))
    for host in deployment.hosts:  # the upload directory, as a deploy user's home would have it
        (deployment.local_dir(host) / "incoming").mkdir(parents=True, exist_ok=True)
    script = BASELINE_SCRIPT.format(
        d=shlex.quote(deployment.deploy_to),
        rid=shlex.quote(rid),
        sha=shlex.quote(sha),
        app=APP,
        migrate=shlex.quote(MIGRATE_EXPR),
        deadline=int(health.deadline),
        url=shlex.quote(str(health.http)),
        interval=f"{health.interval:g}",
        # deployer's health.stable_for, the same wait on this side: that long of checks at the same interval
        stable_polls=math.ceil(max(0.0, health.stable_for) / health.interval - 1e-9),
    )
    remote = "sh -c " + shlex.quote(script)
    events: queue.Queue[tuple[str, str]] = queue.Queue()
    runs = {r.host.name: _HostRun(r) for r in deployment.network.routes}
    network = deployment.network

    def host_thread(run: _HostRun) -> None:
        name = run.route.host.name
        try:
            started = time.monotonic()
            scp = subprocess.run(
                network.scp_argv(run.route, [stage / f"{sha}.tar.gz", env_path], f"{deployment.deploy_to}/incoming"),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            run.scp_seconds = time.monotonic() - started
            if scp.returncode != 0:
                run.error = f"scp failed: {scp.stderr.strip()}"
                return
            with open(stage / f"{name}.stderr", "w+b") as err:
                run.proc = subprocess.Popen(
                    [*network.ssh_argv(run.route), remote],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                )
                assert run.proc.stdout is not None
                for raw in run.proc.stdout:
                    line = raw.decode(errors="replace").strip()
                    run.lines.append(line)
                    events.put((name, line))
                run.exit = run.proc.wait()
                err.seek(0)
                run.stderr = err.read().decode(errors="replace")
        except Exception as exc:
            run.error = f"{type(exc).__name__}: {exc}"
        finally:
            events.put((name, "__exit__"))

    def send(name: str, command: str, close: bool = False) -> None:
        proc = runs[name].proc
        if proc is None or proc.stdin is None:
            return
        with contextlib.suppress(OSError):
            proc.stdin.write(command.encode() + b"\n")
            proc.stdin.flush()
            if close:
                proc.stdin.close()

    def wait_for(names: set[str], word: str, deadline: float) -> None:
        pending = set(names)
        while pending:
            try:
                name, line = events.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"baseline: no '{word}' from {sorted(pending)}") from None
            if line == word:
                pending.discard(name)
            elif line == "__exit__" and name in pending:
                run = runs[name]
                raise RuntimeError(f"baseline failed on {name}: {run.error or run.stderr.strip()[-500:]}")

    deadline = time.monotonic() + timeout
    threads = [threading.Thread(target=host_thread, args=(run,), daemon=True) for run in runs.values()]
    for thread in threads:
        thread.start()
    names = set(runs)
    migrator = deployment.hosts[0].name
    try:
        wait_for(names, "prepared", deadline)
        mark("prepared")
        send(migrator, "migrate")
        wait_for({migrator}, "migrated", deadline)
        mark("migrated")
        for name in names:
            send(name, "go", close=True)
        wait_for(names, "done", deadline)
        mark("done")
    except BaseException:
        for name in names:
            send(name, "abort", close=True)
        raise
    finally:
        for thread in threads:
            thread.join(max(1.0, deadline - time.monotonic()))
    wall = time.monotonic() - started
    failed = {n: r.stderr.strip()[-500:] or r.error for n, r in runs.items() if r.exit != 0}
    shutil.rmtree(stage, ignore_errors=True)
    if failed:
        raise RuntimeError(f"baseline failed: {failed}")
    size = tarball.stat().st_size
    scps = [r.scp_seconds for r in runs.values() if r.scp_seconds is not None]
    return {
        "side": "baseline",
        "ok": True,
        "seconds": round(wall, 4),
        "release": rid,
        "bytes_uploaded": size * len(runs),
        "upload_phase": round(max(scps), 4),
        "started_at": started_at,
        "hosts": [
            {"host": n, "scp_seconds": round(r.scp_seconds or 0, 4), "trace": _trace(r.stderr, started_at)}
            for n, r in runs.items()
        ],
        "sessions": {n: 2 for n in runs},  # one scp connection + one ssh connection, one session each
    }


def node_records(deployment: Deployment) -> dict[str, str]:
    """Each host's ``shared/node.pid`` (pid and start time of its node): a restarted node changes it."""
    out = {}
    for host in deployment.hosts:
        with contextlib.suppress(OSError):
            out[host.name] = (deployment.local_dir(host) / "shared" / "node.pid").read_text().strip()
    return out


def _trace(stderr: str, since: float) -> dict[str, float]:
    """``@t <stage> <epoch>`` lines a traced baseline script prints, as seconds since the start."""
    marks = (line.split() for line in stderr.splitlines() if line.startswith("@t "))
    return {m[1]: round(float(m[2]) - since, 3) for m in marks if len(m) == 3}


# --- scenarios -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """What to measure: ``hosts`` hosts, ``delay_ms`` per direction (0: direct), ``pad_bytes`` of padding."""

    name: str
    hosts: int
    repeats: int
    delay_ms: float = 0.0
    pad_bytes: int = 64
    redeploy: bool = True
    label: str = ""
    idle_procs: int = 0
    """Each host sees at least this many processes (idle ones added), as a production server does."""


def median(values: Sequence[float | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return round(statistics.median(clean), 4) if clean else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


class Bench:
    """Runs scenarios on one fleet. Scenarios on the same hosts share their two deployments: the first
    one deploys a warm-up release on both sides (recorded as the *first deploy*); later ones (latency,
    large artifact) start from the nodes already running, pointed at their own network."""

    def __init__(self, fleet: Fleet, base_tarball: Path, workdir: Path, log: Log = _quiet, settle: bool = True) -> None:
        self.fleet = fleet
        self.base = base_tarball
        self.workdir = workdir
        self.log = log
        self.settle = settle
        self.meter = CpuMeter(fleet)
        self.maker = VariantMaker(base_tarball, workdir / "artifacts")
        self.pairs: dict[int, tuple[Deployment, Deployment]] = {}
        self.idle: dict[str, list[int]] = {}  # host -> pids (in its pid namespace) of the idle processes added
        self.accounting = ProcessAccounting(workdir / "acct").start()
        self.host_cpu = HostCpu(self.accounting, self.meter.inodes)
        compile_bytecode()

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for hosts in list(self.pairs):
            self.release(hosts)
        self.accounting.close()
        for name, pids in self.idle.items():
            with contextlib.suppress(Exception):
                self.fleet.exec(name, "kill " + " ".join(map(str, pids)) + " 2>/dev/null; true", check=False)
        self.idle.clear()

    def populate(self, hosts: Sequence[FleetHost], count: int) -> dict[str, int]:
        """Idle processes on each host until it sees at least ``count`` (in its /proc); returns the counts."""
        seen: dict[str, int] = {}
        spawn = (
            "n=$(( {count} - $(ls -d /proc/[0-9]* | wc -l) ))\n"
            'while [ "$n" -gt 0 ]; do sleep 100000000 </dev/null >/dev/null 2>&1 & echo $!; n=$((n - 1)); done\n'
        )

        def one(host: FleetHost) -> None:
            done = self.fleet.exec(host.name, spawn.format(count=count + 2), timeout=300)
            self.idle.setdefault(host.name, []).extend(int(p) for p in done.stdout.split())
            seen[host.name] = int(self.fleet.exec(host.name, "ls -d /proc/[0-9]* | wc -l").stdout)

        _in_parallel(one, hosts)
        return seen
        with contextlib.suppress(OSError):  # the fleet's shared 'database' directory, unless others use it
            common_dir(self.fleet.runid).rmdir()

    def release(self, hosts: int) -> None:
        """Stop the nodes of the deployments on ``hosts`` hosts and remove their files."""
        for deployment in self.pairs.pop(hosts, ()):
            kill_nodes(self.fleet, deployment)

    def _pair(self, hosts: int, network: Network) -> tuple[tuple[Deployment, Deployment], bool]:
        if hosts in self.pairs:
            pair = self.pairs[hosts]
            for deployment in pair:
                retarget(deployment, network)
            return pair, False
        pair = (
            make_deployment(self.fleet, network, self.workdir, f"d{hosts}"),
            make_deployment(self.fleet, network, self.workdir, f"b{hosts}"),
        )
        self.pairs[hosts] = pair
        return pair, True

    def _measure(self, side: str, deployment: Deployment, variant: Path, sha: str) -> dict[str, Any]:
        if self.settle:
            # Write back what earlier runs left dirty now, not (30 s later, by the kernel) during this run.
            os.sync()
        waited = self.meter.settle() if self.settle else 0.0
        load = os.getloadavg()[0]
        nodes_before = node_records(deployment)
        kinds = self.host_cpu.snapshot()
        before = self.meter.snapshot()
        if side == "deployer":
            outcome = run_deployer(deployment, variant)
        else:
            outcome = run_baseline(deployment, variant, sha, self.workdir)
        outcome["cpu"] = self.meter.since(before)
        outcome["host_cpu"] = self.host_cpu.since(kinds)
        after = node_records(deployment)
        outcome["nodes_restarted"] = sum(1 for h, rec in after.items() if rec != nodes_before.get(h))
        outcome["settled_s"] = waited
        outcome["loadavg_1m"] = round(load, 2)
        return outcome

    def run(self, scenario: Scenario) -> dict[str, Any]:
        """(Warm-up,) ``repeats`` upgrades alternating which side goes first, then (optionally) a re-deploy.

        With ``settle``, each run waits until the hosts are quiet (the nodes the previous run started
        have finished booting), so no run pays for the one before it.
        """
        if scenario.hosts > len(self.fleet.hosts):
            raise ValueError(f"{scenario.name} needs {scenario.hosts} hosts; the fleet has {len(self.fleet.hosts)}")
        name, log = scenario.name, self.log
        variants = [self.maker.make(scenario.pad_bytes, f"{name}-r{i + 1}") for i in range(scenario.repeats)]
        shas = {p: sha256_of(p) for p in variants}
        runs: dict[str, list[dict[str, Any]]] = {"deployer": [], "baseline": []}
        result: dict[str, Any] = {
            "name": name,
            "label": scenario.label or name,
            "hosts": scenario.hosts,
            "delay_ms_per_direction": scenario.delay_ms,
            "artifact_bytes": variants[0].stat().st_size,
            "repeats": scenario.repeats,
        }
        if scenario.idle_procs:
            seen = self.populate(self.fleet.hosts[: scenario.hosts], scenario.idle_procs)
            result["processes_per_host"] = min(seen.values())
            log(f"[{name}] every host sees at least {min(seen.values())} processes")
        network = Network(self.fleet, self.fleet.hosts[: scenario.hosts], self.workdir, scenario.delay_ms / 1000)
        try:
            (ours, theirs), fresh = self._pair(scenario.hosts, network)
            if fresh:
                # A small variant: the warm-up only puts a running node on every host.
                warmup = self.maker.make(64, f"{name}-warmup")
                log(f"[{name}] first deploy (warm-up, {warmup.stat().st_size / 1e6:.1f} MB)")
                sha = sha256_of(warmup)
                result["first_deploy"] = {
                    "artifact_bytes": warmup.stat().st_size,
                    "deployer": _brief(self._measure("deployer", ours, warmup, sha)),
                    "baseline": _brief(self._measure("baseline", theirs, warmup, sha)),
                }
                # The first upgrade after a first deploy ran slower for whoever went first (first-boot
                # effects on the hosts); one untimed upgrade on each side makes every timed run a
                # steady-state upgrade.
                upgrade = self.maker.make(64, f"{name}-warmup2")
                sha = sha256_of(upgrade)
                for side, deployment in (("baseline", theirs), ("deployer", ours)):
                    self._measure(side, deployment, upgrade, sha)
                log(f"[{name}] warm-up upgrade done on both sides")
                for path in (warmup, upgrade):
                    path.unlink()
            for index, variant in enumerate(variants):
                order = ("deployer", "baseline") if index % 2 == 0 else ("baseline", "deployer")
                for side in order:
                    outcome = self._measure(side, ours if side == "deployer" else theirs, variant, shas[variant])
                    runs[side].append(outcome)
                    log(
                        f"[{name}] repeat {index + 1}/{scenario.repeats} {side:<8} "
                        f"{outcome.get('process_seconds', outcome['seconds']):7.2f}s (whole command)  "
                        f"host non-BEAM cpu {outcome['host_cpu']['non_beam']:.2f}s {outcome['host_cpu']['by_kind']}  "
                        f"load {outcome['loadavg_1m']:.2f}  "
                        f"upload phase {outcome['upload_phase'] or 0:6.2f}s  "
                        f"cpu {outcome['cpu']['total']:6.2f}s (hosts {outcome['cpu']['hosts']:.2f})  "
                        f"other work {outcome['cpu']['others_cores']:.2f} cores"
                    )
            if scenario.redeploy:
                again = self._measure("deployer", ours, variants[-1], shas[variants[-1]])
                result["redeploy"] = _brief(again)
                log(
                    f"[{name}] re-deploy of the running release: {again['process_seconds']:.2f}s (whole command), "
                    f"{again['bytes_uploaded']} bytes uploaded, {again['nodes_restarted']} nodes restarted, "
                    f"outcomes {again.get('outcomes')}"
                )
        finally:
            network.close()
            for path in variants:
                path.unlink(missing_ok=True)
        result["upgrade"] = summarize(runs)
        result["runs"] = {side: [_brief(r) for r in items] for side, items in runs.items()}
        return result


def run_scenario(
    fleet: Fleet, scenario: Scenario, base_tarball: Path, workdir: Path, log: Log = _quiet, settle: bool = True
) -> dict[str, Any]:
    """One scenario on its own deployments (removed afterwards): see :meth:`Bench.run`."""
    with Bench(fleet, base_tarball, workdir, log, settle) as bench:
        return bench.run(scenario)


def _brief(run: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "seconds",
        "process_seconds",
        "startup_seconds",
        "inspect_seconds",
        "cpu_seconds",
        "upload_phase",
        "bytes_uploaded",
        "peak_rss_kb",
        "rss_before_deploy_kb",
        "sessions",
        "ciphers",
        "migrated_on",
        "cpu",
        "host_cpu",
        "nodes_restarted",
        "outcomes",
        "loadavg_1m",
    )
    out = {k: run[k] for k in keys if k in run}
    if run.get("side") == "deployer":
        out["timings"] = {h["host"]: h["timings"] for h in run["hosts"]}
    return out


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    ours, theirs = runs["deployer"], runs["baseline"]
    if not ours or not theirs:
        return {}
    migrator = ours[0].get("migrated_on")
    sessions = ours[-1]["sessions"]
    non_migrator = [n for h, n in sessions.items() if h != migrator]
    deployer_seconds = median([r["seconds"] for r in ours])
    process_seconds = median([r["process_seconds"] for r in ours])
    baseline_seconds = median([r["seconds"] for r in theirs])
    upload_ours = median([r["upload_phase"] for r in ours])
    upload_theirs = median([r["upload_phase"] for r in theirs])
    per_host_upload = median([v for r in ours for h in r["hosts"] for k, v in h["timings"].items() if k == "upload"])
    size = ours[0]["artifact"]["size"]
    hosts = len(sessions)
    return {
        "deployer_seconds": deployer_seconds,
        "deployer_process_seconds": process_seconds,
        "baseline_seconds": baseline_seconds,
        "ratio": ratio(deployer_seconds, baseline_seconds),
        "ratio_process": ratio(process_seconds, baseline_seconds),
        "upload_phase_deployer": upload_ours,
        "upload_phase_baseline": upload_theirs,
        "upload_ratio": ratio(upload_ours, upload_theirs),
        "upload_per_host_median_deployer": per_host_upload,
        "upload_throughput_mb_s_deployer": round(size * hosts / upload_ours / 1e6, 1) if upload_ours else None,
        "upload_throughput_mb_s_baseline": round(size * hosts / upload_theirs / 1e6, 1) if upload_theirs else None,
        "bytes_uploaded_per_host": ours[-1]["bytes_uploaded"] // max(1, hosts),
        "sessions_migrator": sessions.get(migrator) if migrator else None,
        "sessions_non_migrator_max": max(non_migrator) if non_migrator else None,
        "baseline_sessions_per_host": 2,
        "peak_rss_mb": round(max(r["peak_rss_kb"] for r in ours) / 1024, 1),
        "rss_before_deploy_mb": round(max(r["rss_before_deploy_kb"] or 0 for r in ours) / 1024, 1),
        "deployer_cpu_seconds": median([r["cpu"]["total"] for r in ours]),
        "deployer_client_cpu_seconds": median([r["cpu"]["client"] for r in ours]),
        "baseline_cpu_seconds": median([r["cpu"]["total"] for r in theirs]),
        "baseline_client_cpu_seconds": median([r["cpu"]["client"] for r in theirs]),
        "cpu_ratio": ratio(median([r["cpu"]["total"] for r in ours]), median([r["cpu"]["total"] for r in theirs])),
        # whole commands: deployer's process (interpreter start to exit) against the baseline from reading
        # its configuration to its last ssh exiting
        "ratio_whole": ratio(process_seconds, baseline_seconds),
        "reported_seconds": median([r.get("reported_seconds") for r in ours]),
        "host_cpu_deployer": _kind_medians(ours),
        "host_cpu_baseline": _kind_medians(theirs),
        "loadavg_1m": median([r.get("loadavg_1m") for r in ours + theirs]),
        "phase_medians": _phase_medians(ours),
        "other_work_cores": median([r["cpu"].get("others_cores") for r in ours + theirs]),
    }


def _kind_medians(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    """Median over runs of the hosts' CPU seconds of each kind of process (benchmarks.hostcpu)."""
    kinds = [r["host_cpu"] for r in runs if "host_cpu" in r]
    if not kinds:
        return {}
    out = {k: median([h["by_kind"][k] for h in kinds]) for k in kinds[0]["by_kind"]}
    out["non_beam"] = median([h["non_beam"] for h in kinds])
    out["total"] = median([h["total"] for h in kinds])
    return out


def _phase_medians(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    """Median over runs of the slowest host's time in each step."""
    steps = sorted({k for r in runs for h in r["hosts"] for k in h["timings"]})
    return {
        step: median([max((h["timings"].get(step, 0.0) for h in r["hosts"]), default=0.0) for r in runs])
        for step in steps
    }


# --- the machine -----------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """Cores, RAM, CPU, kernel and the versions that matter for the numbers."""
    import cryptography
    import paramiko

    def first_line(argv: list[str]) -> str | None:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return None
        return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else None

    mem_kb = 0
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "os": first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "openssh": first_line(["ssh", "-V"]),
        "python": platform.python_version(),
        "paramiko": paramiko.__version__,
        "cryptography": cryptography.__version__,
    }

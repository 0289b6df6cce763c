"""End to end, secure by default: hostile values arrive as data, a sentinel secret never leaks, the Erlang
cookie never reaches any argv, EPMD and distribution face loopback only, hostile tarballs never leave
this machine.

All on the shared fleet (nothing here breaks a host); each test has its own deploy_to and node name.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import random
import shutil
import socket
import subprocess
import tarfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployer.core.artifact import inspect_tarball
from deployer.operations import release as api
from tests.harness.examples import build_hello
from tests.harness.fleet import Fleet

from .support import App, cli, make_app, remove_app

REPO = Path(__file__).resolve().parents[2]
PWNED = "/tmp/pwned"
LOOPBACK = {"127.0.0.1", "[::1]"}
_names = itertools.count(1)


@pytest.fixture(scope="module")
def hello() -> Path:
    return build_hello("0.1.0")


@pytest.fixture
def app(session_fleet: Fleet, tmp_path: Path) -> Iterator[App]:
    deployment = make_app(session_fleet, tmp_path, f"sec{next(_names)}")
    yield deployment
    remove_app(deployment)


def explain(result: api.Result) -> str:
    report = result.report
    return "\n".join([f"{report.error}", *(f"  {h.host}: {h.outcome} {h.step} {h.error}" for h in report.hosts)])


def no_pwned(fleet: Fleet) -> None:
    assert not os.path.exists(PWNED), "a value was executed on this machine"
    for host in fleet.hosts:
        out = fleet.exec(host.name, f"test -e {PWNED} && echo PWNED || echo clean").stdout.strip()
        assert out == "clean", f"a value was executed on {host.name}"


def node_environ(app: App, host: str) -> dict[str, str]:
    """The running node's environment, exactly (base64 keeps every byte, \\r included)."""
    health = app.health(host)
    assert health is not None, f"{host}: the node is not healthy"
    raw = base64.b64decode(app.sh(host, f"base64 -w0 /proc/{health['os_pid']}/environ"))
    return dict(item.split("=", 1) for item in raw.decode("utf-8").split("\0") if item)


def config(app: App, host: str) -> dict[str, Any]:
    out = app.sh(host, f"curl -fsS --max-time 5 http://127.0.0.1:{app.port}/config")
    return json.loads(out)  # type: ignore[no-any-return]


# --- quoting: arbitrary values arrive byte for byte, nothing runs -------------------------------------------------

FIXED_HOSTILE = [
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    "'; touch /tmp/pwned; '",
    '"; touch /tmp/pwned; "',
    "$HOME ${PATH} $$ $1",
    "a\nb\n\nc\n",
    "-rf",
    "--help",
    "-e $(touch /tmp/pwned)",
    "; touch /tmp/pwned",
    "| touch /tmp/pwned &",
    "\\'\\\\\"",
    "* ? [a-z] ~",
    "tab\there\r\nand crlf",
    "  leading and trailing spaces  ",
    "é ☃ 日本 \U0001f600",
    "",
]
ALPHABET = "abcXYZ019 \t\n\r$`'\"\\;|&<>(){}[]*?~!#%=-+,./:@^é☃"


def hostile_values(seed: int, count: int) -> list[str]:
    """Fixed nasty strings plus random ones over an alphabet of shell metacharacters (seeded: reproducible)."""
    rnd = random.Random(seed)
    values = list(FIXED_HOSTILE)
    while len(values) < len(FIXED_HOSTILE) + count:
        value = "".join(rnd.choice(ALPHABET) for _ in range(rnd.randint(1, 40)))
        if rnd.random() < 0.3:
            value = "-" + value
        if "${shared}" not in value and "${deploy_to}" not in value:
            values.append(value)
    for value in values:
        assert yaml.safe_load(yaml.safe_dump(value)) == value
    return values


def test_hostile_env_values_arrive_byte_for_byte_and_never_run(app: App, hello: Path) -> None:
    if os.path.exists(PWNED):
        os.unlink(PWNED)
    values = hostile_values(seed=5, count=12)
    clear = {f"HOSTILE_{i}": v for i, v in enumerate(values)}
    clear["HELLO_GREETING"] = "hi $(touch /tmp/pwned) `id` 'q' \"dq\" ; -x\nsecond line"
    secret_names = {f"HOSTILE_SECRET_{i}": f"HOSTILE_SECRET_{i}" for i in range(4)}
    secret_values = {name: values[(i * 5) % len(values)] + "-s" for i, name in enumerate(secret_names)}
    secret_values["HELLO_SECRET"] = "-$(touch /tmp/pwned)`id`'\"\n; x"
    app.rewrite(
        env={
            **app.data["env"],
            "clear": {**app.data["env"]["clear"], **clear},
            "secret": {"HELLO_SECRET": "HELLO_SECRET", **secret_names},
        }
    )
    result = api.deploy(app.inventory(**secret_values), inspect_tarball(hello, "hello"))
    assert result.report.ok, explain(result)
    for host in app.fleet.hosts:
        environ = node_environ(app, host.name)
        for name, value in {**clear, **secret_values}.items():
            assert environ.get(name) == value, f"{host.name}: {name} arrived as {environ.get(name)!r}, sent {value!r}"
        shown = config(app, host.name)
        assert shown["greeting"] == clear["HELLO_GREETING"]
        secret = secret_values["HELLO_SECRET"].encode()
        assert shown["secret_sha256"] == hashlib.sha256(secret).hexdigest()
        assert shown["secret_bytes"] == len(secret)
    no_pwned(app.fleet)


# --- the sentinel secret ------------------------------------------------------------------------------------------


class ProcessSampler:
    """Samples every process's full argv on every host (and here) about every 50 ms, until stopped."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.samples: list[str] = []
        self.counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(h.name,), daemon=True) for h in fleet.hosts]
        self._threads.append(threading.Thread(target=self._run, args=(None,), daemon=True))

    def _sample(self, host: str | None) -> str:
        if host is None:
            return subprocess.run(["ps", "-eww", "-o", "args="], capture_output=True, text=True, check=False).stdout
        return self.fleet.exec(host, "ps -eww -o args=", check=False, timeout=20).stdout

    def _run(self, host: str | None) -> None:
        while not self._stop.is_set():
            try:
                text = self._sample(host)
            except Exception as exc:  # a host busy or restarting must not end the sampling
                text = f"(sampling failed: {exc})"
            with self._lock:
                self.samples.append(text)
                self.counts[host or "local"] = self.counts.get(host or "local", 0) + 1
            self._stop.wait(0.05)

    def __enter__(self) -> ProcessSampler:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def containing(self, needle: str) -> list[str]:
        with self._lock:
            return [line for sample in self.samples for line in sample.splitlines() if needle in line]


def deploy_cli(
    app: App, workdir: Path, *args: str, secret: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``deployer deploy`` with the secret in the environment and HOME, TMPDIR and caches under ``workdir``."""
    env = {
        "HELLO_SECRET": secret,
        "HOME": str(workdir / "home"),
        "TMPDIR": str(workdir / "tmp"),
        "XDG_CACHE_HOME": str(workdir / "cache"),
    }
    for sub in ("home", "tmp", "cache"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    return cli(app, "deploy", *args, env=env, cwd=workdir, timeout=timeout)


def files_containing(root: Path, needle: bytes) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                found.append(path)
        except OSError:
            continue
    return found


def test_sentinel_secret_never_leaks(app: App, hello: Path, tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    # Distinctive token inside characters that force quoting: any rendering of the secret contains the token.
    sentinel = f"Sentinel-{token}-$(touch /tmp/pwned)-'\"`"
    unhealthy = build_hello("0.1.0", variant="unhealthy")
    workdir = tmp_path / "work"
    runs: dict[str, subprocess.CompletedProcess[str]] = {}
    with ProcessSampler(app.fleet) as sampler:
        runs["deploy --json"] = deploy_cli(app, workdir, "--tarball", str(hello), "--json", secret=sentinel)
        assert runs["deploy --json"].returncode == 0, runs["deploy --json"].stderr
        runs["deploy --dry-run --verbose"] = deploy_cli(
            app, workdir, "--tarball", str(hello), "--dry-run", "--verbose", "--json", secret=sentinel
        )
        assert runs["deploy --dry-run --verbose"].returncode == 0, runs["deploy --dry-run --verbose"].stderr
        # An unhealthy release with a short deadline: the error paths (node log tail, revert) run too.
        app.rewrite(health={**app.data["health"], "deadline": 10})
        runs["failed deploy --verbose --json"] = deploy_cli(
            app, workdir, "--tarball", str(unhealthy), "--verbose", "--json", secret=sentinel
        )
    failed = runs["failed deploy --verbose --json"]
    assert failed.returncode == 1, failed.stdout + failed.stderr
    failed_report = json.loads(failed.stdout)
    assert {h["outcome"] for h in failed_report["hosts"]} == {"reverted"}
    assert "did not become healthy" in failed.stdout + failed.stderr  # the error path really ran

    # stdout, stderr and the JSON reports of every run.
    for name, run in runs.items():
        assert token not in run.stdout, f"{name}: the secret is on stdout"
        assert token not in run.stderr, f"{name}: the secret is on stderr"
        if "--json" in name:
            json.loads(run.stdout)  # stdout is the JSON report, and it was checked above
    # Every file the tool wrote here (cwd, HOME, TMPDIR, caches) and the inventory directory.
    assert files_containing(workdir, token.encode()) == []
    assert files_containing(app.inventory_dir, token.encode()) == []
    # The remote process lists, sampled all along (the cookie is checked too, now that it exists).
    assert min(sampler.counts.values()) >= 20, sampler.counts
    assert sampler.containing(token) == []
    cookie = app.sh("h1", f"cat {app.deploy_to}/shared/.cookie")
    assert len(cookie) == 40
    assert sampler.containing(cookie) == []
    # Remote logs and files: only the environment's env file (0600) holds the secret.
    for host in app.fleet.hosts:
        sshd_log = app.sh(host.name, "cat /run/fleet/sshd.log")
        assert token not in sshd_log and cookie not in sshd_log
        holders = app.sh(host.name, f"grep -rlF -e {token} {app.deploy_to} /tmp /run /root 2>/dev/null || true").split()
        assert holders == [f"{app.deploy_to}/shared/node.env"], holders
        assert app.sh(host.name, f"ls {app.deploy_to}/shared/tmp/log/").strip()  # the node did log
        assert '"outcome":"failed"' in app.sh(host.name, f"cat {app.deploy_to}/revisions.log")  # grepped above
        for env_file in holders:
            assert app.sh(host.name, f"stat -c %a {env_file}").strip() == "600"
        assert app.sh(host.name, f"stat -c %a {app.deploy_to}/shared/.cookie").strip() == "400"
        assert app.sh(host.name, f"cat {app.deploy_to}/shared/.cookie") == cookie  # one cookie per environment
    # Everything the fleet keeps on this machine (host directories, sshd logs, homes): same rule.
    for path in files_containing(app.fleet.base_dir, token.encode()):
        assert path.match("*/shared/node.env"), path
    assert files_containing(app.db_dir, token.encode()) == []
    no_pwned(app.fleet)


# --- the Erlang cookie and the network exposure of the node ----------------------------------------------------------


def listeners(app: App, host: str) -> list[tuple[str, int, str]]:
    """(address, port, process) of every TCP listener inside the host."""
    rows = []
    for line in app.sh(host, "ss -Hltnp").splitlines():
        fields = line.split()
        address, _, port = fields[3].rpartition(":")
        rows.append((address, int(port), " ".join(fields[5:])))
    return rows


def refused(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=3):
            return False
    except ConnectionRefusedError:
        return True


def test_cookie_never_in_argv_rpc_works_and_distribution_is_loopback_only(app: App, hello: Path) -> None:
    # A health check by rpc boots `bin/hello rpc` through deployer's own load_env: it only passes when the
    # node and the rpc client agree on the cookie read from the file.
    app.rewrite(health={**app.data["health"], "rpc": "IO.puts(:ok)", "deadline": 60})
    first = api.deploy(app.inventory(), inspect_tarball(hello, "hello"))
    assert first.report.ok, explain(first)
    cookies = {app.sh(h.name, f"cat {app.deploy_to}/shared/.cookie") for h in app.fleet.hosts}
    assert len(cookies) == 1
    cookie = cookies.pop()
    assert len(cookie) == 40 and cookie.isalnum()
    second = api.deploy(app.inventory(), inspect_tarball(hello, "hello"))
    assert second.report.ok, explain(second)
    assert {app.sh(h.name, f"cat {app.deploy_to}/shared/.cookie") for h in app.fleet.hosts} == {cookie}

    bin_hello = f"{app.deploy_to}/current/bin/hello"
    home = f"{app.deploy_to}/shared/home"
    env = f"RELEASE_NODE={app.name}@127.0.0.1 RELEASE_DISTRIBUTION=name ERL_AFLAGS=-setcookie HOME={home}"
    for host in app.fleet.hosts:
        # No process on the host has the cookie in its argv (the beam's -setcookie is a throwaway).
        argv = base64.b64decode(
            app.sh(host.name, "for f in /proc/[0-9]*/cmdline; do cat $f 2>/dev/null; echo; done | base64 -w0")
        ).decode("utf-8", "replace")
        assert "beam.smp" in argv and "-setcookie" in argv
        assert cookie not in argv, f"{host.name}: the cookie is in a process's argv"
        # The node's cookie is the environment's (compared inside the VM, never on a command line).
        same = app.sh(
            host.name,
            f"RELEASE_COOKIE=throwaway {env} {bin_hello} rpc "
            f"'IO.puts(Node.get_cookie() == String.to_atom(File.read!(\"{app.deploy_to}/shared/.cookie\")))'",
        )
        assert same.strip() == "true"
        # ... and a client without it is refused.
        wrong = app.fleet.exec(
            host.name,
            f"RELEASE_COOKIE=WRONG {env.replace(home, '/tmp').replace('ERL_AFLAGS=-setcookie ', '')} {bin_hello} pid",
            check=False,
        )
        assert wrong.returncode != 0
        # A cookie baked into the tarball was deleted at extraction.
        assert (
            app.sh(host.name, f"test -e {app.deploy_to}/current/releases/COOKIE && echo baked || echo none").strip()
            == "none"
        )

        # EPMD and the distribution port listen on loopback only...
        pid = str(app.health(host.name)["os_pid"])  # type: ignore[index]
        rows = listeners(app, host.name)
        epmd = [r for r in rows if r[1] == 4369]
        dist = [r for r in rows if f"pid={pid}," in r[2] and r[1] != app.port]
        assert epmd and all(address in LOOPBACK for address, _, _ in epmd), rows
        assert dist and all(address in LOOPBACK for address, _, _ in dist), rows
        # ... so from outside the host both are closed, while the HTTP port is open.
        address = app.fleet.host(host.name).address
        assert refused(address, 4369)
        for _, port, _ in dist:
            assert refused(address, port)
        with socket.create_connection((address, app.port), timeout=3):
            pass


# --- hostile tarballs never leave this machine -----------------------------------------------------------------------


def hostile_copy(source: Path, dest: Path, member: tarfile.TarInfo) -> Path:
    with tarfile.open(source, "r:gz") as src, tarfile.open(dest, "w:gz") as out:
        for item in src:
            out.addfile(item, src.extractfile(item) if item.isfile() else None)
        out.addfile(member)
    return dest


def test_hostile_tarball_is_refused_before_anything_is_uploaded(app: App, hello: Path, tmp_path: Path) -> None:
    escape = tarfile.TarInfo("lib/hello-0.1.0/priv/escape")
    escape.type = tarfile.SYMTYPE
    escape.linkname = "../../../../../../etc/cron.d/evil"
    tarball = hostile_copy(hello, tmp_path / "hello-0.1.0.tar.gz", escape)
    done = deploy_cli(app, tmp_path / "work", "--tarball", str(tarball), secret="x" * 8, timeout=120)
    assert done.returncode != 0
    assert "symlink 'lib/hello-0.1.0/priv/escape'" in done.stderr and "points outside the release" in done.stderr
    for host in app.fleet.hosts:
        # Not even the lock was taken: no connection changed anything, no artifact arrived.
        assert app.sh(host.name, f"test -e {app.deploy_to} && echo exists || echo absent").strip() == "absent"
    shutil.rmtree(tmp_path / "work", ignore_errors=True)

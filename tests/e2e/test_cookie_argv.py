"""The cookie never reaches any process's argv, and the node starts from its env file in a clean environment.

The fleet's hosts are PID namespaces below this machine's, so this machine's ``/proc`` shows every process of
every host: a sampler reads every ``/proc/*/cmdline`` all through real deploys (first deploy with migration,
upgrade, a restart, a status with an rpc health check) and looks for a cookie written on the hosts before the
first deploy. Env values full of shell syntax arrive byte for byte, and nothing of them runs.
"""

from __future__ import annotations

import base64
import itertools
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployer.core.artifact import inspect_tarball
from deployer.operations import node as ops
from deployer.operations import release as api
from tests.harness.examples import build_hello
from tests.harness.fleet import Fleet

from .support import App, explain, make_app, remove_app

_names = itertools.count(1)


class ArgvSampler:
    """Reads every process's argv from this machine's /proc, over and over, until stopped."""

    def __init__(self, needles: list[bytes]) -> None:
        self.needles = needles
        self.hits: list[str] = []
        self.rounds = 0
        self.beams = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    argv = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if b"beam.smp" in argv:
                    self.beams += 1
                if any(needle in argv for needle in self.needles):
                    self.hits.append(argv.replace(b"\0", b" ").decode("utf-8", "replace"))
            self.rounds += 1

    def __enter__(self) -> ArgvSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture
def app(fleet: Fleet, tmp_path: Path) -> Iterator[App]:
    deployment = make_app(fleet, tmp_path, f"argv{next(_names)}")
    yield deployment
    remove_app(deployment)


def test_the_cookie_is_in_no_argv_and_env_values_arrive_byte_for_byte(app: App) -> None:
    marker = f"/tmp/deployer-pwned-{uuid.uuid4().hex}"
    cookie = "ARGV" + uuid.uuid4().hex.upper()
    for host in app.fleet.hosts:
        # An existing cookie is kept (one per environment): so it is known before anything runs.
        app.sh(
            host.name,
            f"mkdir -p {app.deploy_to}/shared && (umask 077; printf %s {cookie} > {app.deploy_to}/shared/.cookie) "
            f"&& chmod 0400 {app.deploy_to}/shared/.cookie",
        )
    hostile = f"$(touch {marker})`touch {marker}`'\"; -x\nsecond line\\n\\"
    secret = f"s-$(touch {marker})\n'\"\\"
    # `cookie_from_home` and `d` used to change deployer's own scripts (the env file was sourced into them; the
    # first put the real cookie into the VM's argv): now they are values like any other.
    clear = {"HELLO_GREETING": hostile, "IFSX": "a b", "cookie_from_home": "0", "d": "/"}
    app.rewrite(env={**app.data["env"], "clear": {**app.data["env"]["clear"], **clear}})
    v1, v2 = build_hello("0.1.0", migrations=2), build_hello("0.2.0", migrations=3)
    with ArgvSampler([cookie.encode(), secret.encode()]) as sampler:
        first = api.deploy(app.inventory(HELLO_SECRET=secret), inspect_tarball(v1, "hello"))
        assert first.report.ok, explain(first.report)
        second = api.deploy(app.inventory(HELLO_SECRET=secret), inspect_tarball(v2, "hello"))
        assert second.report.ok, explain(second.report)
        app.rewrite(health={**app.data["health"], "rpc": "IO.puts(:ok)"})
        rows = ops.status(app.inventory(HELLO_SECRET=secret))
        assert [(r.host, r.health.state if r.health else r.error) for r in rows] == [
            (h.name, "ok") for h in app.fleet.hosts
        ]
    assert sampler.rounds >= 20 and sampler.beams > 0, (sampler.rounds, sampler.beams)
    assert sampler.hits == [], "the cookie or the secret was in a process's argv:\n" + "\n".join(sampler.hits)

    for host in app.fleet.hosts:
        health = app.health(host.name)
        assert health is not None and health["version"] == "0.2.0"
        raw = base64.b64decode(app.sh(host.name, f"base64 -w0 /proc/{health['os_pid']}/environ"))
        environ = dict(item.split("=", 1) for item in raw.decode("utf-8").split("\0") if item)
        assert environ["HELLO_GREETING"] == hostile and environ["HELLO_SECRET"] == secret
        assert environ["IFSX"] == "a b" and environ["cookie_from_home"] == "0" and environ["d"] == "/"
        # A clean environment: nothing of the SSH session that started it.
        assert not {"SSH_CONNECTION", "SSH_CLIENT", "USER", "LOGNAME", "MAIL"} & set(environ), sorted(environ)
        assert environ["HOME"] == f"{app.deploy_to}/shared/home"
        assert app.sh(host.name, f"cat {app.deploy_to}/shared/.cookie") == cookie  # the node uses this one
        assert app.sh(host.name, f"test -e {marker} && echo PWNED || echo clean").strip() == "clean"
    assert not Path(marker).exists()

"""HAProxy in front of a fleet, and steady HTTP load through it (e2e tests and the traffic benchmark).

:class:`Balancer` runs Debian's ``haproxy`` inside one host of a :class:`~tests.harness.fleet.Fleet`
(its own network, ``/run`` and processes), with the runtime API on ``/run/haproxy/admin.sock`` in that
host: deployer reaches it over SSH like any host, exactly as in production. Its servers are the fleet's
app hosts at their own addresses; health checks (``GET /health`` every second) are on, as a production
balancer would have them.

:class:`Load` drives ``wrk`` from the root namespace at a steady rate (a Lua ``delay()`` per request)
against the balancer's address only, for a bounded time, and reads back requests, failed requests
(non-2xx statuses and socket errors) and latency percentiles.

Needs ``haproxy``, ``socat`` and ``wrk`` (``bash scripts/install-lb-deps.sh``).
"""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.fleet import Fleet

RUN_DIR = "/run/haproxy"
SOCKET = f"{RUN_DIR}/admin.sock"


def missing_tools() -> list[str]:
    """The load-balancer tools not installed here."""
    return [tool for tool in ("haproxy", "socat", "wrk") if shutil.which(tool) is None]


@dataclass
class Balancer:
    """HAProxy on fleet host ``host`` balancing ``servers`` (name -> ``address:port``) on ``port``."""

    fleet: Fleet
    host: str
    servers: dict[str, str]
    port: int = 8080
    backend: str = "app"
    check: bool = True

    @property
    def address(self) -> str:
        return self.fleet.host(self.host).address

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/"

    def config(self) -> str:
        check = "  option httpchk GET /health\n  default-server check inter 1s fall 2 rise 2\n" if self.check else ""
        servers = "".join(f"  server {name} {target}\n" for name, target in self.servers.items())
        return (
            "global\n"
            f"  stats socket {SOCKET} mode 600 level admin\n"
            "  maxconn 4000\n"
            "defaults\n"
            "  mode http\n"
            "  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n"
            "frontend fe\n"
            f"  bind {self.address}:{self.port}\n"
            f"  default_backend {self.backend}\n"
            f"backend {self.backend}\n"
            "  balance roundrobin\n" + check + servers
        )

    def start(self) -> Balancer:
        text = shlex.quote(self.config())
        self.fleet.exec(
            self.host,
            f"mkdir -p {RUN_DIR} && printf '%s' {text} > {RUN_DIR}/haproxy.cfg && "
            f"haproxy -c -q -f {RUN_DIR}/haproxy.cfg && "
            f"haproxy -D -f {RUN_DIR}/haproxy.cfg -p {RUN_DIR}/haproxy.pid",
            timeout=30,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.fleet.exec(self.host, f"test -S {SOCKET}", check=False).returncode == 0:
                return self
            time.sleep(0.2)
        raise RuntimeError(f"haproxy on {self.host} did not open {SOCKET}")

    def stop(self) -> None:
        self.fleet.exec(
            self.host,
            f"[ -f {RUN_DIR}/haproxy.pid ] && kill $(cat {RUN_DIR}/haproxy.pid) 2>/dev/null; rm -f {SOCKET}; true",
            check=False,
        )

    def __enter__(self) -> Balancer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def command(self, text: str) -> str:
        """One runtime-API command, answered."""
        return self.fleet.exec(
            self.host, f"printf '%s\\n' {shlex.quote(text)} | socat -t 5 stdio UNIX-CONNECT:{SOCKET}", timeout=30
        ).stdout

    def states(self) -> dict[str, str]:
        """Server name -> status column of ``show stat`` (``UP``, ``DRAIN``, ``MAINT``, ``DOWN``...)."""
        found: dict[str, str] = {}
        for line in self.command("show stat").splitlines():
            cols = line.split(",")
            if len(cols) > 17 and cols[0] == self.backend and cols[1] not in ("BACKEND", "FRONTEND"):
                found[cols[1]] = cols[17]
        return found

    def admin_states(self) -> dict[str, str]:
        """Server name -> administrative state from ``show servers state``: ``READY``, ``DRAIN`` or ``MAINT``
        (``show stat`` shows a drained server whose checks fail as ``DOWN``)."""
        found: dict[str, str] = {}
        for line in self.command(f"show servers state {self.backend}").splitlines():
            cols = line.split()
            if len(cols) > 7 and cols[1] == self.backend:
                admin = int(cols[6])
                maint = admin & (0x01 | 0x02 | 0x04 | 0x20 | 0x40)
                found[cols[3]] = "MAINT" if maint else "DRAIN" if admin & (0x08 | 0x10) else "READY"
        return found

    def inventory_section(self, **extra: Any) -> dict[str, Any]:
        """The inventory's ``load_balancer:`` for this balancer (the host by its inventory name)."""
        return {"hosts": [self.host], "backend": self.backend, "socket": SOCKET, **extra}


_LUA = """
local rate_delay = tonumber(os.getenv("LOAD_DELAY_MS") or "40")
function delay()
  return rate_delay
end
function done(summary, latency, requests)
  io.write(string.format(
    "RESULT requests=%d connect=%d read=%d write=%d timeout=%d status=%d p50=%d p99=%d\\n",
    summary.requests, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, summary.errors.status, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class LoadResult:
    """What ``wrk`` saw: requests, failures (socket errors + non-2xx), latency percentiles in ms."""

    requests: int = 0
    socket_errors: int = 0
    non_2xx: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    seconds: float = 0.0
    raw: str = field(default="", repr=False)

    @property
    def failed(self) -> int:
        return self.socket_errors + self.non_2xx

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def parse_wrk(output: str, seconds: float) -> LoadResult:
    match = re.search(
        r"RESULT requests=(\d+) connect=(\d+) read=(\d+) write=(\d+) timeout=(\d+) status=(\d+) p50=(\d+) p99=(\d+)",
        output,
    )
    if match is None:
        raise RuntimeError(f"wrk printed no result:\n{output[-2000:]}")
    req, conn, read, write, tmo, status, p50, p99 = (int(g) for g in match.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return LoadResult(
        requests=req,
        socket_errors=conn + read + write + tmo,
        non_2xx=max(status, int(non2xx.group(1)) if non2xx else 0),
        p50_ms=p50 / 1000,
        p99_ms=p99 / 1000,
        seconds=seconds,
        raw=output,
    )


class Load:
    """Steady HTTP load on ``url`` (the balancer) with ``wrk``: ``connections`` connections, each waiting
    ``delay_ms`` between requests, for at most ``limit`` seconds (stopped earlier with :meth:`stop`)."""

    def __init__(self, url: str, *, connections: int = 4, delay_ms: int = 40, limit: float = 600) -> None:
        self.url = url
        self.connections = connections
        self.delay_ms = delay_ms
        self.limit = int(limit)
        self._dir = Path(tempfile.mkdtemp(prefix="deployer-load-"))
        self._proc: subprocess.Popen[str] | None = None
        self._started = 0.0

    def start(self) -> Load:
        script = self._dir / "steady.lua"
        script.write_text(_LUA)
        self._proc = subprocess.Popen(
            [
                "wrk",
                "-t1",
                f"-c{self.connections}",
                f"-d{self.limit}s",
                "--timeout",
                "5s",
                "-s",
                str(script),
                self.url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={"LOAD_DELAY_MS": str(self.delay_ms), "PATH": "/usr/bin:/bin"},
        )
        self._started = time.monotonic()
        return self

    def stop(self) -> LoadResult:
        """Stop (SIGINT: wrk prints its summary) and return what it saw."""
        assert self._proc is not None
        seconds = time.monotonic() - self._started
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        try:
            out, _ = self._proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, _ = self._proc.communicate()
        shutil.rmtree(self._dir, ignore_errors=True)
        return parse_wrk(out, seconds)

    def measure(self, seconds: float) -> LoadResult:
        """Run for ``seconds`` and return the result (the 'before' measurement)."""
        self.start()
        time.sleep(seconds)
        return self.stop()

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            if self._proc is not None and self._proc.poll() is None:
                self.stop()

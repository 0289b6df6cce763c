"""Operating a fleet: status with health, releases, logs, start/stop/restart, console, observer, check.

Like :mod:`deployer.operations.release`, every function takes a loaded :class:`Inventory` and returns data (or runs
an interactive session); the Invoke tasks in :mod:`deployer.cli.ops_tasks` only print it. A host filter
that matches nothing is an error before any host is touched (``Inventory.select``).

* :func:`status` probes each host once (facts + one try of the health check, no waiting).
* :func:`lifecycle` starts, stops or restarts nodes under the deploy lock, in the strategy's batches,
  with the health gate after every start; a failing batch stops the rollout like a deploy.
* :func:`logs` prints or follows the node's run_erl logs; :func:`console` opens ``bin/<app> remote``
  on a pty; :func:`observer_tunnel` forwards EPMD and the node's distribution port to loopback.
* :func:`check` is a read-only preflight for an environment (and optionally an artifact).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from deployer.core.artifact import Artifact
from deployer.core.config import parse_count
from deployer.core.facts import HostFacts, parse_probe
from deployer.core.inventory import Inventory
from deployer.core.outcome import NullEvents, Report
from deployer.core.plan import batches, health_check, layout_for
from deployer.engine.executor import Cancelled, Executor, Masker, fill_sessions
from deployer.errors import DeployerError, PlanError, RemoteCommandError
from deployer.operations import release as api
from deployer.operations.documents import status_json
from deployer.remote import ops as oc
from deployer.remote import release as rc
from deployer.remote.flavours import flavour
from deployer.remote.shell import Script
from deployer.ssh.endpoints import endpoint, ssh_connector
from deployer.ssh.transport import LocalForward, OutputCallback, SSHTransport

# --- status and releases -----------------------------------------------------------------------------------

HealthState = Literal["ok", "failing", "down", "none", "unknown"]


@dataclass(frozen=True)
class NodeHealth:
    """One try of the inventory's health check on a host.

    ``ok``: the node runs and the check passed; ``failing``: it runs but the check failed; ``down``:
    no node runs; ``none``: nothing is deployed; ``unknown``: the check could not be run.
    """

    state: HealthState
    error: str | None = None

    @property
    def healthy(self) -> bool | None:
        if self.state == "ok":
            return True
        if self.state in ("failing", "down"):
            return False
        return None


def parse_health(output: str) -> NodeHealth:
    """Parse the ``health=`` / ``health_error=`` lines of the status script."""
    state: HealthState = "unknown"
    error = None
    for line in output.splitlines():
        key, _, value = line.partition("=")
        if key == "health" and value in ("ok", "failing", "down", "none", "unknown"):
            state = value  # type: ignore[assignment]
        elif key == "health_error":
            error = value.strip() or None
    if state == "down":
        error = error or "the node is not running"
    return NodeHealth(state, error)


@dataclass(frozen=True)
class HostStatus:
    """One host of ``invoke status``: its facts and its node's health, or why it could not be probed."""

    host: str
    reachable: bool
    facts: HostFacts | None
    health: NodeHealth | None = None
    error: str | None = None

    def as_api(self) -> api.HostStatus:
        return api.HostStatus(self.host, self.reachable, self.facts, self.error)


def _executor(inventory: Inventory, options: api.Options, operation: str) -> Executor:
    return Executor(
        inventory,
        options.connector or ssh_connector(inventory),
        events=options.events or NullEvents(),
        masker=Masker({v.get_secret_value() for v in inventory.secrets.values()}),
        cancel=options.cancel,
        operation=operation,
    )


def _probe_each(
    inventory: Inventory, options: api.Options, operation: str, script: Script
) -> dict[str, tuple[str | None, str | None]]:
    """Run ``script`` on every selected host at once: host -> (stdout, error)."""
    names = [h.name for h in inventory.select(options.hosts, options.roles)]
    out: dict[str, tuple[str | None, str | None]] = {}
    with _executor(inventory, options, operation) as executor:

        def probe(host: str) -> None:
            try:
                out[host] = (executor.run(host, script).stdout, None)
            except DeployerError as exc:
                out[host] = (None, executor.masker(str(exc)))

        executor.parallel(names, probe)
    return {h: out[h] for h in names}


def status(inventory: Inventory, options: api.Options | None = None) -> list[HostStatus]:
    """Probe the selected hosts (facts + one health check each, no waiting); changes nothing."""
    options = options or api.Options()
    config = inventory.config
    script = oc.status(layout_for(inventory), flavour(config.app.flavour), health_check(inventory))
    rows = []
    for host, (stdout, error) in _probe_each(inventory, options, "status", script).items():
        if stdout is None:
            rows.append(HostStatus(host, False, None, None, error))
        else:
            rows.append(HostStatus(host, True, parse_probe(stdout), parse_health(stdout)))
    return rows


def status_document(rows: Sequence[HostStatus]) -> dict[str, Any]:
    """``invoke status --json``: per host reachability, release, version, node pids, health, releases
    on disk, lock holder; ``mixed`` when reachable hosts run different releases; ``healthy`` when every
    reachable host with a release has a healthy node."""
    document = status_json([row.as_api() for row in rows])
    for entry, row in zip(document["hosts"], rows, strict=True):
        health = row.health
        entry["health"] = health.state if health else None
        entry["healthy"] = health.healthy if health else None
        entry["health_error"] = health.error if health else None
        entry["lock_holder"] = row.facts.lock.who if row.facts and row.facts.lock else None
    document["healthy"] = all(r.reachable and (r.health is None or r.health.healthy is not False) for r in rows)
    return document


RELEASE_STATUS = {"success": "good", "failed": "failed"}


def releases_document(rows: Sequence[api.HostStatus]) -> dict[str, Any]:
    """``invoke releases --json``: the releases on each host, oldest first, with version, status
    (good / failed / unknown, from revisions.log) and which one is current."""
    hosts = []
    for row in rows:
        facts = row.facts
        entries = []
        if facts is not None:
            for release in facts.releases:
                recorded = facts.history.status(release)
                entries.append(
                    {
                        "release": release,
                        "version": facts.history.version(release),
                        "status": RELEASE_STATUS.get(recorded or "", "unknown"),
                        "current": release == facts.current_release,
                    }
                )
        hosts.append(
            {
                "host": row.host,
                "reachable": row.reachable,
                "error": row.error,
                "current": facts.current_release if facts else None,
                "releases": entries,
            }
        )
    return {"hosts": hosts}


# --- node lifecycle --------------------------------------------------------------------------------------

Lifecycle = Literal["start", "stop", "restart"]
LIFECYCLE: tuple[Lifecycle, ...] = ("start", "stop", "restart")


@dataclass(frozen=True)
class LifecycleHost:
    """One host's part of a start/stop/restart: what runs there now and the script that will run."""

    host: str
    release: str | None
    version: str | None
    node_pids: tuple[int, ...]
    script: Script


@dataclass(frozen=True)
class LifecyclePlan:
    """A whole start/stop/restart, decided before anything changes (``--dry-run`` prints it)."""

    operation: Lifecycle
    env: str
    hosts: tuple[LifecycleHost, ...]
    batches: tuple[tuple[str, ...], ...]
    max_fail: int = 0
    pause: float = 0.0

    def host(self, name: str) -> LifecycleHost:
        for item in self.hosts:
            if item.host == name:
                return item
        raise KeyError(name)


def plan_lifecycle(
    inventory: Inventory,
    operation: Lifecycle,
    facts: Mapping[str, HostFacts],
    *,
    strategy: Mapping[str, object] | None = None,
) -> LifecyclePlan:
    """Plan ``operation`` on every host in ``facts`` (the selected hosts, in inventory order).

    Starting needs a deployed release on every host; stopping a host where nothing runs is a no-op.
    """
    if operation not in LIFECYCLE:
        raise ValueError(f"unknown node operation {operation!r}")
    config = inventory.config
    layout = layout_for(inventory)
    spec = flavour(config.app.flavour)
    health = health_check(inventory)
    if operation == "stop":
        script = oc.stop(layout, stop_timeout=config.node.stop_timeout)
    elif operation == "start":
        script = oc.start(layout, spec, health=health)
    else:
        script = oc.restart(layout, spec, health=health, stop_timeout=config.node.stop_timeout)
    names = [h.name for h in inventory.hosts if h.name in facts]
    if operation != "stop":
        missing = [n for n in names if facts[n].current_release is None]
        if missing:
            raise PlanError(
                f"cannot {operation}: nothing is deployed on {', '.join(missing)}",
                hint="deploy first (`invoke deploy`), or leave those hosts out with --hosts/--roles",
            )
    hosts = tuple(
        LifecycleHost(
            host=n,
            release=facts[n].current_release,
            version=facts[n].current_version,
            node_pids=facts[n].node_pids,
            script=script,
        )
        for n in names
    )
    merged = config.strategy.model_copy(update=dict(strategy or {}))
    return LifecyclePlan(
        operation=operation,
        env=inventory.env,
        hosts=hosts,
        batches=tuple(tuple(b) for b in batches(names, inventory, strategy)),
        max_fail=parse_count(merged.max_fail, len(names), allow_zero=True),
        pause=float(merged.pause),
    )


@dataclass
class LifecycleResult:
    """The report of a start/stop/restart and the plan it ran (or would run, with ``--dry-run``)."""

    report: Report
    plan: LifecyclePlan | None = None


def lifecycle(inventory: Inventory, operation: Lifecycle, options: api.Options | None = None) -> LifecycleResult:
    """Start, stop or restart the nodes of the selected hosts, batch by batch, under the deploy lock.

    Every start is followed by the health gate; a host that fails it is reported ``failed`` (there is
    nothing to revert to: the release did not change) and no further batch starts once more hosts
    failed than ``max_fail`` allows. With ``dry_run`` the hosts are only probed (no lock).
    """
    options = options or api.Options()
    names = [h.name for h in inventory.select(options.hosts, options.roles)]
    started = time.monotonic()
    with _executor(inventory, options, operation) as executor:
        plan: LifecyclePlan | None = None
        try:
            facts = executor.preflight(names, lock=not options.dry_run)
            plan = plan_lifecycle(inventory, operation, facts, strategy=options.strategy)
            release, version = _common_release(plan)
            if options.dry_run:
                report = Report(
                    operation, inventory.env, release, version, [executor.result(h) for h in names], dry_run=True
                )
                return LifecycleResult(report, plan)
            report = Report(operation, inventory.env, release, version, [])
            _execute(executor, plan, report)
        except DeployerError as exc:
            report = Report(
                operation,
                inventory.env,
                None,
                None,
                [executor.result(h) for h in names],
                error=str(exc),
                dry_run=options.dry_run,
            )
        report.duration = time.monotonic() - started
        executor.release_locks()
        for host, why in executor.lock_left.items():
            report.warnings.append(f"{host}: the lock could not be released ({why}); run `invoke unlock`")
        fill_sessions(report, executor)
        return LifecycleResult(report, plan)


def _common_release(plan: LifecyclePlan) -> tuple[str | None, str | None]:
    releases = {h.release for h in plan.hosts}
    if len(releases) != 1:
        return None, None
    first = plan.hosts[0]
    return first.release, first.version


def _execute(executor: Executor, plan: LifecyclePlan, report: Report) -> None:
    names = [h.host for h in plan.hosts]
    failed = 0
    try:
        for index, batch in enumerate(plan.batches):
            if executor.cancel.is_set():
                raise Cancelled("interrupted by the operator")
            if index and plan.pause:
                executor.events.phase("pause", f"{plan.pause:g}s before the next batch")
                end = time.monotonic() + plan.pause
                while time.monotonic() < end:
                    if executor.cancel.is_set():
                        raise Cancelled("interrupted by the operator")
                    time.sleep(min(0.2, end - time.monotonic()))
            label: str = plan.operation
            if len(plan.batches) > 1:
                label += f" batch {index + 1}/{len(plan.batches)}"
            executor.events.phase(label, ", ".join(batch))
            executor.parallel(list(batch), lambda host: _run_host(executor, plan, host))
            failed += sum(1 for h in batch if executor.result(h).outcome != "success")
            if failed > plan.max_fail:
                remaining = [h for b in plan.batches[index + 1 :] for h in b]
                if remaining:
                    report.warnings.append(
                        f"stopped after {failed} failed host(s) (max_fail {plan.max_fail}); "
                        f"not {plan.operation}ed: {', '.join(remaining)}"
                    )
                break
    except Cancelled:
        report.interrupted = True
        report.error = "interrupted by the operator"
    for host in names:
        result = executor.result(host)
        if result.outcome == "pending":
            result.outcome = "untouched"
    report.hosts = [executor.result(h) for h in names]


def _run_host(executor: Executor, plan: LifecyclePlan, host: str) -> None:
    result = executor.result(host)
    if executor.cancel.is_set():
        return
    item = plan.host(host)
    result.target = item.release
    try:
        output = executor.run(host, item.script)
    except DeployerError as exc:
        result.outcome = "failed"
        result.step = getattr(exc, "step", plan.operation)
        result.error = _describe(executor, exc)
        result.healthy = False if plan.operation != "stop" else None
        return
    result.outcome = "success"
    if plan.operation == "stop":
        result.healthy = None
        stopped = _value(output.stdout, "stopped")
        if stopped == "none":
            executor.events.step(host, "stop", "skipped", "no node was running")
    else:
        result.healthy = True
        if _value(output.stdout, "already_running"):
            executor.events.step(host, "start", "skipped", "the node was already running; it is healthy")


def _value(output: str, key: str) -> str | None:
    for line in output.splitlines():
        name, sep, value = line.partition("=")
        if sep and name == key:
            return value.strip()
    return None


def _describe(executor: Executor, exc: DeployerError) -> str:
    if isinstance(exc, RemoteCommandError):
        prefix = f"{exc.host}: {exc.step}: "
        message = exc.message[len(prefix) :] if exc.message.startswith(prefix) else exc.message
        return executor.masker(message)
    return executor.masker(exc.message)


# --- one host: connection helpers ----------------------------------------------------------------------

Connect = Callable[[Inventory, str], SSHTransport]


def connect(inventory: Inventory, host: str) -> SSHTransport:
    """A strict-host-key SSH connection to the one host named ``host`` (an unknown name is an error)."""
    selected = inventory.select([host])
    return SSHTransport(endpoint(inventory, selected[0]))


def _one_host(host: str | None) -> str:
    if not host or "," in host:
        raise DeployerError("exactly one host is needed (--host NAME)")
    return host


# --- logs ------------------------------------------------------------------------------------------------


def logs(
    inventory: Inventory,
    host: str | None,
    *,
    lines: int = 100,
    follow: bool = False,
    on_output: OutputCallback,
    should_stop: Callable[[], bool] | None = None,
    connector: Connect = connect,
) -> None:
    """Pass the node's last ``lines`` log lines to ``on_output``; with ``follow`` keep streaming new
    lines until ``should_stop`` turns true or the caller is interrupted (Ctrl-C ends it cleanly)."""
    name = _one_host(host)
    layout = layout_for(inventory)
    transport = connector(inventory, name)
    try:
        # Also the check that there are logs at all, with a clean error, before anything streams.
        result = transport.run(oc.logs(layout, lines=0 if follow else lines))
        if not result.ok:
            raise RemoteCommandError(name, "logs", _clean(result.stderr) or f"exit status {result.exit_status}")
        if not follow:
            on_output("stdout", result.stdout)
            return

        def unpty(stream: str, text: str) -> None:
            # A pty turns \n into \r\n; give callers plain lines.
            on_output(stream, text.replace("\r\n", "\n"))

        try:
            status = transport.stream(oc.follow_logs(layout, lines=lines), on_output=unpty, should_stop=should_stop)
        except KeyboardInterrupt:
            return
        if status not in (None, 0):
            raise RemoteCommandError(name, "logs", f"tail ended with exit status {status}")
    finally:
        transport.close()


def _clean(text: str) -> str:
    return "\n".join(line for line in text.replace("\r", "").splitlines() if not line.startswith("@@step "))


# --- console ------------------------------------------------------------------------------------------------


def console(
    inventory: Inventory,
    host: str | None,
    *,
    stdin: int | None = None,
    stdout: int | None = None,
    connector: Connect = connect,
) -> int | None:
    """An interactive remote shell into the running node (``bin/<app> remote`` for mix) on a pty.

    The release's environment (and so the cookie) is loaded on the host; nothing secret is in argv.
    Ctrl-D leaves: the remote shell's own VM is hung up, the node keeps running. Returns the remote
    command's exit status, or None when left with Ctrl-D.
    """
    name = _one_host(host)
    script = oc.console(layout_for(inventory), flavour(inventory.config.app.flavour))
    # Erlang's remote shell needs a terminal with line editing: on a `dumb` one it falls back to a
    # plain local shell that never reaches the node.
    term = os.environ.get("TERM", "")
    transport = connector(inventory, name)
    try:
        # A clear error before the terminal goes raw (the console script checks again, on the pty).
        facts = parse_probe(transport.run(rc.probe(layout_for(inventory))).stdout)
        if facts.current_release is None:
            raise DeployerError(f"{name}: nothing is deployed on this host", hint="deploy first")
        if not facts.node_pids:
            raise DeployerError(f"{name}: the node is not running", hint="`invoke start --hosts {name}` starts it")
        status = transport.interactive(
            script.remote_command(),
            stdin=sys.stdin.fileno() if stdin is None else stdin,
            stdout=sys.stdout.fileno() if stdout is None else stdout,
            term=term if term and term != "dumb" else "vt100",
        )
        if status is not None and status < 0:
            raise DeployerError(f"{name}: the session ended without an exit status (was the connection lost?)")
        return status
    finally:
        transport.close()


# --- observer --------------------------------------------------------------------------------------------

EPMD_PORT = 4369
_NAMES_RE = re.compile(r"^name (\S+) at port (\d+)$")


def parse_epmd_names(output: str) -> dict[str, int]:
    """``epmd -names`` output -> {short node name: distribution port}."""
    names: dict[str, int] = {}
    for line in output.splitlines():
        match = _NAMES_RE.match(line.strip())
        if match:
            names[match.group(1)] = int(match.group(2))
    return names


def _erl_atom(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _erl_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Started after the connection: observer on the node where OTP supports it (26+), else observer with
# the node in its Nodes menu; the local node halts when the observer window closes.
OBSERVER_START = (
    "code:ensure_loaded(observer), "
    "S = case erlang:function_exported(observer, start, 1) of "
    "true -> observer:start(N); false -> observer:start() end, "
    "case {S, whereis(observer)} of "
    "{ok, P} when is_pid(P) -> R = erlang:monitor(process, P), receive {'DOWN', R, _, _, _} -> ok end; "
    '_ -> io:format(standard_error, "observer did not start: ~p~n", [S]), halt(1) end, halt()'
)


@dataclass
class ObserverTunnel:
    """EPMD and one node's distribution port on local loopback, carried over SSH to the host.

    The cookie is in ``cookie_file`` (0600 in a private temp directory, removed when the tunnel closes);
    :meth:`erl_argv` is a hidden local node that reads it, so the cookie is never in argv or output.
    """

    host: str
    node: str
    remote_dist_port: int
    epmd: LocalForward
    dist: LocalForward
    cookie_file: Path
    transport: SSHTransport
    local_name: str = field(default_factory=lambda: f"debug-{secrets.token_hex(3)}@127.0.0.1")

    @property
    def epmd_port(self) -> int:
        return self.epmd.port

    @property
    def dist_port(self) -> int:
        return self.dist.port

    def env(self) -> dict[str, str]:
        """Environment for the local node: ``ERL_EPMD_PORT`` when the tunnel could not use 4369."""
        return {} if self.epmd_port == EPMD_PORT else {"ERL_EPMD_PORT": str(self.epmd_port)}

    def connect_expression(self) -> str:
        """Erlang: bind ``N`` to the node, give it the environment's cookie from the file, connect."""
        return (
            f"N = {_erl_atom(self.node)}, "
            f"{{ok, C}} = file:read_file({_erl_string(str(self.cookie_file))}), "
            "true = erlang:set_cookie(N, binary_to_atom(string:trim(C))), "
            "case net_adm:ping(N) of pong -> ok; pang -> "
            'io:format(standard_error, "cannot connect to ~s through the tunnel~n", [N]), halt(1) end'
        )

    def erl_argv(self, then: str = OBSERVER_START, *, erl: str = "erl", noshell: bool = True) -> list[str]:
        """argv of the hidden local node: connects, then evaluates ``then`` (with ``N`` bound).

        ``-setcookie`` gets a throwaway value only so Erlang does not create ``~/.erlang.cookie``;
        the node does not listen (``-dist_listen false``) nor start a local epmd. Any error halts the
        node with status 1 (an ``-eval`` that raises would otherwise leave a ``-noshell`` node hanging).
        """
        throwaway = f"local-only-{secrets.token_hex(8)}"
        argv = [erl]
        if noshell:
            argv.append("-noshell")
        argv += ["-name", self.local_name, "-hidden", "-setcookie", throwaway]
        argv += ["-start_epmd", "false", "-dist_listen", "false"]
        argv += [
            "-eval",
            f"try {self.connect_expression()}, {then} catch Class:Reason -> "
            'io:format(standard_error, "~p: ~p~n", [Class, Reason]), halt(1) end',
        ]
        return argv

    def shell_command(self, then: str = OBSERVER_START) -> str:
        """The local command line to show an operator (no cookie in it)."""
        env = " ".join(f"{k}={v}" for k, v in self.env().items())
        return (env + " " if env else "") + shlex.join(self.erl_argv(then))


def _node_parts(inventory: Inventory) -> tuple[str, str]:
    config = inventory.config
    node = config.node_name
    short, sep, host = node.partition("@")
    if config.node.distribution != "name" or not sep or host not in ("127.0.0.1", "localhost"):
        raise DeployerError(
            f"the observer tunnel needs a node named <name>@127.0.0.1 with `name` distribution; "
            f"this inventory's node is {node!r} ({config.node.distribution})",
            hint="use the defaults (node.distribution: name, node.loopback_only: true)",
        )
    return node, short


def remote_epmd_port(inventory: Inventory, host: str) -> int:
    """The host's EPMD port: ``ERL_EPMD_PORT`` from the node's environment, else 4369."""
    values = {**inventory.config.env.clear}
    for item in inventory.hosts:
        if item.name == host:
            values.update(item.env)
    raw = values.get("ERL_EPMD_PORT", str(EPMD_PORT))
    return int(raw) if raw.isdigit() else EPMD_PORT


@contextlib.contextmanager
def observer_tunnel(
    inventory: Inventory,
    host: str | None,
    *,
    local_epmd_port: int | None = None,
    connector: Connect = connect,
) -> Iterator[ObserverTunnel]:
    """Forward the host's EPMD and the node's distribution port to 127.0.0.1 here, for as long as the
    ``with`` block runs. The local EPMD port is 4369 when free (else any free port: the local node then
    needs ``ERL_EPMD_PORT``, see :meth:`ObserverTunnel.env`); the distribution port must be the node's
    own number, because EPMD tells the local node that number.
    """
    name = _one_host(host)
    node, short = _node_parts(inventory)
    layout = layout_for(inventory)
    transport = connector(inventory, name)
    epmd: LocalForward | None = None
    dist: LocalForward | None = None
    directory: str | None = None
    try:
        names_out = transport.run(oc.epmd_names(layout, epmd_port=remote_epmd_port(inventory, name)))
        if not names_out.ok:
            raise RemoteCommandError(name, "epmd", _clean(names_out.stderr) or f"exit status {names_out.exit_status}")
        ports = parse_epmd_names(names_out.stdout)
        if short not in ports:
            raise DeployerError(
                f"{name}: the node {node} is not registered with EPMD on the host "
                f"(registered: {', '.join(sorted(ports)) or 'none'})",
                hint="is it running? `invoke status` shows it; `invoke start` starts it",
            )
        cookie = transport.run(rc.read_cookie(layout))
        value = cookie.stdout.strip()
        if not cookie.ok or not value:
            raise DeployerError(f"{name}: cannot read the environment's cookie ({layout.cookie})")
        directory = tempfile.mkdtemp(prefix="deployer-observer-")
        cookie_file = Path(directory) / "cookie"
        fd = os.open(cookie_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value)
        remote_epmd = remote_epmd_port(inventory, name)
        if local_epmd_port is not None:
            epmd = transport.forward_local(remote_epmd, local_port=local_epmd_port)
        else:
            try:
                epmd = transport.forward_local(remote_epmd, local_port=EPMD_PORT)
            except OSError:
                # A local epmd (or another tunnel) has 4369: use any port and tell the local node.
                epmd = transport.forward_local(remote_epmd, local_port=0)
        try:
            dist = transport.forward_local(ports[short], local_port=ports[short])
        except OSError as exc:
            raise DeployerError(
                f"local port {ports[short]} (the node's distribution port on {name}) is in use here: {exc.strerror}",
                hint="stop what listens on it locally, or restart the node so it gets another port",
            ) from None
        tunnel = ObserverTunnel(name, node, ports[short], epmd, dist, cookie_file, transport)
        yield tunnel
    finally:
        if dist is not None:
            dist.close()
        if epmd is not None:
            epmd.close()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
        transport.close()


def run_local_node(tunnel: ObserverTunnel, then: str = OBSERVER_START, *, erl: str = "erl") -> int:
    """Start the hidden local node (observer by default) and wait for it to exit."""
    path = shutil.which(erl)
    if path is None:
        raise DeployerError(
            f"{erl} is not installed here",
            hint="install Erlang/OTP with observer (Debian: erlang-observer), or use --print",
        )
    env = {**os.environ, **tunnel.env()}
    for name in ("ERL_FLAGS", "ERL_AFLAGS", "ERL_ZFLAGS"):
        env.pop(name, None)
    process = subprocess.Popen(tunnel.erl_argv(then, erl=path), env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return 130


def wait_forever(should_stop: Callable[[], bool] | None = None) -> None:
    """Block until interrupted (Ctrl-C) or ``should_stop`` turns true."""
    event = threading.Event()
    with contextlib.suppress(KeyboardInterrupt):
        while not (should_stop and should_stop()):
            event.wait(0.2)


# --- check -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalMachine:
    """The machine that builds releases (this one): what a bundled ERTS was linked for."""

    arch: str
    libc: str | None

    @classmethod
    def detect(cls) -> LocalMachine:
        libc = None
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(["ldd", "--version"], capture_output=True, text=True, timeout=10, check=False)
            first = (done.stdout or done.stderr).strip().splitlines()
            libc = first[0].strip() if first else None
        return cls(arch=platform.machine(), libc=libc)


_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64", "x64": "x86_64"}


def libc_version(line: str | None) -> tuple[str, tuple[int, ...] | None] | None:
    """``ldd --version``'s first line -> (family, version): ``("glibc", (2, 36))``, ``("musl", None)``."""
    if not line:
        return None
    lower = line.lower()
    if "musl" in lower:
        return ("musl", None)
    if "glibc" in lower or "gnu libc" in lower or "gnu c library" in lower:
        match = re.search(r"(\d+)\.(\d+)\s*$", line)
        return ("glibc", (int(match.group(1)), int(match.group(2))) if match else None)
    return None


@dataclass
class CheckRow:
    """One host of ``invoke check``: what was found and every problem (empty when ready to deploy)."""

    host: str
    reachable: bool
    problems: list[str] = field(default_factory=list)
    facts: HostFacts | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.reachable and not self.problems


def check_host(
    host: str,
    facts: HostFacts,
    *,
    inventory: Inventory,
    artifact: Artifact | None,
    local: LocalMachine,
) -> list[str]:
    """Every reason ``host`` is not ready for a deploy (pure: unit-tested against probe facts)."""
    config = inventory.config
    problems: list[str] = []
    if not facts.writable:
        problems.append(f"deploy_to {config.deploy_to} (or its nearest existing parent) is not writable")
    for tool in ("tar", "sha256sum"):
        if tool not in facts.tools:
            problems.append(f"{tool} is not installed")
    if config.health.http and not {"curl", "wget"} & facts.tools:
        problems.append("the health check uses http but neither curl nor wget is installed")
    if artifact is not None and facts.disk_free_kb is not None:
        need = artifact.unpacked_size + (artifact.size if artifact.sha256 not in facts.artifacts else 0)
        if facts.disk_free_kb * 1024 < need * 1.1:
            problems.append(
                f"{facts.disk_free_kb // 1024} MiB free under deploy_to, the release needs about "
                f"{need * 1.1 / 2**20:.0f} MiB"
            )
    if artifact is None or artifact.erts_version is not None:
        arch = _ARCH_ALIASES.get(facts.arch or "", facts.arch)
        built = _ARCH_ALIASES.get(local.arch, local.arch)
        if arch and arch != built:
            problems.append(f"architecture {facts.arch} differs from the build machine's {local.arch}")
        host_libc, local_libc = libc_version(facts.libc), libc_version(local.libc)
        if host_libc and local_libc:
            if host_libc[0] != local_libc[0]:
                problems.append(f"libc is {host_libc[0]}, the release was built against {local_libc[0]}")
            elif host_libc[1] and local_libc[1] and host_libc[1] < local_libc[1]:
                problems.append(
                    f"glibc {'.'.join(map(str, host_libc[1]))} is older than the build machine's "
                    f"{'.'.join(map(str, local_libc[1]))}: the bundled ERTS may not start"
                )
        elif not facts.libc:
            problems.append("cannot tell the host's libc (`ldd --version` gave nothing)")
    if facts.lock is not None:
        problems.append(f"locked: {facts.lock.describe()}")
    return problems


def check(
    inventory: Inventory,
    options: api.Options | None = None,
    *,
    artifact: Artifact | None = None,
    local: LocalMachine | None = None,
) -> list[CheckRow]:
    """Preflight for an environment: SSH and host keys, deploy_to writable, disk vs the artifact,
    tools, architecture and libc vs this (the build) machine, no lock held. Changes nothing."""
    options = options or api.Options()
    local = local or LocalMachine.detect()
    rows: list[CheckRow] = []
    for host, (stdout, error) in _probe_each(inventory, options, "check", rc.probe(layout_for(inventory))).items():
        if stdout is None:
            rows.append(CheckRow(host, False, [error or "unreachable"], None, error))
            continue
        facts = parse_probe(stdout)
        rows.append(
            CheckRow(host, True, check_host(host, facts, inventory=inventory, artifact=artifact, local=local), facts)
        )
    return rows


def check_document(rows: Sequence[CheckRow], local: LocalMachine) -> dict[str, Any]:
    return {
        "ok": all(r.ok for r in rows),
        "local": {"arch": local.arch, "libc": local.libc},
        "hosts": [
            {
                "host": r.host,
                "reachable": r.reachable,
                "ok": r.ok,
                "problems": r.problems,
                "arch": r.facts.arch if r.facts else None,
                "libc": r.facts.libc if r.facts else None,
                "disk_free_kb": r.facts.disk_free_kb if r.facts else None,
                "tools": sorted(r.facts.tools) if r.facts else [],
                "writable": r.facts.writable if r.facts else None,
            }
            for r in rows
        ],
    }


__all__ = [
    "LIFECYCLE",
    "CheckRow",
    "HostStatus",
    "LifecyclePlan",
    "LifecycleResult",
    "LocalMachine",
    "NodeHealth",
    "ObserverTunnel",
    "check",
    "console",
    "lifecycle",
    "logs",
    "observer_tunnel",
    "plan_lifecycle",
    "status",
]

"""Operating a fleet: status with health, releases, logs, start/stop/restart, console, observer, check.

Like :mod:`deployer.operations.release`, every function takes a loaded :class:`Inventory` and returns data (or runs
an interactive session); the Invoke tasks in :mod:`deployer.cli.ops_tasks` only print it. A host filter
that matches nothing is an error before any host is touched (``Inventory.select``).

* :func:`status` probes each host once (facts + one try of the health check, no waiting).
* :func:`lifecycle` starts, stops or restarts nodes: a :class:`~deployer.core.plan.Plan` like a deploy's,
  run by the same executor path (lock, batches, pause, max_fail, health gate after every start, steps
  at the seams, report).
* :func:`logs` prints or follows the node's run_erl logs; :func:`console` opens ``bin/<app> remote``
  on a pty; :func:`observer_tunnel` forwards EPMD and the node's distribution port to loopback.
* :func:`check` is a read-only preflight for an environment (and optionally a release tarball).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployer.core import compat
from deployer.core.artifact import Artifact
from deployer.core.facts import HostFacts, parse_probe
from deployer.core.inventory import Inventory
from deployer.core.plan import LIFECYCLE, Lifecycle, Plan, layout_for, plan_lifecycle, service_for
from deployer.engine.executor import Executor
from deployer.engine.locks import describe_holder
from deployer.engine.run import Options, Result, open_executor
from deployer.errors import DeployerError, RemoteCommandError
from deployer.operations.hooks import run_with_hooks
from deployer.operations.release import disk_needed
from deployer.operations.status import (
    HostStatus,
    NodeHealth,
    parse_health,
    releases_document,
    status,
    status_document,
)
from deployer.remote import ops as oc
from deployer.remote import release as rc
from deployer.remote.flavours import flavour
from deployer.remote.fragments import deploy_vars, script
from deployer.remote.release import host_facts
from deployer.remote.systemd import check_problems, host_checks
from deployer.ssh.endpoints import endpoint
from deployer.ssh.transport import LocalForward, OutputCallback, SSHTransport

# --- node lifecycle --------------------------------------------------------------------------------------

LifecycleResult = Result
"""The report of a start/stop/restart and the plan it ran (or would run, with ``--dry-run``)."""


def lifecycle(inventory: Inventory, operation: Lifecycle, options: Options | None = None) -> Result:
    """Start, stop or restart the nodes of the selected hosts, batch by batch, under the deploy lock.

    Every start is followed by the health gate; a host that fails it is reported ``failed`` with what
    it runs now (there is nothing to revert to: the release did not change) and no further batch
    starts once more hosts failed than ``max_fail`` allows. With ``dry_run`` the hosts are only probed.
    """
    options = options or Options()
    names = [h.name for h in inventory.select(options.hosts, options.roles)]

    def plan_for(executor: Executor, facts: dict[str, HostFacts]) -> Plan:
        return plan_lifecycle(inventory, operation, facts, strategy=options.strategy)

    return run_with_hooks(inventory, options, operation, names, plan_for)


# --- one host: connection helpers ----------------------------------------------------------------------

Connect = Callable[[Inventory, str], SSHTransport]


def connect(inventory: Inventory, host: str) -> SSHTransport:
    """A strict-host-key SSH connection to the one host named ``host`` (an unknown name is an error)."""
    selected = inventory.select([host])
    return SSHTransport(endpoint(inventory, selected[0]))


def _one_host(host: str | None) -> str:
    if not host or "," in host:
        raise DeployerError("exactly one host is needed (--hosts NAME)")
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
    service = service_for(inventory)
    transport = connector(inventory, name)
    try:
        # Also the check that there are logs at all, with a clean error, before anything streams.
        result = transport.run(oc.logs(layout, lines=0 if follow else lines, service=service))
        if not result.ok:
            raise RemoteCommandError(name, "logs", _clean(result.stderr) or f"exit status {result.exit_status}")
        if not follow:
            on_output("stdout", result.stdout)
            return

        def unpty(stream: str, text: str) -> None:
            # A pty turns \n into \r\n; give callers plain lines.
            on_output(stream, text.replace("\r\n", "\n"))

        try:
            status = transport.stream(
                oc.follow_logs(layout, lines=lines, service=service), on_output=unpty, should_stop=should_stop
            )
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
            raise DeployerError(f"{name}: the node is not running", hint="`deployer start --hosts {name}` starts it")
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
                hint="is it running? `deployer status` shows it; `deployer start` starts it",
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

NO_TARBALL_NOTE = (
    "architecture and libc are checked against the release itself (its ERTS and NIFs, and where it was "
    "built) at deploy, or now with --tarball"
)


@dataclass
class CheckRow:
    """One host of ``deployer check``: what was found and every problem (empty when ready to deploy)."""

    host: str
    reachable: bool
    problems: list[str] = field(default_factory=list)
    facts: HostFacts | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.reachable and not self.problems


def check_host(
    facts: HostFacts, *, inventory: Inventory, artifact: Artifact | None, compatibility: Sequence[str] = ()
) -> list[str]:
    """Every reason a host is not ready for a deploy (pure: unit-tested against probe facts).

    ``compatibility`` are the release's findings for this host (:func:`deployer.core.compat.findings`).
    """
    config = inventory.config
    problems: list[str] = []
    if not facts.writable:
        problems.append(f"deploy_to {config.deploy_to} (or its nearest existing parent) is not writable")
    for tool in ("tar", "sha256sum"):
        if tool not in facts.tools:
            problems.append(f"{tool} is not installed")
    if config.health.http and not {"curl", "wget"} & facts.tools:
        problems.append("the health check uses http but neither curl nor wget is installed")
    if artifact is not None:
        short = disk_needed(artifact, facts)
        if short:
            problems.append(short)
    problems.extend(compatibility)
    if facts.lock is not None:
        problems.append(f"locked: {describe_holder(facts.lock, facts.now)}")
    return problems


def check(inventory: Inventory, options: Options | None = None, *, artifact: Artifact | None = None) -> list[CheckRow]:
    """Preflight for an environment: SSH and host keys, deploy_to writable, tools, no lock held; with
    ``artifact`` also disk space and the deploy's own compatibility preflight (the release's ERTS and
    NIFs, and where it was built, against each host). Changes nothing."""
    options = options or Options()
    names = [h.name for h in inventory.select(options.hosts, options.roles)]
    layout = layout_for(inventory)
    # The probe, and whether this login may deploy here: deploy_to's owner and modes (and sudo for the unit).
    probe = script("probe", deploy_vars(layout), host_facts(), host_checks(service_for(inventory)))
    with open_executor(inventory, options, "check") as executor:
        probed = executor.probe_each(names, probe)
    facts = {host: parse_probe(stdout) for host, (stdout, _) in probed.items() if stdout is not None}
    found = compat.findings(artifact.path, artifact.sha256, facts) if artifact is not None else {}
    rows: list[CheckRow] = []
    for host, (_, error) in probed.items():
        if host not in facts:
            rows.append(CheckRow(host, False, [error or "unreachable"], None, error))
            continue
        problems = check_host(facts[host], inventory=inventory, artifact=artifact, compatibility=found.get(host, ()))
        problems += check_problems(probed[host][0] or "")
        rows.append(CheckRow(host, True, problems, facts[host]))
    return rows


def _built_from(facts: HostFacts | None) -> str | None:
    """The commit (or why none) of the host's current release, as its revisions.log records it."""
    release = facts.current_release if facts else None
    if facts is None or release is None:
        return None
    source = facts.history.built_from(release)
    return source.describe() if source else "unknown"


def check_document(rows: Sequence[CheckRow], *, tarball: bool = False) -> dict[str, Any]:
    """``deployer check --json``: per host what was found and every problem; without a tarball a note
    that architecture and libc are checked against the release at deploy."""
    return {
        "ok": all(r.ok for r in rows),
        "note": None if tarball else NO_TARBALL_NOTE,
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
                "release": r.facts.current_release if r.facts else None,
                "built_from": _built_from(r.facts),
            }
            for r in rows
        ],
    }


__all__ = [
    "LIFECYCLE",
    "CheckRow",
    "HostStatus",
    "Lifecycle",
    "LifecycleResult",
    "NodeHealth",
    "ObserverTunnel",
    "check",
    "check_document",
    "console",
    "lifecycle",
    "logs",
    "observer_tunnel",
    "parse_health",
    "plan_lifecycle",
    "releases_document",
    "status",
    "status_document",
]

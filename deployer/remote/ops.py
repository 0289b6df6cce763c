"""Remote scripts for operating a running fleet, as pure functions returning :class:`Script`.

Status (the probe plus one health check), logs, node start/stop/restart, the remote
console and the observer's port lookup, composed from the public fragments of
:mod:`deployer.remote.fragments` like the deploy scripts: ``set -eu``, ``@@step``
markers on stderr, values quoted at render time. The node's environment (cookie
included) is read on the host by the launcher from ``shared/node.env`` and
``shared/.cookie``; it never travels in argv.
"""

from __future__ import annotations

import shlex

from deployer.core.paths import RemoteLayout
from deployer.remote.flavours import Flavour
from deployer.remote.fragments import (
    PRELUDE,
    Fragment,
    HealthCheck,
    adopt_running_node,
    cookie_mode,
    current_release,
    deploy_vars,
    detach,
    health_gate,
    health_once,
    helper_block,
    launch,
    raw,
    script,
    start_node,
    stop_node,
    text,
)
from deployer.remote.release import host_facts
from deployer.remote.shell import Script, join, words
from deployer.remote.systemd import Service

# --- status ----------------------------------------------------------------------------------------------


def status(
    layout: RemoteLayout,
    flavour: Flavour,
    health: HealthCheck,
    *,
    history_lines: int = 500,
    service: Service | None = None,
) -> Script:
    """The read-only probe (:func:`release.host_facts`) plus one health check, in one SSH session (and the
    unit's state, with ``service``)."""
    unit = (service.state(),) if service is not None else ()
    return script(
        "status",
        deploy_vars(layout),
        host_facts(history_lines),
        *unit,
        health_once(layout, flavour, health),
        timeout=120,
    )


# --- logs ------------------------------------------------------------------------------------------------


_NO_LOGS = 'fail "no node logs in $d/shared/tmp/log (has the node been started on this host?)"'


def logs(layout: RemoteLayout, *, lines: int, service: Service | None = None) -> Script:
    """The last ``lines`` lines of the node's run_erl logs (``erlang.log.N``, oldest file first), or of the
    unit's journal with ``service``."""
    if service is not None:
        return script("logs", service.journal(lines=lines, follow=False), timeout=120)
    body = text(
        "step logs\n"
        'files=$(ls -tr "$d"/shared/tmp/log/erlang.log.* 2>/dev/null || true)\n'
        f'[ -n "$files" ] || {_NO_LOGS}\n'
        "# shellcheck disable=SC2086\n"
        "cat $files | tail -n {{lines}}\n",
        lines=max(0, lines),
    )
    return script("logs", deploy_vars(layout), body, timeout=120)


def follow_logs(layout: RemoteLayout, *, lines: int, service: Service | None = None) -> Script:
    """``tail -F`` the newest log, switching when run_erl moves on to the next ``erlang.log.N``
    (``journalctl -f`` of the unit with ``service``).

    Runs until the SSH channel closes; the transport gives it a pty, so closing the channel hangs up
    the session and every process of it on the host ends.
    """
    body = text(
        'newest() { ls -t "$d"/shared/tmp/log/erlang.log.* 2>/dev/null | head -n 1; }\n'
        "cur=$(newest)\n"
        f'[ -n "$cur" ] || {_NO_LOGS}\n'
        "t=\n"
        'trap \'if [ -n "$t" ]; then kill "$t" 2>/dev/null; fi; exit 0\' HUP INT TERM\n'
        'tail -n {{lines}} -F "$cur" & t=$!\n'
        "while sleep 1; do\n"
        "  n=$(newest)\n"
        '  if [ -n "$n" ] && [ "$n" != "$cur" ]; then\n'
        '    kill "$t" 2>/dev/null || true\n'
        '    cur=$n; tail -n +1 -F "$cur" & t=$!\n'
        "  fi\n"
        "done\n",
        lines=max(0, lines),
    )
    if service is not None:
        body = service.journal(lines=lines, follow=True)
    # Passed as argv (no secrets in it) so the pty's line discipline never sees the script text.
    return script("logs-follow", deploy_vars(layout), body, stdin=False)


# --- node lifecycle ---------------------------------------------------------------------------------------


def stop(layout: RemoteLayout, *, stop_timeout: float, service: Service | None = None) -> Script:
    """SIGTERM to the VM, wait until it has exited (SIGKILL after ``stop_timeout``); prints ``stopped=``.
    With ``service``: ``systemctl stop`` of the unit."""
    body = service.stop() if service is not None else stop_node(stop_timeout)
    return script("stop", deploy_vars(layout), body, timeout=_seconds(stop_timeout) + 60)


def _seconds(value: float) -> int:
    return int(max(1, round(value)))


def _start(layout: RemoteLayout, flavour: Flavour, health: HealthCheck) -> Fragment:
    return start_node(layout, flavour, start_wait=health.deadline, start_grace=min(health.start_grace, health.deadline))


def _limit(health: HealthCheck, stop_timeout: float = 0.0) -> float:
    return stop_timeout + min(health.start_grace, health.deadline) + 2 * health.deadline + health.stable_for + 60


def start(
    layout: RemoteLayout,
    flavour: Flavour,
    *,
    health: HealthCheck,
    run_id: str | None = None,
    service: Service | None = None,
) -> Script:
    """Start the current release's node as a daemon with its environment (unless it already runs),
    then the health gate. Exits 76 when the node does not become healthy. Runs detached when ``run_id``
    is given (see :func:`deployer.remote.fragments.detach`). With ``service``: ``systemctl start``."""
    if service is not None:
        launch_node: tuple[Fragment, ...] = (service.start(),)
    else:
        launch_node = (
            adopt_running_node(),
            text('if [ -z "$started" ]; then\n'),
            _start(layout, flavour, health),
            text("fi\n"),
        )
    worker = script(
        "start",
        deploy_vars(layout),
        current_release(),
        *launch_node,
        health_gate(layout, flavour, health),
        timeout=_limit(health) + 60,
    )
    if run_id is None:
        return worker
    return detach(layout, worker, run_id=run_id, limit=_limit(health))


def restart(
    layout: RemoteLayout,
    flavour: Flavour,
    *,
    health: HealthCheck,
    stop_timeout: float,
    run_id: str | None = None,
    service: Service | None = None,
) -> Script:
    """Stop the node and wait for it to exit, start the current release again, health gate (detached with
    ``run_id``). With ``service``: ``systemctl restart``."""
    cycle = (service.restart(),) if service is not None else (stop_node(stop_timeout), _start(layout, flavour, health))
    worker = script(
        "restart",
        deploy_vars(layout),
        current_release(),
        *cycle,
        health_gate(layout, flavour, health),
        timeout=_limit(health, stop_timeout) + 60,
    )
    if run_id is None:
        return worker
    return detach(layout, worker, run_id=run_id, limit=_limit(health, stop_timeout))


# --- console and observer ------------------------------------------------------------------------------


def console(layout: RemoteLayout, flavour: Flavour) -> Script:
    """The flavour's remote-shell verb (``bin/<app> remote``) through the launcher, with the release's env.

    Runs on a pty with the terminal as stdin, so it is passed as argv (``sh -c``) and is not wrapped
    like the other scripts; it holds no secret: the cookie is read from ``shared/.cookie`` on the host.
    No ``@@step`` markers: stderr is the operator's terminal. ``TERM`` is the one variable passed on from
    the session (line editing needs it); everything else comes from the env file.
    """
    fragments = (
        deploy_vars(layout),
        text(
            'cur=$(readlink "$d/current" 2>/dev/null || true)\n'
            '[ -n "$cur" ] || fail "nothing is deployed on this host ($d/current does not exist)"\n'
            "rid=${cur##*/}\n"
            "find_nodes\n"
            '[ -n "$NODE_PIDS" ] || fail "the node is not running on this host (deployer start starts it)"\n'
            'exec env -i "PATH=$PATH" "TERM=${TERM:-dumb}" '
            '/bin/sh -c "$LAUNCHER" deployer-launch "$d" "$rid" ' + cookie_mode(flavour) + " ",
            helpers=["find_nodes", "launch"],
        ),
        raw(words([f"{layout.current}/bin/{layout.app}", *flavour.remote])),
        text("\n"),
    )
    helpers = [h for f in fragments for h in f.helpers]
    return Script(
        name="console",
        parts=join((PRELUDE, helper_block(helpers)), *(f.parts for f in fragments)),
        stdin=False,
    )


def epmd_names(layout: RemoteLayout, *, epmd_port: int = 4369) -> Script:
    """``epmd -names`` on the host with the release's bundled epmd (the host needs no Erlang)."""
    body = text(
        "step epmd\n"
        'e=$(ls -d "$d"/current/erts-*/bin/epmd 2>/dev/null | head -n 1 || true)\n'
        'if [ -z "$e" ]; then e=$(command -v epmd || true); fi\n'
        '[ -n "$e" ] || fail "no epmd: the current release bundles no ERTS and epmd is not installed"\n'
        'ERL_EPMD_PORT={{port}} "$e" -names\n',
        port=epmd_port,
    )
    return script("epmd-names", deploy_vars(layout), body, timeout=60)


# --- exec and eval ------------------------------------------------------------------------------------------

NOT_DEPLOYED = 2
"""Exit status of ``exec``/``eval`` when nothing is deployed on the host (the reason is on stderr)."""
NOT_RUNNING = 3
"""Exit status of ``eval`` when the node is not running (the reason is on stderr)."""


def _deployed_release() -> Fragment:
    # Like current_release(), with its own exit status so the operation can tell "nothing here" from a failure.
    return text(
        "step current\n"
        'cur=$(readlink "$d/current" 2>/dev/null || true)\n'
        '[ -n "$cur" ] || { echo "nothing is deployed on this host ($d/current does not exist)" >&2; exit {{code}}; }\n'
        "rid=${cur##*/}\n",
        code=NOT_DEPLOYED,
    )


def exec_command(layout: RemoteLayout, command: str, *, timeout: float) -> Script:
    """``cd current`` then ``command`` as written (``sh``): its exit status is the script's."""
    if not command.strip():
        raise ValueError("the command is empty")
    return script(
        "exec",
        deploy_vars(layout),
        _deployed_release(),
        text('cd "$d/current"\nstep exec\nsh -c {{command}}\n', command=command),
        timeout=timeout,
    )


def eval_expression(layout: RemoteLayout, flavour: Flavour, expression: str, *, timeout: float) -> Script:
    """``bin/<app> rpc EXPRESSION`` in the running node, started through the launcher with the release's
    environment (the cookie is read on the host); an answer the flavour marks as an error (relx's
    ``{badrpc,...}``) exits non-zero. Elixir's ``rpc`` prints nothing of the result, so there the value is
    printed the way iex would."""
    if not expression.strip():
        raise ValueError("the expression is empty")
    if flavour.name == "mix":
        expression = f"IO.inspect((\n{expression}\n))"
    failed = "|".join(f"{shlex.quote(prefix)}*" for prefix in flavour.rpc_error_output)
    check = text(f'case "$out" in {failed}) exit 1 ;; esac\n') if failed else text("")
    return script(
        "eval",
        deploy_vars(layout),
        _deployed_release(),
        text(
            "find_nodes\n"
            '[ -n "$NODE_PIDS" ] || { echo "the node is not running on this host (deployer start starts it)" >&2; '
            "exit {{code}}; }\n"
            "step eval\n"
            'set +e\nout=$( ( cd "$d/shared"; ',
            code=NOT_RUNNING,
            helpers=["find_nodes"],
        ),
        launch(layout, flavour, flavour.rpc(expression)),
        text(' ) 2>&1 )\nstatus=$?\nset -e\nprintf \'%s\\n\' "$out"\n[ "$status" -eq 0 ] || exit "$status"\n'),
        check,
        timeout=timeout,
    )

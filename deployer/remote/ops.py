"""Remote scripts for operating a running fleet, as pure functions returning :class:`Script`.

Status (the probe plus one health check), logs, node start/stop/restart, the remote
console and the observer's port lookup. They reuse the conventions of
:mod:`deployer.remote.release`: ``set -eu``, ``@@step`` markers on stderr, the
shared node helpers (``node_pids``, ``stop_node``, ``load_env``), values quoted at
render time. The node's environment (cookie included) is always loaded on the host
from ``shared/env/<release>.env`` and ``shared/.cookie``; it never travels in argv.
"""

from __future__ import annotations

import shlex

from deployer.core.paths import RemoteLayout
from deployer.remote import release as rc
from deployer.remote.flavours import Flavour
from deployer.remote.release import (
    NODE_FUNCTIONS,
    PRELUDE,
    HealthCheck,
    _health,
    _restart,
    _script,
    _vars,
    cookie_mode,
)
from deployer.remote.shell import Part, Script, join, template, words

# What `_script` wraps every body in; status reuses the probe's body inside its own wrapper.
_MAIN_OPEN = "__deployer_main() {\n"
_MAIN_CLOSE = "\n}\n__deployer_main </dev/null\n"

# The release `current` points to, as `$rid`; fails with a readable reason when there is none.
_CURRENT = (
    "step current\n"
    'cur=$(readlink "$d/current" 2>/dev/null || true)\n'
    '[ -n "$cur" ] || fail "nothing is deployed on this host ($d/current does not exist)"\n'
    "rid=${cur##*/}\n"
    '[ -d "$d/releases/$rid" ] || fail "current points to $cur, which is not on this host"\n'
    '[ -f "$d/shared/env/$rid.env" ] || fail "the environment file of $rid is missing ($d/shared/env/$rid.env)"\n'
)


def _body(script: Script) -> tuple[Part, ...]:
    """The parts of a script built by ``release._script`` without its prelude and wrapper."""
    parts = script.parts
    if len(parts) < 3 or parts[0] != PRELUDE or parts[1] != _MAIN_OPEN or parts[-1] != _MAIN_CLOSE:
        raise ValueError(f"script {script.name!r} is not in the shape release._script builds")
    return parts[2:-1]


# --- status ----------------------------------------------------------------------------------------------


def _health_once(layout: RemoteLayout, flavour: Flavour, health: HealthCheck) -> tuple[Part, ...]:
    """One try of the health check, without waiting and without writing anything on the host.

    Prints ``health=ok|failing|down|none|unknown`` and, when failing, ``health_error=<one line>``.
    """
    checks: list[tuple[Part, ...]] = []
    if health.http:
        checks.append(
            template(
                "  if command -v curl >/dev/null 2>&1; then\n"
                "    err=$(curl -fsS -o /dev/null --max-time 5 {{url}} 2>&1) || ok=\n"
                "  elif command -v wget >/dev/null 2>&1; then\n"
                "    err=$(wget -q -O /dev/null -T 5 {{url}} 2>&1) || { ok=; err=${err:-wget failed}; }\n"
                "  else\n"
                '    unknown="neither curl nor wget is installed on the host"\n'
                "  fi\n",
                url=health.http,
            )
        )
    if health.rpc:
        # Like the health gate: some release scripts (relx) exit 0 when the expression raised.
        failed = "|".join(f"{shlex.quote(prefix)}*" for prefix in flavour.rpc_error_output)
        printed_error = f'    case "$out" in {failed}) ok=; err=$out ;; esac\n' if failed else ""
        checks.append(
            join(
                ('  if [ -n "$ok" ] && [ -z "$unknown" ]; then\n    out=$( ( load_env "$rid"; cd "$d/shared"; exec ',),
                words([f"{layout.current}/bin/{layout.app}", *flavour.rpc(health.rpc)]),
                (" ) 2>&1 ) || { ok=; err=${out:-the rpc check failed}; }\n" + printed_error + "  fi\n",),
            )
        )
    return join(
        cookie_mode(flavour),
        (
            "step health\n"
            'cur=$(readlink "$d/current" 2>/dev/null || true)\n'
            "rid=${cur##*/}\n"
            "pids=$(node_pids | sort -u | tr '\\n' ' ')\n"
            "ok=1; err=; unknown=\n"
            'if [ -z "$cur" ]; then echo health=none\n'
            'elif [ -z "$pids" ]; then echo health=down\n'
            "else\n",
        ),
        *checks,
        (
            '  if [ -n "$unknown" ]; then echo health=unknown; echo "health_error=$unknown"\n'
            '  elif [ -n "$ok" ]; then echo health=ok\n'
            "  else echo health=failing; printf 'health_error=%s\\n' \"$(printf '%s' \"$err\" | tr '\\n' ' ' "
            '| cut -c1-300)"\n'
            "  fi\n"
            "fi\n",
        ),
    )


def status(layout: RemoteLayout, flavour: Flavour, health: HealthCheck, *, history_lines: int = 500) -> Script:
    """The read-only probe (:func:`release.probe`) plus one health check, in one SSH session."""
    probe = rc.probe(layout, history_lines=history_lines)
    return _script("status", _body(probe), _health_once(layout, flavour, health), timeout=120)


# --- logs ------------------------------------------------------------------------------------------------


_NO_LOGS = 'fail "no node logs in $d/shared/tmp/log (has the node been started on this host?)"'


def logs(layout: RemoteLayout, *, lines: int) -> Script:
    """The last ``lines`` lines of the node's run_erl logs (``erlang.log.N``, oldest file first)."""
    body = template(
        "step logs\n"
        'files=$(ls -tr "$d"/shared/tmp/log/erlang.log.* 2>/dev/null || true)\n'
        f'[ -n "$files" ] || {_NO_LOGS}\n'
        "# shellcheck disable=SC2086\n"
        "cat $files | tail -n {{lines}}\n",
        lines=max(0, lines),
    )
    return _script("logs", _vars(layout), body, timeout=120)


def follow_logs(layout: RemoteLayout, *, lines: int) -> Script:
    """``tail -F`` the newest log, switching when run_erl moves on to the next ``erlang.log.N``.

    Runs until the SSH channel closes; the transport gives it a pty, so closing the channel hangs up
    the session and every process of it on the host ends.
    """
    body = template(
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
    script = _script("logs-follow", _vars(layout), body)
    # Passed as argv (no secrets in it) so the pty's line discipline never sees the script text.
    return Script(name=script.name, parts=script.parts, stdin=False)


# --- node lifecycle ---------------------------------------------------------------------------------------


def stop(layout: RemoteLayout, *, stop_timeout: float) -> Script:
    """SIGTERM to the VM, wait until it has exited (SIGKILL after ``stop_timeout``); prints ``stopped=``."""
    timeout = int(max(1, round(stop_timeout)))
    return _script(
        "stop",
        _vars(layout),
        (NODE_FUNCTIONS,),
        template("step stop\nstop_node {{timeout}}\n", timeout=timeout),
        timeout=timeout + 60,
    )


def start(layout: RemoteLayout, flavour: Flavour, *, health: HealthCheck) -> Script:
    """Start the current release's node as a daemon with its environment (unless it already runs),
    then the health gate. Exits 76 when the node does not become healthy."""
    # Where nothing runs, the stop inside release._restart is a no-op: the start is the deploy's own.
    body = join(
        (
            "pids=$(node_pids | sort -u | tr '\\n' ' ')\n"
            'if [ -n "$pids" ]; then\n'
            '  echo "already_running=$pids"\n'
            "else\n",
        ),
        _restart(layout, flavour, 1),
        ("fi\n",),
    )
    return _script(
        "start",
        _vars(layout),
        (NODE_FUNCTIONS,),
        cookie_mode(flavour),
        (_CURRENT,),
        body,
        _health(layout, flavour, health),
        timeout=health.deadline + 120,
    )


def restart(layout: RemoteLayout, flavour: Flavour, *, health: HealthCheck, stop_timeout: float) -> Script:
    """Stop the node and wait for it to exit, start the current release again, health gate."""
    return _script(
        "restart",
        _vars(layout),
        (NODE_FUNCTIONS,),
        (_CURRENT,),
        _restart(layout, flavour, stop_timeout),
        _health(layout, flavour, health),
        timeout=stop_timeout + health.deadline + 120,
    )


# --- console and observer ------------------------------------------------------------------------------


def console(layout: RemoteLayout, flavour: Flavour) -> Script:
    """``exec bin/<app> remote`` (the flavour's remote-shell verb) with the release's environment loaded.

    Runs on a pty with the terminal as stdin, so it is passed as argv (``sh -c``) and is not wrapped
    like the other scripts; it holds no secret: the cookie is read from ``shared/.cookie`` on the host.
    No ``@@step`` markers: stderr is the operator's terminal.
    """
    parts = join(
        (PRELUDE,),
        _vars(layout),
        (NODE_FUNCTIONS,),
        cookie_mode(flavour),
        (
            'cur=$(readlink "$d/current" 2>/dev/null || true)\n'
            '[ -n "$cur" ] || fail "nothing is deployed on this host ($d/current does not exist)"\n'
            "rid=${cur##*/}\n"
            '[ -n "$(node_pids)" ] || fail "the node is not running on this host (invoke start starts it)"\n'
            'load_env "$rid"\n'
            'cd "$d/shared"\n'
            "exec ",
        ),
        words([f"{layout.current}/bin/{layout.app}", *flavour.remote]),
        ("\n",),
    )
    return Script(name="console", parts=parts, stdin=False)


def epmd_names(layout: RemoteLayout, *, epmd_port: int = 4369) -> Script:
    """``epmd -names`` on the host with the release's bundled epmd (the host needs no Erlang)."""
    body = template(
        "step epmd\n"
        'e=$(ls -d "$d"/current/erts-*/bin/epmd 2>/dev/null | head -n 1 || true)\n'
        'if [ -z "$e" ]; then e=$(command -v epmd || true); fi\n'
        '[ -n "$e" ] || fail "no epmd: the current release bundles no ERTS and epmd is not installed"\n'
        'ERL_EPMD_PORT={{port}} "$e" -names\n',
        port=epmd_port,
    )
    return _script("epmd-names", _vars(layout), body, timeout=60)

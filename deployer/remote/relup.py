"""The remote steps of a hot code upgrade (relup), as pure functions returning :class:`Script`.

A hot upgrade changes the code of a running node without restarting it: the new release's tarball is
placed where the node's ``release_handler`` expects it (``<root>/releases/<vsn>/<name>.tar.gz`` under the
node's own root, which is the release directory it was started from), then unpacked, installed (the
relup's instructions run: modules load, ``code_change/3`` converts state) and made permanent. Every call
into the node goes through the release script's ``eval`` (relx) started by the launcher, so it has the
release's environment and cookie, and answers ``deployer_ok`` or the reason it did not.

The new release is also extracted as usual (``releases/<id>``) and ``current`` switched to it just before
the install: a later restart boots the new version from a clean directory, while the running node keeps
its older root (which pruning must keep while the node runs). The whole activation runs detached on
the host, like a restart deploy's.
"""

from __future__ import annotations

from collections.abc import Sequence

from deployer.core.paths import RemoteLayout
from deployer.remote import envfile
from deployer.remote.flavours import Flavour
from deployer.remote.fragments import (
    Fragment,
    HealthCheck,
    detach,
    health_gate,
    launch,
    prune,
    record,
    script,
    start_node,
    stop_node,
    switch,
    text,
)
from deployer.remote.shell import Script

__all__ = [
    "FALLBACK_KEY",
    "HOT_KEY",
    "RPC_TIMEOUT",
    "downgrade",
    "erl_string",
    "hot_activate",
    "hot_revert",
    "node_release",
    "node_release_expression",
    "restore_root",
]

RPC_TIMEOUT = 120.0
"""Seconds one call into the node may take (an install runs every ``code_change/3`` of the relup)."""

FALLBACK_KEY = "fallback"
"""``fallback=<why>`` on stdout: the activation did a restart deploy instead (allowed by the operator)."""
HOT_KEY = "hot_upgraded"
"""``hot_upgraded=<os pid>`` on stdout: the node was upgraded in place and kept its OS pid."""

BACKUP = ".deployer-hot"
"""Suffix of the copies of ``RELEASES`` and ``start_erl.data`` kept in the node's root during an upgrade."""
PRISTINE = ".deployer-pristine"
"""Suffix of the copies of the root's ``RELEASES``, ``start_erl.data`` and application list as extracted,
written by its first hot upgrade: a restart on that release restores them (:func:`restore_root`)."""


def erl_string(value: str) -> str:
    """``value`` as an Erlang string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def node_release_expression() -> str:
    """What the node is asked: its root, OS pid, ``release_handler:which_releases()`` (version, status) and
    the versions the running release's relup can downgrade to."""
    # The down instructions come from the running release's relup in the node's root (none: no downgrade).
    return (
        "Rels = [{V, S} || {_, V, _, S} <- release_handler:which_releases()], "
        'Running = case [V || {V, current} <- Rels] ++ [V || {V, permanent} <- Rels] of [R | _] -> R; [] -> "" end, '
        'Down = case file:consult(filename:join([code:root_dir(), "releases", Running, "relup"])) of '
        "{ok, [{_, _, D}]} -> [V || {V, _, _} <- D]; _ -> [] end, "
        "{deployer_node, code:root_dir(), os:getpid(), Rels, Down}"
    )


def node_release(layout: RemoteLayout, flavour: Flavour, *, timeout: float = 60.0) -> Script:
    """Read-only: ask the running node (if any) for its root, OS pid and releases.

    Prints ``node=none`` (nothing deployed), ``node=down`` (no node running), or the node's answer
    (parsed by :func:`deployer.core.relup.parse_node_release`); an rpc that fails prints its error.
    """
    limit = str(int(max(1, round(timeout))))
    return script(
        "node-release",
        text(
            "d={{deploy_to}}\napp={{app}}\n"
            "step node-release\n"
            'cur=$(readlink "$d/current" 2>/dev/null || true)\n'
            'if [ -z "$cur" ]; then echo node=none; exit 0; fi\n'
            "rid=${cur##*/}\n"
            "find_nodes\n"
            'if [ -z "$NODE_PIDS" ]; then echo node=down; exit 0; fi\n'
            'out=$( ( cd "$d/shared"; ',
            deploy_to=layout.deploy_to,
            app=layout.app,
            helpers=["find_nodes"],
        ),
        launch(layout, flavour, flavour.rpc(node_release_expression()), limit=limit),
        text(" ) 2>&1 ) || true\nprintf '%s\\n' \"$out\"\n"),
        timeout=timeout + 30,
    )


def _rpc(layout: RemoteLayout, flavour: Flavour, release_id: str, expression: str, *, limit: float) -> Fragment:
    """``out=<the node's answer to expression>``, through release ``release_id``'s script and environment."""
    return (
        text('out=$( ( cd "$d/shared"; ')
        + launch(
            layout,
            flavour,
            flavour.rpc(expression),
            limit=str(int(max(1, round(limit)))),
            command=layout.bin(release_id),
        )
        + text(" ) 2>&1 ) || out=\"$out (exit status $?)\"\nout=$(printf '%s' \"$out\" | tr '\\n' ' ')\n")
    )


def _answered() -> str:
    return 'case "$out" in *deployer_ok*) ;; *) false ;; esac'


def _expr_check(root: str, os_pid: int, from_version: str) -> str:
    return (
        "Rels = [{V, S} || {_, V, _, S} <- release_handler:which_releases()], "
        "case {code:root_dir(), os:getpid(), lists:keyfind(" + erl_string(from_version) + ", 1, Rels), "
        "[V || {V, current} <- Rels]} of "
        "{" + erl_string(root) + ", " + erl_string(str(os_pid)) + ", {_, permanent}, []} -> deployer_ok; "
        "Other -> {error, Other} end"
    )


def _expr_unpack(name: str, version: str) -> str:
    vsn = erl_string(version)
    return (
        "case release_handler:unpack_release(" + erl_string(f"{version}/{name}") + ") of "
        "{ok, " + vsn + "} -> deployer_ok; {error, {existing_release, " + vsn + "}} -> deployer_ok; "
        "Other -> {error, Other} end"
    )


def _expr_install(version: str) -> str:
    return (
        "case release_handler:install_release(" + erl_string(version) + ") of "
        "{ok, _, _} -> deployer_ok; Other -> {error, Other} end"
    )


def _expr_verify(version: str, os_pid: int) -> str:
    return (
        "case {[V || {_, V, _, current} <- release_handler:which_releases()], os:getpid()} of "
        "{[" + erl_string(version) + "], " + erl_string(str(os_pid)) + "} -> deployer_ok; "
        "Other -> {error, Other} end"
    )


def _expr_permanent(version: str) -> str:
    return (
        "case release_handler:make_permanent(" + erl_string(version) + ") of "
        "ok -> deployer_ok; Other -> {error, Other} end"
    )


def _limits(health: HealthCheck, stop_timeout: float, rpc_timeout: float) -> tuple[float, float]:
    # Five calls into the node, the health gate, and (fallback or revert) one restart.
    remote = 5 * rpc_timeout + stop_timeout + health.deadline * 3 + max(0.0, health.stable_for) * 2 + 60
    return remote, remote + 60


def hot_activate(
    layout: RemoteLayout,
    flavour: Flavour,
    *,
    release_id: str,
    name: str,
    version: str,
    from_version: str,
    root: str,
    os_pid: int,
    sha256: str,
    health: HealthCheck,
    stop_timeout: float,
    tmp_suffix: str,
    success_record: str,
    fallback_record: str | None = None,
    prune_paths: Sequence[str] = (),
    rpc_timeout: float = RPC_TIMEOUT,
) -> Script:
    """Upgrade the node (OS pid ``os_pid``, root ``root``, running ``from_version``) in place to ``version``.

    Before the install, checks run again on the host (the node is that process, runs ``from_version``
    permanently from ``root``, nothing half-installed) and the release is placed and unpacked in the
    node's root; a failure there changes nothing the node runs: the script fails, or, with
    ``fallback_record``, does a restart deploy of ``release_id`` instead and prints ``fallback=<why>``.
    Then ``current`` switches to ``release_id``, ``release_handler`` installs the release, the node must
    report ``version`` as current with the same OS pid, pass the health gate, and the release is made
    permanent. A failure from the switch on exits non-zero (76 when unhealthy) and is reverted by
    :func:`hot_revert`. Runs detached (run id ``hot-<tmp_suffix>``).
    """
    releases_dir = f"{root.rstrip('/')}/releases"
    rpc = RPC_TIMEOUT if rpc_timeout <= 0 else rpc_timeout
    checks = (
        text(
            "step check-node\n"
            "hot=1 why=\n"
            "find_nodes\n"
            'if [ "$NODE_PIDS" != {{pid}} ]; then\n'
            '  hot= why="the node is no longer OS pid "{{pid}}" (running now: ${NODE_PIDS:-none})"\n'
            "fi\n"
            'if [ -n "$hot" ] && ! proc_start {{pid}}; then hot= why="the node (OS pid "{{pid}}") exited"; fi\n'
            'if [ -n "$hot" ]; then NODE_PID={{pid}} NODE_START=$PROC_START; fi\n'
            "rid={{id}}\n"
            'if [ -n "$hot" ]; then\n'
            "  step check-version\n",
            pid=os_pid,
            id=release_id,
            helpers=["find_nodes", "proc_start"],
        )
        + _rpc(layout, flavour, release_id, _expr_check(root, os_pid, from_version), limit=rpc)
        + text(
            "  if ! " + _answered() + "; then\n"
            '    hot= why="the node does not run "{{from}}" permanently from "{{root}}": $out"\n'
            "  fi\n"
            "fi\n"
            'if [ -n "$hot" ]; then\n'
            "  step place\n"
            "  rd={{releases}}\n"
            '  a="$d/artifacts/"{{sha}}.tar.gz\n'
            '  if [ ! -f "$a" ] || [ ! -f "$rd/RELEASES" ]; then\n'
            '    hot= why="the tarball or $rd/RELEASES is missing"\n'
            "  else\n"
            '    cp -p "$rd/RELEASES" "$rd/RELEASES"{{backup}}\n'
            # The root as extracted, kept across upgrades: a restart on this release restores it.
            '    if [ ! -f "$rd/RELEASES"{{pristine}} ]; then\n'
            '      cp -p "$rd/RELEASES" "$rd/RELEASES"{{pristine}}\n'
            '      cp -p "$rd/start_erl.data" "$rd/start_erl.data"{{pristine}}\n'
            '      ls -1 {{root}}/lib > "$rd/lib"{{pristine}}\n'
            "    fi\n"
            # The applications the root has now: a revert removes the ones the unpack adds (a failed
            # upgrade's code must not stay there, where the next unpack would keep it).
            '    ls -1 {{root}}/lib > "$rd/lib"{{backup}}\n'
            '    if [ -f "$rd/start_erl.data" ]; then cp -p "$rd/start_erl.data" "$rd/start_erl.data"{{backup}}; fi\n'
            '    mkdir -p "$rd/"{{vsn}}\n'
            '    cp "$a" "$rd/"{{vsn}}/{{name}}.tar.gz.tmp\n'
            '    mv -f "$rd/"{{vsn}}/{{name}}.tar.gz.tmp "$rd/"{{vsn}}/{{name}}.tar.gz\n'
            "  fi\n"
            "fi\n"
            'if [ -n "$hot" ]; then\n'
            "  step unpack\n",
            releases=releases_dir,
            root=root,
            sha=sha256,
            vsn=version,
            name=name,
            backup=BACKUP,
            pristine=PRISTINE,
            **{"from": from_version},
        )
        + _rpc(layout, flavour, release_id, _expr_unpack(name, version), limit=rpc)
        + text(
            "  if ! " + _answered() + '; then\n    hot= why="release_handler:unpack_release failed: $out"\n  fi\nfi\n'
        )
    )
    if fallback_record is not None:
        fallback = (
            text(
                'if [ -z "$hot" ]; then\n'
                "  printf '%s=%s\\n' {{key}} \"$why\"\n"
                "  printf 'the hot upgrade cannot be done (%s): restarting the node instead\\n' \"$why\" >&2\n",
                key=FALLBACK_KEY,
            )
            + switch(release_id, tmp_suffix)
            # A restart deploy: the node starts with this deploy's environment, as in `activate`.
            + envfile.install_staged_env(layout, release_id)
            + stop_node(stop_timeout)
            + start_node(
                layout, flavour, start_wait=health.deadline, start_grace=min(health.start_grace, health.deadline)
            )
            + health_gate(layout, flavour, health)
            + record([fallback_record])
            + envfile.settle_env(layout)
            + prune(prune_paths)
            + text("  exit 0\nfi\n")
        )
    else:
        fallback = text('if [ -z "$hot" ]; then fail "hot upgrade refused before the install: $why"; fi\n')
    install = (
        switch(release_id, tmp_suffix)
        + text("step install\n")
        + _rpc(layout, flavour, release_id, _expr_install(version), limit=rpc)
        + text(_answered() + ' || fail "release_handler:install_release failed: $out"\nstep verify\n')
        + _rpc(layout, flavour, release_id, _expr_verify(version, os_pid), limit=rpc)
        + text(
            "if ! " + _answered() + "; then\n"
            '  fail "after the install the node does not report "{{vsn}}" as current in OS pid "{{pid}}": $out"\n'
            "fi\n"
            'node_alive "$NODE_PID" "$NODE_START" || fail "the node (OS pid "{{pid}}") did not survive the install"\n',
            vsn=version,
            pid=os_pid,
            helpers=["node_alive"],
        )
        + health_gate(layout, flavour, health)
        + text("step permanent\n")
        + _rpc(layout, flavour, release_id, _expr_permanent(version), limit=rpc)
        + text(
            _answered() + ' || fail "release_handler:make_permanent failed: $out"\n'
            "rm -f {{releases}}/RELEASES{{backup}} {{releases}}/start_erl.data{{backup}} {{releases}}/lib{{backup}}\n",
            releases=releases_dir,
            backup=BACKUP,
        )
        + record([success_record])
        # The node was not restarted: it keeps the environment it started with, and so does node.env
        # (`deployer env push` changes both); this deploy's staged copy goes.
        + envfile.discard_staged_env(layout, release_id)
        + prune(prune_paths)
        + text("printf '%s=%s\\n' {{key}} {{pid}}\n", key=HOT_KEY, pid=os_pid)
    )
    remote, local = _limits(health, stop_timeout, rpc)
    worker = script(
        "hot-upgrade",
        text("d={{deploy_to}}\napp={{app}}\n", deploy_to=layout.deploy_to, app=layout.app),
        checks,
        fallback,
        install,
    )
    return detach(layout, worker, run_id=f"hot-{tmp_suffix}", limit=remote, timeout=local)


def _restore_root(root: str, version: str) -> Fragment:
    """Put the node's root back as it was before the upgrade: its ``RELEASES`` and ``start_erl.data``, and
    without the unpacked ``releases/<version>`` and the application directories the unpack added (so a
    later upgrade unpacks afresh)."""
    releases_dir = f"{root.rstrip('/')}/releases"
    return text(
        "step restore-root\n"
        "rd={{releases}}\n"
        'if [ -f "$rd/lib"{{backup}} ]; then\n'
        "  for l in {{lib}}/*; do\n"
        '    if [ -e "$l" ] && ! grep -qxF "${l##*/}" "$rd/lib"{{backup}}; then rm -rf "$l"; fi\n'
        "  done\n"
        '  rm -f "$rd/lib"{{backup}}\n'
        "fi\n"
        'if [ -f "$rd/RELEASES"{{backup}} ]; then mv -f "$rd/RELEASES"{{backup}} "$rd/RELEASES"; fi\n'
        'if [ -f "$rd/start_erl.data"{{backup}} ]; then mv -f "$rd/start_erl.data"{{backup}} "$rd/start_erl.data"; fi\n'
        'rm -rf "$rd/"{{vsn}}\n',
        releases=releases_dir,
        lib=f"{root.rstrip('/')}/lib",
        backup=BACKUP,
        vsn=version,
    )


def hot_revert(
    layout: RemoteLayout,
    flavour: Flavour,
    *,
    previous_id: str,
    root: str,
    version: str,
    health: HealthCheck,
    stop_timeout: float,
    tmp_suffix: str,
    records: Sequence[str],
    failure_records: Sequence[str] = (),
) -> Script:
    """Undo a hot upgrade whose install failed: ``current`` back to ``previous_id``, the node stopped, its
    root restored (:func:`_restore_root`), the previous release started and health-gated, then ``records``.
    A restart is the one way back that does not depend on the failed release's code. Runs detached
    (run id ``hot-revert-<tmp_suffix>``)."""
    remote, local = _limits(health, stop_timeout, 0.0)
    worker = script(
        "revert",
        text("d={{deploy_to}}\napp={{app}}\n", deploy_to=layout.deploy_to, app=layout.app),
        record(failure_records) if failure_records else Fragment(()),
        switch(previous_id, tmp_suffix),
        envfile.restore_env(layout),
        stop_node(stop_timeout),
        _restore_root(root, version),
        start_node(layout, flavour, start_wait=health.deadline, start_grace=min(health.start_grace, health.deadline)),
        health_gate(layout, flavour, health),
        record(records) if records else Fragment(()),
    )
    return detach(layout, worker, run_id=f"hot-revert-{tmp_suffix}", limit=remote, timeout=local)


def downgrade(
    layout: RemoteLayout,
    flavour: Flavour,
    *,
    target_id: str,
    version: str,
    root: str,
    os_pid: int,
    health: HealthCheck,
    tmp_suffix: str,
    success_record: str,
    rpc_timeout: float = RPC_TIMEOUT,
) -> Script:
    """Roll a hot-upgraded node back in place: ``release_handler`` installs the older ``version`` (still in
    the node's root) through the relup's down instructions, the node must report it as current with the
    same OS pid and pass the health gate; then it is made permanent and ``current`` points to
    ``target_id`` again. A failure exits non-zero (the rollback's revert restarts the node). Runs detached
    (run id ``hot-down-<tmp_suffix>``)."""
    rpc = RPC_TIMEOUT if rpc_timeout <= 0 else rpc_timeout
    worker = script(
        "downgrade",
        text("d={{deploy_to}}\napp={{app}}\n", deploy_to=layout.deploy_to, app=layout.app),
        text(
            "step check-node\n"
            "find_nodes\n"
            '[ "$NODE_PIDS" = {{pid}} ] || '
            'fail "the node is no longer OS pid "{{pid}}" (running now: ${NODE_PIDS:-none})"\n'
            'proc_start {{pid}} || fail "the node (OS pid "{{pid}}") exited"\n'
            "NODE_PID={{pid}} NODE_START=$PROC_START\n"
            "rid={{id}}\n",
            pid=os_pid,
            id=target_id,
            helpers=["find_nodes", "proc_start"],
        ),
        switch(target_id, tmp_suffix),
        text("step install\n"),
        _rpc(layout, flavour, target_id, _expr_install(version), limit=rpc),
        text(_answered() + ' || fail "release_handler:install_release (downgrade) failed: $out"\nstep verify\n'),
        _rpc(layout, flavour, target_id, _expr_verify(version, os_pid), limit=rpc),
        text(
            _answered() + ' || fail "after the downgrade the node does not report "{{vsn}}" as current: $out"\n',
            vsn=version,
        ),
        health_gate(layout, flavour, health),
        text("step permanent\n"),
        _rpc(layout, flavour, target_id, _expr_permanent(version), limit=rpc),
        text(_answered() + ' || fail "release_handler:make_permanent failed: $out"\n'),
        record([success_record]),
        text("printf '%s=%s\\n' {{key}} {{pid}}\n", key=HOT_KEY, pid=os_pid),
    )
    remote, local = _limits(health, 0.0, rpc)
    return detach(layout, worker, run_id=f"hot-down-{tmp_suffix}", limit=remote, timeout=local)


def restore_root(layout: RemoteLayout, release_id: str) -> Script:
    """Make release ``release_id``'s directory, the root of a node that was hot-upgraded, what it was when
    extracted, before a restart on it (a restart rollback): ``RELEASES`` and ``start_erl.data`` from their
    pristine copies, the applications and release versions the upgrades unpacked removed. Without those
    copies (never hot-upgraded) it changes nothing. Idempotent: it may run again before a revert."""
    root = layout.release(release_id)
    return script(
        "restore-root",
        text(
            "step restore-root\n"
            "root={{root}}\n"
            'rd="$root/releases"\n'
            'if [ -f "$rd/RELEASES"{{pristine}} ] && [ -f "$rd/start_erl.data"{{pristine}} ]; then\n'
            '  cp -p "$rd/RELEASES"{{pristine}} "$rd/RELEASES"\n'
            '  cp -p "$rd/start_erl.data"{{pristine}} "$rd/start_erl.data"\n'
            # relx writes start_erl.data without a final newline: read then fails, having read the line.
            '  vsn=; read -r _erts vsn < "$rd/start_erl.data" || [ -n "$vsn" ]\n'
            '  for r in "$rd"/*/; do r=${r%/}; if [ "${r##*/}" != "$vsn" ]; then rm -rf "$r"; fi; done\n'
            '  if [ -f "$rd/lib"{{pristine}} ]; then\n'
            '    for l in "$root"/lib/*; do\n'
            '      if [ -e "$l" ] && ! grep -qxF "${l##*/}" "$rd/lib"{{pristine}}; then rm -rf "$l"; fi\n'
            "    done\n"
            "  fi\n"
            '  rm -f "$rd"/*{{pristine}} "$rd"/*{{backup}}\n'
            "  echo restored=1\n"
            "fi\n",
            root=root,
            pristine=PRISTINE,
            backup=BACKUP,
        ),
        timeout=120,
    )

"""The remote steps of deploy, migrate and rollback, as pure functions returning :class:`Script`.

Each function returns one script that runs a whole phase in one SSH session
(``set -eu``, sent on stdin), so a deploy costs a handful of sessions per host.
Scripts announce each step on stderr as ``@@step <name>``; the executor uses the
last marker to say which step failed. Every script is composed from the public
fragments of :mod:`deployer.remote.fragments`.

Activation and revert run detached on the host (:func:`detach`): a lost SSH
connection cannot stop them half-way, the host enforces their deadline itself, and
their outcome is written on the host after the last step, where
:func:`await_outcome` reads it again after a reconnect.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from deployer.core.paths import RemoteLayout
from deployer.remote import envfile
from deployer.remote.flavours import CLEAN_BOOT_EVAL, Flavour
from deployer.remote.fragments import (
    EXIT_UNHEALTHY,
    PRELUDE,
    STEP_MARKER,
    Fragment,
    HealthCheck,
    await_outcome,
    deploy_vars,
    detach,
    health_gate,
    health_once,
    helper_block,
    launch,
    node_pids,
    prune,
    record,
    script,
    start_node,
    stop_node,
    switch,
    text,
)
from deployer.remote.shell import Script, Secret, SecretText, join, template
from deployer.remote.systemd import Service

__all__ = [
    "EXIT_LOCKED",
    "EXIT_UNHEALTHY",
    "PRELUDE",
    "STEP_MARKER",
    "HealthCheck",
    "abort_prepared",
    "activate",
    "await_outcome",
    "detach",
    "host_facts",
    "migrate",
    "prepare",
    "probe",
    "read_cookie",
    "receive_artifact",
    "revert",
    "revision_record",
    "running_state",
    "take_lock",
    "unlock",
]

EXIT_LOCKED = 75


# --- facts and locking ---------------------------------------------------------------------------------


def take_lock(lock_info: str) -> Fragment:
    """Take the deploy lock with ``mkdir`` (atomic: exactly one of two concurrent deploys gets it)."""
    return text(
        'step lock\nmkdir -p "$d"\n'
        'if mkdir "$d/.lock" 2>/dev/null; then\n'
        "  printf '%s\\n' {{info}} > \"$d/.lock/info\"\n"
        "  echo lock_acquired=1\n"
        "fi\n",
        info=lock_info,
    )


def host_facts(history_lines: int = 500) -> Fragment:
    """Read-only facts about the host as ``key=value`` lines (parsed by :func:`deployer.core.facts.parse_probe`)."""
    return (
        text(
            "step probe\n"
            'echo "now=$(date +%s)"\n'
            'echo "arch=$(uname -m)"\n'
            # glibc answers getconf ("glibc 2.36") in one small process; ldd is a bash script (musl: its
            # loader's banner).
            'echo "libc=$(getconf GNU_LIBC_VERSION 2>/dev/null || { ldd --version 2>&1 || true; } | head -n 1)"\n'
            # What the release's crypto NIF may link (compatibility preflight, deployer.core.compat); the
            # names are collected by the shell itself, each once.
            "c=' '\n"
            "for f in /lib/*/libcrypto.so.* /usr/lib/*/libcrypto.so.* /lib64/libcrypto.so.* /usr/lib64/libcrypto.so.* "
            "/lib/libcrypto.so.* /usr/lib/libcrypto.so.* /usr/local/lib/libcrypto.so.*; do\n"
            '  if [ -e "$f" ]; then case $c in *" ${f##*/} "*) ;; *) c="$c${f##*/} " ;; esac; fi\n'
            "done\n"
            'echo "libcrypto=${c# }"\n'
            "for t in tar sha256sum curl wget; do if command -v $t >/dev/null 2>&1; then echo tool=$t; fi; done\n"
            'if [ -d "$d" ]; then echo exists=1; fi\n'
            'p="$d"; while [ ! -d "$p" ]; do p=$(dirname "$p"); done\n'
            'if [ -w "$p" ]; then echo writable=1; fi\n'
            'echo "disk_free_kb=$(df -Pk "$p" | awk \'NR==2 {print $4}\')"\n'
            'if [ -L "$d/current" ]; then echo "current=$(readlink "$d/current")"; fi\n'
            'for r in "$d"/releases/*; do if [ -d "$r" ]; then echo "release=${r##*/}"; fi; done\n'
            'for a in "$d"/artifacts/*.tar.gz; do\n'
            '  if [ -f "$a" ]; then a=${a##*/}; echo "artifact=${a%.tar.gz}"; fi\n'
            "done\n"
            'if [ -s "$d/shared/.cookie" ]; then echo cookie=1; fi\n'
            'if [ -d "$d/.lock" ]; then echo "lock=$(tr \'\\n\' \' \' < "$d/.lock/info" 2>/dev/null || true)"; fi\n'
            'if [ -f "$d/revisions.log" ]; then tail -n {{lines}} "$d/revisions.log" | sed \'s/^/rev=/\'; fi\n',
            lines=history_lines,
        )
        + node_pids()
    )


def probe(
    layout: RemoteLayout, *, lock_info: str | None = None, history_lines: int = 500, extra: Fragment | None = None
) -> Script:
    """Read-only facts about the host (``key=value`` lines); with ``lock_info`` also take the lock.

    ``extra`` adds facts only some operations need, in the same session (e.g. :func:`running_state`).
    """
    lock = take_lock(lock_info) if lock_info is not None else Fragment(())
    name = "probe" if lock_info is None else "lock+probe"
    return script(name, deploy_vars(layout), lock, host_facts(history_lines), extra or Fragment(()))


def env_file_path(layout: RemoteLayout) -> Fragment:
    """``e``: the node's environment file, from :attr:`RemoteLayout.env_file`, never spelled out here."""
    return text("e={{path}}\n", path=layout.env_file)


def running_state(layout: RemoteLayout, flavour: Flavour, health: HealthCheck, nonce: str) -> Fragment:
    """What a re-deploy needs to know to leave a host alone: one try of the health check (``health=``) and
    ``env_sha256=``, the sha256 of ``nonce`` followed by the node's environment file.

    The nonce (random, one per run) keeps the printed digest from being a fixed fingerprint of the secrets
    in that file; the client compares it with the same digest of the file it would write.
    """
    return (
        health_once(layout, flavour, health)
        + text('if [ -n "$cur" ]; then\n')
        + env_file_path(layout)
        + text(
            '  if [ -r "$e" ]; then\n'
            "    if command -v openssl >/dev/null 2>&1; then h=$( { printf '%s' {{nonce}}; cat \"$e\"; } "
            "| openssl dgst -sha256 -r) || h=\n"
            "    else h=$( { printf '%s' {{nonce}}; cat \"$e\"; } | sha256sum) || h=; fi\n"
            '    echo "env_sha256=${h%% *}"\n'
            "  fi\n"
            "fi\n",
            nonce=nonce,
        )
    )


def unlock(layout: RemoteLayout, token: str | None) -> Script:
    """Release the lock if it is ours (``token``), or unconditionally when ``token`` is None (unlock task)."""
    if token is None:
        body = text('step unlock\nrm -rf "$d/.lock"\necho unlocked=1\n')
    else:
        body = text(
            "step unlock\n"
            'if [ -d "$d/.lock" ] && grep -qF {{token}} "$d/.lock/info" 2>/dev/null; then\n'
            '  rm -rf "$d/.lock"; echo unlocked=1\n'
            "fi\n",
            token=token,
        )
    return script("unlock", deploy_vars(layout), body, timeout=60)


def read_cookie(layout: RemoteLayout) -> Script:
    """Print the environment's cookie so a host that lacks it can be given the same one."""
    return script("read-cookie", text("cat {{cookie}}\n", cookie=layout.cookie), timeout=30)


# --- upload ----------------------------------------------------------------------------------------------


def receive_artifact(layout: RemoteLayout, sha256: str) -> Script:
    """Read the tarball from stdin into a temp name, verify its sha256 on the host, rename into place.

    This is the one hash of the artifact on the host: :func:`prepare` trusts ``artifacts/<sha>.tar.gz``,
    which only ever gets that name after this check.
    """
    parts = join(
        (PRELUDE, helper_block(["sha256_of"])),
        template(
            "d={{deploy_to}}\nsha={{sha}}\n"
            'mkdir -p "$d/artifacts"\n'
            't="$d/artifacts/.upload-$sha.$$"\n'
            # A closed channel (interrupt, lost link) means SIGPIPE/SIGHUP; the temp file goes either way.
            "trap 'rm -f \"$t\"' EXIT\n"
            "trap 'rm -f \"$t\"; exit 1' HUP INT TERM PIPE\n"
            'cat > "$t"\n'
            'actual=$(sha256_of "$t") || actual=\n'
            '[ "$actual" = "$sha" ] || fail "checksum mismatch after upload: expected $sha, got $actual"\n'
            'chmod 0644 "$t"\n'
            'mv -f "$t" "$d/artifacts/$sha.tar.gz"\n'
            "trap - EXIT HUP INT TERM PIPE\n"
            "echo received=1\n",
            deploy_to=layout.deploy_to,
            sha=sha256,
        ),
    )
    return Script(name="upload", parts=parts, stdin=False)


# --- prepare ---------------------------------------------------------------------------------------------


def prepare(
    layout: RemoteLayout,
    *,
    release_id: str,
    sha256: str,
    env_file: SecretText,
    cookie: Secret | None,
    verify: bool = False,
) -> Script:
    """Extract the artifact into a new ``releases/<id>``, stage the environment file (0600, see
    :mod:`deployer.remote.envfile`), write the cookie.

    The artifact was hashed when it arrived (:func:`receive_artifact`); ``verify`` hashes it again (an
    artifact left by an older deployer, or to rule out a damaged disk). Extraction goes to
    ``releases/.partial-<id>`` and is renamed only when complete, so an interrupted extraction is never
    mistaken for a release. A cookie baked into the tarball is deleted: the node reads the environment's.
    """
    cookie_part = Fragment(())
    if cookie is not None:
        cookie_part = text(
            "step cookie\n"
            'if [ ! -s "$d/shared/.cookie" ]; then\n'
            "  (umask 077; printf '%s' {{cookie}} > \"$d/shared/.cookie.tmp\")\n"
            '  chmod 0400 "$d/shared/.cookie.tmp"\n'
            '  mv -f "$d/shared/.cookie.tmp" "$d/shared/.cookie"\n'
            "fi\n",
            cookie=cookie,
        )
    check = Fragment(())
    if verify:
        check = text(
            "step verify-artifact\n"
            'a="$d/artifacts/"{{sha}}.tar.gz\n'
            'actual=$(sha256_of "$a") || actual=\n'
            '[ "$actual" = {{sha}} ] || fail "artifact $a has sha256 $actual, expected "{{sha}}\n',
            sha=sha256,
            helpers=["sha256_of"],
        )
    cleanup = text(
        'step clean-leftovers\nrm -rf "$d"/releases/.partial-* "$d"/artifacts/.upload-* "$d"/current.tmp.*\n'
    )
    body = text(
        'a="$d/artifacts/{{sha}}.tar.gz"\n'
        '[ -f "$a" ] || fail "artifact $a is missing"\n'
        "step extract\n"
        'r="$d/releases/"{{id}}\n'
        '[ ! -e "$r" ] || fail "$r already exists; refusing to extract over it"\n'
        'p="$d/releases/.partial-"{{id}}\n'
        'mkdir -p "$d/releases"\n'
        'mkdir "$p"\n'
        # --no-same-permissions applies the umask to every extracted mode: nothing group/other-writable,
        # without a second walk over the tree (chmod -R).
        '(umask 022; tar -xzf "$a" -C "$p" --no-same-owner --no-same-permissions)\n'
        '[ -x "$p/bin/$app" ] || fail "the release has no executable bin/$app"\n'
        'rm -f "$p/releases/COOKIE"\n'
        'mv "$p" "$r"\n'
        'mkdir -p "$d/shared/tmp"\n',
        sha=sha256,
        id=release_id,
    )
    env = envfile.discard_staged_env(layout) + envfile.write_env(layout, env_file, release_id=release_id)
    return script("prepare", deploy_vars(layout), cleanup, check, body, env, cookie_part)


def abort_prepared(layout: RemoteLayout, release_id: str) -> Script:
    """Undo :func:`prepare` after a failure before any switch: the new release must not linger."""
    body = text(
        "step remove-new-release\n"
        'cur=$(readlink "$d/current" 2>/dev/null || true)\n'
        '[ "$cur" != "releases/"{{id}} ] || fail "refusing to remove the current release"\n'
        'rm -rf "$d/releases/"{{id}} "$d/releases/.partial-"{{id}}\n',
        id=release_id,
    )
    body += envfile.discard_staged_env(layout, release_id) + text("echo removed=1\n")
    return script("abort", deploy_vars(layout), body, timeout=120)


# --- migrate -----------------------------------------------------------------------------------------------


def migrate(
    layout: RemoteLayout,
    flavour: Flavour,
    *,
    release_id: str,
    expression: str,
    timeout: float,
    record: str | None = None,
) -> Script:
    """Run the release's migration in a fresh VM of ``release_id`` with that release's environment.

    The deadline is enforced on the host too (``timeout``), so a hung migration VM is killed, not
    orphaned. ``record`` is appended to revisions.log after the migration succeeded, so a later rollback
    can warn when it goes back to code older than the schema.
    """
    argv = flavour.eval(expression)
    limit = int(max(1, round(timeout)))
    if argv is None:  # no fresh-VM verb in the release script (relx): boot the release clean
        run = launch(
            layout,
            flavour,
            ["-c", CLEAN_BOOT_EVAL, "clean-boot-eval", layout.release(release_id), expression],
            limit=str(limit),
            command="/bin/sh",
        )
    else:
        run = launch(layout, flavour, argv, limit=str(limit), command=layout.bin(release_id))
    return script(
        "migrate",
        deploy_vars(layout),
        text("step migrate\nrid={{id}}\nset +e\n", id=release_id),
        run,
        text(
            "\nstatus=$?\n"
            "set -e\n"
            'if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then fail "migration timed out after {{limit}}s"; fi\n'
            '[ "$status" -eq 0 ] || exit "$status"\n',
            limit=limit,
        ),
        _records([record] if record else []),
        timeout=timeout + 30,
    )


def _records(records: Sequence[str]) -> Fragment:
    return record(records) if records else Fragment(())


# --- activate / revert ----------------------------------------------------------------------------------


def revision_record(fields: Mapping[str, str | None]) -> str:
    """One ``revisions.log`` entry (the script prefixes the host's UTC time and a tab)."""
    return json.dumps({k: v for k, v in fields.items() if v is not None}, sort_keys=True, separators=(",", ":"))


def _limits(flavour: Flavour, health: HealthCheck, stop_timeout: float) -> tuple[float, float]:
    """(the host's own deadline, the client's): the host gives up first, so a client-side timeout never finds
    the script still running. relx's bounded daemon wait comes before the health gate's own deadline."""
    waits = health.deadline * (2 if flavour.daemon_waits else 1)
    remote = stop_timeout + min(health.start_grace, health.deadline) + waits + max(0.0, health.stable_for) + 60
    return remote, remote + 60


def _restart(
    layout: RemoteLayout, flavour: Flavour, health: HealthCheck, stop_timeout: float, service: Service | None = None
) -> tuple[Fragment, ...]:
    if service is not None:  # systemd restarts the unit; the gate watches its main process
        return service.restart(), health_gate(layout, flavour, health)
    return (
        stop_node(stop_timeout),
        start_node(layout, flavour, start_wait=health.deadline, start_grace=min(health.start_grace, health.deadline)),
        health_gate(layout, flavour, health),
    )


def activate(
    layout: RemoteLayout,
    flavour: Flavour,
    *,
    release_id: str,
    health: HealthCheck,
    stop_timeout: float,
    tmp_suffix: str,
    success_record: str,
    prune_releases: Sequence[str] = (),
    prune_artifacts: Sequence[str] = (),
    run_id: str | None = None,
    service: Service | None = None,
) -> Script:
    """Switch ``current`` to ``release_id`` and put its staged environment (if any) into place, stop the old
    VM and wait for it, start the new one, wait for it to be healthy, record success, remove old releases.
    Runs detached (:func:`detach`, run id ``activate-<tmp_suffix>`` unless ``run_id``). Exits 76 when the
    node is not healthy; the executor then runs :func:`revert`.
    """
    paths = [layout.release(r) for r in prune_releases]
    paths += [layout.artifact(sha) for sha in prune_artifacts]
    remote, local = _limits(flavour, health, stop_timeout)
    worker = script(
        "activate",
        deploy_vars(layout),
        switch(release_id, tmp_suffix),
        envfile.install_staged_env(layout, release_id),
        *_restart(layout, flavour, health, stop_timeout, service),
        record([success_record]),
        envfile.settle_env(layout),
        prune(paths),
    )
    return detach(layout, worker, run_id=run_id or f"activate-{tmp_suffix}", limit=remote, timeout=local)


def revert(
    layout: RemoteLayout,
    flavour: Flavour,
    *,
    previous_id: str | None,
    health: HealthCheck,
    stop_timeout: float,
    tmp_suffix: str,
    records: Sequence[str],
    failure_records: Sequence[str] = (),
    run_id: str | None = None,
    service: Service | None = None,
) -> Script:
    """Put a host whose new node failed back on ``previous_id`` (the environment the activation replaced,
    switch, restart, health gate).

    ``failure_records`` (the failed release's entry: its health gate already failed) are written first;
    ``records`` only after the step they describe happened: after the old node is healthy again, or, with
    no previous release (a first deploy), after the failed node is stopped and ``current`` removed.
    Runs detached like :func:`activate` (run id ``revert-<tmp_suffix>``).
    """
    remote, local = _limits(flavour, health, stop_timeout)
    if previous_id is None:
        worker = script(
            "revert",
            deploy_vars(layout),
            _records(failure_records),
            service.stop() if service is not None else stop_node(stop_timeout),
            text('step unlink\nrm -f "$d/current"\n'),
            envfile.restore_env(layout),
            _records(records),
        )
    else:
        worker = script(
            "revert",
            deploy_vars(layout),
            _records(failure_records),
            envfile.restore_env(layout),
            switch(previous_id, tmp_suffix),
            *_restart(layout, flavour, health, stop_timeout, service),
            _records(records),
        )
    return detach(layout, worker, run_id=run_id or f"revert-{tmp_suffix}", limit=remote, timeout=local)

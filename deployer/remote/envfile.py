"""The node's environment file on a host: written, staged for a deploy, put into place, put back.

One file per environment, ``shared/node.env`` (:attr:`RemoteLayout.env_file`), read by the launcher
(:data:`deployer.remote.fragments.LAUNCHER`) each time a node or a release command starts. Its life:

* a deploy of release R writes the new values to R's *staged* file (:func:`write_env`); R's migration
  reads that one, the nodes still running keep reading ``node.env``;
* R's activation puts the staged file into place (:func:`install_staged_env`), keeping the replaced one
  as ``node.env.prev``; the revert of a failed activation puts that back (:func:`restore_env`), a
  successful one removes it and the per-release files of older deployers (:func:`settle_env`);
* ``deployer env push`` writes ``node.env`` itself (:func:`push_env`) and, unless told not to,
  restarts the node through the health gate; its revert puts ``node.env.prev`` back.

Every write goes to a temporary name (0600 from the start) renamed into place, so a reader sees the
old file or the new one, never a part. No secret is ever in a release directory.
"""

from __future__ import annotations

from deployer.core.paths import RemoteLayout
from deployer.remote.flavours import Flavour
from deployer.remote.fragments import (
    Fragment,
    HealthCheck,
    current_release,
    deploy_vars,
    health_gate,
    script,
    start_node,
    stop_node,
    text,
)
from deployer.remote.shell import Script, SecretText
from deployer.remote.systemd import Service


def write_env(layout: RemoteLayout, env_file: SecretText, *, release_id: str | None = None) -> Fragment:
    """Write ``env_file`` atomically (0600): to ``release_id``'s staged file, or to ``node.env`` itself.

    Prints ``env=unchanged`` when the file there already had exactly this content (nothing is replaced
    then), else ``env=written``.
    """
    target = layout.staged_env_file(release_id) if release_id is not None else layout.env_file
    return text(
        "step write-env\n"
        "e={{target}}\n"
        '(umask 077; mkdir -p "${e%/*}"; printf \'%s\' {{env}} > "$e.tmp")\n'
        'chmod 0600 "$e.tmp"\n'
        'if [ -f "$e" ] && cmp -s "$e.tmp" "$e"; then rm -f "$e.tmp"; env_changed=; echo env=unchanged\n'
        'else mv -f "$e.tmp" "$e"; env_changed=1; echo env=written; fi\n',
        target=target,
        env=env_file,
    )


def keep_previous_env(layout: RemoteLayout) -> Fragment:
    """Keep the current ``node.env`` as ``node.env.prev`` (a hard link: same content, no copy, no gap)."""
    return text(
        'p={{prev}}\nrm -f "$p"\nif [ -f {{env}} ]; then ln -f {{env}} "$p"; fi\n',
        env=layout.env_file,
        prev=layout.previous_env_file,
    )


def install_staged_env(layout: RemoteLayout, release_id: str) -> Fragment:
    """Put ``release_id``'s staged environment into place, keeping the replaced one for the revert.

    Nothing happens when there is no staged file (a rollback: the old code runs with today's values).
    """
    return (
        text(
            'step env\nrm -f {{prev}}\ns={{staged}}\nif [ -f "$s" ]; then\n',
            staged=layout.staged_env_file(release_id),
            prev=layout.previous_env_file,
        )
        + keep_previous_env(layout)
        + text('  mv -f "$s" {{env}}\nfi\n', env=layout.env_file)
    )


def restore_env(layout: RemoteLayout) -> Fragment:
    """Put back the environment the failed activation replaced. When it replaced none but a host of an older
    deployer's layout (its per-release files are only removed after a success), the ``node.env`` it made
    goes: the previous release reads its own file again."""
    return text(
        "step restore-env\n"
        "if [ -f {{prev}} ]; then mv -f {{prev}} {{env}}\n"
        "elif [ -d {{legacy}} ]; then rm -f {{env}}; fi\n",
        env=layout.env_file,
        prev=layout.previous_env_file,
        legacy=layout.legacy_env_dir,
    )


def settle_env(layout: RemoteLayout) -> Fragment:
    """After a successful activation: forget the replaced environment; once ``node.env`` exists, remove the
    per-release env files an older deployer left (they hold old secret values)."""
    return text(
        "rm -f {{prev}}\nif [ -f {{env}} ]; then rm -rf {{legacy}}; fi\n",
        env=layout.env_file,
        prev=layout.previous_env_file,
        legacy=layout.legacy_env_dir,
    )


def discard_staged_env(layout: RemoteLayout, release_id: str | None = None) -> Fragment:
    """Remove ``release_id``'s staged environment (an aborted deploy), or every staged or kept one left by an
    interrupted run (``release_id`` None; run under the lock before a deploy writes its own)."""
    if release_id is not None:
        return text("rm -f {{staged}}\n", staged=layout.staged_env_file(release_id))
    # Staged files, the kept one, and temporary files of interrupted writes; the glob stays outside the quotes.
    return text("rm -f {{env}}.*\n", env=layout.env_file)


def _restart(
    layout: RemoteLayout, flavour: Flavour, health: HealthCheck, stop_timeout: float, service: Service | None
) -> Fragment:
    if service is not None:  # systemd restarts the unit (its runner reads node.env); the gate watches its main pid
        return current_release() + service.restart() + health_gate(layout, flavour, health)
    return (
        current_release()
        + stop_node(stop_timeout)
        + start_node(layout, flavour, start_wait=health.deadline, start_grace=min(health.start_grace, health.deadline))
        + health_gate(layout, flavour, health)
    )


def _limit(health: HealthCheck, stop_timeout: float) -> float:
    # Stopping, relx's bounded start wait, the health gate and its stable period, and room to report.
    return stop_timeout + min(health.start_grace, health.deadline) + 2 * health.deadline + health.stable_for + 120


def push_env(
    layout: RemoteLayout,
    flavour: Flavour,
    env_file: SecretText,
    *,
    health: HealthCheck,
    stop_timeout: float,
    restart: bool,
    service: Service | None = None,
) -> Script:
    """``env push`` on one host: write ``node.env`` (kept the old one as ``node.env.prev``) and, with
    ``restart`` and only when the file changed, restart the node through the health gate (exit 76 when it
    is not healthy; :func:`revert_push` then puts the old file back). Prints ``env=written|unchanged``.

    It carries the secrets, so it runs in the foreground session (never stored on the host as a detached
    run is).
    """
    body = deploy_vars(layout) + keep_previous_env(layout) + write_env(layout, env_file)
    if restart:
        body += text('if [ -n "$env_changed" ]; then\n') + _restart(layout, flavour, health, stop_timeout, service)
        body += text("fi\n")
    return script("env-push", body + settle_env(layout), timeout=_limit(health, stop_timeout) if restart else 120)


def revert_push(
    layout: RemoteLayout,
    flavour: Flavour,
    *,
    health: HealthCheck,
    stop_timeout: float,
    service: Service | None = None,
) -> Script:
    """Undo a failed ``env push``: the previous ``node.env`` back, the node restarted through the health gate."""
    return script(
        "revert",
        deploy_vars(layout),
        restore_env(layout),
        _restart(layout, flavour, health, stop_timeout, service),
        timeout=_limit(health, stop_timeout),
    )

"""``deployer trust``: record hosts' SSH keys in the project's known_hosts, after showing their fingerprints."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from invoke.context import Context
from invoke.exceptions import Exit
from rich.console import Console
from rich.markup import escape

from deployer.cli.common import speak_deployer, usage_error
from deployer.cli.run import Target, fleet_task
from deployer.errors import DeployerError
from deployer.ssh.endpoints import endpoint
from deployer.ssh.trust import Confirm, HostKeyCheck, TrustResult, project_known_hosts
from deployer.ssh.trust import trust as trust_hosts

STATUS_TEXT = {
    "new": "[yellow]new[/]",
    "known": "[green]already trusted[/]",
    "changed": "[bold red]CHANGED[/]",
    "revoked": "[bold red]REVOKED[/]",
}


def _prompt(console: Console, checks: Sequence[HostKeyCheck]) -> bool:
    hosts = ", ".join(c.host for c in checks)
    console.print(f"Record the key(s) of {hosts} as shown above? [y/N] ", end="", highlight=False, markup=False)
    try:
        answer = sys.stdin.readline()
    except (OSError, KeyboardInterrupt):
        return False
    return answer.strip().lower() in ("y", "yes")


def _confirm(console: Console, yes: bool) -> Confirm:
    def confirm(checks: Sequence[HostKeyCheck]) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            console.print(
                "[bold red]not recorded:[/] standard input is not a terminal, so nobody confirmed these "
                "fingerprints; compare them with the hosts' own (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub "
                "on each host) and re-run with --yes",
                highlight=False,
            )
            return False
        return _prompt(console, checks)

    return confirm


def _print_check(console: Console, check: HostKeyCheck) -> None:
    console.print(
        f"  [bold]{escape(check.host):<12}[/] {escape(check.describe())}  {STATUS_TEXT[check.status]}", highlight=False
    )
    if check.status == "changed":
        console.print(f"  {'':<12} recorded: {escape('; '.join(check.recorded))}", highlight=False)


def _explain(console: Console, result: TrustResult, path: str, replace: bool) -> None:
    for error in result.errors.values():
        console.print(f"[bold red]error:[/] {escape(error)}", highlight=False)
    for check in result.checks:
        if check.status == "revoked":
            console.print(
                f"[bold red]refused:[/] {escape(check.host)}: the host offers a key marked @revoked in known_hosts",
                highlight=False,
            )
        if check.status != "changed" or check.host in result.written:
            continue
        if not check.in_project:
            console.print(
                f"[bold red]refused:[/] {escape(check.host)}: the key recorded for {escape(check.name)} outside "
                f"{escape(path)} (e.g. ~/.ssh/known_hosts) differs; `deployer trust` does not edit that file. Once you "
                f"know why the key changed: ssh-keygen -R '{escape(check.name)}'",
                highlight=False,
            )
        elif not replace:
            console.print(
                f"[bold red]refused:[/] {escape(check.host)}: HOST KEY CHANGED. Someone may be intercepting the "
                "connection, or the host was reinstalled. Only when you know which: re-run with --replace",
                highlight=False,
            )
    if result.written:
        console.print(f"recorded {', '.join(result.written)} in {escape(path)}", highlight=False)
    elif result.declined:
        console.print("nothing recorded", highlight=False)
    elif result.ok:
        console.print("every host is already trusted; nothing to record", highlight=False)


@fleet_task(
    yes="Record without asking (check the fingerprints first; required when stdin is not a terminal).",
    replace="Replace a recorded key that CHANGED (only once you know why it changed).",
    hashed="Write hashed host names (|1|salt|hash, like ssh-keygen -H) instead of plain ones.",
)
def trust(c: Context, target: Target, yes: bool = False, replace: bool = False, hashed: bool = False) -> None:
    """Show each host's SSH key (type and SHA256 fingerprint) and record it in the project's known_hosts.

    The keys are fetched with a key exchange only (no login). New keys are recorded after you confirm
    (y/N on a terminal) or with --yes; a key that differs from the recorded one is refused unless --replace.
    Writes to the file named by ssh.known_hosts in the inventory, never to ~/.ssh/known_hosts.
    Exit status 0 when every selected host ends up trusted.
    """
    inventory, console = target.inventory, target.human
    try:
        path = project_known_hosts(inventory.config.ssh.known_hosts, inventory.path)
    except DeployerError as exc:
        raise usage_error(speak_deployer(str(exc), inventory.env)) from None
    hosts = [(h.name, endpoint(inventory, h)) for h in inventory.select(target.hosts, target.roles)]
    gateway = hosts[0][1].gateway if hosts else None
    # Hosts behind a gateway are reached through it, so it must be trusted first.
    stages = ([[(gateway.name, gateway)]] if gateway is not None else []) + [hosts]
    console.print(f"host keys for {inventory.env} (recording in {escape(str(path))}):", highlight=False)
    confirm = _confirm(console, yes)
    for stage in stages:
        result = trust_hosts(
            stage,
            path,
            confirm=confirm,
            replace=replace,
            hashed=hashed,
            report=lambda check: _print_check(console, check),
        )
        _explain(console, result, str(path), replace)
        if not result.ok:
            raise Exit(code=1)

"""The tasks for operating a fleet: status, releases, logs, start/stop/restart, console, observer, check.

Like the release tasks they are thin: check the flags, load the inventory, call
:mod:`deployer.operations.node`, print. Operating a fleet never needs the deploy secrets: the nodes'
environment files are already on the hosts.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import Task

from deployer import __version__
from deployer.build.provenance import git_source
from deployer.cli.common import terminate_like_ctrl_c, usage_error, write_stdout
from deployer.cli.render import print_json, print_plan
from deployer.cli.render_ops import print_check, print_releases, print_status
from deployer.cli.run import Common, Target, fleet_task, rollout_task
from deployer.core.artifact import inspect_tarball
from deployer.operations import node as ops
from deployer.operations import release as api
from deployer.operations.status import status_with_balancer

# --- status / releases -------------------------------------------------------------------------------------


@fleet_task(json_=True)
def status(c: Context, target: Target) -> None:
    """Per host: reachable, release, version, node pid, healthy, releases on disk, lock holder.

    "healthy" is one try of the inventory's health check on each host (no waiting). Flags a mixed fleet.
    With a `load_balancer` (HAProxy), also each server's state in the balancer (UP, DRAIN, MAINT).
    Exit status 1 when a host is unreachable or a deployed node is down or unhealthy.
    """
    # Each server's state in the load balancer (drain, ready, maint), when the inventory names HAProxy;
    # asked over the status probe's own connection when the balancer is one of the hosts.
    rows, states = status_with_balancer(target.inventory, target.options())
    document = ops.status_document(rows)
    if states:
        document["balancer"] = states
    if target.json_:
        print_json(document)
    else:
        print_status(target.human, document, target.inventory.env)
    if not document["healthy"]:
        raise Exit(code=1)


@fleet_task(json_=True)
def releases(c: Context, target: Target) -> None:
    """The releases on each host: id, version, good/failed/unknown, which one is current.

    The status comes from the host's revisions.log: failed releases are never rollback targets.
    Exit status 1 when a host is unreachable.
    """
    rows = api.status(target.inventory, target.options())
    document = ops.releases_document(rows)
    if target.json_:
        print_json(document)
    else:
        print_releases(target.human, document)
    if not all(r.reachable for r in rows):
        raise Exit(code=1)


# --- logs --------------------------------------------------------------------------------------------------


@fleet_task(
    one="whose logs to show",
    follow="Keep streaming new lines until Ctrl-C (tail -F over SSH).",
    lines="How many of the last lines to show first (default 100).",
)
def logs(c: Context, target: Target, follow: bool = False, lines: int = 100) -> None:
    """The node's logs on one host (on stdout); --follow streams new lines until Ctrl-C.

    Reads run_erl's shared/tmp/log/erlang.log.N (oldest file first); --follow runs tail -F over SSH.
    With node.service: systemd, the unit's journal (journalctl -u, -f with --follow).
    """
    if lines < 0:
        raise usage_error(f"--lines {lines}: must be 0 or more")
    with terminate_like_ctrl_c():
        ops.logs(
            target.inventory, target.host, lines=lines, follow=follow, on_output=lambda _, text: write_stdout(text)
        )


# --- start / stop / restart: one definition of their flags -------------------------------------------------


def _lifecycle_task(operation: ops.Lifecycle, doc: str) -> Task[Any]:
    """The task ``operation`` (start, stop or restart): the shared rollout flags, its own docstring."""

    def body(c: Context, run: Common) -> None:
        inventory = run.load()
        run.execute(lambda options: ops.lifecycle(inventory, operation, options), print_plan)

    body.__name__ = body.__qualname__ = operation
    body.__doc__ = textwrap.dedent(doc).strip()
    return rollout_task()(body)


start = _lifecycle_task(
    "start",
    """Start the nodes that are not running, then the health gate; rolling, under the deploy lock.

    Starts the current release with `bin/<app> daemon` and its environment file (with node.service: systemd,
    `systemctl start` of its unit). Batches follow the
    strategy like deploy. Exit status 1 unless every node ends healthy.
    """,
)
stop = _lifecycle_task(
    "stop",
    """Stop the nodes: SIGTERM to each VM, wait until it has exited; rolling, under the deploy lock.

    A VM still alive after node.stop_timeout gets SIGKILL. Exit status 1 when a node could not be stopped.
    """,
)
restart = _lifecycle_task(
    "restart",
    """Restart the nodes (stop, wait for exit, start, health gate); rolling, under the deploy lock.

    Batches follow the strategy like deploy: a batch with more failed hosts than max_fail stops the
    rollout. Exit status 1 unless every node ends healthy.
    """,
)


# --- console / observer -----------------------------------------------------------------------------------


@fleet_task(one="whose node to attach to")
def console(c: Context, target: Target) -> None:
    """An interactive remote shell into the running node on one host (mix: bin/<app> remote).

    The release's environment and cookie are loaded on the host (never in argv). Ctrl-D leaves the
    shell; the node keeps running (do not call System.halt/0 or q(): they stop the node).
    """
    code = ops.console(target.inventory, target.host)
    write_stdout("\r\n")
    if code not in (None, 0):
        raise Exit(code=code)


@fleet_task(
    one="whose node to observe",
    print_="Do not start observer: print the local command to run (stdout), keep the tunnel open until Ctrl-C.",
    epmd_port="Local port for the host's EPMD (default 4369, or any free port when 4369 is taken).",
)
def observer(c: Context, target: Target, print_: bool = False, epmd_port: int = 0) -> None:
    """Run observer here on one host's node, through an SSH tunnel to its EPMD and distribution port.

    Forwards the host's EPMD and the node's distribution port to 127.0.0.1 and starts a hidden local
    node running observer with the environment's cookie (read over SSH into a 0600 temp file, never
    printed). The tunnel closes when observer exits (or on Ctrl-C with --print).
    """
    if not 0 <= epmd_port <= 65535:
        raise usage_error(f"--epmd-port {epmd_port}: must be a port between 1 and 65535 (0: automatic)")
    human = target.human
    with (
        terminate_like_ctrl_c(),
        ops.observer_tunnel(target.inventory, target.host, local_epmd_port=epmd_port or None) as tunnel,
    ):
        human.print(
            f"[bold blue]==>[/] tunnel to {tunnel.host}: EPMD on 127.0.0.1:{tunnel.epmd_port}, "
            f"{tunnel.node} on 127.0.0.1:{tunnel.dist_port}",
            highlight=False,
        )
        if tunnel.env() and not epmd_port:
            human.print(
                f"    port 4369 is taken here (a local epmd?), so EPMD is on {tunnel.epmd_port}: "
                f"the local node needs ERL_EPMD_PORT={tunnel.epmd_port}",
                highlight=False,
            )
        if print_:
            write_stdout(tunnel.shell_command() + "\n")
            human.print(
                "    run the command above in another terminal (the cookie is read from the file it names); "
                "Ctrl-C here closes the tunnel",
                highlight=False,
            )
            ops.wait_forever()
        else:
            human.print(f"    starting observer as {tunnel.local_name}; close its window to end", highlight=False)
            code = ops.run_local_node(tunnel)
            if code not in (0, 130):
                raise Exit(f"the local node exited with status {code}", code=1)
    human.print("tunnel closed", highlight=False)


# --- check ----------------------------------------------------------------------------------------------------


@fleet_task(
    json_=True,
    secrets="required",  # a deploy needs every secret: a missing value or secrets file is bad input (exit 2)
    tarball="Also check against this release tarball (disk space; ERTS arch/libc only if it bundles ERTS).",
)
def check(c: Context, target: Target, tarball: str | None = None) -> None:
    """Preflight an environment without changing anything; exit status 1 on any problem.

    Checks SSH reachability and host keys, deploy_to writable, tar and sha256sum (and curl or wget for an
    http health check), and that no deploy lock is held; with --tarball also free disk and the deploy's
    compatibility preflight (the release's ERTS/NIFs and where it was built against each host).
    """
    if tarball and not Path(tarball).is_file():
        raise usage_error(f"--tarball {tarball}: no such file")
    artifact = inspect_tarball(Path(tarball), target.inventory.config.app.name) if tarball else None
    rows = ops.check(target.inventory, target.options(), artifact=artifact)
    document = ops.check_document(rows, tarball=artifact is not None)
    # What a deploy from here would record: this checkout's commit and this deployer.
    project = git_source(Path.cwd() / target.inventory.config.build.path)
    document["source"] = {"commit": project.commit, "dirty": project.dirty, "describe": project.describe()}
    document["deployer"] = __version__
    if target.json_:
        print_json(document)
    else:
        print_check(target.human, document)
    if not document["ok"]:
        raise Exit(code=1)


TASKS = (status, releases, logs, start, stop, restart, console, observer, check)

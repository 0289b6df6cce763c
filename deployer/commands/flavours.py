"""Release script flavours: how ``bin/<app>`` is driven for mix, rebar3 (relx) and Distillery.

Only the verbs the tool needs are mapped. Lifecycle steps that do not need the
release script (finding the VM's pid, stopping it with SIGTERM and waiting for
it to exit) are done in shell so no extra BEAM is booted for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FlavourName = Literal["mix", "rebar3", "distillery"]


@dataclass(frozen=True)
class Flavour:
    """The argv (after ``bin/<app>``) for each lifecycle verb, and the env the script expects."""

    name: FlavourName
    daemon: tuple[str, ...]
    stop: tuple[str, ...]
    remote: tuple[str, ...]
    eval_verb: str
    rpc_verb: str
    cookie_var: str
    runtime_env: tuple[tuple[str, str], ...]
    default_build: str
    default_tarball: str

    def eval(self, expression: str) -> tuple[str, ...]:
        """Run code in a fresh VM (migrations): the node need not be running."""
        return (self.eval_verb, expression)

    def rpc(self, expression: str) -> tuple[str, ...]:
        """Run code inside the running node."""
        return (self.rpc_verb, expression)


FLAVOURS: dict[str, Flavour] = {
    "mix": Flavour(
        name="mix",
        daemon=("daemon",),
        stop=("stop",),
        remote=("remote",),
        eval_verb="eval",
        rpc_verb="rpc",
        cookie_var="RELEASE_COOKIE",
        runtime_env=(),
        default_build="MIX_ENV=prod mix release --overwrite",
        default_tarball="_build/prod/{app}-*.tar.gz",
    ),
    "rebar3": Flavour(
        name="rebar3",
        daemon=("daemon",),
        stop=("stop",),
        remote=("remote_console",),
        # relx's `eval` runs in the live node; a fresh VM for migrations is issue 8's job.
        eval_verb="eval",
        rpc_verb="rpc",
        cookie_var="RELX_COOKIE",
        runtime_env=(("RELX_REPLACE_OS_VARS", "true"),),
        default_build="rebar3 as prod tar",
        default_tarball="_build/prod/rel/{app}/{app}-*.tar.gz",
    ),
    "distillery": Flavour(
        name="distillery",
        daemon=("start",),
        stop=("stop",),
        remote=("remote_console",),
        eval_verb="eval",
        rpc_verb="rpc",
        cookie_var="COOKIE",
        runtime_env=(("REPLACE_OS_VARS", "true"),),
        default_build="MIX_ENV=prod mix distillery.release --env=prod",
        default_tarball="_build/prod/rel/{app}/releases/*/{app}.tar.gz",
    ),
}


def flavour(name: str) -> Flavour:
    return FLAVOURS[name]

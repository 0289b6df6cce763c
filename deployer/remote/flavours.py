"""Release script flavours: how ``bin/<app>`` is driven for mix, rebar3 (relx) and Distillery.

Only the verbs the tool needs are mapped. Lifecycle steps that do not need the
release script (finding the VM's pid, stopping it with SIGTERM and waiting for
it to exit) are done in shell so no extra BEAM is booted for them.

relx (rebar3) differs from mix where it matters (checked against the extended
start script of rebar3 3.19 / OTP 25):

* its ``eval`` and ``rpc`` talk to the *running* node through ``erl_call`` and
  exit 0 even when the expression raised (the error is printed as
  ``{error, ...}`` / ``{badrpc, ...}``); there is no verb for a fresh VM, so a
  migration boots the release's own ERTS with its clean boot script
  (:data:`CLEAN_BOOT_EVAL`);
* the node name comes only from ``-name``/``-sname`` in ``vm.args``: the
  release's ``vm.args.src`` (or ``vm.args`` with ``RELX_REPLACE_OS_VARS``)
  should say ``-name ${RELEASE_NODE}``;
* the script needs the real cookie itself (``RELX_COOKIE``, passed to
  ``erl_call -c`` while ``daemon`` waits for the node, and by ``ping``/``rpc``/
  ``stop``), while the VM reads it from ``$HOME/.erlang.cookie`` like a mix node;
* ``daemon`` polls until the node answers, without end: deployer bounds it;
* the rendered ``vm.args``/``sys.config`` go to ``RELX_OUT_FILE_PATH`` (a 0700
  directory in ``shared/``), logs to ``RUNNER_LOG_DIR`` and the run_erl pipes
  to ``PIPE_DIR``, so nothing is written into the release directory.
"""

from __future__ import annotations

import re
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
    cookie_from_home: bool = True
    """Hide the cookie from argv (see ``LAUNCHER`` in :mod:`deployer.remote.fragments`); verified for mix
    and rebar3 releases. Distillery (untested here) keeps the cookie in the script's environment."""
    script_cookie: bool = False
    """The release script itself needs the real cookie in ``cookie_var`` even though the VM reads it from
    ``$HOME`` (relx passes it to ``erl_call -c``: visible in that short-lived process's argv only)."""
    fresh_vm: Literal["script", "clean_boot"] = "script"
    """How code runs in a fresh VM: the script's ``eval_verb``, or (relx, whose ``eval`` needs the running
    node) the release's ERTS booted with its clean boot script, see :data:`CLEAN_BOOT_EVAL`."""
    command_verb: str | None = None
    """Distillery's ``command Mod fun``: used for a migration written as a plain ``Mod.fun()`` call."""
    full_stop: bool = False
    """Erlang expressions for ``erl_call -e`` must end with a full stop; one is added when missing."""
    rpc_error_output: tuple[str, ...] = ()
    """Output prefixes meaning the rpc failed although the script exited 0 (relx's ``eval``)."""
    daemon_waits: bool = False
    """``daemon`` waits for the node to answer (relx, forever): deployer bounds it."""
    alive: tuple[str, ...] = ("pid",)
    """Is the node running (informational: deployer itself checks the VM's pid in /proc)."""

    def eval(self, expression: str) -> tuple[str, ...] | None:
        """Run code in a fresh VM (migrations): the node need not be running. None when the release
        script has no such verb (relx): then the release is booted clean, see :data:`CLEAN_BOOT_EVAL`."""
        if self.fresh_vm == "clean_boot":
            return None
        if self.command_verb is not None:
            call = _plain_call(expression)
            if call is not None:
                return (self.command_verb, *call)
        return (self.eval_verb, self._terminated(expression))

    def rpc(self, expression: str) -> tuple[str, ...]:
        """Run code inside the running node."""
        return (self.rpc_verb, self._terminated(expression))

    def _terminated(self, expression: str) -> str:
        text = expression.strip()
        if self.full_stop and not text.endswith("."):
            return text + "."
        return expression


_ELIXIR_CALL = re.compile(r"(?P<mod>:?[A-Za-z_][A-Za-z0-9_.]*)\.(?P<fun>[a-z_][A-Za-z0-9_]*[?!]?)(?:\(\s*\))?")
_ERLANG_CALL = re.compile(r"(?P<mod>[a-z][A-Za-z0-9_]*):(?P<fun>[a-z][A-Za-z0-9_]*)\(\s*\)\.?")


def _plain_call(expression: str) -> tuple[str, str] | None:
    """``MyApp.Release.migrate()`` -> ``("Elixir.MyApp.Release", "migrate")``; ``:mod.f()`` and
    ``mod:f()`` -> ``("mod", "f")``; anything with arguments or more than one call -> None."""
    text = expression.strip()
    match = _ERLANG_CALL.fullmatch(text)
    if match:
        return match["mod"], match["fun"]
    match = _ELIXIR_CALL.fullmatch(text)
    if not match:
        return None
    module = match["mod"]
    if module.startswith(":"):
        return module[1:], match["fun"]
    if not module[0].isupper():
        return None
    return f"Elixir.{module}", match["fun"]


# A program for the migration of a relx release (run as `/bin/sh -c "$CLEAN_BOOT_EVAL" clean-boot-eval ROOT EXPR`
# through the launcher, so with that release's environment and under the migration's deadline): run EXPR in a
# fresh VM of the release at ROOT. The release's bundled erl (or the system's, for a release without ERTS)
# boots with its no_dot_erlang (or start_clean) boot script: kernel and stdlib start, every application of the
# release is on the code path and none is started, so no port is bound and no node name is taken. The
# release's sys.config is loaded after relx's own ${VAR} substitution (sys.config.src, or
# RELX_REPLACE_OS_VARS), as `bin/<app> foreground` would; the substituted copy (it may hold secrets) is
# private and removed.
CLEAN_BOOT_EVAL = r"""set -u
fail() { printf '%s\n' "$*" >&2; exit 1; }
_root=$1 _expr=$2
[ -r "$_root/releases/start_erl.data" ] || fail "$_root/releases/start_erl.data is missing"
read -r _erts _vsn < "$_root/releases/start_erl.data"
_rel="$_root/releases/$_vsn"
_boot="$_rel/no_dot_erlang"
[ -f "$_boot.boot" ] || _boot="$_rel/start_clean"
[ -f "$_boot.boot" ] || fail "the release has no start_clean boot script in $_rel"
_erl="$_root/erts-$_erts/bin/erl"
if [ ! -x "$_erl" ]; then _erl=$(command -v erl) || fail "the release bundles no ERTS and erl is not installed"; fi
_src=; _config=; _tmpconfig=
if [ -f "$_rel/sys.config.src" ]; then _src="$_rel/sys.config.src"
elif [ -f "$_rel/sys.config" ]; then _src="$_rel/sys.config"; fi
if [ -n "$_src" ] && [ "$_src" = "$_rel/sys.config" ] && [ -z "${RELX_REPLACE_OS_VARS:-}" ]; then
  _config=$_src
elif [ -n "$_src" ]; then
  _dir=${RELX_OUT_FILE_PATH:-${RELEASE_TMP:-/tmp}}
  (umask 077; mkdir -p "$_dir")
  _tmpconfig="$_dir/eval-$$.config"; _config=$_tmpconfig
  (umask 077; awk '{
    while (match($0, "[$]{[^}]*}")) {
      var = substr($0, RSTART + 2, RLENGTH - 3)
      n = split(var, parts, ":-")
      value = ENVIRON[parts[1]]
      gsub("&", "\\\\\\&", value)
      if (n > 1 && value == "") { value = substr(var, index(var, ":-" parts[2]) + 2) }
      gsub("[$]{" var "}", value)
    }
  }1' < "$_src" > "$_tmpconfig")
fi
set -- -boot "$_boot" -boot_var SYSTEM_LIB_DIR "$_root/lib" -noshell -noinput
if [ -n "$_config" ]; then set -- "$@" -config "$_config"; fi
# A failing expression ends the VM with status 1; no crash dump is left in the working directory.
ERL_CRASH_DUMP_SECONDS=0 "$_erl" "$@" -eval "$_expr" -eval 'halt(0)'
_status=$?
if [ -n "$_tmpconfig" ]; then rm -f "$_tmpconfig"; fi
exit "$_status"
"""


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
        eval_verb="eval",
        # relx's `rpc` takes `Mod Fun [Args]`; its `eval` takes expressions, both in the running node.
        rpc_verb="eval",
        cookie_var="RELX_COOKIE",
        runtime_env=(
            ("RELX_REPLACE_OS_VARS", "true"),
            ("RELX_OUT_FILE_PATH", "${shared}/tmp/relx"),
            ("RUNNER_LOG_DIR", "${shared}/tmp/log"),
            # With the node's other run-time files, not in /tmp/erl_pipes/<node>/ (run_erl wants the slash).
            ("PIPE_DIR", "${shared}/tmp/pipe/"),
        ),
        default_build="rebar3 as prod tar",
        default_tarball="_build/prod/rel/{app}/{app}-*.tar.gz",
        cookie_from_home=True,
        script_cookie=True,
        fresh_vm="clean_boot",
        full_stop=True,
        rpc_error_output=("{error,", "{badrpc,"),
        daemon_waits=True,
        alive=("ping",),
    ),
    "distillery": Flavour(
        name="distillery",
        daemon=("start",),
        stop=("stop",),
        remote=("remote_console",),
        # Distillery 2's `eval` boots a fresh VM; `command Mod fun` is the older, equally fresh, form.
        eval_verb="eval",
        rpc_verb="rpc",
        cookie_var="COOKIE",
        runtime_env=(("REPLACE_OS_VARS", "true"),),
        default_build="MIX_ENV=prod mix distillery.release --env=prod",
        default_tarball="_build/prod/rel/{app}/releases/*/{app}.tar.gz",
        cookie_from_home=False,
        command_verb="command",
        alive=("ping",),
    ),
}


def flavour(name: str) -> Flavour:
    return FLAVOURS[name]

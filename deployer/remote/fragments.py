"""Shell fragments and the one way to compose them into a :class:`~deployer.remote.shell.Script`.

A :class:`Fragment` is a piece of a script body (parts quoted at render time, see
:mod:`deployer.remote.shell`) plus the names of the shell helper functions it calls.
:func:`script` joins fragments, defines exactly the helpers they need (and the helpers
those need) and wraps the body so ``sh`` parses all of it before running any of it.
Every remote script of deployer is built here or from these fragments; nothing peels
or patches another script's text.

Conventions the fragments share (set by :func:`deploy_vars`, :func:`switch`,
:func:`current_release`): ``$d`` is deploy_to, ``$app`` the release name, ``$rid`` the
release the step works on; ``NODE_PID``/``NODE_START`` are the node being watched (its
pid and its start time in clock ticks, so a reused pid is never mistaken for it).

The node is never started from this shell's environment: :data:`LAUNCHER` runs in a
clean one (``env -i``), reads the environment's ``shared/node.env`` (a deploy's staged
one for that release's migration; an older deployer's ``shared/env/<release>.env`` on a host
not yet deployed to by this one) with a parser that only splits ``NAME=value`` lines (nothing
in the file is ever executed or expanded), adds what deployer owns (the cookie mode, ``HOME``,
``DEPLOYER_RELEASE_ID``) and ``exec``s the release script.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from deployer.core.paths import ENV_FILE, LEGACY_ENV_DIR, RemoteLayout
from deployer.remote.flavours import Flavour
from deployer.remote.shell import Part, Script, Secret, SecretText, join, template, words

STEP_MARKER = "@@step "
EXIT_UNHEALTHY = 76

PRELUDE = r"""set -eu
step() { printf '@@step %s\n' "$1" >&2; }
fail() { printf '%s\n' "$*" >&2; exit 1; }
"""

_MAIN_OPEN = "__deployer_main() {\n"
_MAIN_CLOSE = "\n}\n__deployer_main </dev/null\n"
HELPERS_BEGIN = "# deployer helpers:"
HELPERS_END = "# end of deployer helpers\n"


# --- the environment file and the launcher -----------------------------------------------------------------

RESERVED_ENV_NAMES = frozenset(
    {
        # Set for every node by deployer itself (deployer.core.plan.node_env and the launcher's cookie mode).
        "RELEASE_COOKIE",
        "RELX_COOKIE",
        "COOKIE",
        "HOME",
        "RELEASE_TMP",
        "RELEASE_NODE",
        "RELEASE_DISTRIBUTION",
        "DEPLOYER_RELEASE_ID",
        "DEPLOYER_SHARED_DIR",
        # Special to the shells that run the launcher and the release scripts (/bin/sh, bash): exporting
        # them either fails (read-only in bash) or changes how those scripts parse and run.
        "IFS",
        "ENV",
        "BASH_ENV",
        "CDPATH",
        "SHELLOPTS",
        "BASHOPTS",
        "BASH_VERSINFO",
        "PPID",
        "UID",
        "EUID",
        "OPTIND",
        "OPTARG",
        "PS4",
        "PWD",
        "OLDPWD",
        "LINENO",
    }
)
"""Environment names an inventory must not set (``env.clear``, ``env.secret``, ``hosts[].env``).

deployer's own scripts never read the env file, so no other name can change them; these names are either
set by deployer for the node or would change the shells that start it."""


# Runs as `env -i PATH=... /bin/sh -c "$LAUNCHER" deployer-launch DEPLOY_TO RELEASE MODE COMMAND...`.
# The environment file is the environment's one (paths.ENV_FILE), not the release's: a restart or a rollback
# runs with today's values. Two exceptions: RELEASE's staged file, which a deploy of RELEASE wrote for its
# migration before the activation moves it into place; and a host still in the layout of deployer <= 0.2
# (no node.env yet), whose per-release file is read until a deploy or `env push` writes node.env.
# The file's assignments are collected as positional parameters and exported only at the very end, after
# which the launcher runs nothing but `exec "$@"` (COMMAND is an absolute path): no name in the file can
# change what the launcher does. The cookie mode decides what the node gets (see cookie_mode()):
#   home         the VM reads $HOME/.erlang.cookie (HOME is shared/home, a link to shared/.cookie); the release
#                script gets a throwaway RELEASE_COOKIE for the --cookie it puts into the VM's argv, and a
#                value-less -setcookie in ERL_AFLAGS makes OTP disregard every -setcookie;
#   home+script  the same, but the release script itself gets the real cookie (relx hands it to erl_call);
#   env          the real cookie in the environment only (Distillery).
# A systemd unit's node (deployer.remote.systemd) may run as an account that can read neither the env file
# nor the cookie: the unit passes CREDENTIALS_DIRECTORY (its copies of both, readable by that account only),
# RUNTIME_DIRECTORY (HOME and the node's temporary files: RELEASE_TMP and RELX_OUT_FILE_PATH point there) and
# STATE_DIRECTORY (the working directory); the launcher drops these names before the node sees anything.
# Values are read with `read -r` and decoded with printf's %b only when they hold a backslash.
LAUNCHER = r"""set -eu
d=$1 rid=$2 mode=$3
shift 3
creds=${CREDENTIALS_DIRECTORY:-} run=${RUNTIME_DIRECTORY:-} state=${STATE_DIRECTORY:-}
unset CREDENTIALS_DIRECTORY RUNTIME_DIRECTORY STATE_DIRECTORY
e="$d/@ENV_FILE@"
c="$d/shared/.cookie"
h="$d/shared/home"
if [ -n "$creds" ]; then e="$creds/node.env" c="$creds/cookie" h="$run/home"
elif [ -r "$e.$rid.staged" ]; then e="$e.$rid.staged"
elif [ ! -e "$e" ] && [ -r "$d/@LEGACY_ENV_DIR@/$rid.env" ]; then e="$d/@LEGACY_ENV_DIR@/$rid.env"; fi
[ -r "$e" ] || { printf 'the environment file %s is missing\n' "$e" >&2; exit 1; }
[ -s "$c" ] || { printf "the environment's Erlang cookie %s is missing\n" "$c" >&2; exit 1; }
IFS= read -r line < "$e" || true
case $line in
  '# deployer env 2'*) ;;
  *) printf '%s was written by an older deployer: deploy the release again\n' "$e" >&2; exit 1 ;;
esac
(umask 077; mkdir -p "$h")
chmod 0700 "$h"
ln -sfn "$c" "$h/.erlang.cookie"
if [ "$mode" = home ]; then k=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n'); else k=$(cat "$c"); fi
set -- "HOME=$h" "DEPLOYER_RELEASE_ID=$rid" "RELEASE_COOKIE=$k" "RELX_COOKIE=$k" "COOKIE=$k" "$@"
k=
aflags= seen_aflags= out= n=0
if [ -n "$run" ]; then
  (umask 077; mkdir -p "$run/tmp")
  out="$run/relx"
  set -- "RELEASE_TMP=$run/tmp" "RELX_OUT_FILE_PATH=$out" "$@"
fi
while IFS= read -r line || [ -n "$line" ]; do
  n=$((n + 1))
  case $line in '#'*|'') continue ;; esac
  name=${line%%=*}
  value=${line#*=}
  case $name in
    ''|[0-9]*|*[!A-Za-z0-9_]*) printf '%s:%s: expected NAME=value\n' "$e" "$n" >&2; exit 1 ;;
  esac
  [ "$name" != "$line" ] || { printf '%s:%s: expected NAME=value\n' "$e" "$n" >&2; exit 1; }
  case $value in *\\*) value=$(printf '%bx' "$value"); value=${value%x} ;; esac
  case $name in
    ERL_AFLAGS) aflags=$value seen_aflags=1; continue ;;
    RELX_OUT_FILE_PATH) [ -z "$run" ] || continue; out=$value ;;
    RELEASE_TMP) [ -z "$run" ] || continue ;;
  esac
  set -- "$name=$value" "$@"
done < "$e"
line= value=
if [ "$mode" != env ]; then set -- "ERL_AFLAGS=-setcookie $aflags" "$@"
elif [ -n "$seen_aflags" ]; then set -- "ERL_AFLAGS=$aflags" "$@"; fi
if [ -n "$out" ]; then (umask 077; mkdir -p "$out"); fi
cd "${state:-$d/shared}"
unset OLDPWD
while :; do
  case $1 in /*) break ;; esac
  export "$1"
  shift
done
exec "$@"
""".replace("@ENV_FILE@", ENV_FILE).replace("@LEGACY_ENV_DIR@", LEGACY_ENV_DIR)
"""The node launcher (a constant: it holds no value of any inventory and no secret)."""


def cookie_mode(flavour: Flavour) -> str:
    """How the launcher hands the cookie to this flavour's release: ``home``, ``home+script`` or ``env``."""
    if not flavour.cookie_from_home:
        return "env"
    return "home+script" if flavour.script_cookie else "home"


# --- the waiting helper: pauses and HTTP checks without a process per poll -------------------------------------

# Runs as `bash -c "$AGENT" deployer-agent PARENT_PID ERR_FILE` with a fifo on each side (agent_start), for the
# polling loops of one script (await_node, the health gate): /bin/sh (dash) has neither a sleep nor a socket of
# its own, so every poll used to spawn `sleep` and `curl`. One command per line on stdin, one answer per line:
#   p SECS                 wait SECS (a `read -t` on this very pipe, which stays silent meanwhile), answer "."
#   h SECS HOST PORT PATH  one HTTP/1.0 GET of http://HOST:PORT/PATH through bash's /dev/tcp, status line and the
#                          whole answer within SECS; answer "ok" (status < 400, as curl -f), "nonet" (this bash
#                          has no /dev/tcp) or the reason it failed
# It ends at EOF (the script is gone), and when its parent has gone while someone else holds the pipe open.
# Only loopback addresses are given to it (connecting to those never hangs; a URL elsewhere keeps curl).
AGENT = r"""set +e
parent=$1 errf=$2
export LC_ALL=C
clock() { read -r _up _ < /proc/uptime; NOW=$(( ${_up%.*} * 100 + 1${_up#*.} - 100 )); }
check() {
  local secs=$1 host=$2 port=$3 path=$4 end status line code left url
  url="http://$host:$port$path"
  clock; end=$(( NOW + ${secs%.*} * 100 + 1${secs#*.} - 100 ))
  if ! { exec 3<>"/dev/tcp/$host/$port"; } 2>"$errf"; then
    IFS= read -r line < "$errf"
    case $line in *"No such file"*) echo nonet; return ;; esac
    echo "$url: ${line##*: }"; return
  fi
  printf 'GET %s HTTP/1.0\r\nHost: %s:%s\r\nUser-Agent: deployer-health\r\nConnection: close\r\n\r\n' \
    "$path" "$host" "$port" >&3 2>/dev/null
  if ! IFS= read -r -t "$secs" status <&3; then
    exec 3<&-
    if [ -n "$status" ]; then echo "$url: the answer was cut off"; else echo "$url: no answer within ${secs}s"; fi
    return
  fi
  # The headers, then the body: Content-Length bytes, or up to the end of the connection.
  length= headers=1
  while :; do
    clock; left=$(( end - NOW ))
    if [ "$left" -le 0 ]; then exec 3<&-; echo "$url: the answer did not end within ${secs}s"; return; fi
    left="$(( left / 100 )).$(( left % 100 / 10 ))$(( left % 10 ))"
    if [ -z "$headers" ]; then
      if [ -n "$length" ]; then
        [ "$length" -eq 0 ] || IFS= read -r -N "$length" -t "$left" line <&3
      else
        IFS= read -r -t "$left" line <&3 && continue
      fi
      [ $? -le 128 ] && break
      continue
    fi
    if ! IFS= read -r -t "$left" line <&3; then
      [ $? -gt 128 ] && continue
      break
    fi
    line=${line%$'\r'}
    case ${line,,} in
      '') headers= ;;
      content-length:*) length=${line#*:}; length=${length//[!0-9]/} ;;
    esac
  done
  exec 3<&-
  set -- $status
  code=${2:-}
  case $code in
    [123][0-9][0-9]) echo ok ;;
    [0-9][0-9][0-9]) echo "$url: HTTP status $code" ;;
    *) echo "$url: not an HTTP answer" ;;
  esac
}
echo ready
while :; do
  IFS=' ' read -r -t 60 cmd a b c e
  s=$?
  if [ "$s" -gt 128 ]; then kill -0 "$parent" 2>/dev/null && continue; exit 0; fi
  [ "$s" -eq 0 ] || exit 0
  case $cmd in
    p) IFS= read -r -t "$a" _; [ $? -gt 128 ] || exit 0; echo . ;;
    h) check "$a" "$b" "$c" "$e" ;;
    *) exit 0 ;;
  esac
done
"""
"""The waiting helper run by bash, when the host has bash (a constant: it holds no inventory value)."""


# --- helper functions ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Helper:
    """A shell function (or definition) a fragment may call; ``needs`` names the helpers it calls itself."""

    name: str
    text: str
    needs: tuple[str, ...] = ()


_HELPER_LIST: tuple[Helper, ...] = (
    # The host's clock in centiseconds since boot, from shell builtins only (it runs in polling loops).
    Helper(
        "clock",
        "clock() {\n  read -r _up _ < /proc/uptime\n  NOW=$(( ${_up%.*} * 100 + 1${_up#*.} - 100 ))\n}\n",
    ),
    # SECS: centiseconds $1 as seconds with two decimals (for timeout and curl), at least 1 s: a check started
    # just before the deadline still gets the time to complete one request on a busy host.
    Helper(
        "secs",
        'secs() {\n  _cs=$1\n  [ "$_cs" -ge 100 ] || _cs=100\n'
        "  SECS=$(( _cs / 100 )).$(( _cs % 100 / 10 ))$(( _cs % 10 ))\n}\n",
    ),
    # PROC_START: the start time (clock ticks since boot) of process $1; fails when it is gone or a zombie.
    # Builtins only, so watching a node costs no process per poll.
    Helper(
        "proc_start",
        "proc_start() {\n"
        '  { read -r _stat < "/proc/$1/stat"; } 2>/dev/null || return 1\n'
        "  set -- ${_stat##*) }\n"
        '  case "$1" in Z|X|x) return 1 ;; esac\n'
        "  PROC_START=${20}\n"
        "}\n",
    ),
    # Is the node (pid $1, started at $2) still that very process?
    Helper(
        "node_alive",
        'node_alive() { proc_start "$1" && [ "$PROC_START" = "$2" ]; }\n',
        needs=("proc_start",),
    ),
    # Is process $1 a BEAM of this deploy_to: ours (owner), its executable the beam.smp of an ERTS bundled in a
    # release of $d (or the system's ERTS, with a command line naming a release of $d), in our mount namespace?
    # A pid read from a file is trusted only then: a stale one that now names another process is never signalled.
    # A unit's node may run as its own account ($node_user, see deploy_vars): another user's executable and
    # mount namespace are not ours to read, so for that account's processes the command line (world-readable,
    # argv[0] is the beam.smp erlexec ran) decides; processes of any other user are never the node.
    Helper(
        "is_node",
        "is_node() {\n"
        '  if [ -O "/proc/$1" ]; then\n'
        '    _exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1\n'
        "    _own=1\n"
        '  elif [ -n "${node_user:-}" ]; then\n'
        '    [ -n "${NODE_UID:-}" ] || NODE_UID=$(id -u "$node_user" 2>/dev/null) || return 1\n'
        "    _uid=\n"
        '    while read -r _k _v _r; do if [ "$_k" = Uid: ]; then _uid=$_v; break; fi; done 2>/dev/null '
        '< "/proc/$1/status"\n'
        '    [ "$_uid" = "$NODE_UID" ] || return 1\n'
        "    _exe=$(tr '\\0' ' ' < \"/proc/$1/cmdline\" 2>/dev/null) || return 1\n"
        "    _exe=${_exe%% *}\n"
        "    _own=\n"
        "  else\n"
        "    return 1\n"
        "  fi\n"
        '  case "${_exe% (deleted)}" in\n'
        '    "$d"/releases/*/erts-*/bin/beam.smp) ;;\n'
        "    */releases/*/erts-*/bin/beam.smp) return 1 ;;\n"
        "    */erts-*/bin/beam.smp)\n"
        "      case \"$(tr '\\0' ' ' < \"/proc/$1/cmdline\" 2>/dev/null)\" in\n"
        '        *"$d/releases/"*|*"$d/current/"*) ;;\n'
        "        *) return 1 ;;\n"
        "      esac ;;\n"
        "    *) return 1 ;;\n"
        "  esac\n"
        '  [ -n "$_own" ] || return 0\n'
        '  [ -n "${SELF_NS:-}" ] || SELF_NS=$(readlink "/proc/$$/ns/mnt" 2>/dev/null) || SELF_NS=unknown\n'
        '  [ "$(readlink "/proc/$1/ns/mnt" 2>/dev/null || echo other)" = "$SELF_NS" ]\n'
        "}\n",
    ),
    # FOUND: the nodes of $d (pids and a trailing space), from one pass over /proc: a single grep picks the BEAMs
    # by their comm (one process, however many the host runs); only those are looked at closer (the ones
    # started at or after clock tick $1, when given).
    Helper(
        "scan_nodes",
        "scan_nodes() {\n"
        "  FOUND=\n"
        "  for _p in $(grep -lsx beam.smp /proc/[0-9]*/comm 2>/dev/null); do\n"
        "    _p=${_p#/proc/}\n"
        "    _p=${_p%/comm}\n"
        '    if [ -n "${1:-}" ]; then proc_start "$_p" && [ "$PROC_START" -ge "$1" ] || continue; fi\n'
        '    if is_node "$_p"; then FOUND="$FOUND$_p "; fi\n'
        "  done\n"
        "}\n",
        needs=("proc_start", "is_node"),
    ),
    # NODE_PID/NODE_START from shared/node.pid ("pid start"), only while that process is still the node.
    Helper(
        "recorded_node",
        "recorded_node() {\n"
        "  NODE_PID= NODE_START=\n"
        '  { read -r _p _s < "$d/shared/node.pid"; } 2>/dev/null || return 1\n'
        "  case \"$_p\" in ''|*[!0-9]*) return 1 ;; esac\n"
        '  proc_start "$_p" || return 1\n'
        '  case "${_s:-}" in \'\'|"$PROC_START") ;; *) return 1 ;; esac\n'
        '  is_node "$_p" || return 1\n'
        "  NODE_PID=$_p NODE_START=$PROC_START\n"
        "}\n",
        needs=("proc_start", "is_node"),
    ),
    # NODE_PIDS: the running nodes of $d: the recorded one (no scan), else whatever one pass over /proc finds.
    Helper(
        "find_nodes",
        "find_nodes() {\n"
        "  if recorded_node; then NODE_PIDS=$NODE_PID; return 0; fi\n"
        "  scan_nodes\n"
        "  NODE_PIDS=${FOUND% }\n"
        "}\n",
        needs=("recorded_node", "scan_nodes"),
    ),
    Helper(
        "record_node",
        "record_node() {\n"
        '  printf \'%s %s\\n\' "$NODE_PID" "$NODE_START" > "$d/shared/node.pid.tmp"\n'
        '  mv -f "$d/shared/node.pid.tmp" "$d/shared/node.pid"\n'
        "}\n",
    ),
    # PID_MARK: the last pid the kernel handed out in this pid namespace (the last field of /proc/loadavg; empty
    # when it is not a number). Taken just before a launch: the node's pid comes after it, so the node is looked
    # for among the pids handed out since, not among every process of the host (hundreds on a busy server).
    # (Not /proc/sys/kernel/ns_last_pid: dash reads a byte at a time, and a sysctl file answers only the first.)
    Helper(
        "pid_mark",
        "pid_mark() {\n"
        "  { read -r _ _ _ _ PID_MARK < /proc/loadavg; } 2>/dev/null || PID_MARK=\n"
        "  case \"$PID_MARK\" in ''|*[!0-9]*) PID_MARK= ;; esac\n"
        "}\n",
    ),
    # FOUND: like scan_nodes $1, but looking only at the pids handed out since the last call (from _next) and at
    # the processes of ours seen before that might still exec the BEAM (_pend): builtins only, no pass over /proc.
    # When the pid counter wrapped around (or cannot be read), _next is cleared and scan_nodes does the work.
    Helper(
        "new_nodes",
        "new_nodes() {\n"
        "  FOUND=\n"
        "  { read -r _ _ _ _ _last < /proc/loadavg; } 2>/dev/null || _last=\n"
        '  case "$_last" in \'\'|*[!0-9]*) _next= ;; *) [ "$_last" -ge $(( _next - 1 )) ] || _next= ;; esac\n'
        '  if [ -z "$_next" ]; then scan_nodes "$1"; return 0; fi\n'
        "  _look=$_pend _pend=\n"
        '  while [ "$_next" -le "$_last" ]; do _look="$_look $_next"; _next=$(( _next + 1 )); done\n'
        "  for _p in $_look; do\n"
        '    { read -r _c < "/proc/$_p/comm"; } 2>/dev/null || continue\n'
        '    if [ "$_c" != beam.smp ]; then [ ! -O "/proc/$_p" ] || _pend="$_pend $_p"; continue; fi\n'
        '    proc_start "$_p" && [ "$PROC_START" -ge "$1" ] || continue\n'
        '    if is_node "$_p"; then FOUND="$FOUND$_p "; fi\n'
        "  done\n"
        "}\n",
        needs=("scan_nodes", "proc_start", "is_node"),
    ),
    # Start the waiting helper (AGENT) once per script when the host has bash: AGENT=1 then, and AGENT_NET=1 while
    # its HTTP checks can be used. Without bash (or when anything here fails), AGENT=0: sleep and curl as before.
    # Two fifos, opened in the same order on both sides, removed once open; the helper's first line says it runs.
    # It is started after the node's launch (and launch closes its pipes), so no node ever holds them.
    Helper(
        "agent_start",
        "AGENT_SRC=" + shlex.quote(AGENT) + "\n"
        "agent_start() {\n"
        '  [ -z "${_agent_tried:-}" ] || return 0\n'
        "  _agent_tried=1 AGENT=0 AGENT_NET=0\n"
        "  command -v bash >/dev/null 2>&1 || return 0\n"
        '  _f="$d/shared/tmp/.agent.$$"\n'
        '  [ -d "$d/shared/tmp" ] || mkdir -p "$d/shared/tmp" || return 0\n'
        # (Fifos left by a killed script of the same pid make mkfifo fail: then this script simply does without.)
        '  mkfifo -m 600 "$_f.i" "$_f.o" 2>/dev/null || return 0\n'
        '  bash -c "$AGENT_SRC" deployer-agent "$$" "$d/shared/tmp/health.connect" <"$_f.i" >"$_f.o" 2>/dev/null &\n'
        "  AGENT_PID=$!\n"
        '  exec 8>"$_f.i" 9<"$_f.o"\n'
        '  rm -f "$_f.i" "$_f.o"\n'
        '  if IFS= read -r _r <&9 && [ "$_r" = ready ]; then AGENT=1 AGENT_NET=1; else exec 8>&- 9<&-; fi\n'
        "}\n",
    ),
    # One request to the helper ($*), its answer in AGENT_ANSWER; fails (and AGENT=0 AGENT_NET=0 from then on)
    # when the helper has gone. SIGPIPE is ignored only for the write itself: a helper that has gone is an answer.
    Helper(
        "agent_ask",
        "agent_ask() {\n"
        "  AGENT_ANSWER=\n"
        "  trap '' PIPE\n"
        "  if printf '%s\\n' \"$*\" >&8 && IFS= read -r AGENT_ANSWER <&9; then trap - PIPE; return 0; fi\n"
        "  trap - PIPE\n"
        "  AGENT=0 AGENT_NET=0\n"
        "  exec 8>&- 9<&-\n"
        "  return 1\n"
        "}\n",
    ),
    # Wait $1 seconds: in the helper when it runs (no process), else with sleep.
    Helper(
        "pause",
        'pause() {\n  if [ "${AGENT:-0}" = 1 ] && agent_ask p "$1"; then return 0; fi\n  sleep "$1"\n}\n',
        needs=("agent_ask",),
    ),
    # One HTTP check by the helper: GET of http://$2:$3$4 within $1 seconds. 0: healthy; 1: not (the reason on
    # stderr); 2: the helper cannot do it (gone, or no /dev/tcp in this bash): AGENT_NET=0, the caller uses curl.
    Helper(
        "agent_get",
        "agent_get() {\n"
        '  agent_ask h "$1" "$2" "$3" "$4" || return 2\n'
        '  case "$AGENT_ANSWER" in\n'
        "    ok) return 0 ;;\n"
        "    nonet) AGENT_NET=0; return 2 ;;\n"
        "  esac\n"
        "  printf '%s\\n' \"$AGENT_ANSWER\" >&2\n"
        "  return 1\n"
        "}\n",
        needs=("agent_ask",),
    ),
    # Wait up to $1 seconds for the node launched at clock $2 (a BEAM of $d born since then) and record it:
    # from then on only that pid is watched, never scanned for again. $3 (pid_mark before the launch) limits
    # the search to the pids handed out since; without it every poll is a pass over /proc.
    Helper(
        "await_node",
        "await_node() {\n"
        "  _hz=$(getconf CLK_TCK 2>/dev/null) || _hz=100\n"
        "  case \"$_hz\" in ''|*[!0-9]*) _hz=100 ;; esac\n"
        "  _born=$(( $2 * _hz / 100 - _hz ))\n"
        "  _next= _pend=\n"
        '  if [ -n "${3:-}" ]; then _next=$(( $3 + 1 )); fi\n'
        "  agent_start\n"
        "  clock\n"
        "  _until=$(( NOW + $1 * 100 ))\n"
        "  while :; do\n"
        '    if [ -n "$_next" ]; then new_nodes "$_born"; else scan_nodes "$_born"; fi\n'
        '    if [ -n "$FOUND" ]; then\n'
        "      set -- $FOUND\n"
        '      if proc_start "$1"; then NODE_PID=$1 NODE_START=$PROC_START; record_node; return 0; fi\n'
        "    fi\n"
        "    clock\n"
        '    [ "$NOW" -lt "$_until" ] || return 1\n'
        "    pause 0.1\n"
        "  done\n"
        "}\n",
        needs=("clock", "scan_nodes", "new_nodes", "proc_start", "record_node", "agent_start", "pause"),
    ),
    # Is any of "pid:start" ... still alive?
    Helper(
        "procs_alive",
        "procs_alive() {\n"
        '  for _e in "$@"; do if node_alive "${_e%%:*}" "${_e#*:}"; then return 0; fi; done\n'
        "  return 1\n"
        "}\n",
        needs=("node_alive",),
    ),
    # SIGTERM to the node(s) of $d, wait until they have exited (SIGKILL after $1 seconds); prints stopped=.
    Helper(
        "stop_node",
        "stop_node() {\n"
        "  find_nodes\n"
        "  _procs=\n"
        '  for _p in $NODE_PIDS; do if proc_start "$_p"; then _procs="$_procs$_p:$PROC_START "; fi; done\n'
        '  if [ -z "$_procs" ]; then rm -f "$d/shared/node.pid"; echo "stopped=none"; return 0; fi\n'
        "  # shellcheck disable=SC2086\n"
        "  kill -TERM $NODE_PIDS 2>/dev/null || true\n"
        # The waits below are the helper's (no process per poll), started while the node shuts down.
        "  agent_start\n"
        "  clock\n"
        "  _end=$(( NOW + $1 * 100 ))\n"
        "  _again=$(( NOW + 200 ))\n"
        "  while procs_alive $_procs; do\n"
        "    clock\n"
        # A VM still booting has no handler for SIGTERM yet and loses it: say it again every 2 s (only to
        # processes that are still that node: pid and start time).
        '    if [ "$NOW" -ge "$_again" ]; then\n'
        "      for _e in $_procs; do\n"
        '        if node_alive "${_e%%:*}" "${_e#*:}"; then kill -TERM "${_e%%:*}" 2>/dev/null || true; fi\n'
        "      done\n"
        "      _again=$(( NOW + 200 ))\n"
        "    fi\n"
        '    if [ "$NOW" -ge "$_end" ]; then\n'
        "      printf 'node (pid %s) did not exit within %ss of SIGTERM; sending SIGKILL\\n' \\\n"
        '        "$NODE_PIDS" "$1" >&2\n'
        "      kill -KILL $NODE_PIDS 2>/dev/null || true\n"
        "      sleep 1\n"
        '      if procs_alive $_procs; then fail "node (pid $NODE_PIDS) survived SIGKILL"; fi\n'
        "      break\n"
        "    fi\n"
        "    pause 0.1\n"
        "  done\n"
        '  rm -f "$d/shared/node.pid"\n'
        '  echo "stopped=$NODE_PIDS"\n'
        "}\n",
        needs=("find_nodes", "proc_start", "procs_alive", "node_alive", "clock", "agent_start", "pause"),
    ),
    Helper(
        "node_log_tail",
        "node_log_tail() {\n"
        '  for f in $(ls -t "$d"/shared/tmp/log/erlang.log.* 2>/dev/null | head -n 1); do\n'
        "    printf -- '--- last lines of %s ---\\n' \"$f\" >&2\n"
        '    tail -n 25 "$f" >&2 || true\n'
        "  done\n"
        "}\n",
    ),
    # launch LIMIT RELEASE MODE COMMAND...: run COMMAND (an absolute path) through the launcher, in a clean
    # environment made from the release's env file; under `timeout` when LIMIT (seconds) is not empty.
    Helper(
        "launch",
        "LAUNCHER=" + shlex.quote(LAUNCHER) + "\n"
        "launch() {\n"
        "  _limit=$1 _rid=$2 _mode=$3\n"
        "  shift 3\n"
        '  set -- env -i "PATH=$PATH" /bin/sh -c "$LAUNCHER" deployer-launch "$d" "$_rid" "$_mode" "$@"\n'
        '  if [ -n "$_limit" ] && command -v timeout >/dev/null 2>&1; then set -- timeout -k 5 "$_limit" "$@"; fi\n'
        # Not the waiting helper's pipes (agent_start): a node holding them would keep the helper waiting.
        '  "$@" 8>&- 9<&-\n'
        "}\n",
    ),
    # The sha256 of a file as 64 hex digits. OpenSSL's digest uses the CPU's SHA extensions (1.3 GB/s where
    # coreutils' sha256sum does 440 MB/s, benchmarks/README.md); sha256sum, which the probe requires, is the
    # fallback; an output that is not 64 hex digits is never trusted.
    Helper(
        "sha256_of",
        "sha256_of() {\n"
        "  _h=\n"
        '  if command -v openssl >/dev/null 2>&1; then _h=$(openssl dgst -sha256 -r "$1" 2>/dev/null) || _h=; fi\n'
        "  _h=${_h%% *}\n"
        '  case "$_h" in *[!0-9a-f]*) _h= ;; esac\n'
        '  if [ ${#_h} -ne 64 ]; then _h=$(sha256sum "$1") || return 1; _h=${_h%% *}; fi\n'
        "  printf '%s\\n' \"$_h\"\n"
        "}\n",
    ),
)
HELPERS: Mapping[str, Helper] = {helper.name: helper for helper in _HELPER_LIST}
"""Every helper a fragment can ask for, by name."""


def _closure(names: Iterable[str]) -> list[Helper]:
    wanted: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in wanted:
            continue
        if name not in HELPERS:
            raise KeyError(f"unknown shell helper {name!r}")
        wanted.add(name)
        pending.extend(HELPERS[name].needs)
    # Definition order does not matter to sh; a fixed order keeps renderings stable.
    return [helper for helper in _HELPER_LIST if helper.name in wanted]


# --- fragments and scripts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fragment:
    """A piece of a script body and the helpers (by name) it calls."""

    parts: tuple[Part, ...]
    helpers: tuple[str, ...] = ()

    def __add__(self, other: Fragment) -> Fragment:
        return Fragment(self.parts + other.parts, self.helpers + other.helpers)


def text(source: str, *, helpers: Sequence[str] = (), **values: str | int | float | Secret | SecretText) -> Fragment:
    """A fragment from a :func:`~deployer.remote.shell.template` (``{{name}}`` values quoted at render time)."""
    return Fragment(template(source, **values), tuple(helpers))


def raw(parts: Iterable[Part], *, helpers: Sequence[str] = ()) -> Fragment:
    """A fragment from parts already built (e.g. :func:`~deployer.remote.shell.words`)."""
    return Fragment(tuple(parts), tuple(helpers))


def helper_block(helpers: Iterable[str]) -> str:
    """The definitions of ``helpers`` and what they need, between the markers :func:`fold_helpers` folds."""
    chosen = _closure(helpers)
    if not chosen:
        return ""
    names = " ".join(h.name for h in chosen)
    return f"{HELPERS_BEGIN} {names}\n" + "".join(h.text for h in chosen) + HELPERS_END


def script(
    name: str,
    *fragments: Fragment,
    timeout: float | None = None,
    stdin: bool = True,
    run_id: str | None = None,
) -> Script:
    """The script ``name``: prelude, the helpers the fragments need, then their bodies in order.

    The body is wrapped in a function so ``sh`` parses all of it before running any of it, and runs with
    ``</dev/null`` so no command reads the rest of the script from stdin.
    """
    helpers = [h for fragment in fragments for h in fragment.helpers]
    return Script(
        name=name,
        parts=join(
            (PRELUDE,),
            (helper_block(helpers),) if helpers else (),
            (_MAIN_OPEN,),
            *(fragment.parts for fragment in fragments),
            (_MAIN_CLOSE,),
        ),
        timeout=timeout,
        stdin=stdin,
        run_id=run_id,
    )


def body_text(*fragments: Fragment) -> str:
    """The helper definitions and bodies of ``fragments`` rendered masked, without prelude or wrapper (tests)."""
    return Script("t", join(*(f.parts for f in fragments))).render()


_FOLD = re.compile(re.escape(HELPERS_BEGIN) + r" ([^\n]*)\n.*?" + re.escape(HELPERS_END), re.S)


def fold_helpers(script_text: str) -> str:
    """Show a script's helper definitions as one comment line naming them (``--dry-run`` without ``--full``)."""
    return _FOLD.sub(lambda m: f"# helpers: {m.group(1)} (deployer/remote/fragments.py)\n", script_text)


# --- fragments of the node's lifecycle -----------------------------------------------------------------------------


def deploy_vars(layout: RemoteLayout) -> Fragment:
    """``d`` (deploy_to) and ``app`` (the release name); ``node_user`` when a unit runs the node as its own
    account (see ``is_node``)."""
    vars = text("d={{deploy_to}}\napp={{app}}\n", deploy_to=layout.deploy_to, app=layout.app)
    if layout.node_user is None:
        return vars
    return vars + text("node_user={{user}}\n", user=layout.node_user)


def current_release() -> Fragment:
    """``rid``: the release ``current`` points to; fails with a readable reason when there is none."""
    return text(
        "step current\n"
        'cur=$(readlink "$d/current" 2>/dev/null || true)\n'
        '[ -n "$cur" ] || fail "nothing is deployed on this host ($d/current does not exist)"\n'
        "rid=${cur##*/}\n"
        '[ -d "$d/releases/$rid" ] || fail "current points to $cur, which is not on this host"\n'
        f'[ -f "$d/{ENV_FILE}" ] || [ -f "$d/{LEGACY_ENV_DIR}/$rid.env" ] || '
        f'fail "the environment file $d/{ENV_FILE} is missing (deployer env push writes it)"\n'
    )


def switch(release_id: str, tmp_suffix: str) -> Fragment:
    """Point ``current`` at ``release_id`` atomically (``mv -T`` of a fresh link); sets ``rid``."""
    return text(
        "step switch\n"
        "rid={{id}}\n"
        '[ -d "$d/releases/$rid" ] || fail "release $rid is not on this host"\n'
        't="$d/current.tmp."{{suffix}}\n'
        'rm -f "$t"\n'
        'ln -s "releases/$rid" "$t"\n'
        'mv -T "$t" "$d/current"\n',
        id=release_id,
        suffix=tmp_suffix,
    )


def _seconds(value: float) -> int:
    return int(max(1, round(value)))


def stop_node(stop_timeout: float) -> Fragment:
    """Stop this deploy_to's node (the recorded pid if it is still ours, else those found in /proc)."""
    return text("step stop\nstop_node {{timeout}}\n", timeout=_seconds(stop_timeout), helpers=["stop_node"])


def node_pids() -> Fragment:
    """Print ``node_pid=<pid>`` for each running node of this deploy_to (read-only)."""
    return text('find_nodes\nfor p in $NODE_PIDS; do echo "node_pid=$p"; done\n', helpers=["find_nodes"])


def launch(
    layout: RemoteLayout, flavour: Flavour, argv: Sequence[str], *, limit: str = "''", command: str | None = None
) -> Fragment:
    """``launch``: run ``COMMAND ARGV`` with release ``$rid``'s environment through the :data:`LAUNCHER`.

    ``command`` defaults to ``current/bin/<app>``; ``limit`` is shell text for the seconds allowed
    (``''``: none), e.g. ``"$SECS"``. No newline is added: the caller may append ``|| ...``.
    """
    program = command if command is not None else f"{layout.current}/bin/{layout.app}"
    return raw(
        join((f'launch {limit} "$rid" {cookie_mode(flavour)} ',), words([program, *argv])),
        helpers=["launch"],
    )


def start_node(layout: RemoteLayout, flavour: Flavour, *, start_wait: float, start_grace: float) -> Fragment:
    """Start release ``$rid``'s node as a daemon and find it (``NODE_PID``/``NODE_START``, ``shared/node.pid``).

    The node is the BEAM of this deploy_to born after the launch; once found it is the only process the
    health gate watches. relx's ``daemon`` waits for the node without end: it is bounded by ``start_wait``.
    """
    grace = _seconds(start_grace)
    start = launch(layout, flavour, flavour.daemon, limit=str(_seconds(start_wait)) if flavour.daemon_waits else "''")
    if flavour.daemon_waits:
        start = start + text(
            ' || { s=$?; [ "$s" -eq 124 ] || exit "$s"; '
            'echo "the release script still waited for the node after "{{wait}}"s" >&2; }\n',
            wait=_seconds(start_wait),
        )
    else:
        start = start + text("\n")
    return (
        text("step start\nclock\nlaunched=$NOW\npid_mark\n", helpers=["clock", "pid_mark"])
        + start
        + text(
            'if ! await_node {{grace}} "$launched" "$PID_MARK"; then\n'
            '  echo "the node did not start within "{{grace}}"s" >&2; node_log_tail; exit {{unhealthy}}\n'
            "fi\n"
            'echo "started=$NODE_PID"\n',
            grace=grace,
            unhealthy=EXIT_UNHEALTHY,
            helpers=["await_node", "node_log_tail"],
        )
    )


def adopt_running_node() -> Fragment:
    """If a node of this deploy_to already runs, watch it (``already_running=``); ``started`` says which."""
    return text(
        "find_nodes\n"
        "started=\n"
        'if [ -n "$NODE_PIDS" ]; then\n'
        '  echo "already_running=$NODE_PIDS"\n'
        "  set -- $NODE_PIDS\n"
        '  proc_start "$1" || fail "the node (pid $1) exited just now"\n'
        "  NODE_PID=$1 NODE_START=$PROC_START\n"
        "  record_node\n"
        "  started=1\n"
        "fi\n",
        helpers=["find_nodes", "proc_start", "record_node"],
    )


@dataclass(frozen=True)
class HealthCheck:
    """How the health gate probes the node.

    The node is healthy when the node deployer started (same pid and start time) answers the check within
    ``deadline`` seconds and then keeps answering it, and keeps running, for ``stable_for`` seconds.
    """

    http: str | None
    rpc: str | None
    deadline: float
    interval: float
    start_grace: float = 15.0
    stable_for: float = 5.0


_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_placeholders(url: str, values: Mapping[str, str]) -> str:
    """``${NAME}`` in a health URL replaced by ``values[NAME]`` (e.g. ``http://127.0.0.1:${PORT}/health``).

    Raises ``KeyError`` naming the first placeholder without a value. Only plain (not secret) values may be
    given: the URL ends up in curl's argv.
    """

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(name)
        return values[name]

    return _PLACEHOLDER.sub(value, url)


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def loopback_target(url: str) -> tuple[str, int, str] | None:
    """``(host, port, path)`` of a plain ``http://`` URL on this host's loopback (``127.0.0.0/8``,
    ``localhost``), which the waiting helper may check through bash's ``/dev/tcp``; None for anything else
    (https, another host, credentials, odd characters): curl checks those.

    Connecting to a loopback address is answered at once (accepted or refused), so the helper's check needs
    no connect timeout of its own; the status line and the answer are bounded by the time left.
    """
    try:
        parts = urlsplit(url)
        port = parts.port if parts.port is not None else 80
    except ValueError:
        return None
    host = parts.hostname or ""
    if parts.scheme != "http" or parts.username is not None or parts.password is not None or parts.fragment:
        return None
    try:
        loopback = ipaddress.ip_address(host).version == 4 and ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host in _LOOPBACK_NAMES
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if not loopback or not 0 < port < 65536 or not re.fullmatch(r"[!#-~]+", path):
        return None
    return host, port, path


def _checks(layout: RemoteLayout, flavour: Flavour, health: HealthCheck, err: str, *, agent: bool = False) -> Fragment:
    """One try of each configured check, each bounded by ``$SECS``; clears ``ok`` and writes ``err`` on failure.

    With ``agent`` (the health gate's loop) an HTTP check of a loopback URL goes to the waiting helper when it
    runs (``AGENT_NET``), else to curl (wget without curl).
    """
    checks = Fragment(())
    target = loopback_target(health.http) if health.http and agent else None
    if health.http and target is not None:
        host, port, path = target
        checks += text(
            '  if [ -n "$ok" ]; then\n'
            '    if [ "$AGENT_NET" = 1 ] && agent_get "$SECS" {{host}} {{port}} {{path}} 2>' + err + "; then :\n"
            '    elif [ "$AGENT_NET" = 1 ]; then ok=\n'
            '    elif [ -n "$have_curl" ]; then curl -fsS -o /dev/null --max-time "$SECS" {{url}} 2>'
            + err
            + " || ok=\n"
            '    else wget -q -O /dev/null -T "$(( ${SECS%.*} + 1 ))" {{url}} 2>' + err + " || ok=; fi\n"
            "  fi\n",
            host=host,
            port=port,
            path=path,
            url=health.http,
            helpers=["agent_get"],
        )
    elif health.http:
        checks += text(
            '  if [ -n "$ok" ]; then\n'
            '    if [ -n "$have_curl" ]; then curl -fsS -o /dev/null --max-time "$SECS" {{url}} 2>' + err + " || ok=\n"
            '    else wget -q -O /dev/null -T "$(( ${SECS%.*} + 1 ))" {{url}} 2>' + err + " || ok=; fi\n"
            "  fi\n",
            url=health.http,
        )
    if health.rpc:
        failed = "|".join(f"{shlex.quote(prefix)}*" for prefix in flavour.rpc_error_output)
        # relx's eval exits 0 when the expression raised; the printed result tells.
        printed = f'    case "$out" in {failed}) printf \'%s\\n\' "$out" >> {err}; ok= ;; esac\n' if failed else ""
        checks += (
            text('  if [ -n "$ok" ]; then\n    out=$(')
            + launch(layout, flavour, flavour.rpc(health.rpc), limit='"$SECS"')
            + text(
                " 2>" + err + ") || {\n"
                "      s=$?; ok=\n"
                '      if [ "$s" -eq 124 ] || [ "$s" -eq 137 ]; then\n'
                "        printf 'the rpc health check did not answer within %ss\\n' \"$SECS\" >> " + err + "\n"
                "      fi\n"
                "    }\n" + printed + "  fi\n"
            )
        )
    return checks


def health_gate(layout: RemoteLayout, flavour: Flavour, health: HealthCheck) -> Fragment:
    """Wait until the node ``NODE_PID``/``NODE_START`` is healthy (see :class:`HealthCheck`); exit 76 if not.

    Each check is bounded by the time left before the deadline (at least 1 s), so no late answer counts: a
    check cut off there is a failure. Liveness and the clock are read with shell builtins. When the host has
    bash, the waiting helper (:data:`AGENT`) does the pauses and the HTTP checks of a loopback URL, so a poll
    spawns no process; otherwise each poll runs one curl (or wget) and one sleep. An rpc check always runs
    the release script under ``timeout``. A failed check or a node that exits during the stability period is
    a failure too.
    """
    err = '"$d/shared/tmp/health.err"'
    deadline_cs = round(health.deadline * 100)
    stable_cs = round(max(0.0, health.stable_for) * 100)
    return (
        text(
            "step health\n"
            'mkdir -p "$d/shared/tmp"\n'
            ": > " + err + "\n"
            "if command -v curl >/dev/null 2>&1; then have_curl=1; else have_curl=; fi\n"
            "agent_start\n"
            "clock\n"
            "end=$(( NOW + {{deadline_cs}} ))\n"
            "since=\n"
            "while :; do\n"
            '  if ! node_alive "$NODE_PID" "$NODE_START"; then\n'
            '    if [ -n "$since" ]; then\n'
            "      printf 'the node (pid %s) exited %ss after its first healthy answer\\n' "
            '"$NODE_PID" "$(( (NOW - since) / 100 ))" >&2\n'
            "    else\n"
            "      printf 'the node (pid %s) exited before it became healthy\\n' \"$NODE_PID\" >&2\n"
            "    fi\n"
            "    node_log_tail; exit {{unhealthy}}\n"
            "  fi\n"
            "  clock\n"
            '  if [ -n "$since" ]; then left=$(( since + {{stable_cs}} - NOW + 500 )); else left=$(( end - NOW )); fi\n'
            '  secs "$left"\n'
            "  ok=1\n",
            deadline_cs=deadline_cs,
            stable_cs=stable_cs,
            unhealthy=EXIT_UNHEALTHY,
            helpers=["node_alive", "clock", "secs", "node_log_tail", "agent_start"],
        )
        + _checks(layout, flavour, health, err, agent=True)
        + text(
            "  clock\n"
            '  if [ -n "$ok" ]; then\n'
            '    [ -n "$since" ] || since=$NOW\n'
            '    if [ $(( NOW - since )) -ge {{stable_cs}} ] && node_alive "$NODE_PID" "$NODE_START"; then break; fi\n'
            '  elif [ -n "$since" ]; then\n'
            "    printf 'the node passed the health check, then failed it %ss later (health.stable_for: %s):\\n' "
            '"$(( (NOW - since) / 100 ))" {{stable}} >&2\n'
            "    cat " + err + " >&2 2>/dev/null || true; node_log_tail; exit {{unhealthy}}\n"
            '  elif [ "$NOW" -ge "$end" ]; then\n'
            "    echo 'the node did not become healthy within '{{deadline}}'s:' >&2\n"
            "    cat " + err + " >&2 2>/dev/null || true; node_log_tail; exit {{unhealthy}}\n"
            "  fi\n"
            "  pause {{interval}}\n"
            "done\n"
            'echo "node_pid=$NODE_PID"\n',
            stable_cs=stable_cs,
            stable=f"{max(0.0, health.stable_for):g}s",
            deadline=f"{health.deadline:g}",
            interval=f"{health.interval:g}",
            unhealthy=EXIT_UNHEALTHY,
            helpers=["node_alive", "pause"],
        )
    )


def health_once(layout: RemoteLayout, flavour: Flavour, health: HealthCheck) -> Fragment:
    """One try of the health check, without waiting and without writing anything on the host.

    Prints ``health=ok|failing|down|none`` and, when failing, ``health_error=<one line>``.
    """
    err = '"$errf"'
    return (
        text(
            "step health\n"
            'cur=$(readlink "$d/current" 2>/dev/null || true)\n'
            "rid=${cur##*/}\n"
            "find_nodes\n"
            "if command -v curl >/dev/null 2>&1; then have_curl=1; else have_curl=; fi\n"
            'if [ -z "$cur" ]; then echo health=none\n'
            'elif [ -z "$NODE_PIDS" ]; then echo health=down\n'
            "else\n"
            "  errf=$(mktemp)\n"
            "  ok=1\n"
            "  secs {{limit}}\n",
            limit=round(health.deadline * 100),
            helpers=["find_nodes", "secs"],
        )
        + _checks(layout, flavour, health, err)
        + text(
            '  if [ -n "$ok" ]; then echo health=ok\n'
            "  else echo health=failing; printf 'health_error=%s\\n' \"$(tr '\\n' ' ' < \"$errf\" | cut -c1-300)\"\n"
            "  fi\n"
            '  rm -f "$errf"\n'
            "fi\n"
        )
    )


def record(records: Sequence[str]) -> Fragment:
    """Append ``records`` to ``revisions.log`` (each prefixed with the host's UTC time and a tab)."""
    fragment = text("step record\n")
    for entry in records:
        fragment += text(
            'printf \'%s\\t%s\\n\' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" {{record}} >> "$d/revisions.log"\n', record=entry
        )
    return fragment


def prune(paths: Sequence[str]) -> Fragment:
    """Remove ``paths``; a failure is a warning (the new release is live and recorded by then)."""
    if not paths:
        return Fragment(())
    return raw(
        join(("step prune\nrm -rf ",), words(paths), (' || echo "warning: could not remove every old release" >&2\n',))
    )


# --- detached runs ------------------------------------------------------------------------------------------------

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

# Runs as `setsid /bin/sh -c "$SUPERVISOR" deployer-run RUN_DIR LIMIT`, in a session of its own: nothing that
# happens to the SSH connection reaches it. It runs RUN_DIR/script under `timeout` (which signals the script's
# whole process group at LIMIT seconds, SIGKILL 10 s later), then, once the script and its group are gone,
# writes RUN_DIR/outcome: the exit status, the last step the script announced, and `reason=deadline` when the
# host's deadline ended it. The outcome is renamed into place, so a reader sees all of it or nothing.
# RUN_DIR/supervisor ("pid start-time boot-id") lets a reader tell a run that is still going from one that a
# reboot, a power cut or a kill ended before it could write its outcome.
SUPERVISOR = r"""r=$1 limit=$2
read -r boot < /proc/sys/kernel/random/boot_id 2>/dev/null || boot=
read -r st < "/proc/$$/stat" 2>/dev/null || st=
set -- ${st##*) }
# Only a complete record: a reader without one waits for the outcome (or the limit) as before.
if [ -n "${20:-}" ] && [ -n "$boot" ]; then printf '%s %s %s\n' "$$" "${20}" "$boot" > "$r/supervisor"; fi
if command -v timeout >/dev/null 2>&1; then
  timeout -k 10 "$limit" /bin/sh "$r/script" >"$r/out" 2>"$r/log" </dev/null
else
  /bin/sh "$r/script" >"$r/out" 2>"$r/log" </dev/null
fi
s=$?
reason=
if [ "$s" -eq 124 ] || [ "$s" -eq 137 ]; then reason=deadline; fi
last=$(sed -n 's/^@@step //p' "$r/log" | tail -n 1)
printf 'status=%s\nstep=%s\nreason=%s\nfinished=%s\n' "$s" "$last" "$reason" "$(date +%s)" > "$r/outcome.tmp"
mv -f "$r/outcome.tmp" "$r/outcome"
"""
"""The supervisor of a detached run (a constant)."""


def run_dir(layout: RemoteLayout, run_id: str) -> str:
    """Where a detached run keeps its script, output, log and outcome on the host."""
    return f"{layout.shared}/runs/{run_id}"


def detach(layout: RemoteLayout, worker: Script, *, run_id: str, limit: float, timeout: float | None = None) -> Script:
    """A script that starts ``worker`` detached on the host and follows it to its end.

    The worker is written to ``shared/runs/<run_id>/script`` and run by :data:`SUPERVISOR` in its own
    session (``setsid``): a lost SSH connection, or this foreground script dying of SIGPIPE, does not stop
    it half-way. The foreground streams the worker's log (its ``@@step`` markers and errors) to stderr,
    prints its stdout, and exits with its exit status, read from the outcome file; after a reconnect,
    :func:`await_outcome` reads that file. The worker must not carry secrets (it is stored on the host).
    """
    if not RUN_ID_RE.fullmatch(run_id):
        raise ValueError(f"run id {run_id!r} must be letters, digits, '.', '_' or '-'")
    if worker.secrets:
        raise ValueError(f"script {worker.name!r} carries secrets; it cannot be stored for a detached run")
    delimiter = "__DEPLOYER_RUN_" + run_id.replace("-", "_").replace(".", "_")
    rendered = worker.render()
    if delimiter in rendered.splitlines():
        raise ValueError(f"script {worker.name!r} contains the line {delimiter}")
    seconds = _seconds(limit)
    return Script(
        name=worker.name,
        parts=join(
            (PRELUDE,),
            template(
                "SUPERVISOR={{supervisor}}\n" + _MAIN_OPEN + "d={{deploy_to}}\nr={{run}}\n",
                supervisor=SUPERVISOR,
                deploy_to=layout.deploy_to,
                run=run_dir(layout, run_id),
            ),
            (
                '(umask 077; mkdir -p "$d/shared/runs")\n'
                # Old runs go after a week; the last ones stay readable for await_outcome.
                'find "$d/shared/runs" -mindepth 1 -maxdepth 1 -mtime +7 -exec rm -rf {} + 2>/dev/null || true\n'
                'mkdir "$r" || fail "run $r was already started on this host"\n'
                f"cat > \"$r/script\" <<'{delimiter}'\n",
            ),
            worker.parts,
            (f'{delimiter}\n: > "$r/log"\n: > "$r/out"\n',),
            template(
                'setsid /bin/sh -c "$SUPERVISOR" deployer-run "$r" {{limit}} </dev/null >/dev/null 2>&1 &\n',
                limit=seconds,
            ),
            (
                "sup=$!\n"
                # GNU tail follows the log until the supervisor has gone (and then prints what is left). It
                # looks for the supervisor every 0.05 s: the run's end reaches the client that much later.
                "gnu_tail=\n"
                "case $(tail --version 2>/dev/null || true) in *coreutils*) gnu_tail=1 ;; esac\n"
                'if [ -n "$gnu_tail" ]; then\n'
                '  tail -n +1 -s 0.05 -f --pid="$sup" "$r/log" >&2 || true\n'
                "fi\n"
                'while [ ! -f "$r/outcome" ]; do\n'
                '  if ! kill -0 "$sup" 2>/dev/null && [ ! -f "$r/outcome" ]; then\n'
                '    sleep 1; [ -f "$r/outcome" ] || fail "the detached $r ended without writing its outcome"\n'
                "  fi\n"
                "  sleep 0.2\n"
                "done\n"
                'if [ -z "$gnu_tail" ]; then cat "$r/log" >&2; fi\n'
                'cat "$r/out"\n'
                "status=1\n"
                "while IFS='=' read -r key value; do\n"
                '  case "$key" in status) status=$value ;; reason) if [ "$value" = deadline ]; then\n'
                '    echo "the host ended the run at its own deadline"; fi >&2 ;; esac\n'
                'done < "$r/outcome"\n'
                'exit "$status"\n',
            ),
            (_MAIN_CLOSE,),
        ),
        timeout=timeout if timeout is not None else seconds + 60,
        run_id=run_id,
    )


def await_outcome(layout: RemoteLayout, run_id: str, timeout: float) -> Script:
    """Wait up to ``timeout`` seconds for detached run ``run_id`` to end, then print what happened.

    Output (parsed by :func:`deployer.core.facts.parse_outcome`): ``run=missing`` (never started here),
    ``run=running`` (still running at ``timeout``), ``run=lost`` (its supervisor is gone without an outcome:
    the host rebooted, lost power, or someone killed it) or ``run=finished`` followed by the outcome's
    ``status=``, ``step=``, ``reason=``, ``finished=`` lines; then up to 25 ``log=`` lines (the run's stderr,
    step markers removed) and the run's stdout as ``out=`` lines.
    """
    if not RUN_ID_RE.fullmatch(run_id):
        raise ValueError(f"run id {run_id!r} must be letters, digits, '.', '_' or '-'")
    return script(
        "await-outcome",
        text(
            "r={{run}}\n"
            'if [ ! -d "$r" ]; then echo run=missing; exit 0; fi\n'
            # The supervisor's identity (absent for runs of an older deployer: then only the wait decides).
            "sp= sst= sboot= lost=\n"
            '{ read -r sp sst sboot < "$r/supervisor"; } 2>/dev/null || true\n'
            "read -r boot < /proc/sys/kernel/random/boot_id 2>/dev/null || boot=\n"
            "clock\n"
            "end=$(( NOW + {{limit}} ))\n"
            'while [ ! -f "$r/outcome" ]; do\n'
            '  if [ -n "$sp" ]; then\n'
            '    if [ "$sboot" != "$boot" ] || ! proc_start "$sp" || [ "$PROC_START" != "$sst" ]; then\n'
            # It may have written its outcome just before it exited.
            '      [ -f "$r/outcome" ] || lost=1\n'
            "      break\n"
            "    fi\n"
            "  fi\n"
            "  clock\n"
            '  if [ "$NOW" -ge "$end" ]; then break; fi\n'
            "  sleep 0.5\n"
            "done\n"
            'if [ -f "$r/outcome" ]; then echo run=finished; cat "$r/outcome"\n'
            'elif [ -n "$lost" ]; then echo run=lost\n'
            "else echo run=running; fi\n"
            "grep -v '^@@step ' \"$r/log\" 2>/dev/null | tail -n 25 | sed 's/^/log=/' || true\n"
            "sed 's/^/out=/' \"$r/out\" 2>/dev/null || true\n",
            run=run_dir(layout, run_id),
            limit=round(max(0.0, timeout) * 100),
            helpers=["clock", "proc_start"],
        ),
        timeout=timeout + 60,
    )

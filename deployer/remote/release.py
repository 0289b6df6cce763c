"""The remote steps of deploy, migrate and rollback, as pure functions returning :class:`Script`.

Each function returns one script that runs a whole phase in one SSH session
(``set -eu``, sent on stdin), so a deploy costs a handful of sessions per host.
Scripts announce each step on stderr as ``@@step <name>``; the executor uses the
last marker to say which step failed.

Node lifecycle without extra BEAM boots: the VM's pid is found from
``/proc/*/exe`` (the bundled ERTS lives under ``releases/``), stopped with
SIGTERM (the VM shuts down cleanly, like ``init:stop()``) and waited on until
it has really exited; ``bin/<app> daemon`` is the only VM we start.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from deployer.core.paths import RemoteLayout
from deployer.remote.flavours import CLEAN_BOOT_EVAL, Flavour
from deployer.remote.shell import Part, Script, Secret, SecretText, join, template, words

STEP_MARKER = "@@step "
EXIT_LOCKED = 75
EXIT_UNHEALTHY = 76

PRELUDE = r"""set -eu
step() { printf '@@step %s\n' "$1" >&2; }
fail() { printf '%s\n' "$*" >&2; exit 1; }
"""

# The sha256 of a file as 64 hex digits. OpenSSL's digest uses the CPU's SHA extensions (1.3 GB/s where
# coreutils' sha256sum does 440 MB/s, benchmarks/README.md): a release is hashed twice per deploy (after the
# upload, before extracting). sha256sum, which the probe requires, is the fallback; an output that is not
# 64 hex digits is never trusted.
SHA256_FUNCTION = r"""sha256_of() {
  _h=
  if command -v openssl >/dev/null 2>&1; then _h=$(openssl dgst -sha256 -r "$1" 2>/dev/null) || _h=; fi
  _h=${_h%% *}
  case "$_h" in *[!0-9a-f]*) _h= ;; esac
  if [ ${#_h} -ne 64 ]; then _h=$(sha256sum "$1") || return 1; _h=${_h%% *}; fi
  printf '%s\n' "$_h"
}
"""

# Functions shared by the scripts that touch the node. `$d` is deploy_to.
NODE_FUNCTIONS = r"""node_pids() {
  self_ns=$(readlink /proc/$$/ns/mnt 2>/dev/null || true)
  { LC_ALL=C ls -ld /proc/[0-9]*/exe 2>/dev/null || true; } | while read -r _ _ _ _ _ _ _ _ link _ exe; do
    case "$exe" in "$d"/releases/*/erts-*/bin/beam.smp*) ;; *) continue ;; esac
    p=${link#/proc/}; p=${p%/exe}
    [ "$(readlink "/proc/$p/ns/mnt" 2>/dev/null || true)" = "$self_ns" ] || continue
    echo "$p"
  done
  if [ -f "$d/shared/node.pid" ]; then
    p=$(cat "$d/shared/node.pid" 2>/dev/null || true)
    case "$p" in ''|*[!0-9]*) ;; *) if is_alive "$p"; then echo "$p"; fi ;; esac
  fi
}
# is_alive and clock run in the polling loops while every node of a fleet boots at once: they use only
# shell builtins (no fork, no exec), so polling does not take CPU from the booting VMs.
is_alive() {
  { read -r _stat < "/proc/$1/stat"; } 2>/dev/null || return 1
  _stat=${_stat##*) }
  case "${_stat%% *}" in ''|Z|X) return 1 ;; esac
}
any_alive() { for p in "$@"; do if is_alive "$p"; then return 0; fi; done; return 1; }
now() { date +%s; }
clock() { read -r NOW _ < /proc/uptime; NOW=${NOW%%.*}; }
stop_node() {
  pids=$(node_pids | sort -u | tr '\n' ' ')
  if [ -z "$pids" ]; then echo "stopped=none"; return 0; fi
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  clock; end=$(( NOW + $1 ))
  while any_alive $pids; do
    clock
    if [ "$NOW" -ge "$end" ]; then
      printf 'node (pid %s) did not exit within %ss of SIGTERM; sending SIGKILL\n' "$pids" >&2
      kill -KILL $pids 2>/dev/null || true
      sleep 1
      if any_alive $pids; then fail "node (pid $pids) survived SIGKILL"; fi
      break
    fi
    sleep 0.1
  done
  rm -f "$d/shared/node.pid"
  echo "stopped=$pids"
}
load_env() {
  set -a
  . "$d/shared/env/$1.env"
  set +a
  [ -s "$d/shared/.cookie" ] || fail "the environment's Erlang cookie $d/shared/.cookie is missing"
  if [ "${cookie_from_home:-1}" = 1 ]; then
    # The release script puts --cookie "$RELEASE_COOKIE" into the VM's argv (readable in ps), so it gets a
    # throwaway random value, and one extra value-less -setcookie makes OTP disregard every -setcookie and
    # read $HOME/.erlang.cookie instead: the environment's cookie never appears in any argv.
    (umask 077; mkdir -p "$d/shared/home")
    chmod 0700 "$d/shared/home"
    ln -sfn ../.cookie "$d/shared/home/.erlang.cookie"
    HOME="$d/shared/home"
    ERL_AFLAGS="-setcookie ${ERL_AFLAGS:-}"
    export HOME ERL_AFLAGS
    if [ "${script_cookie:-0}" = 1 ]; then
      # relx's script hands the cookie to erl_call -c (to wait for the node, ping, rpc, stop): it needs the
      # real one, in its environment; the VM still reads $HOME/.erlang.cookie, never its argv.
      COOKIE_VALUE=$(cat "$d/shared/.cookie")
    else
      COOKIE_VALUE=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    fi
  else
    COOKIE_VALUE=$(cat "$d/shared/.cookie")
  fi
  export RELEASE_COOKIE="$COOKIE_VALUE" RELX_COOKIE="$COOKIE_VALUE" COOKIE="$COOKIE_VALUE"
  unset COOKIE_VALUE
  # relx renders vm.args/sys.config (perhaps with secrets) into RELX_OUT_FILE_PATH if it exists, else
  # into the release directory: make it, private.
  if [ -n "${RELX_OUT_FILE_PATH:-}" ]; then (umask 077; mkdir -p "$RELX_OUT_FILE_PATH"); fi
}
node_log_tail() {
  for f in $(ls -t "$d"/shared/tmp/log/erlang.log.* 2>/dev/null | head -n 1); do
    printf -- '--- last lines of %s ---\n' "$f" >&2
    tail -n 25 "$f" >&2 || true
  done
}
"""


def _script(name: str, *chunks: Iterable[Part], timeout: float | None = None) -> Script:
    # Wrapping the body in a function makes sh parse all of it before running any of it, and
    # `</dev/null` keeps commands from reading the rest of the script from stdin.
    return Script(
        name=name,
        parts=join((PRELUDE,), ("__deployer_main() {\n",), *chunks, ("\n}\n__deployer_main </dev/null\n",)),
        timeout=timeout,
    )


def _vars(layout: RemoteLayout) -> tuple[Part, ...]:
    return template("d={{deploy_to}}\napp={{app}}\n", deploy_to=layout.deploy_to, app=layout.app)


# --- facts and locking ---------------------------------------------------------------------------------


def probe(layout: RemoteLayout, *, lock_info: str | None = None, history_lines: int = 500) -> Script:
    """Read-only facts about the host (``key=value`` lines); with ``lock_info`` also take the lock.

    Taking the lock is ``mkdir`` (atomic): exactly one of two concurrent deploys gets it.
    """
    lock: tuple[Part, ...] = ()
    if lock_info is not None:
        lock = template(
            'step lock\nmkdir -p "$d"\n'
            'if mkdir "$d/.lock" 2>/dev/null; then\n'
            "  printf '%s\\n' {{info}} > \"$d/.lock/info\"\n"
            "  echo lock_acquired=1\n"
            "fi\n",
            info=lock_info,
        )
    body = template(
        "step probe\n"
        'echo "now=$(date +%s)"\n'
        'echo "arch=$(uname -m)"\n'
        'echo "libc=$( (ldd --version 2>&1 || true) | head -n 1)"\n'
        # What the release's crypto NIF may link (compatibility preflight, deployer.core.compat).
        'echo "libcrypto=$(for f in /lib/*/libcrypto.so.* /usr/lib/*/libcrypto.so.* /lib64/libcrypto.so.* '
        "/usr/lib64/libcrypto.so.* /lib/libcrypto.so.* /usr/lib/libcrypto.so.* /usr/local/lib/libcrypto.so.*; "
        'do if [ -e "$f" ]; then echo "${f##*/}"; fi; done | sort -u | tr \'\\n\' \' \')"\n'
        "for t in tar sha256sum curl wget; do if command -v $t >/dev/null 2>&1; then echo tool=$t; fi; done\n"
        'if [ -d "$d" ]; then echo exists=1; fi\n'
        'p="$d"; while [ ! -d "$p" ]; do p=$(dirname "$p"); done\n'
        'if [ -w "$p" ]; then echo writable=1; fi\n'
        'echo "disk_free_kb=$(df -Pk "$p" | awk \'NR==2 {print $4}\')"\n'
        'if [ -L "$d/current" ]; then echo "current=$(readlink "$d/current")"; fi\n'
        'for r in "$d"/releases/*; do if [ -d "$r" ]; then echo "release=${r##*/}"; fi; done\n'
        'for a in "$d"/artifacts/*.tar.gz; do if [ -f "$a" ]; then a=${a##*/}; echo "artifact=${a%.tar.gz}"; fi; done\n'
        'if [ -s "$d/shared/.cookie" ]; then echo cookie=1; fi\n'
        'for p in $(node_pids | sort -u); do echo "node_pid=$p"; done\n'
        'if [ -d "$d/.lock" ]; then echo "lock=$(tr \'\\n\' \' \' < "$d/.lock/info" 2>/dev/null || true)"; fi\n'
        'if [ -f "$d/revisions.log" ]; then tail -n {{lines}} "$d/revisions.log" | sed \'s/^/rev=/\'; fi\n',
        lines=history_lines,
    )
    return _script("probe" if lock_info is None else "lock+probe", _vars(layout), (NODE_FUNCTIONS,), lock, body)


def unlock(layout: RemoteLayout, token: str | None) -> Script:
    """Release the lock if it is ours (``token``), or unconditionally when ``token`` is None (unlock task)."""
    if token is None:
        body = template('step unlock\nrm -rf "$d/.lock"\necho unlocked=1\n')
    else:
        body = template(
            "step unlock\n"
            'if [ -d "$d/.lock" ] && grep -qF {{token}} "$d/.lock/info" 2>/dev/null; then\n'
            '  rm -rf "$d/.lock"; echo unlocked=1\n'
            "fi\n",
            token=token,
        )
    return _script("unlock", _vars(layout), body, timeout=60)


def read_cookie(layout: RemoteLayout) -> Script:
    """Print the environment's cookie so a host that lacks it can be given the same one."""
    return _script("read-cookie", template("cat {{cookie}}\n", cookie=layout.cookie), timeout=30)


# --- upload ----------------------------------------------------------------------------------------------


def receive_artifact(layout: RemoteLayout, sha256: str) -> Script:
    """Read the tarball from stdin into a temp name, verify its sha256 on the host, rename into place."""
    parts = join(
        (PRELUDE, SHA256_FUNCTION),
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
) -> Script:
    """Verify the artifact, extract it into a new ``releases/<id>``, write the env file (0600), the cookie.

    Extraction goes to ``releases/.partial-<id>`` and is renamed only when complete, so an interrupted
    extraction is never mistaken for a release. A cookie baked into the tarball is deleted: the node
    gets the environment's cookie through ``RELEASE_COOKIE``.
    """
    cookie_part: tuple[Part, ...] = ()
    if cookie is not None:
        cookie_part = template(
            "step cookie\n"
            'if [ ! -s "$d/shared/.cookie" ]; then\n'
            "  (umask 077; printf '%s' {{cookie}} > \"$d/shared/.cookie.tmp\")\n"
            '  chmod 0400 "$d/shared/.cookie.tmp"\n'
            '  mv -f "$d/shared/.cookie.tmp" "$d/shared/.cookie"\n'
            "fi\n",
            cookie=cookie,
        )
    body = template(
        "step clean-leftovers\n"
        'rm -rf "$d"/releases/.partial-* "$d"/artifacts/.upload-* "$d"/current.tmp.*\n'
        "step verify-artifact\n"
        'a="$d/artifacts/{{sha}}.tar.gz"\n'
        '[ -f "$a" ] || fail "artifact $a is missing"\n'
        'actual=$(sha256_of "$a") || actual=\n'
        '[ "$actual" = {{sha}} ] || fail "artifact $a has sha256 $actual, expected "{{sha}}\n'
        "step extract\n"
        'r="$d/releases/"{{id}}\n'
        '[ ! -e "$r" ] || fail "$r already exists; refusing to extract over it"\n'
        'p="$d/releases/.partial-"{{id}}\n'
        'mkdir -p "$d/releases"\n'
        'mkdir "$p"\n'
        'tar -xzf "$a" -C "$p" --no-same-owner --no-same-permissions\n'
        '[ -x "$p/bin/$app" ] || fail "the release has no executable bin/$app"\n'
        'rm -f "$p/releases/COOKIE"\n'
        'chmod -R go-w "$p"\n'
        'mv "$p" "$r"\n'
        "step write-env\n"
        'mkdir -p "$d/shared/tmp"\n'
        '(umask 077; mkdir -p "$d/shared/env")\n'
        'chmod 0700 "$d/shared/env"\n'
        'e="$d/shared/env/"{{id}}.env\n'
        "(umask 077; printf '%s' {{env}} > \"$e.tmp\")\n"
        'chmod 0600 "$e.tmp"\n'
        'mv -f "$e.tmp" "$e"\n',
        sha=sha256,
        id=release_id,
        env=env_file,
    )
    return _script("prepare", _vars(layout), (SHA256_FUNCTION,), body, cookie_part)


def abort_prepared(layout: RemoteLayout, release_id: str) -> Script:
    """Undo :func:`prepare` after a failure before any switch: the new release must not linger."""
    body = template(
        "step remove-new-release\n"
        'cur=$(readlink "$d/current" 2>/dev/null || true)\n'
        '[ "$cur" != "releases/"{{id}} ] || fail "refusing to remove the current release"\n'
        'rm -rf "$d/releases/"{{id}} "$d/releases/.partial-"{{id}} "$d/shared/env/"{{id}}.env\n'
        "echo removed=1\n",
        id=release_id,
    )
    return _script("abort", _vars(layout), body, timeout=120)


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

    ``record`` is appended to revisions.log on success, so a later rollback can warn when it goes back
    to code older than the schema.
    """
    argv = flavour.eval(expression)
    limit = int(max(1, round(timeout)))
    if argv is None:  # no fresh-VM verb in the release script (relx): boot the release clean
        run: tuple[Part, ...] = template(
            "clean_boot_eval {{root}} {{expression}}", root=layout.release(release_id), expression=expression
        )
    else:
        run = join(("$limit ",), words([layout.bin(release_id), *argv]))
    body = join(
        cookie_mode(flavour),
        (CLEAN_BOOT_EVAL,) if argv is None else (),
        template(
            "step migrate\n"
            # The deadline is enforced on the host too, so a hung migration VM is killed, not orphaned.
            'if command -v timeout >/dev/null 2>&1; then limit="timeout -k 10 {{limit}}"; else limit=; fi\n'
            "set +e\n"
            '( load_env {{id}}\ncd "$d/shared"\n',
            id=release_id,
            limit=limit,
        ),
        run,
        template(
            " )\n"
            "status=$?\n"
            "set -e\n"
            'if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then fail "migration timed out after {{limit}}s"; fi\n'
            '[ "$status" -eq 0 ] || exit "$status"\n',
            limit=limit,
        ),
        _record([record]) if record else (),
    )
    return _script("migrate", _vars(layout), (NODE_FUNCTIONS,), body, timeout=timeout + 30)


# --- activate / revert ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthCheck:
    """How the health gate probes the node, rendered into the activate script."""

    http: str | None
    rpc: str | None
    deadline: float
    interval: float
    start_grace: float = 15.0


def _health(layout: RemoteLayout, flavour: Flavour, health: HealthCheck) -> tuple[Part, ...]:
    checks: list[tuple[Part, ...]] = []
    if health.http:
        checks.append(
            template(
                '  if [ -z "$ok" ]; then :\n'
                "  elif command -v curl >/dev/null 2>&1; then\n"
                '    curl -fsS -o /dev/null --max-time 5 {{url}} 2>"$d/shared/tmp/health.err" || ok=\n'
                "  else\n"
                '    wget -q -O /dev/null -T 5 {{url}} 2>"$d/shared/tmp/health.err" || ok=\n'
                "  fi\n",
                url=health.http,
            )
        )
    if health.rpc and flavour.rpc_error_output:
        # relx's eval exits 0 when the expression raised; the printed result tells.
        failed = "|".join(f"{shlex.quote(prefix)}*" for prefix in flavour.rpc_error_output)
        checks.append(
            join(
                ('  if [ -n "$ok" ]; then\n    out=$( load_env "$rid"; ',),
                words([f"{layout.current}/bin/{layout.app}", *flavour.rpc(health.rpc)]),
                (
                    ' 2>"$d/shared/tmp/health.err" ) || ok=\n'
                    f'    case "$out" in {failed}) printf \'%s\\n\' "$out" >> "$d/shared/tmp/health.err"; ok= ;; esac\n'
                    "  fi\n",
                ),
            )
        )
    elif health.rpc:
        checks.append(
            join(
                ('  if [ -n "$ok" ]; then ( load_env "$rid"; ',),
                words([f"{layout.current}/bin/{layout.app}", *flavour.rpc(health.rpc)]),
                (' ) >/dev/null 2>"$d/shared/tmp/health.err" || ok=; fi\n',),
            )
        )
    return join(
        template(
            "step health\n"
            "clock\n"
            "end=$(( NOW + {{deadline}} ))\n"
            "grace=$(( NOW + {{grace}} ))\n"
            "seen=\n"
            "pids=\n"
            "while :; do\n"
            # Scanning /proc costs several processes: keep the pids found while they live.
            "  live=\n"
            '  for p in $pids; do if is_alive "$p"; then live="$live$p "; fi; done\n'
            "  pids=$live\n"
            "  if [ -z \"$pids\" ]; then pids=$(node_pids | sort -u | tr '\\n' ' '); fi\n"
            "  ok=1\n"
            '  if [ -z "$pids" ]; then ok=; fi\n',
            deadline=int(max(1, round(health.deadline))),
            grace=int(max(1, round(min(health.start_grace, health.deadline)))),
        ),
        *checks,
        template(
            '  if [ -n "$ok" ]; then\n'
            '    echo "node_pid=$pids"; echo "$pids" | tr -d " " > "$d/shared/node.pid"; break\n'
            "  fi\n"
            '  if [ -n "$pids" ]; then seen=1; fi\n'
            '  if [ -n "$seen" ] && [ -z "$pids" ]; then\n'
            '    echo "the node exited while starting" >&2; node_log_tail; exit {{unhealthy}}\n'
            "  fi\n"
            "  clock\n"
            '  if [ -z "$seen" ] && [ "$NOW" -ge "$grace" ]; then\n'
            '    echo "the node did not start within {{grace_text}}s" >&2; node_log_tail; exit {{unhealthy}}\n'
            "  fi\n"
            '  if [ "$NOW" -ge "$end" ]; then\n'
            '    echo "the node did not become healthy within {{deadline_text}}s:" >&2\n'
            '    cat "$d/shared/tmp/health.err" >&2 2>/dev/null || true; node_log_tail; exit {{unhealthy}}\n'
            "  fi\n"
            "  sleep {{interval}}\n"
            "done\n",
            unhealthy=EXIT_UNHEALTHY,
            interval=f"{health.interval:g}",
            grace_text=f"{min(health.start_grace, health.deadline):g}",
            deadline_text=f"{health.deadline:g}",
        ),
    )


def _switch(release_id: str, tmp_suffix: str) -> tuple[Part, ...]:
    return template(
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


def cookie_mode(flavour: Flavour) -> tuple[Part, ...]:
    """Tells ``load_env`` how the node gets the cookie: from ``$HOME/.erlang.cookie`` (default) or argv,
    and whether the release script itself needs the real one (relx)."""
    mode: tuple[Part, ...] = () if flavour.cookie_from_home else ("cookie_from_home=0\n",)
    return mode + (("script_cookie=1\n",) if flavour.script_cookie else ())


def _restart(layout: RemoteLayout, flavour: Flavour, stop_timeout: float, start_wait: float = 60.0) -> tuple[Part, ...]:
    start = words([f"{layout.current}/bin/{layout.app}", *flavour.daemon])
    if flavour.daemon_waits:
        # relx's daemon polls until the node answers, without end (a node that crashes at boot would hang
        # the deploy): bound the wait and let the health gate judge the node.
        wait = int(max(1, round(start_wait)))
        return join(
            cookie_mode(flavour),
            template(
                "step stop\nstop_node {{timeout}}\nstep start\n"
                "if command -v timeout >/dev/null 2>&1; then\n"
                '  start_limit="timeout -k 5 {{wait}}"\nelse\n  start_limit=\nfi\n',
                timeout=int(max(1, round(stop_timeout))),
                wait=wait,
            ),
            ('( load_env "$rid"; cd "$d/shared"; exec $start_limit ',),
            start,
            (
                ' ) || { s=$?; [ "$s" -eq 124 ] || exit "$s"; '
                f'echo "the release script still waited for the node after {wait}s" >&2; }}\n',
            ),
        )
    return join(
        cookie_mode(flavour),
        template("step stop\nstop_node {{timeout}}\nstep start\n", timeout=int(max(1, round(stop_timeout)))),
        ('( load_env "$rid"; cd "$d/shared"; exec ',),
        start,
        (" )\n",),
    )


def revision_record(fields: Mapping[str, str | None]) -> str:
    """One ``revisions.log`` entry (the script prefixes the host's UTC time and a tab)."""
    return json.dumps({k: v for k, v in fields.items() if v is not None}, sort_keys=True, separators=(",", ":"))


def _record(records: Sequence[str]) -> tuple[Part, ...]:
    parts: list[Part] = ["step record\n"]
    for record in records:
        parts.extend(
            template(
                'printf \'%s\\t%s\\n\' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" {{record}} >> "$d/revisions.log"\n',
                record=record,
            )
        )
    return tuple(parts)


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
) -> Script:
    """Switch ``current`` to ``release_id``, stop the old VM and wait for it, start the new one,
    wait for health, record success, remove old releases. Exits 76 when the node is not healthy;
    the executor then runs :func:`revert`.
    """
    prune: tuple[Part, ...] = ()
    paths = [layout.release(r) for r in prune_releases] + [layout.env_file(r) for r in prune_releases]
    paths += [layout.artifact(sha) for sha in prune_artifacts]
    if paths:
        # The new release is live and recorded by now: a failed clean-up must not turn into a revert.
        prune = join(
            ("step prune\nrm -rf ",), words(paths), (' || echo "warning: could not remove every old release" >&2\n',)
        )
    return _script(
        "activate",
        _vars(layout),
        (NODE_FUNCTIONS,),
        _switch(release_id, tmp_suffix),
        _restart(layout, flavour, stop_timeout, health.deadline),
        _health(layout, flavour, health),
        _record([success_record]),
        prune,
        # relx's bounded daemon wait (up to the deadline) comes before the health gate's own deadline.
        timeout=stop_timeout + health.deadline * (2 if flavour.daemon_waits else 1) + 120,
    )


def revert(
    layout: RemoteLayout,
    flavour: Flavour,
    *,
    previous_id: str | None,
    health: HealthCheck,
    stop_timeout: float,
    tmp_suffix: str,
    records: Sequence[str],
) -> Script:
    """Put a host whose new node failed back on ``previous_id`` (restart + health), recording ``records``.

    With no previous release (a first deploy) the failed node is stopped and ``current`` removed.
    """
    if previous_id is None:
        body: tuple[Part, ...] = template(
            'step stop\nstop_node {{timeout}}\nstep unlink\nrm -f "$d/current"\n',
            timeout=int(max(1, round(stop_timeout))),
        )
        return _script("revert", _vars(layout), (NODE_FUNCTIONS,), body, _record(records))
    return _script(
        "revert",
        _vars(layout),
        (NODE_FUNCTIONS,),
        _record(records),
        _switch(previous_id, tmp_suffix),
        _restart(layout, flavour, stop_timeout, health.deadline),
        _health(layout, flavour, health),
        # relx's bounded daemon wait (up to the deadline) comes before the health gate's own deadline.
        timeout=stop_timeout + health.deadline * (2 if flavour.daemon_waits else 1) + 120,
    )

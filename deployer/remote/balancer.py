"""HAProxy's runtime API as remote script fragments, run on the balancer host over SSH.

The admin socket (``stats socket /run/haproxy/admin.sock level admin``) is reached with ``socat`` on
the balancer host itself: no port is opened, nothing new listens. Every name (socket, backend, server)
is quoted at render time; the runtime API's own syntax needs ``BACKEND/SERVER`` with neither containing
a space or a slash, which :func:`_check_name` enforces before anything is rendered.

* :func:`set_state` ``set server B/S state ready|drain|maint``;
* :func:`drain` sets ``drain``, then waits until the server's current sessions (``scur`` of ``show
  stat``) reach 0 or ``deadline`` passes; prints ``sessions=N`` and ``waited=S``;
* :func:`states` prints ``server=<backend>/<server> state=<UP|DRAIN|MAINT|DOWN|...> scur=N`` for each
  server of a backend (``status`` shows them).
"""

from __future__ import annotations

import re

from deployer.remote.shell import Part, Script, join, template

STATES = ("ready", "drain", "maint")
_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")

# `hap CMD` sends one runtime-API command and prints its answer; an answer starting with an error word
# fails the script with that answer (HAProxy answers unknown servers with "No such server.").
_FUNCTIONS = r"""if ! command -v socat >/dev/null 2>&1; then
  echo "socat is not installed on the balancer host (apt-get install socat)" >&2; exit 2
fi
if ! $sudo test -S "$sock"; then echo "no HAProxy admin socket at $sock on the balancer host" >&2; exit 2; fi
hap() {
  printf '%s\n' "$1" | $sudo socat -t 5 stdio "UNIX-CONNECT:$sock"
}
hap_set() {
  answer=$(hap "$1")
  case "$answer" in
    "") ;;
    *[Nn]o\ such*|*[Uu]nknown*|*denied*|*[Rr]equire*|*[Ee]rror*)
      printf 'haproxy refused "%s": %s\n' "$1" "$answer" >&2; exit 3 ;;
  esac
}
scur() {
  hap "show stat" | awk -F, -v b="$backend" -v s="$server" '$1 == b && $2 == s { print $5; exit }'
}
"""


def _check_name(kind: str, value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"HAProxy {kind} name {value!r}: only letters, digits and _ . : - are allowed")
    return value


def _prelude(socket: str, backend: str, server: str | None, *, sudo: bool) -> tuple[Part, ...]:
    values = template(
        "set -eu\nsock={{socket}}\nbackend={{backend}}\n",
        socket=socket,
        backend=_check_name("backend", backend),
    )
    if server is not None:
        values = join(values, template("server={{server}}\n", server=_check_name("server", server)))
    return join(values, ("sudo=" + ("'sudo -n'" if sudo else "") + "\n", _FUNCTIONS))


def set_state(socket: str, backend: str, server: str, state: str, *, sudo: bool = False, label: str = "") -> Script:
    """``set server BACKEND/SERVER state STATE`` on the balancer host."""
    if state not in STATES:
        raise ValueError(f"unknown server state {state!r} (one of {', '.join(STATES)})")
    return Script(
        name=f"{state} {label or server} in {backend}",
        parts=join(
            _prelude(socket, backend, server, sudo=sudo),
            template('hap_set "set server $backend/$server state "{{state}}\n', state=state),
        ),
        timeout=60,
    )


def drain(socket: str, backend: str, server: str, *, deadline: float, sudo: bool = False, label: str = "") -> Script:
    """Set the server to ``drain`` and wait until its current sessions reach 0, at most ``deadline``
    seconds (then the caller stops the node anyway: ``sessions=N`` says how many were still open)."""
    return Script(
        name=f"drain {label or server} in {backend}",
        parts=join(
            _prelude(socket, backend, server, sudo=sudo),
            template(
                'hap_set "set server $backend/$server state drain"\n'
                "start=$(date +%s); end=$(( start + {{deadline}} ))\n"
                "while :; do\n"
                "  cur=$(scur)\n"
                '  if [ -z "$cur" ]; then echo "no server $backend/$server in HAProxy" >&2; exit 3; fi\n'
                "  now=$(date +%s)\n"
                '  if [ "$cur" -eq 0 ] || [ "$now" -ge "$end" ]; then\n'
                '    echo "sessions=$cur"; echo "waited=$(( now - start ))"; exit 0\n'
                "  fi\n"
                "  sleep 0.2\n"
                "done\n",
                deadline=int(max(1, round(deadline))),
            ),
        ),
        timeout=deadline + 60,
    )


def drain_notice(output: str) -> str | None:
    """The operator's line when a drain's deadline passed with sessions still open."""
    for line in output.splitlines():
        name, _, value = line.partition("=")
        if name == "sessions" and value.strip() not in ("", "0"):
            return f"{value.strip()} session(s) still open when the drain deadline passed; stopping anyway"
    return None


def states(socket: str, backend: str, *, sudo: bool = False) -> Script:
    """Each server of ``backend``: ``server=B/S state=... scur=0`` from ``show servers state``.

    ``state`` is the administrative state when the server is not ready (``MAINT``, ``DRAIN``: what
    deployer sets and must never leave behind silently), else its operational state (``UP``, ``DOWN``,
    ``STARTING``, ``STOPPING``). ``show stat``'s status column cannot tell: a drained server whose
    health check fails shows ``DOWN`` there.
    """
    return Script(
        name=f"balancer states of {backend}",
        parts=join(
            _prelude(socket, backend, None, sudo=sudo),
            (
                'hap "show servers state $backend" | awk -v b="$backend" \'\n'
                "  NF > 7 && $2 == b {\n"
                "    a = $7 + 0; op = $6 + 0\n"
                "    # srv_admin_state bits: 0x01 0x02 0x04 0x20 0x40 maintenance, 0x08 0x10 drain\n"
                '    if (a % 8 != 0 || int(a / 32) % 4 != 0) st = "MAINT"\n'
                '    else if (int(a / 8) % 4 != 0) st = "DRAIN"\n'
                '    else if (op == 2) st = "UP"\n'
                '    else if (op == 1) st = "STARTING"\n'
                '    else if (op == 3) st = "STOPPING"\n'
                '    else st = "DOWN"\n'
                '    printf "server=%s/%s state=%s scur=0\\n", $2, $4, st\n'
                "  }'\n",
            ),
        ),
        timeout=60,
    )


def parse_states(output: str) -> dict[str, tuple[str, int]]:
    """``{server: (state, sessions)}`` from :func:`states`' output."""
    found: dict[str, tuple[str, int]] = {}
    for line in output.splitlines():
        fields = dict(part.partition("=")[::2] for part in line.split())
        name = fields.get("server", "")
        if "/" not in name:
            continue
        scur = fields.get("scur", "0")
        found[name.split("/", 1)[1]] = (fields.get("state", "?"), int(scur) if scur.isdigit() else 0)
    return found

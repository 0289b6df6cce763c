"""Nodes as systemd services (``node.service: systemd``): the unit, its runner and the fragments that drive it.

One unit per application and environment, ``deployer-<app>-<env>.service``, installed and kept up to date
by the scripts that start the node. It runs the release in the foreground from ``current`` through the
*runner*, a small script written next to the unit's staged copy in ``shared/systemd/``: it resolves
``current`` and ``exec``s deployer's :data:`~deployer.remote.fragments.LAUNCHER` (which alone knows where
the node's environment file is and reads it as data) with the flavour's foreground verb. ``ExecStop`` is
the release's own ``stop`` through the same runner; systemd sends SIGTERM (and SIGKILL after
``TimeoutStopSec``) to whatever is left.

What needs root goes through ``as_root``: directly when the login is root, else ``sudo -n``, and only for
the commands :meth:`Service.root_commands` lists (install the unit file, ``daemon-reload``, and
``enable``/``start``/``stop``/``restart``/``reset-failed`` of this one unit): exactly the sudoers line
:meth:`Service.sudoers_line` prints. A refused ``sudo -n`` ends the script with :data:`EXIT_SUDO` and a
message naming the command and that line. Everything else (``systemctl show``/``is-active``, the
journal) runs as the login user.

The node runs as its own account (``User=``, ``node.user``, by default the app's name, created by
``deployer setup``), which can write neither the releases nor ``shared/``: the unit hands it the cookie and
the environment file as systemd credentials (``LoadCredential=``, copies readable by that account only)
and a private runtime directory for its temporary files; the launcher finds them there. The deploy user
keeps its own access to both, so its rpc health checks, ``eval`` and migrations work as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from deployer.core.paths import RemoteLayout
from deployer.remote.flavours import Flavour
from deployer.remote.fragments import EXIT_UNHEALTHY, LAUNCHER, Fragment, cookie_mode, raw, script, text
from deployer.remote.shell import Script, template, words

SYSTEMCTL = "/usr/bin/systemctl"
INSTALL = "/usr/bin/install"
UNIT_DIR = "/etc/systemd/system"
SUDOERS_DIR = "/etc/sudoers.d"
EXIT_SUDO = 77
"""Exit status of a script whose ``sudo -n`` was refused (the sudoers line is on stderr)."""

# The verb that runs the release in the foreground (systemd supervises it: no run_erl, no daemon).
FOREGROUND: Mapping[str, str] = {"mix": "start", "rebar3": "foreground", "distillery": "foreground"}

# systemctl's properties that `status` reports, read in one call.
UNIT_PROPERTIES = ("ActiveState", "SubState", "MainPID", "NRestarts", "UnitFileState")


def unit_name(app: str, env: str) -> str:
    """``deployer-<app>-<env>.service`` (app and environment names are already restricted to safe words)."""
    return f"deployer-{app}-{env}.service"


@dataclass(frozen=True)
class Service:
    """The systemd unit of one application and environment, and how scripts drive it."""

    layout: RemoteLayout
    flavour: Flavour
    unit: str
    stop_timeout: float
    limit_nofile: int = 65536
    user: str | None = None
    """The sudoers line's user; None: the login user, read on the host (``id -un``)."""
    node_user: str | None = None
    """The unit's ``User=``, the account the node runs as (``node.user``); None: the login user."""

    @property
    def stem(self) -> str:
        """The unit's name without ``.service`` (also the sudoers drop-in's name: sudo skips names with a dot)."""
        return self.unit.removesuffix(".service")

    @property
    def staged(self) -> str:
        """Where the scripts write the unit before it is installed (compared with the installed one)."""
        return f"{self.layout.shared}/systemd/{self.unit}"

    @property
    def runner(self) -> str:
        return f"{self.layout.shared}/systemd/{self.stem}.run"

    @property
    def installed(self) -> str:
        return f"{UNIT_DIR}/{self.unit}"

    @property
    def dropin(self) -> str:
        return f"{SUDOERS_DIR}/{self.stem}"

    def root_commands(self) -> tuple[str, ...]:
        """Every command deployer runs as root on a host in this mode, exactly as sudo sees it."""
        return (
            f"{INSTALL} -m 0644 {self.staged} {self.installed}",
            f"{SYSTEMCTL} daemon-reload",
            *(f"{SYSTEMCTL} {verb} {self.unit}" for verb in ("enable", "start", "stop", "restart", "reset-failed")),
        )

    def sudoers_line(self, user: str) -> str:
        """The one sudoers line that lets ``user`` run :meth:`root_commands` without a password, and nothing else."""
        return f"{user} ALL=(root) NOPASSWD: " + ", ".join(self.root_commands())

    def unit_text(self, user: str) -> str:
        """The unit file for a node run by ``user``."""
        return self._unit_head() + f"User={user}\n" + self._unit_tail()

    @property
    def state_dir(self) -> str:
        """The node's own persistent directory (``StateDirectory=``, owned by its account): its working
        directory, where a crash dump lands."""
        return f"/var/lib/{self.stem}"

    def _unit_head(self) -> str:
        app = self.layout.app
        return (
            "# Written by deployer: changes here are replaced by the next deploy (see node.* in the inventory).\n"
            "[Unit]\n"
            f"Description=deployer: {app} ({self.stem.removeprefix(f'deployer-{app}-')})\n"
            "Wants=network-online.target\n"
            "After=network-online.target\n"
            "\n"
            "[Service]\n"
            "Type=simple\n"
        )

    def _unit_tail(self) -> str:
        app = self.layout.app
        shared = self.layout.shared
        return (
            # The node's account reads neither shared/.cookie nor shared/node.env (the deploy user's, 0400 and
            # 0600): systemd, as root, hands it copies only it can read, for this unit's processes alone, in
            # $CREDENTIALS_DIRECTORY; the launcher takes them from there. Its temporary files go to a private
            # runtime directory (removed when it stops), its working directory is its state directory.
            f"LoadCredential=cookie:{shared}/.cookie\n"
            f"LoadCredential=node.env:{shared}/node.env\n"
            f"RuntimeDirectory={self.stem}\n"
            "RuntimeDirectoryMode=0700\n"
            f"StateDirectory={self.stem}\n"
            "StateDirectoryMode=0700\n"
            f"ExecStart=/bin/sh {self.runner} start\n"
            f"ExecStop=/bin/sh {self.runner} stop $MAINPID\n"
            "Restart=on-failure\n"
            "RestartSec=1\n"
            f"TimeoutStopSec={_seconds(self.stop_timeout)}\n"
            f"LimitNOFILE={self.limit_nofile}\n"
            f"SyslogIdentifier={app}\n"
            "\n"
            "[Install]\n"
            "WantedBy=multi-user.target\n"
        )

    def runner_text(self) -> str:
        """The script the unit runs: ``start`` (foreground, as the main process) or ``stop MAINPID``."""
        return Script(
            "runner",
            template(
                "#!/bin/sh\n"
                "# Written by deployer for {{unit}}: runs the release current points to through the launcher.\n"
                "set -eu\n"
                "d={{deploy_to}}\n"
                "LAUNCHER={{launcher}}\n"
                'cur=$(readlink "$d/current" 2>/dev/null) || { echo "nothing is deployed in $d (no current)" >&2; '
                "exit 1; }\n"
                "rid=${cur##*/}\n"
                "case ${1:-} in\n"
                "  start) set -- {{foreground}} ;;\n"
                # Nothing to stop when the main process is already gone (systemd then only cleans up).
                "  stop)\n"
                "    case ${2:-} in ''|0|*[!0-9]*) exit 0 ;; esac\n"
                '    kill -0 "$2" 2>/dev/null || exit 0\n'
                "    set -- {{stop}} ;;\n"
                '  *) echo "usage: $0 start | stop MAINPID" >&2; exit 2 ;;\n'
                "esac\n"
                # The unit's credentials and directories (see the unit): the launcher's only inputs besides
                # its arguments.
                'exec env -i "PATH=$PATH" "CREDENTIALS_DIRECTORY=${CREDENTIALS_DIRECTORY:-}" '
                '"RUNTIME_DIRECTORY=${RUNTIME_DIRECTORY:-}" "STATE_DIRECTORY=${STATE_DIRECTORY:-}" '
                '/bin/sh -c "$LAUNCHER" deployer-launch "$d" "$rid" {{mode}} "$d/current/bin/"{{app}} "$@"\n',
                unit=self.unit,
                deploy_to=self.layout.deploy_to,
                launcher=LAUNCHER,
                foreground=FOREGROUND[self.flavour.name],
                stop=self.flavour.stop[0],
                mode=cookie_mode(self.flavour),
                app=self.layout.app,
            ),
        ).render()

    # --- fragments -----------------------------------------------------------------------------------------

    def prelude(self) -> Fragment:
        """``svc_user``, ``unit``, ``as_root`` (root directly, else ``sudo -n`` of a permitted command) and a
        ``node_log_tail`` that reads the unit's journal. Every fragment below starts with it."""
        user = "svc_user={{user}}\n" if self.user is not None else "svc_user=$(id -un)\n"
        values: dict[str, str] = {"user": self.user} if self.user is not None else {}
        if self.node_user is not None:
            user += "svc_node_user={{node_user}}\n"
            values["node_user"] = self.node_user
        else:
            user += 'svc_node_user="$svc_user"\n'
        return text(
            user + "unit={{unit}}\n"
            'svc_sudoers="$svc_user "{{rule}}\n'
            "as_root() {\n"
            '  if [ "$(id -u)" -eq 0 ]; then "$@"; return; fi\n'
            '  if sudo -n -l "$@" >/dev/null 2>&1; then sudo -n "$@"; return; fi\n'
            '  printf \'%s may not run "%s" as root (sudo -n refused it); add this line with visudo -f %s, '
            "or run deployer setup as an administrator:\\n%s\\n' "
            '"$svc_user" "$*" {{dropin}} "$svc_sudoers" >&2\n'
            "  exit {{exit_sudo}}\n"
            "}\n"
            "node_log_tail() {\n"
            "  printf -- '--- last lines of the journal of %s ---\\n' \"$unit\" >&2\n"
            '  journalctl -u "$unit" -n 25 --no-pager -o cat >&2 2>/dev/null || true\n'
            "}\n",
            unit=self.unit,
            rule=self.sudoers_line("").lstrip(),
            dropin=self.dropin,
            exit_sudo=EXIT_SUDO,
            **values,
        )

    def install(self) -> Fragment:
        """Write the runner and the unit (staged in ``shared/systemd``); install the unit only when it differs
        from the installed one, enable it when it is not. Prints ``unit_installed=1``/``unit_enabled=1``."""
        return self.prelude() + text(
            "step unit\n"
            'id -u "$svc_node_user" >/dev/null 2>&1 || fail "there is no user $svc_node_user on this host to run '
            'the node (node.user): run deployer setup --user root once, or create the account"\n'
            '(umask 022; mkdir -p "$d/shared/systemd")\n'
            "printf '%s' {{runner_text}} > {{runner}}.tmp\n"
            "mv -f {{runner}}.tmp {{runner}}\n"
            "{ printf '%s' {{head}}; printf 'User=%s\\n' \"$svc_node_user\"; printf '%s' {{tail}}; } > "
            "{{staged}}.tmp\n"
            "chmod 0644 {{staged}}.tmp\n"
            "mv -f {{staged}}.tmp {{staged}}\n"
            "if ! cmp -s {{staged}} {{installed}}; then\n"
            "  as_root {{install}} -m 0644 {{staged}} {{installed}}\n"
            "  as_root {{systemctl}} daemon-reload\n"
            "  echo unit_installed=1\n"
            "fi\n"
            'if [ "$(systemctl is-enabled "$unit" 2>/dev/null || true)" != enabled ]; then\n'
            '  as_root {{systemctl}} enable "$unit"\n'
            "  echo unit_enabled=1\n"
            "fi\n",
            runner_text=self.runner_text(),
            runner=self.runner,
            head=self._unit_head(),
            tail=self._unit_tail(),
            staged=self.staged,
            installed=self.installed,
            install=INSTALL,
            systemctl=SYSTEMCTL,
        )

    def _main_pid(self, verb: str) -> Fragment:
        # The node is the unit's main process (its pid and start time): the health gate watches only it.
        return text(
            'NODE_PID=$(systemctl show -p MainPID --value "$unit")\n'
            'case "$NODE_PID" in\n'
            "  ''|0|*[!0-9]*)\n"
            '    echo "$unit has no main process after systemctl {{verb}} ($(systemctl show -p ActiveState -p \\\n'
            "      SubState -p Result --value \"$unit\" | tr '\\n' ' '))\" >&2\n"
            "    node_log_tail; exit {{unhealthy}} ;;\n"
            "esac\n"
            'proc_start "$NODE_PID" || { echo "the node (pid $NODE_PID) exited just after it started" >&2; '
            "node_log_tail; exit {{unhealthy}}; }\n"
            "NODE_START=$PROC_START\n",
            verb=verb,
            unhealthy=EXIT_UNHEALTHY,
            helpers=["proc_start"],
        )

    def _reset_failed(self) -> Fragment:
        # A unit that gave up restarting (start limit) refuses `start` until its failed state is cleared.
        return text(
            'if systemctl is-failed -q "$unit"; then as_root {{systemctl}} reset-failed "$unit"; fi\n',
            systemctl=SYSTEMCTL,
        )

    def restart(self) -> Fragment:
        """Install/refresh the unit, ``systemctl restart`` it (stop: ExecStop, SIGTERM, SIGKILL after
        ``TimeoutStopSec``; then start) and take its main process as the node (``NODE_PID``)."""
        return (
            self.install()
            + text("step restart\n")
            + self._reset_failed()
            + text('as_root {{systemctl}} restart "$unit"\n', systemctl=SYSTEMCTL)
            + self._main_pid("restart")
            + text('echo "started=$NODE_PID"\n')
        )

    def start(self) -> Fragment:
        """Install/refresh the unit and start it unless it is active already (then its main process is
        adopted: ``already_running=``); ``NODE_PID`` is the node either way."""
        return (
            self.install()
            + text(
                "step start\n"
                'if systemctl is-active -q "$unit"; then\n'
                '  echo "already_running=$(systemctl show -p MainPID --value "$unit")"\n'
                "else\n"
            )
            + self._reset_failed()
            + text('  as_root {{systemctl}} start "$unit"\nfi\n', systemctl=SYSTEMCTL)
            + self._main_pid("start")
        )

    def stop(self) -> Fragment:
        """``systemctl stop`` the unit when it is active; prints ``stopped=<pid>`` or ``stopped=none``."""
        return self.prelude() + text(
            "step stop\n"
            'if systemctl is-active -q "$unit"; then\n'
            '  p=$(systemctl show -p MainPID --value "$unit")\n'
            '  as_root {{systemctl}} stop "$unit"\n'
            '  echo "stopped=$p"\n'
            "else\n"
            # A unit that is restarting (or failed) is stopped too, so it does not come back by itself.
            '  if [ "$(systemctl show -p ActiveState --value "$unit")" = activating ]; then '
            'as_root {{systemctl}} stop "$unit"; fi\n'
            "  echo stopped=none\n"
            "fi\n",
            systemctl=SYSTEMCTL,
        )

    def state(self) -> Fragment:
        """``unit_<Property>=value`` lines for :data:`UNIT_PROPERTIES`, from one ``systemctl show`` (read-only)."""
        props = " ".join(f"-p {p}" for p in UNIT_PROPERTIES)
        return text(
            f"step unit\nsystemctl show {props} {{{{unit}}}} 2>/dev/null | sed 's/^/unit_/' || true\n",
            unit=self.unit,
        )

    def journal(self, *, lines: int, follow: bool) -> Fragment:
        """The unit's journal: the last ``lines`` lines, then (``follow``) what it logs until the session ends."""
        return text(
            "step logs\n"
            "exec journalctl -u {{unit}} -n {{lines}} --no-pager -o short-iso" + (" -f" if follow else "") + "\n",
            unit=self.unit,
            lines=max(0, lines),
        )


def parse_unit_state(output: str) -> dict[str, str]:
    """The ``unit_<Property>`` lines of a status script, by property (empty when the script printed none)."""
    state: dict[str, str] = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("unit_") and key[5:] in UNIT_PROPERTIES:
            state[key[5:]] = value.strip()
    return state


def _seconds(value: float) -> int:
    return int(max(1, round(value)))


# --- setup: what a fresh host needs once, done as root ------------------------------------------------------------


def setup_host(layout: RemoteLayout, user: str, service: Service | None) -> Script:
    """Prepare a fresh host for ``user`` to deploy to (run as root, idempotent): ``deploy_to`` and
    ``shared/`` owned by ``user`` and writable by it alone; with ``service`` also ``user`` in the journal's
    group, the unit installed and enabled, and the sudoers drop-in of :meth:`Service.sudoers_line`
    (validated with ``visudo -cf`` before it is moved into place). Prints one ``changed=<what>`` line per
    change (nothing when the host was ready already)."""
    body = text(
        "step setup\n"
        '[ "$(id -u)" -eq 0 ] || fail "deployer setup needs root on the host: run it once as root (--user root)"\n'
        "u={{user}}\n"
        'id -u "$u" >/dev/null 2>&1 || fail "there is no user $u on this host: create it with your SSH key first '
        '(useradd --create-home $u), then run setup again"\n'
        'g=$(id -gn "$u")\n'
        'for p in "$d" "$d/shared"; do\n'
        '  if [ ! -d "$p" ]; then\n'
        '    install -d -o "$u" -g "$g" -m 0755 "$p"; echo "changed=created $p (owner $u)"\n'
        '  elif [ "$(stat -c %U "$p")" != "$u" ]; then\n'
        '    chown "$u:$g" "$p"; echo "changed=gave $p to $u"\n'
        "  fi\n"
        '  if [ -n "$(find "$p" -maxdepth 0 -perm /022)" ]; then\n'
        '    chmod go-w "$p"; echo "changed=made $p writable by $u only"\n'
        "  fi\n"
        "done\n",
        user=user,
    )
    if service is None:
        return script("setup", text("d={{deploy_to}}\n", deploy_to=layout.deploy_to), body, timeout=300)
    account = Fragment(())
    if service.node_user is not None:
        account = text(
            "n={{node_user}}\n"
            'if ! id -u "$n" >/dev/null 2>&1; then\n'
            '  command -v useradd >/dev/null 2>&1 || fail "useradd is missing: create the account $n that runs the '
            'node yourself, then run setup again"\n'
            # A system account with nothing of its own: no home, no login shell, no password.
            '  useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$n"\n'
            '  echo "changed=created the account $n (runs the node)"\n'
            "fi\n",
            node_user=service.node_user,
        )
    unit = (
        account
        + service.install()
        + text(
            # The runner and the staged unit were written by root: the deploy user rewrites them on each deploy.
            'chown -R "$u:$g" "$d/shared/systemd"\n'
            "if getent group systemd-journal >/dev/null 2>&1 && "
            "! id -nG \"$u\" | tr ' ' '\\n' | grep -qx systemd-journal; then\n"
            '  usermod -a -G systemd-journal "$u"\n'
            '  echo "changed=added $u to group systemd-journal (reads the journal)"\n'
            "fi\n"
        )
    )
    sudoers = text(
        "step sudoers\n"
        'if [ "$u" != root ]; then\n'
        '  command -v visudo >/dev/null 2>&1 || fail "sudo is not installed on this host (e.g. apt-get install sudo)"\n'
        "  f={{dropin}}\n"
        "  t=$(mktemp {{staging}})\n"
        '  printf \'# Written by deployer setup: what %s may run as root for %s\\n%s\\n\' "$u" "$unit" '
        '"$svc_sudoers" > "$t"\n'
        '  if cmp -s "$t" "$f"; then rm -f "$t"\n'
        '  elif visudo -cf "$t" >/dev/null; then chmod 0440 "$t"; mv -f "$t" "$f"; echo "changed=wrote $f"\n'
        '  else rm -f "$t"; fail "visudo rejected the sudoers line for $f: $svc_sudoers"\n'
        "  fi\n"
        "fi\n",
        dropin=service.dropin,
        # A name with a dot: sudo skips it until it is validated and renamed.
        staging=f"{SUDOERS_DIR}/.{service.stem}.XXXXXX",
    )
    return script("setup", text("d={{deploy_to}}\n", deploy_to=layout.deploy_to), body, unit, sudoers, timeout=300)


def setup_changes(output: str) -> list[str]:
    """What :func:`setup_host` changed on a host, in order (empty: nothing)."""
    changes: list[str] = []
    for line in output.splitlines():
        key, _, value = line.partition("=")
        if key == "changed":
            changes.append(value.strip())
        elif key == "unit_installed":
            changes.append("installed the unit")
        elif key == "unit_enabled":
            changes.append("enabled the unit (starts on boot)")
    return changes


# --- check: is the host ready for deploys by this login? ------------------------------------------------------


def host_checks(service: Service | None) -> Fragment:
    """``problem=<sentence>`` lines (read-only): ``deploy_to`` owned by the login user and not writable by
    others, the env file (``shared/node.env``, or an older deployer's ``shared/env``) private; with
    ``service`` also systemd as the host's init and every root command of the unit allowed by ``sudo -n``
    (the sudoers line to add, when not)."""
    fragment = text(
        "step check\n"
        'if [ -d "$d" ]; then\n'
        '  if [ ! -O "$d" ]; then echo "problem=deploy_to $d is owned by $(stat -c %U "$d"), not by $(id -un) who '
        'deploys: run deployer setup (as root) or chown it"; fi\n'
        '  if [ -n "$(find "$d" -maxdepth 0 -perm /022)" ]; then echo "problem=deploy_to $d is writable by '
        'group or others (mode $(stat -c %a "$d")): chmod go-w $d"; fi\n'
        "fi\n"
        'if [ -f "$d/shared/node.env" ] && [ -n "$(find "$d/shared/node.env" -maxdepth 0 -perm /077)" ]; then\n'
        '  echo "problem=$d/shared/node.env (the secrets) is readable by others than its owner: '
        'chmod 0600 $d/shared/node.env"\n'
        "fi\n"
        # An older deployer's per-release env files (removed by the first deploy or env push after it).
        'if [ -d "$d/shared/env" ] && [ -n "$(find "$d/shared/env" -maxdepth 0 -perm /077)" ]; then\n'
        '  echo "problem=$d/shared/env (the secrets) is readable by others than its owner: chmod 0700 $d/shared/env"\n'
        "fi\n"
    )
    if service is None:
        return fragment
    return (
        fragment
        + service.prelude()
        + text(
            '[ -d /run/systemd/system ] || echo "problem=this host does not run systemd (node.service: systemd)"\n'
            'id -u "$svc_node_user" >/dev/null 2>&1 || echo "problem=there is no account $svc_node_user to run the '
            'node (node.user): run deployer setup --user root"\n'
            'if [ "$(id -u)" -ne 0 ]; then\n'
            "  missing=\n"
            "  for c in "
        )
        # One word per command, its spaces as commas (no path deployer accepts has a comma).
        + raw(words([c.replace(" ", ",") for c in service.root_commands()]))
        + text(
            "; do\n"
            "    c=$(printf '%s' \"$c\" | tr , ' ')\n"
            "    # shellcheck disable=SC2086\n"
            '    if ! sudo -n -l $c >/dev/null 2>&1; then missing="$missing${missing:+, }$c"; fi\n'
            "  done\n"
            '  if [ -n "$missing" ]; then echo "problem=sudo -n may not run: $missing; add with visudo -f {{dropin}} '
            '(or run deployer setup as root): $svc_sudoers"; fi\n'
            "fi\n",
            dropin=service.dropin,
        )
    )


def check_problems(output: str) -> list[str]:
    """The ``problem=`` lines of :func:`host_checks`."""
    return [line.partition("=")[2].strip() for line in output.splitlines() if line.startswith("problem=")]

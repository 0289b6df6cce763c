"""Trusting hosts explicitly: fetch each host's key without logging in, show it, record it on request.

Deploys never trust a key on their own (see :func:`deployer.ssh.transport.verify_host_key`); ``deployer trust``
is the one way deployer adds keys, and only to the *project's* known_hosts file (``ssh.known_hosts`` in the
inventory), never to ``~/.ssh/known_hosts``:

* the key is fetched with an SSH key exchange only — no authentication, nothing is accepted or stored;
* each key is shown as type and SHA256 fingerprint, as ``ssh-keygen -lf`` prints it, so it can be compared
  with what the host's administrator reads from ``/etc/ssh/ssh_host_*_key.pub``;
* a key that differs from a recorded one (``changed``) is never replaced silently: ``replace=True`` is the
  explicit ``--replace``;
* entries are written in OpenSSH format, as ``host`` or ``[host]:port`` off port 22, plain or hashed
  (``|1|salt|hmac``, like ``ssh-keygen -H``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import paramiko

from deployer.errors import ConnectError, DeployerError
from deployer.ssh.known_hosts import KnownHosts
from deployer.ssh.logs import log_channel
from deployer.ssh.transport import (
    GATEWAYS,
    Endpoint,
    describe_failure,
    fingerprint,
    load_known_hosts,
    read_known_hosts,
)
from deployer.ssh.transport import (
    check_host_key as openssh_verdict,
)

Status = Literal["new", "known", "changed", "revoked"]


@dataclass(frozen=True)
class HostKeyCheck:
    """One host's offered key compared with what deployer's known_hosts files say."""

    host: str
    endpoint: Endpoint
    offered: paramiko.PKey
    status: Status
    recorded: tuple[str, ...] = ()
    """``type SHA256:...`` of the keys recorded for this host when ``status`` is ``changed``."""
    in_project: bool = True
    """False when a conflicting entry comes from a file ``deployer trust`` does not edit (~/.ssh/known_hosts)."""

    @property
    def name(self) -> str:
        return self.endpoint.known_hosts_name

    @property
    def key_type(self) -> str:
        return self.offered.get_name()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.offered)

    def describe(self) -> str:
        where = f"{self.endpoint.address} port {self.endpoint.port}"
        return f"{where}: {self.key_type} {self.fingerprint}"


# --- fetching ---------------------------------------------------------------------------------------------


def _socket(endpoint: Endpoint) -> tuple[socket.socket | paramiko.Channel, Endpoint | None]:
    """A byte stream to the host's sshd: direct, or through the (already trusted) gateway, whose shared
    connection is released by the caller (the second value)."""
    if endpoint.gateway is not None:
        gateway = GATEWAYS.acquire(endpoint.gateway)  # checks the gateway's key strictly and logs in
        try:
            return gateway.open_tunnel(endpoint), endpoint.gateway
        except BaseException:
            GATEWAYS.release(endpoint.gateway)
            raise
    try:
        return socket.create_connection((endpoint.address, endpoint.port), timeout=endpoint.connect_timeout), None
    except OSError as exc:
        raise ConnectError(
            endpoint.name,
            f"cannot connect to {endpoint.address}:{endpoint.port}: {getattr(exc, 'strerror', None) or exc}",
        ) from None


def _handshake(endpoint: Endpoint, known: KnownHosts | None) -> paramiko.PKey:
    sock, gateway = _socket(endpoint)
    transport = paramiko.Transport(sock)
    transport.set_log_channel(log_channel(endpoint.name))
    try:
        transport.banner_timeout = endpoint.connect_timeout
        transport.handshake_timeout = endpoint.connect_timeout
        if known is not None:
            options = transport.get_security_options()
            options.key_types = known.preferred_algorithms(endpoint.known_hosts_name, tuple(options.key_types))
        transport.start_client(timeout=endpoint.connect_timeout)
        return transport.get_remote_server_key()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise ConnectError(
            endpoint.name,
            f"SSH key exchange with {endpoint.address} port {endpoint.port} failed: {describe_failure(exc)}",
        ) from None
    finally:
        transport.close()
        if gateway is not None:
            GATEWAYS.release(gateway)


def fetch_host_key(endpoint: Endpoint, known: KnownHosts | None = None) -> paramiko.PKey:
    """The key the host offers, from a key exchange only: no authentication, nothing trusted or stored.

    When ``known`` has keys for the host, the key types are ordered as a deploy (and OpenSSH) orders them,
    so a host with several keys is compared like for like.
    """
    return _handshake(endpoint, known)


# --- comparing ----------------------------------------------------------------------------------------------


def _other_files(endpoint: Endpoint, project_file: Path) -> list[str]:
    """The known_hosts files a deploy reads besides the project's (which ``deployer trust`` never edits)."""
    files = [os.path.expanduser("~/.ssh/known_hosts")] if endpoint.use_user_known_hosts else []
    files += [f for f in endpoint.known_hosts if Path(f).resolve() != project_file.resolve()]
    return files


def check_host_key(host: str, endpoint: Endpoint, offered: paramiko.PKey, project_file: Path) -> HostKeyCheck:
    """Classify ``offered`` against every known_hosts file a deploy would read (user's and project's),
    exactly as a deploy (and OpenSSH) decides.

    ``known`` when a deploy would accept it, ``new`` when nothing is recorded for the host, ``changed``
    when something is and none of it is this key — the case a deploy refuses as HOST KEY CHANGED —
    and ``revoked`` when an ``@revoked`` line for the host holds it.
    """
    verdict = openssh_verdict(endpoint, offered, load_known_hosts(endpoint))
    if verdict.verdict == "revoked":
        return HostKeyCheck(host, endpoint, offered, "revoked", in_project=False)
    if verdict.verdict == "ok":
        return HostKeyCheck(host, endpoint, offered, "known")
    if verdict.verdict == "unknown":
        return HostKeyCheck(host, endpoint, offered, "new")
    others = read_known_hosts(_other_files(endpoint, project_file))
    stale_elsewhere = any(k.blob != offered.asbytes() for k in others.plain_keys(endpoint.known_hosts_name))
    return HostKeyCheck(
        host,
        endpoint,
        offered,
        "changed",
        recorded=tuple(f"{k.key_type} {k.fingerprint}" for k in verdict.recorded),
        in_project=not stale_elsewhere,
    )


# --- writing ------------------------------------------------------------------------------------------------


def hash_name(name: str, salt: bytes | None = None) -> str:
    """OpenSSH's hashed host name: ``|1|base64(salt)|base64(HMAC-SHA1(salt, name))``."""
    salt = salt if salt is not None else os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def known_hosts_line(name: str, key: paramiko.PKey, *, hashed: bool = False) -> str:
    """One known_hosts line (no newline): ``name type base64``, the name hashed on request."""
    return f"{hash_name(name) if hashed else name} {key.get_name()} {key.get_base64()}"


def _field_names_match(field: str, names: set[str]) -> bool:
    if field.startswith("|1|"):
        try:
            _, _, salt, _ = field.split("|", 3)
            raw_salt = base64.b64decode(salt)
        except (ValueError, TypeError):
            return False
        return any(hmac.compare_digest(hash_name(n, raw_salt), field) for n in names)
    return field in names


def update_known_hosts(
    path: Path, add: Sequence[tuple[str, paramiko.PKey]], *, remove: Iterable[str] = (), hashed: bool = False
) -> None:
    """Append entries for ``add``; first drop every entry for the names in ``remove`` (``--replace``).

    Comments, marker lines (``@cert-authority``, ``@revoked``) and other hosts' entries are kept as they
    are. The file is replaced atomically and keeps its mode (0644 for a new file).
    """
    drop = set(remove)
    lines: list[str] = []
    if path.exists():
        for raw in path.read_text(encoding="utf-8").splitlines():
            stripped = raw.strip()
            if drop and stripped and not stripped.startswith(("#", "@")):
                names_field, _, rest = stripped.partition(" ")
                kept = [n for n in names_field.split(",") if not _field_names_match(n, drop)]
                if not kept:
                    continue
                raw = f"{','.join(kept)} {rest}"
            lines.append(raw)
    lines += [known_hosts_line(name, key, hashed=hashed) for name, key in add]
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + ("\n" if lines else ""))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- the whole operation -------------------------------------------------------------------------------------


@dataclass
class TrustResult:
    """What ``deployer trust`` did: per host, its check, and whether its key was written."""

    checks: list[HostKeyCheck]
    errors: dict[str, str]
    written: list[str]
    refused: list[str]
    declined: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors and not self.refused and not self.declined


Confirm = Callable[[Sequence[HostKeyCheck]], bool]


def project_known_hosts(ssh_known_hosts: str | None, inventory_path: Path) -> Path:
    """The file ``deployer trust`` writes: ``ssh.known_hosts`` resolved like a deploy resolves it."""
    if not ssh_known_hosts:
        raise DeployerError(
            f"{inventory_path}: ssh.known_hosts is not set, so there is no project known_hosts file to record keys in",
            hint="add `ssh: {known_hosts: known_hosts}` (a path relative to the inventory file, committed with it) "
            "and run `deployer trust` again; deployer never writes to ~/.ssh/known_hosts",
        )
    path = Path(os.path.expanduser(ssh_known_hosts))
    return path if path.is_absolute() else inventory_path.parent / path


def trust(
    targets: Sequence[tuple[str, Endpoint]],
    project_file: Path,
    *,
    confirm: Confirm,
    replace: bool = False,
    hashed: bool = False,
    fetch: Callable[[Endpoint, KnownHosts | None], paramiko.PKey] | None = None,
    report: Callable[[HostKeyCheck], None] | None = None,
) -> TrustResult:
    """Fetch and classify every target's key, then write the new (and, with ``replace``, changed) ones
    to ``project_file`` if ``confirm`` agrees. Nothing is written when nothing needs to be."""
    fetch = fetch or fetch_host_key
    result = TrustResult([], {}, [], [])
    for host, endpoint in targets:
        try:
            offered = fetch(endpoint, load_known_hosts(endpoint))
            check = check_host_key(host, endpoint, offered, project_file)
        except (DeployerError, OSError) as exc:
            result.errors[host] = str(exc)
            continue
        result.checks.append(check)
        if report is not None:
            report(check)
    to_write = [c for c in result.checks if c.status == "new" or (c.status == "changed" and replace and c.in_project)]
    result.refused = [c.host for c in result.checks if c.status in ("changed", "revoked") and c not in to_write]
    if not to_write:
        return result
    if not confirm(to_write):
        result.declined = True
        return result
    update_known_hosts(
        project_file,
        [(c.name, c.offered) for c in to_write],
        remove=[c.name for c in to_write if c.status == "changed"],
        hashed=hashed,
    )
    result.written = [c.host for c in to_write]
    return result

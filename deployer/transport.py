"""The one module that talks SSH.

One Paramiko connection per host per run, reused for every step (uploads
included). Host keys are checked strictly against the user's known_hosts plus
the project's: an unknown or changed key refuses the connection and shows the
key type and SHA256 fingerprint — Fabric's auto-accepting policy is not used.

Scripts are sent on the session's stdin to ``sh -s`` so neither their text nor
any secret in them appears in the remote process list; uploads stream the
tarball into ``sh -c`` on a plain session channel (no SFTP round trips) with a
large window and TCP_NODELAY.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import paramiko

from deployer.commands.shell import Script
from deployer.errors import ConnectError, HostKeyError, RemoteCommandError

# Paramiko's defaults (2 MiB window, 32 KiB packets) throttle uploads; OpenSSH accepts these.
WINDOW_SIZE = 64 * 1024 * 1024
MAX_PACKET = 32768
UPLOAD_CHUNK = 256 * 1024

OutputCallback = Callable[[str, str], None]  # (stream "stdout"/"stderr", text)
ProgressCallback = Callable[[int, int], None]  # (bytes sent, total)


@dataclass(frozen=True)
class CommandResult:
    """What a remote script did."""

    exit_status: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect to one host."""

    name: str
    address: str
    port: int
    user: str
    connect_timeout: float = 10.0
    command_timeout: float = 600.0
    keepalive: int = 15
    keepalive_count: int = 3
    identity_file: str | None = None
    known_hosts: tuple[str, ...] = ()
    use_user_known_hosts: bool = True
    forward_agent: bool = False
    gateway: Endpoint | None = None

    @property
    def known_hosts_name(self) -> str:
        """The name known_hosts uses: ``host``, or ``[host]:port`` off port 22."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"


class Transport(Protocol):
    """What the executor needs from a connection; :class:`SSHTransport` and the fake implement it."""

    name: str
    sessions: int
    bytes_uploaded: int

    def run(self, script: Script, *, on_output: OutputCallback | None = None) -> CommandResult: ...

    def upload(
        self,
        script: Script,
        source: Path,
        *,
        progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> CommandResult: ...

    def is_alive(self) -> bool: ...

    def close(self) -> None: ...


class UploadStopped(RemoteCommandError):
    """The upload was stopped on purpose (the operator interrupted the run)."""


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:<base64>`` fingerprint."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def load_known_hosts(endpoint: Endpoint) -> paramiko.HostKeys:
    """The user's ``~/.ssh/known_hosts`` (unless disabled) plus the project's files; hashed entries work."""
    keys = paramiko.HostKeys()
    files = list(endpoint.known_hosts)
    if endpoint.use_user_known_hosts:
        files.insert(0, os.path.expanduser("~/.ssh/known_hosts"))
    for file in files:
        if os.path.isfile(file):
            try:
                keys.load(file)
            except (OSError, paramiko.SSHException) as exc:
                raise ConnectError(endpoint.name, f"cannot read known_hosts file {file}: {exc}") from None
    return keys


_RSA_ALIASES = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")


def _preferred_key_types(known: dict[str, paramiko.PKey], available: tuple[str, ...]) -> tuple[str, ...]:
    wanted: list[str] = []
    for key_type in known:
        wanted.extend(_RSA_ALIASES if key_type == "ssh-rsa" else (key_type,))
    ordered = tuple(t for t in available if t in wanted)
    return ordered or available


def verify_host_key(endpoint: Endpoint, offered: paramiko.PKey, known_hosts: paramiko.HostKeys) -> None:
    """Raise :class:`HostKeyError` unless ``offered`` is the key known_hosts has for this endpoint."""
    known = known_hosts.lookup(endpoint.known_hosts_name)
    key_type = offered.get_name()
    where = f"{endpoint.address} port {endpoint.port}"
    if not known:
        raise HostKeyError(
            endpoint.name,
            f"host key for {where} is not known: {key_type} {fingerprint(offered)}",
            hint=(
                "check this fingerprint with the host's administrator, then run "
                f"`invoke trust --env <env> --host {endpoint.name}` or add it to the project's known_hosts"
            ),
        )
    expected = known.get(key_type)
    if expected is None and key_type.startswith("rsa-sha2"):
        expected = known.get("ssh-rsa")
    if expected is None or expected.asbytes() != offered.asbytes():
        recorded = ", ".join(f"{t} {fingerprint(k)}" for t, k in known.items())
        raise HostKeyError(
            endpoint.name,
            f"HOST KEY CHANGED for {where}: known_hosts has {recorded}, the host offered "
            f"{key_type} {fingerprint(offered)}. Someone may be intercepting the connection, "
            "or the host was reinstalled",
            hint="do not deploy until you know why; if the host was rebuilt, remove the old entry "
            f"(ssh-keygen -R {endpoint.known_hosts_name}) and trust the new key explicitly",
        )


def _set_dead_peer_detection(sock: socket.socket, interval: int, count: int) -> None:
    """Make the kernel declare a silent peer dead instead of letting a dropped network hang the run.

    Paramiko's own keepalive expects no reply, so it never notices a dead link; TCP keepalive notices an
    idle one and TCP_USER_TIMEOUT one that stops acknowledging data (e.g. mid-upload).
    """
    if interval <= 0:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", interval),
        ("TCP_KEEPINTVL", interval),
        ("TCP_KEEPCNT", count),
        ("TCP_USER_TIMEOUT", interval * count * 1000),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _default_keys() -> list[paramiko.PKey]:
    keys: list[paramiko.PKey] = []
    with contextlib.suppress(paramiko.SSHException):
        keys.extend(paramiko.Agent().get_keys())
    for name in ("id_ed25519", "id_ecdsa", "id_rsa"):
        path = Path.home() / ".ssh" / name
        if path.is_file():
            try:
                keys.append(paramiko.PKey.from_path(path))
            except (paramiko.SSHException, OSError):
                continue
    return keys


class SSHTransport:
    """A live SSH connection to one host. Thread-confined: one worker uses it at a time."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name
        self.sessions = 0
        self.bytes_uploaded = 0
        self._gateway: SSHTransport | None = None
        self._transport = self._connect()

    # --- connection ------------------------------------------------------------------------------------

    def _open_socket(self) -> socket.socket | paramiko.Channel:
        ep = self.endpoint
        if ep.gateway is not None:
            self._gateway = SSHTransport(ep.gateway)
            try:
                return self._gateway._transport.open_channel(
                    "direct-tcpip", (ep.address, ep.port), ("127.0.0.1", 0), timeout=ep.connect_timeout
                )
            except (paramiko.SSHException, OSError) as exc:
                raise ConnectError(
                    ep.name, f"gateway {ep.gateway.name} cannot reach {ep.address}:{ep.port}: {exc}"
                ) from None
        try:
            sock = socket.create_connection((ep.address, ep.port), timeout=ep.connect_timeout)
        except TimeoutError:
            raise ConnectError(
                ep.name,
                f"cannot connect to {ep.address}:{ep.port}: timed out after {ep.connect_timeout:g}s",
                hint="is the host up and the address right? (ssh.connect_timeout sets the limit)",
            ) from None
        except OSError as exc:
            raise ConnectError(
                ep.name,
                f"cannot connect to {ep.address}:{ep.port}: {exc.strerror or exc}",
                hint="is sshd running on the host, and the address and port right?",
            ) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _set_dead_peer_detection(sock, ep.keepalive, ep.keepalive_count)
        return sock

    def _connect(self) -> paramiko.Transport:
        ep = self.endpoint
        known_hosts = load_known_hosts(ep)
        sock = self._open_socket()
        transport = paramiko.Transport(sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET)
        transport.banner_timeout = ep.connect_timeout
        transport.handshake_timeout = ep.connect_timeout
        transport.auth_timeout = ep.connect_timeout
        known = known_hosts.lookup(ep.known_hosts_name)
        if known:
            options = transport.get_security_options()
            options.key_types = _preferred_key_types(dict(known), tuple(options.key_types))
        try:
            transport.start_client(timeout=ep.connect_timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            transport.close()
            raise ConnectError(ep.name, f"SSH handshake with {ep.address}:{ep.port} failed: {exc}") from None
        try:
            verify_host_key(ep, transport.get_remote_server_key(), known_hosts)
            self._authenticate(transport)
        except BaseException:
            transport.close()
            raise
        if ep.keepalive:
            transport.set_keepalive(ep.keepalive)
        return transport

    def _authenticate(self, transport: paramiko.Transport) -> None:
        ep = self.endpoint
        if ep.identity_file:
            path = Path(os.path.expanduser(ep.identity_file))
            try:
                keys = [paramiko.PKey.from_path(path)]
            except (OSError, paramiko.SSHException) as exc:
                raise ConnectError(ep.name, f"cannot load identity file {path}: {exc}") from None
        else:
            keys = _default_keys()
        if not keys:
            raise ConnectError(
                ep.name, "no SSH key to authenticate with", hint="set ssh.identity_file or load a key into ssh-agent"
            )
        errors: list[str] = []
        for key in keys:
            try:
                transport.auth_publickey(ep.user, key)
            except paramiko.AuthenticationException as exc:
                errors.append(str(exc))
                continue
            except (paramiko.SSHException, OSError) as exc:
                raise ConnectError(ep.name, f"authentication failed: {exc}") from None
            if transport.is_authenticated():
                return
        raise ConnectError(
            ep.name,
            f"{ep.user}@{ep.address} refused all {len(keys)} key(s)",
            hint="check ssh.user / the host's user and that its authorized_keys holds your public key",
        )

    # --- running -----------------------------------------------------------------------------------------

    def _open(self, command: str, timeout: float) -> paramiko.Channel:
        try:
            channel = self._transport.open_session(timeout=min(timeout, self.endpoint.connect_timeout + 20))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise RemoteCommandError(self.name, "ssh", f"cannot open a session: {exc}") from None
        self.sessions += 1
        if self.endpoint.forward_agent:
            paramiko.agent.AgentRequestHandler(channel)
        channel.exec_command(command)
        return channel

    def run(self, script: Script, *, on_output: OutputCallback | None = None) -> CommandResult:
        timeout = script.timeout or self.endpoint.command_timeout
        started = time.monotonic()
        channel = self._open(script.remote_command(), timeout)
        try:
            if script.stdin:
                channel.sendall(script.render(reveal=True).encode())
            channel.shutdown_write()
            return self._collect(channel, script, started, timeout, on_output)
        finally:
            channel.close()

    def upload(
        self,
        script: Script,
        source: Path,
        *,
        progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> CommandResult:
        """Stream ``source`` into ``script``'s stdin. ``should_stop`` is polled between chunks: when it
        turns true the channel is closed, the remote side discards its temp file, and
        :class:`UploadStopped` is raised."""
        timeout = script.timeout or self.endpoint.command_timeout
        started = time.monotonic()
        total = source.stat().st_size
        channel = self._open(script.remote_command(), timeout)
        sent = 0
        try:
            with source.open("rb") as handle:
                while chunk := handle.read(UPLOAD_CHUNK):
                    if should_stop is not None and should_stop():
                        raise UploadStopped(self.name, script.name, f"upload stopped after {sent} of {total} bytes")
                    if time.monotonic() - started > timeout:
                        raise RemoteCommandError(self.name, script.name, f"upload timed out after {timeout:g}s")
                    if channel.exit_status_ready():
                        break  # the remote side gave up; its stderr says why
                    channel.settimeout(max(1.0, timeout - (time.monotonic() - started)))
                    try:
                        channel.sendall(chunk)
                    except (TimeoutError, OSError, paramiko.SSHException) as exc:
                        raise RemoteCommandError(self.name, script.name, f"upload interrupted: {exc}") from None
                    sent += len(chunk)
                    self.bytes_uploaded += len(chunk)
                    if progress is not None:
                        progress(sent, total)
            channel.shutdown_write()
            return self._collect(channel, script, started, timeout, None)
        finally:
            channel.close()

    def _collect(
        self,
        channel: paramiko.Channel,
        script: Script,
        started: float,
        timeout: float,
        on_output: OutputCallback | None,
    ) -> CommandResult:
        out: list[bytes] = []
        err: list[bytes] = []
        fd = channel.fileno()
        deadline = started + timeout
        while True:
            while channel.recv_ready():
                data = channel.recv(65536)
                out.append(data)
                if on_output is not None:
                    on_output("stdout", data.decode("utf-8", "replace"))
            while channel.recv_stderr_ready():
                data = channel.recv_stderr(65536)
                err.append(data)
                if on_output is not None:
                    on_output("stderr", data.decode("utf-8", "replace"))
            if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                break
            if not self._transport.is_active():
                raise RemoteCommandError(
                    self.name,
                    _last_step(err) or script.name,
                    "the SSH connection was lost while the step ran",
                    hint="the step may have completed or not on the host: check `invoke status`",
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RemoteCommandError(
                    self.name,
                    _last_step(err) or script.name,
                    f"no result after {timeout:g}s; gave up waiting",
                    hint="the host may be hung or the network dropped; check `invoke status` before retrying",
                )
            select.select([fd], [], [], min(remaining, 1.0))
        status = channel.recv_exit_status()
        return CommandResult(
            exit_status=status,
            stdout=b"".join(out).decode("utf-8", "replace"),
            stderr=b"".join(err).decode("utf-8", "replace"),
            duration=time.monotonic() - started,
        )

    def is_alive(self) -> bool:
        return self._transport.is_active()

    def close(self) -> None:
        self._transport.close()
        if self._gateway is not None:
            self._gateway.close()

    @property
    def paramiko_transport(self) -> paramiko.Transport:
        """For port forwarding (observer tunnel) and interactive sessions."""
        return self._transport


def _last_step(stderr_chunks: list[bytes]) -> str | None:
    text = b"".join(stderr_chunks).decode("utf-8", "replace")
    for line in reversed(text.splitlines()):
        if line.startswith("@@step "):
            return line[len("@@step ") :].strip()
    return None


@dataclass
class ConnectionPool:
    """Opens one transport per host on first use and keeps it for the whole run."""

    connect: Callable[[str], Transport]
    _open: dict[str, Transport] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, host: str) -> Transport:
        with self._lock:
            existing = self._open.get(host)
        if existing is not None:
            return existing
        transport = self.connect(host)
        with self._lock:
            self._open[host] = transport
        return transport

    def reconnect(self, host: str) -> Transport:
        """A fresh connection when the old one died (cleanup after a lost link must still be tried)."""
        with self._lock:
            old = self._open.pop(host, None)
        if old is not None:
            with contextlib.suppress(Exception):
                old.close()
        return self.get(host)

    def opened(self) -> dict[str, Transport]:
        with self._lock:
            return dict(self._open)

    def close_all(self) -> None:
        for transport in self.opened().values():
            with contextlib.suppress(Exception):
                transport.close()
        with self._lock:
            self._open.clear()

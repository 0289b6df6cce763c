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
import math
import os
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import paramiko

from deployer.errors import ConnectError, HostKeyError, RemoteCommandError
from deployer.remote.shell import Script
from deployer.ssh.certs import CERT_ALGORITHMS, CertificateError, host_certificate
from deployer.ssh.known_hosts import HostKeyCheck, KnownHosts, canonical_host, lookup_name
from deployer.ssh.logs import log_channel

# Paramiko's defaults (2 MiB window, 32 KiB packets) throttle uploads; OpenSSH accepts these.
WINDOW_SIZE = 64 * 1024 * 1024
MAX_PACKET = 32768
UPLOAD_CHUNK = 256 * 1024
# AES-CTR with an encrypt-then-MAC HMAC costs the hosts' sshd least of what paramiko offers: 20 uploads at
# once of 6 MB took the hosts 3.8 s of CPU against 4.7 s with AES-GCM (whose single pass only saves the
# client CPU on one host; benchmarks/upload.py, medians of 5). paramiko's own order follows for servers
# without them, encrypt-then-MAC before MAC-then-encrypt. paramiko advertises OpenSSH's strict key
# exchange, which closes the prefix truncation (Terrapin) against EtM on servers that have it.
PREFERRED_CIPHERS = ("aes128-ctr", "aes256-ctr", "aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
PREFERRED_MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com")

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
    identity_files: tuple[str, ...] = ()
    """Keys to offer (OpenSSH's IdentityFile, several allowed); ``identity_file`` is the one-key form."""
    identities_only: bool = False
    """Offer only ``identity_files``, not the agent's keys (OpenSSH's IdentitiesOnly)."""
    known_hosts: tuple[str, ...] = ()
    use_user_known_hosts: bool = True
    forward_agent: bool = False
    gateway: Endpoint | None = None

    host_key_alias: str | None = None
    """Look the host key up under this name instead (OpenSSH's ``HostKeyAlias``)."""

    @property
    def known_hosts_name(self) -> str:
        """The name known_hosts uses: the alias, else ``host``, or ``[host]:port`` off port 22."""
        return self.host_key_alias if self.host_key_alias else lookup_name(self.address, self.port)

    @property
    def plain_known_hosts_name(self) -> str | None:
        """Off port 22 (and without an alias) OpenSSH also accepts a key recorded under the bare host name."""
        if self.host_key_alias or self.port in (0, 22):
            return None
        return canonical_host(self.address)


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


def read_known_hosts(files: list[str]) -> KnownHosts:
    """The lines of ``files`` (missing files are skipped); raises ``OSError`` when one cannot be read."""
    return KnownHosts.read(files)


def load_known_hosts(endpoint: Endpoint) -> KnownHosts:
    """The user's ``~/.ssh/known_hosts`` (unless disabled) plus the project's files."""
    files = list(endpoint.known_hosts)
    if endpoint.use_user_known_hosts:
        files.insert(0, os.path.expanduser("~/.ssh/known_hosts"))
    try:
        return read_known_hosts(files)
    except OSError as exc:
        raise ConnectError(endpoint.name, f"cannot read known_hosts file {exc.filename}: {exc.strerror}") from None


def check_host_key(endpoint: Endpoint, offered: paramiko.PKey, known_hosts: KnownHosts) -> HostKeyCheck:
    """OpenSSH's verdict on ``offered`` (a plain key or a host certificate) for this endpoint
    (see :mod:`deployer.ssh.known_hosts`)."""
    try:
        cert = host_certificate(offered)
    except CertificateError as exc:
        raise HostKeyError(endpoint.name, f"the host's certificate is unusable: {exc}") from None
    if cert is not None:
        return known_hosts.check_certificate(
            endpoint.known_hosts_name,
            cert,
            endpoint.host_key_alias or canonical_host(endpoint.address),
            plain_name=endpoint.plain_known_hosts_name,
        )
    return known_hosts.check(endpoint.known_hosts_name, offered.asbytes(), plain_name=endpoint.plain_known_hosts_name)


def verify_host_key(endpoint: Endpoint, offered: paramiko.PKey, known_hosts: KnownHosts) -> HostKeyCheck:
    """Raise :class:`HostKeyError` unless known_hosts accepts ``offered`` for this endpoint as OpenSSH would."""
    check = check_host_key(endpoint, offered, known_hosts)
    key_type = offered.get_name()
    where = f"{endpoint.address} port {endpoint.port}"
    if check.verdict == "ok":
        return check
    if check.verdict == "revoked":
        line = check.matched.where if check.matched else "known_hosts"
        raise HostKeyError(
            endpoint.name,
            f"host key for {where} is REVOKED in known_hosts ({line}): {key_type} {fingerprint(offered)}",
            hint="this key must never be accepted again; find out why the host still offers it",
        )
    if check.verdict == "unknown":
        ca_note = ""
        if check.certificate_problem:
            ca_note = f" (the host's {check.certificate_problem})"
        elif check.authorities:
            lines = ", ".join(k.where for k in check.authorities)
            ca_note = (
                f" (@cert-authority lines apply to this host ({lines}) but it presented no certificate signed by them)"
            )
        raise HostKeyError(
            endpoint.name,
            f"host key for {where} is not known: {key_type} {fingerprint(offered)}{ca_note}",
            hint=(
                "check this fingerprint with the host's administrator, then run "
                f"`deployer trust --env <env> --hosts {endpoint.name}` or add it to the project's known_hosts"
            ),
        )
    recorded = ", ".join(k.describe() for k in check.recorded)
    raise HostKeyError(
        endpoint.name,
        f"HOST KEY CHANGED for {where}: known_hosts has {recorded}, the host offered "
        f"{key_type} {fingerprint(offered)}. Someone may be intercepting the connection, "
        "or the host was reinstalled",
        hint="do not deploy until you know why; if the host was rebuilt, remove the old entry "
        f"(ssh-keygen -R {endpoint.known_hosts_name}) and trust the new key explicitly",
    )


# RFC 4254 channel open failure reasons, as a gateway reports them for a host it cannot reach.
_OPEN_FAILURES = {
    1: "the gateway refused to forward (administratively prohibited: its sshd's AllowTcpForwarding?)",
    2: "the gateway could not connect to it",
    3: "the gateway does not support forwarding",
    4: "the gateway is short of resources",
}


def describe_failure(exc: BaseException) -> str:
    """One line for an operator from what socket/paramiko raised during a connection (no traceback)."""
    cause = exc
    while cause.__cause__ is not None or cause.__context__ is not None:
        nxt = cause.__cause__ or cause.__context__
        assert nxt is not None
        if not isinstance(nxt, OSError | EOFError | paramiko.SSHException):
            break
        cause = nxt
    if isinstance(exc, EOFError) or isinstance(cause, EOFError):
        return "the host closed the connection"
    if isinstance(cause, ConnectionResetError) or "reset by peer" in str(exc):
        return "the connection was reset by the host"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror[0].lower() + cause.strerror[1:]
    text = " ".join(str(exc).split()) or type(exc).__name__
    if text.startswith("Error reading SSH protocol banner"):
        detail = text[len("Error reading SSH protocol banner") :].strip(" :")
        return "no SSH banner from the host" + (f" ({detail})" if detail else "")
    return text


def _prefer(first: tuple[str, ...], available: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(a for a in first if a in available) + tuple(a for a in available if a not in first)


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


def _agent_keys() -> list[paramiko.PKey]:
    with contextlib.suppress(paramiko.SSHException):
        return list(paramiko.Agent().get_keys())
    return []


def _default_keys(*, agent: bool = True) -> list[paramiko.PKey]:
    keys: list[paramiko.PKey] = _agent_keys() if agent else []
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

    _has_timeout: bool | None = None
    """Whether the host's ``timeout`` works, once a session found out (see :func:`guarded_command`)."""

    def __init__(self, endpoint: Endpoint, *, gateways: Gateways | None = None) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name
        self.sessions = 0
        self.bytes_uploaded = 0
        self._gateways = gateways if gateways is not None else GATEWAYS
        self._gateway: SSHTransport | None = None
        try:
            self._transport = self._connect()
        except BaseException:
            self._release_gateway()
            raise

    def _release_gateway(self) -> None:
        if self._gateway is not None and self.endpoint.gateway is not None:
            self._gateway = None
            self._gateways.release(self.endpoint.gateway)

    # --- connection ------------------------------------------------------------------------------------

    def _open_socket(self) -> socket.socket | paramiko.Channel:
        ep = self.endpoint
        if ep.gateway is not None:
            self._gateway = self._gateways.acquire(ep.gateway)
            return self._gateway.open_tunnel(ep)
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
        transport.set_log_channel(log_channel(ep.name))
        transport.banner_timeout = ep.connect_timeout
        transport.handshake_timeout = ep.connect_timeout
        transport.auth_timeout = ep.connect_timeout
        options = transport.get_security_options()
        options.ciphers = _prefer(PREFERRED_CIPHERS, tuple(options.ciphers))
        options.digests = _prefer(PREFERRED_MACS, tuple(options.digests))
        # OpenSSH's default order: host certificates first, so a host with one is judged by it (see certs.py).
        supported = getattr(paramiko.Transport, "_key_info", {})
        algorithms = tuple(a for a in CERT_ALGORITHMS if a in supported) + tuple(options.key_types)
        options.key_types = known_hosts.preferred_algorithms(ep.known_hosts_name, algorithms)
        try:
            transport.start_client(timeout=ep.connect_timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            transport.close()
            raise ConnectError(
                ep.name, f"SSH handshake with {ep.address} port {ep.port} failed: {describe_failure(exc)}"
            ) from None
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
        files = ep.identity_files or ((ep.identity_file,) if ep.identity_file else ())
        keys: list[paramiko.PKey] = []
        for file in files:
            path = Path(os.path.expanduser(file))
            try:
                keys.append(paramiko.PKey.from_path(path))
            except (OSError, paramiko.SSHException) as exc:
                if ep.identity_files and not path.exists():
                    continue  # OpenSSH skips IdentityFile entries that do not exist
                raise ConnectError(ep.name, f"cannot load identity file {path}: {exc}") from None
        if not files:
            keys = _default_keys(agent=not ep.identities_only)
        elif ep.identity_files and not ep.identities_only:
            keys += _agent_keys()
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
            raise RemoteCommandError(self.name, "ssh", f"cannot open a session: {describe_failure(exc)}") from None
        self.sessions += 1
        if self.endpoint.forward_agent:
            paramiko.agent.AgentRequestHandler(channel)
        channel.exec_command(guarded_command(command, timeout, has_timeout=self._has_timeout))
        return channel

    def run(self, script: Script, *, on_output: OutputCallback | None = None) -> CommandResult:
        timeout = script.timeout or self.endpoint.command_timeout
        started = time.monotonic()
        channel = self._open(script.remote_command(), timeout)
        stderr = _Stderr(on_output)
        try:
            if script.stdin:
                # If the channel or connection died, _collect says which.
                with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                    channel.sendall(script.render(reveal=True).encode())
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                channel.shutdown_write()
            return self._collect(channel, script, started, timeout, on_output, stderr)
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
        stderr = _Stderr(None)
        # Whole packets only: paramiko puts at most max_packet - 64 bytes of data in one packet, and a
        # chunk that is not a multiple of that ends in a runt packet the host must wake up for.
        payload = max(1024, channel.out_max_packet_size - 64)
        block = max(1, UPLOAD_CHUNK // payload) * payload
        sent = 0
        _cork(self._transport.sock, True)
        try:
            with source.open("rb") as handle:
                while chunk := handle.read(block):
                    if should_stop is not None and should_stop():
                        raise UploadStopped(self.name, script.name, f"upload stopped after {sent} of {total} bytes")
                    if time.monotonic() - started > timeout:
                        stderr.drain(channel)
                        raise self._gave_up(script.name, timeout, stderr.pid, f"upload timed out after {timeout:g}s")
                    if channel.exit_status_ready():
                        break  # the remote side gave up; its stderr says why
                    channel.settimeout(max(1.0, timeout - (time.monotonic() - started)))
                    try:
                        # One packet per call: sendall copies what is left of its argument after every
                        # packet, which for a whole chunk is quadratic in the chunk size.
                        for start in range(0, len(chunk), payload):
                            channel.sendall(chunk[start : start + payload])
                    except (TimeoutError, OSError, paramiko.SSHException, EOFError) as exc:
                        if not self._connection_lost():
                            stderr.drain(channel)
                            if time.monotonic() - started > timeout:
                                raise self._gave_up(
                                    script.name, timeout, stderr.pid, f"upload timed out after {timeout:g}s"
                                ) from None
                            raise RemoteCommandError(
                                self.name, script.name, f"upload interrupted: {describe_failure(exc)}"
                            ) from None
                        raise self._lost(script.name, f"after {sent} of {total} bytes were sent") from None
                    sent += len(chunk)
                    self.bytes_uploaded += len(chunk)
                    if progress is not None:
                        progress(sent, total)
            _cork(self._transport.sock, False)  # the last partial frame and the EOF go now
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                channel.shutdown_write()
            return self._collect(channel, script, started, timeout, None, stderr)
        finally:
            _cork(self._transport.sock, False)
            channel.close()

    def _collect(
        self,
        channel: paramiko.Channel,
        script: Script,
        started: float,
        timeout: float,
        on_output: OutputCallback | None,
        stderr: _Stderr,
    ) -> CommandResult:
        out: list[bytes] = []
        fd = channel.fileno()
        deadline = started + timeout
        while True:
            while channel.recv_ready():
                data = channel.recv(65536)
                out.append(data)
                if on_output is not None:
                    on_output("stdout", data.decode("utf-8", "replace"))
            stderr.drain(channel)
            if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                break
            if not self._transport.is_active():
                raise self._lost(_last_step(stderr.chunks) or script.name)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._gave_up(
                    _last_step(stderr.chunks) or script.name, timeout, stderr.pid, f"no result after {timeout:g}s"
                )
            select.select([fd], [], [], min(remaining, 1.0))
        stderr.finish()
        if stderr.bounded is not None:
            self._has_timeout = stderr.bounded
        status = channel.recv_exit_status()
        if status == -1:
            # No exit-status arrived: the connection died (paramiko closes the channel first and marks the
            # transport inactive a moment later), or the remote shell was killed by a signal.
            step = _last_step(stderr.chunks) or script.name
            if self._connection_lost():
                raise self._lost(step)
            raise RemoteCommandError(
                self.name,
                step,
                "the remote shell ended without an exit status (killed by a signal?)",
                hint="look at the host's logs (e.g. the kernel's OOM killer); check `deployer status` before retrying",
            )
        return CommandResult(
            exit_status=status,
            stdout=b"".join(out).decode("utf-8", "replace"),
            stderr=b"".join(stderr.chunks).decode("utf-8", "replace"),
            duration=time.monotonic() - started,
        )

    def _connection_lost(self, wait: float = 2.0) -> bool:
        """True when the connection is (or within ``wait`` seconds turns out to be) dead."""
        until = time.monotonic() + wait
        while self._transport.is_active():
            if time.monotonic() >= until:
                return False
            time.sleep(0.05)
        return True

    def _lost(self, step: str, detail: str = "") -> RemoteCommandError:
        ep = self.endpoint
        return RemoteCommandError(
            self.name,
            step,
            f"the SSH connection to {ep.address} port {ep.port} was lost during this step"
            + (f" ({detail})" if detail else ""),
            hint="the step may or may not have completed on the host: check `deployer status` before retrying",
        )

    def _gave_up(self, step: str, timeout: float, pid: int | None, what: str) -> RemoteCommandError:
        """Stop the remote script whose deadline passed, and say whether that worked."""
        stopped = pid is not None and self._kill_group(pid)
        if stopped:
            detail = f"{what}; the remote script was stopped (its process group killed)"
        else:
            detail = (
                f"{what}; the host could not be told to stop the script, it stops it itself "
                f"{REMOTE_GRACE:g}s after the deadline"
            )
        return RemoteCommandError(
            self.name,
            step,
            detail,
            hint="the host may be hung or the network slow; check `deployer status` before retrying "
            "(ssh.command_timeout sets the deadline)",
        )

    def _kill_group(self, pid: int) -> bool:
        """Kill the remote script's process group (``pid`` leads it) over a fresh session on this connection."""
        if not self._transport.is_active():
            return False
        command = (
            f"kill -TERM -- -{pid} 2>/dev/null || exit 0; i=0; "
            f"while kill -0 -- -{pid} 2>/dev/null && [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done; "
            f"kill -KILL -- -{pid} 2>/dev/null; exit 0"
        )
        try:
            channel = self._transport.open_session(timeout=self.endpoint.connect_timeout)
            try:
                channel.settimeout(self.endpoint.connect_timeout + 5)
                channel.exec_command(command)
                return channel.recv_exit_status() == 0
            finally:
                channel.close()
        except (OSError, EOFError, paramiko.SSHException):
            return False

    def is_alive(self) -> bool:
        return self._transport.is_active()

    def close(self) -> None:
        self._transport.close()
        self._release_gateway()

    def open_tunnel(self, target: Endpoint) -> paramiko.Channel:
        """A ``direct-tcpip`` channel from this host to ``target``'s sshd (this host is its gateway)."""
        try:
            return self._transport.open_channel(
                "direct-tcpip", (target.address, target.port), ("127.0.0.1", 0), timeout=target.connect_timeout
            )
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if isinstance(exc, paramiko.ChannelException):
                detail = _OPEN_FAILURES.get(exc.code, exc.text)
            elif str(exc) == "Unable to open channel." and self._transport.is_active():
                # paramiko hands the refusal's reason to one of the threads opening channels at once
                detail = "the gateway refused or could not connect"
            else:
                detail = describe_failure(exc)
            raise ConnectError(
                target.name,
                f"{self.name} cannot reach {target.address} port {target.port}: {detail}",
                hint="is the host up, and is it reachable from the gateway (and its sshd AllowTcpForwarding yes)?",
            ) from None

    @property
    def paramiko_transport(self) -> paramiko.Transport:
        """For port forwarding (observer tunnel) and interactive sessions."""
        return self._transport

    # --- operating a node: streams, port forwarding, interactive sessions ------------------------------

    def _open_pty_session(self, command: str, *, term: str, width: int, height: int) -> paramiko.Channel:
        try:
            channel = self._transport.open_session(timeout=self.endpoint.connect_timeout + 20)
            self.sessions += 1
            channel.get_pty(term=term, width=width, height=height)
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise RemoteCommandError(self.name, "ssh", f"cannot open a session: {exc}") from None
        return channel

    def stream(
        self,
        script: Script,
        *,
        on_output: OutputCallback,
        should_stop: Callable[[], bool] | None = None,
    ) -> int | None:
        """Run an argv ``script`` on a pty with no deadline, passing its output to ``on_output`` as it comes.

        Ends when the script exits (returns its exit status) or when ``should_stop`` turns true or the
        caller is interrupted (returns None / re-raises): closing the channel hangs up the pty, so every
        process the script started on the host (``tail -F``) ends with it. A pty merges stderr into stdout.
        """
        if script.stdin:
            raise ValueError(f"stream() runs argv scripts only; {script.name!r} needs stdin")
        channel = self._open_pty_session(script.remote_command(), term="dumb", width=200, height=50)
        try:
            while True:
                if should_stop is not None and should_stop():
                    return None
                if channel.recv_ready():
                    on_output("stdout", channel.recv(65536).decode("utf-8", "replace"))
                    continue
                if channel.recv_stderr_ready():
                    on_output("stderr", channel.recv_stderr(65536).decode("utf-8", "replace"))
                    continue
                if channel.exit_status_ready():
                    return channel.recv_exit_status()
                if not self._transport.is_active():
                    raise RemoteCommandError(self.name, script.name, "the SSH connection was lost")
                select.select([channel], [], [], 0.2)
        finally:
            channel.close()

    def forward_local(
        self, remote_port: int, *, remote_host: str = "127.0.0.1", local_port: int = 0, bind: str = "127.0.0.1"
    ) -> LocalForward:
        """Listen on ``bind:local_port`` (0: any free port) and carry every connection to
        ``remote_host:remote_port`` as seen from the host, over this SSH connection (``direct-tcpip``,
        like ``ssh -L``). Raises ``OSError`` when the local port is taken. Close the result to stop."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((bind, local_port))
            listener.listen(16)
        except OSError:
            listener.close()
            raise
        return LocalForward(self._transport, listener, (remote_host, remote_port), self.name).start()

    def interactive(
        self,
        command: str,
        *,
        stdin: int = 0,
        stdout: int = 1,
        leave: bytes | None = b"\x04",
        term: str | None = None,
    ) -> int | None:
        """Run ``command`` on a pty wired to the local terminal until it ends, or until the operator
        types the ``leave`` byte (Ctrl-D): then the channel closes, which hangs up only the remote
        session. The local terminal is put in raw mode (and restored) when ``stdin`` is a tty, and
        window size changes are passed on. Returns the command's exit status, None when left.
        """
        import signal
        import termios
        import tty

        is_tty = os.isatty(stdin)
        try:
            size = os.get_terminal_size(stdout if os.isatty(stdout) else stdin)
            width, height = size.columns, size.lines
        except OSError:
            width, height = 80, 24
        channel = self._open_pty_session(
            command, term=term or os.environ.get("TERM", "xterm"), width=width, height=height
        )
        saved = termios.tcgetattr(stdin) if is_tty else None
        previous_winch = None

        def resize(signum: int, frame: object) -> None:
            with contextlib.suppress(OSError, paramiko.SSHException):
                new = os.get_terminal_size(stdin)
                channel.resize_pty(width=new.columns, height=new.lines)

        if is_tty and threading.current_thread() is threading.main_thread():
            previous_winch = signal.signal(signal.SIGWINCH, resize)
        try:
            if is_tty:
                tty.setraw(stdin)
            channel_fd = channel.fileno()
            while True:
                readable, _, _ = select.select([channel_fd, stdin], [], [], 0.5)
                if channel_fd in readable or channel.recv_ready() or channel.recv_stderr_ready():
                    while channel.recv_stderr_ready():
                        os.write(stdout, channel.recv_stderr(65536))
                    if channel.recv_ready():
                        data = channel.recv(65536)
                        if not data:
                            break
                        os.write(stdout, data)
                    elif channel.closed or channel.eof_received:
                        break
                if stdin in readable:
                    data = os.read(stdin, 4096)
                    if not data:
                        return None
                    if leave is not None and leave in data:
                        before = data.split(leave, 1)[0]
                        if before:
                            channel.sendall(before)
                        return None
                    channel.sendall(data)
                if channel.exit_status_ready() and not channel.recv_ready():
                    break
                if not self._transport.is_active():
                    raise RemoteCommandError(self.name, "console", "the SSH connection was lost")
            return channel.recv_exit_status()
        finally:
            channel.close()
            if saved is not None:
                termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
            if previous_winch is not None:
                signal.signal(signal.SIGWINCH, previous_winch)


def _cork(sock: object, on: bool) -> None:
    """TCP_CORK on the connection's socket while a file streams (Linux; not through a gateway channel).

    The socket has TCP_NODELAY for the command round trips, so each 32 KiB SSH packet would leave as its
    own burst and wake the host's sshd on arrival; corked, the kernel sends full frames. With 20 uploads
    at once that took 40 % less CPU on the hosts (benchmarks/README.md). Uncorking sends what is left.
    """
    if isinstance(sock, socket.socket) and hasattr(socket, "TCP_CORK"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1 if on else 0)


# The remote side of every run/upload: the shell announces its pid (which leads its process group: sshd
# starts each session with setsid) so a client whose deadline passed can kill the whole group, and runs the
# script under coreutils `timeout`, which kills that group itself a little after the deadline should the
# client be unable to (a cut link). Daemons the script starts with setsid (the node) are not in the group.
PID_MARKER = b"@@pid "
REMOTE_GRACE = 10.0


def guarded_command(command: str, timeout: float, *, has_timeout: bool | None = None) -> str:
    """``command`` (a shell command line) wrapped as described above.

    ``has_timeout``: whether the host's ``timeout`` works, as the first session of the connection found
    (None: not known yet, so this session checks, and says so after its pid: ``@@pid 123 timeout``).
    Knowing it spares every later session two processes (``timeout -k 1 5 true``).
    """
    limit = math.ceil(timeout + REMOTE_GRACE)
    marker = PID_MARKER.decode()
    bounded = f'echo "{marker}$$ timeout" >&2; exec timeout -k 5 {limit} {command}'
    plain = f'echo "{marker}$$" >&2; exec {command}'
    if has_timeout is True:
        body = bounded
    elif has_timeout is False:
        body = plain
    else:
        body = f"if timeout -k 1 5 true 2>/dev/null; then {bounded}; fi; {plain}"
    return "sh -c " + shlex.quote(body)


class _Stderr:
    """A run's stderr as it arrives, with the wrapper's pid line taken out."""

    def __init__(self, on_output: OutputCallback | None) -> None:
        self.on_output = on_output
        self.chunks: list[bytes] = []
        self.pid: int | None = None
        self.bounded: bool | None = None
        """Whether the wrapper ran the command under ``timeout`` (known once the pid line arrived)."""
        self._head: bytes | None = b""  # None once the first line was dealt with

    def drain(self, channel: paramiko.Channel) -> None:
        while channel.recv_stderr_ready():
            self._feed(channel.recv_stderr(65536))

    def _feed(self, data: bytes) -> None:
        if self._head is not None:
            self._head += data
            if b"\n" not in self._head and len(self._head) < 64:
                return
            line, newline, rest = self._head.partition(b"\n")
            pid, _, bounded = line[len(PID_MARKER) :].partition(b" ")
            if newline and line.startswith(PID_MARKER) and pid.isdigit() and bounded in (b"", b"timeout"):
                self.pid = int(pid)
                self.bounded = bounded == b"timeout"
                data = rest
            else:
                data = self._head
            self._head = None
            if not data:
                return
        self.chunks.append(data)
        if self.on_output is not None:
            self.on_output("stderr", data.decode("utf-8", "replace"))

    def finish(self) -> None:
        if self._head:
            head, self._head = self._head, None
            self._feed(head)
        self._head = None


def _last_step(stderr_chunks: list[bytes]) -> str | None:
    text = b"".join(stderr_chunks).decode("utf-8", "replace")
    for line in reversed(text.splitlines()):
        if line.startswith("@@step "):
            return line[len("@@step ") :].strip()
    return None


class Gateways:
    """Connections to jump hosts, shared by every host behind them: one login per gateway however many
    hosts it carries (32 parallel logins through one bastion trip its sshd's MaxStartups). A gateway is
    closed when the last host using it closes, and reopened if it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Endpoint, _Gateway] = {}
        self.logins = 0
        """How many gateway logins this registry made (tests count them)."""

    def acquire(self, endpoint: Endpoint) -> SSHTransport:
        """The open connection to ``endpoint`` (logging in once); pair every call with :meth:`release`."""
        with self._lock:
            entry = self._entries.setdefault(endpoint, _Gateway())
            entry.refs += 1
        try:
            with entry.lock:
                if entry.error is not None:
                    raise entry.error  # the login every waiting host depends on failed: do not retry it 32 times
                if entry.transport is None or not entry.transport.is_alive():
                    if entry.transport is not None:
                        entry.transport.close()
                        entry.transport = None
                    try:
                        entry.transport = SSHTransport(endpoint, gateways=self)
                    except ConnectError as exc:
                        entry.error = exc
                        raise
                    self.logins += 1
                return entry.transport
        except BaseException:
            self.release(endpoint)
            raise

    def release(self, endpoint: Endpoint) -> None:
        with self._lock:
            entry = self._entries.get(endpoint)
            if entry is None:
                return
            entry.refs -= 1
            if entry.refs > 0:
                return
            del self._entries[endpoint]
        if entry.transport is not None:
            entry.transport.close()


@dataclass
class _Gateway:
    refs: int = 0
    transport: SSHTransport | None = None
    error: ConnectError | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


GATEWAYS = Gateways()
"""The process's gateway connections (one run per process; tests may pass their own)."""


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


class LocalForward:
    """A local listening socket whose connections are carried over SSH to one remote address.

    One thread accepts; each connection gets a ``direct-tcpip`` channel and a thread that copies
    bytes both ways. :meth:`close` stops accepting and closes every open connection.
    """

    def __init__(
        self, transport: paramiko.Transport, listener: socket.socket, remote: tuple[str, int], host: str
    ) -> None:
        self._transport = transport
        self._listener = listener
        self.remote = remote
        self.host = host
        self.port: int = listener.getsockname()[1]
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: list[tuple[socket.socket, paramiko.Channel]] = []
        self._thread = threading.Thread(target=self._accept, name=f"forward-{self.port}", daemon=True)
        self.connections = 0

    def start(self) -> LocalForward:
        self._listener.settimeout(0.2)
        self._thread.start()
        return self

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                sock, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            try:
                channel = self._transport.open_channel("direct-tcpip", self.remote, peer, timeout=10)
            except (paramiko.SSHException, OSError, EOFError):
                # The remote port is closed (or the connection died): the client sees a reset.
                sock.close()
                continue
            with self._lock:
                self._open.append((sock, channel))
                self.connections += 1
            threading.Thread(target=self._pump, args=(sock, channel), daemon=True).start()

    def _pump(self, sock: socket.socket, channel: paramiko.Channel) -> None:
        try:
            sock_fd, channel_fd = sock.fileno(), channel.fileno()
            while not self._closed.is_set():
                readable, _, _ = select.select([sock_fd, channel_fd], [], [], 0.5)
                if sock_fd in readable:
                    data = sock.recv(65536)
                    if not data:
                        break
                    channel.sendall(data)
                if channel_fd in readable:
                    data = channel.recv(65536)
                    if not data:
                        break
                    sock.sendall(data)
        except (OSError, paramiko.SSHException, EOFError):
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            channel.close()
            with self._lock, contextlib.suppress(ValueError):
                self._open.remove((sock, channel))

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(timeout=2)
        with self._lock:
            pending = list(self._open)
        for sock, channel in pending:
            with contextlib.suppress(OSError):
                sock.close()
            channel.close()

"""Connection failures read as one line per host: no paramiko tracebacks or raw log lines on the console."""

from __future__ import annotations

import logging
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator

import paramiko
import pytest

from deployer.errors import ConnectError
from deployer.ssh import logs
from deployer.ssh.transport import PID_MARKER, Endpoint, SSHTransport, _Stderr, guarded_command


@pytest.fixture
def reset_after_client_banner() -> Iterator[int]:
    """Reads the client's SSH banner, then resets (RST) before sending its own: on today's paramiko this
    logged "Exception (client): Error reading SSH protocol banner" and a traceback straight to stderr."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.recv(100)
        time.sleep(0.2)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(2)


@pytest.fixture
def banner_then_reset() -> Iterator[int]:
    """Sends an SSH banner, reads the client's key exchange, then resets: paramiko fails inside its thread."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        conn.recv(65536)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(2)


@pytest.mark.parametrize("server", ["reset_after_client_banner", "banner_then_reset"])
def test_reset_during_handshake_is_one_line_and_nothing_raw(
    server: str, request: pytest.FixtureRequest, capfd: pytest.CaptureFixture[str]
) -> None:
    port = request.getfixturevalue(server)
    with pytest.raises(ConnectError) as info:
        SSHTransport(Endpoint("web1", "127.0.0.1", port, "deploy", connect_timeout=5, use_user_known_hosts=False))
    text = str(info.value)
    assert text.startswith(f"web1: SSH handshake with 127.0.0.1 port {port} failed: ")
    assert "reset" in text or "closed" in text, text
    assert "\n" not in text and "Traceback" not in text
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == "", captured  # paramiko printed nothing itself


def test_paramiko_lines_go_to_the_sink_with_the_host(banner_then_reset: int) -> None:
    seen: list[tuple[str, str]] = []
    logs.set_sink(lambda host, line: seen.append((host, line)))
    try:
        with pytest.raises(ConnectError):
            SSHTransport(
                Endpoint(
                    "web7", "127.0.0.1", banner_then_reset, "deploy", connect_timeout=5, use_user_known_hosts=False
                )
            )
    finally:
        logs.set_sink(None)
    assert seen and all(host == "web7" for host, _ in seen), seen
    assert not logging.getLogger("paramiko").propagate


def test_unrouted_paramiko_records_never_reach_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    logging.getLogger("paramiko.transport").error("Socket exception: No route to host (113)")
    assert capfd.readouterr().err == ""


def test_guarded_command_announces_its_pid_and_bounds_the_script() -> None:
    command = guarded_command("sh -s", 30)
    assert command == (
        'sh -c \'if timeout -k 1 5 true 2>/dev/null; then echo "@@pid $$ timeout" >&2; '
        'exec timeout -k 5 40 sh -s; fi; echo "@@pid $$" >&2; exec sh -s\''
    )
    # Once the connection's first session found out, later sessions do not check again.
    assert guarded_command("sh -s", 30, has_timeout=True) == (
        "sh -c 'echo \"@@pid $$ timeout\" >&2; exec timeout -k 5 40 sh -s'"
    )
    assert guarded_command("sh -s", 30, has_timeout=False) == "sh -c 'echo \"@@pid $$\" >&2; exec sh -s'"


@pytest.mark.parametrize("has_timeout", [None, True, False])
def test_the_wrapper_runs_in_a_real_shell(has_timeout: bool | None) -> None:
    done = subprocess.run(
        ["sh", "-c", guarded_command("sh -c 'echo out; echo err >&2'", 30, has_timeout=has_timeout)],
        capture_output=True,
        check=False,
    )
    stderr = _Stderr(None)
    stderr.drain(_FakeChannel([done.stderr]))  # type: ignore[arg-type]
    stderr.finish()
    assert (done.returncode, done.stdout, b"".join(stderr.chunks)) == (0, b"out\n", b"err\n")
    assert stderr.pid is not None and stderr.bounded is (has_timeout is not False)


class _FakeChannel:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def recv_stderr_ready(self) -> bool:
        return bool(self.chunks)

    def recv_stderr(self, size: int) -> bytes:
        return self.chunks.pop(0)


@pytest.mark.parametrize(
    "chunks",
    [
        [PID_MARKER + b"4242\n@@step one\n"],
        [PID_MARKER + b"42", b"42\n", b"@@step one\n"],
        [PID_MARKER + b"4242\n", b"@@step one\n"],
    ],
)
def test_pid_line_is_taken_out_of_stderr(chunks: list[bytes]) -> None:
    shown: list[str] = []
    stderr = _Stderr(lambda stream, text: shown.append(text))
    stderr.drain(_FakeChannel(list(chunks)))  # type: ignore[arg-type]
    stderr.finish()
    assert stderr.pid == 4242 and stderr.bounded is False
    assert b"".join(stderr.chunks) == b"@@step one\n" and "".join(shown) == "@@step one\n"


def test_stderr_without_pid_line_is_kept_whole() -> None:
    stderr = _Stderr(None)
    stderr.drain(_FakeChannel([b"oops"]))  # type: ignore[arg-type]
    stderr.finish()
    assert stderr.pid is None and stderr.bounded is None and stderr.chunks == [b"oops"]


def test_paramiko_is_what_we_think() -> None:
    assert hasattr(paramiko.Transport, "set_log_channel")


class _RefusingTransport:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def open_channel(self, *args: object, **kwargs: object) -> None:
        raise self.exc

    def is_active(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (paramiko.ChannelException(1, "Administratively prohibited"), "AllowTcpForwarding"),
        (paramiko.ChannelException(2, "Connect failed"), "the gateway could not connect to it"),
        (paramiko.SSHException("Unable to open channel."), "the gateway refused or could not connect"),
    ],
)
def test_a_gateway_that_cannot_reach_a_host_says_so(exc: BaseException, expected: str) -> None:
    gateway = object.__new__(SSHTransport)
    gateway.name = "gateway bastion"
    gateway._transport = _RefusingTransport(exc)  # type: ignore[assignment]
    with pytest.raises(ConnectError) as info:
        gateway.open_tunnel(Endpoint("web1", "10.0.0.1", 22, "deploy"))
    text = str(info.value)
    assert text.startswith("web1: gateway bastion cannot reach 10.0.0.1 port 22: ") and expected in text, text


def test_verbose_console_shows_paramiko_lines_with_their_host() -> None:
    import io

    from rich.console import Console

    from deployer.cli.render import ConsoleEvents

    buffer = io.StringIO()
    try:
        ConsoleEvents(Console(file=buffer, width=200), verbose=True)
        logging.getLogger(logs.log_channel("web1")).error("Socket exception: No route to host (113)")
    finally:
        logs.set_sink(None)
    assert "web1" in buffer.getvalue() and "ssh| Socket exception: No route to host (113)" in buffer.getvalue()
    quiet = io.StringIO()
    ConsoleEvents(Console(file=quiet, width=200), verbose=False)
    logging.getLogger(logs.log_channel("web1")).error("Socket exception: No route to host (113)")
    assert quiet.getvalue() == ""

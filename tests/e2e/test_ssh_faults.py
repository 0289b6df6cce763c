"""End to end: what the SSH layer reports when a step's connection dies or its deadline passes, and what is
left running on the host afterwards (nothing of the step's script)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from deployer.errors import RemoteCommandError
from deployer.remote.shell import Script
from deployer.ssh.transport import Endpoint, SSHTransport
from tests.harness.fleet import Fleet


def connect(fleet: Fleet, host: str = "h1", **kw: object) -> SSHTransport:
    h = fleet.host(host)
    settings: dict[str, object] = {"connect_timeout": 5.0, **kw}
    return SSHTransport(
        Endpoint(
            name=host,
            address=h.address,
            port=h.port,
            user="root",
            identity_file=str(fleet.client_key),
            known_hosts=(str(fleet.known_hosts),),
            use_user_known_hosts=False,
            **settings,  # type: ignore[arg-type]
        )
    )


def running(fleet: Fleet, pattern: str) -> str:
    """Processes on h1 whose command line matches ``pattern`` (ps inside the host's pid namespace)."""
    regex = f"[{pattern[0]}]{pattern[1:]}"  # so the pgrep's own shell does not match
    return fleet.exec("h1", f"pgrep -af '{regex}' || true").stdout.strip()


def wait_until_gone(fleet: Fleet, pattern: str, within: float) -> str:
    deadline = time.monotonic() + within
    while (left := running(fleet, pattern)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def run_in_thread(
    transport: SSHTransport, script: Script
) -> tuple[threading.Event, list[BaseException], threading.Thread]:
    """Run ``script``; the event is set once its first ``@@step`` line arrived."""
    started = threading.Event()
    errors: list[BaseException] = []

    def output(stream: str, text: str) -> None:
        if "@@step" in text:
            started.set()

    def work() -> None:
        try:
            transport.run(script, on_output=output)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return started, errors, thread


@pytest.mark.parametrize(
    "body",
    [
        "sleep 3011",  # the script itself waits
        "sleep 3012 & sleep 3013 | cat; wait",  # a background job and a pipeline
        "sh -c 'sleep 3014'; echo after",  # a child shell
    ],
)
def test_client_timeout_kills_the_remote_script(make_fleet: Callable[..., Fleet], body: str) -> None:
    fleet = make_fleet(1)
    transport = connect(fleet)
    try:
        script = Script(name="slow", parts=(f"echo '@@step waiting' >&2; {body}\n",), timeout=2)
        with pytest.raises(RemoteCommandError) as info:
            transport.run(script)
        text = str(info.value)
        assert text.startswith("h1: waiting: no result after 2s; the remote script was stopped"), text
        assert wait_until_gone(fleet, "sleep 301", within=5) == ""
        assert transport.run(Script(name="after", parts=("echo still usable\n",))).stdout == "still usable\n"
    finally:
        transport.close()


def test_host_stops_the_script_itself_when_the_client_cannot(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(1)
    transport = connect(fleet, keepalive=0)
    try:
        began = time.monotonic()
        started, errors, thread = run_in_thread(
            transport, Script(name="slow", parts=("echo '@@step waiting' >&2; sleep 3021\n",), timeout=3)
        )
        assert started.wait(20), "the script never started"
        fleet.cut_link("h1")
        try:
            thread.join(60)
            [error] = errors
            assert "no result after 3s; the host could not be told to stop the script" in str(error), error
            # The client could not kill it; the host's own deadline (3 s + 10 s grace) does.
            assert wait_until_gone(fleet, "sleep 3021", within=max(1.0, began + 3 + 10 + 10 - time.monotonic())) == ""
        finally:
            fleet.restore_link("h1")
    finally:
        transport.close()


def test_lost_connection_names_the_step_never_exit_status_minus_one(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(1)
    transport = connect(fleet)
    try:
        started, errors, thread = run_in_thread(
            transport, Script(name="deploy", parts=("echo '@@step activate' >&2; sleep 3031\n",))
        )
        assert started.wait(20), "the script never started"
        fleet.exec("h1", "pkill -f '^sshd: root@notty'")  # the host side of this connection dies
        thread.join(30)
        [error] = errors
        text = str(error)
        assert isinstance(error, RemoteCommandError) and error.step == "activate", text
        assert "was lost during this step" in text and "exit status" not in text and "-1" not in text, text
        assert not transport.is_alive()
    finally:
        transport.close()
        fleet.exec("h1", "pkill -f '[s]leep 3031'", check=False)


def test_remote_shell_killed_by_a_signal_is_said_so(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(1)
    transport = connect(fleet)
    try:
        with pytest.raises(RemoteCommandError) as info:
            transport.run(Script(name="oom", parts=("echo '@@step migrate' >&2; kill -KILL $$\n",)))
        text = str(info.value)
        assert text.startswith("h1: migrate: the remote shell ended without an exit status (killed by a signal?)")
        assert transport.is_alive()
    finally:
        transport.close()

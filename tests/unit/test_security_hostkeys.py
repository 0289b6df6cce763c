"""Host keys: strict verification against known_hosts files (plain, hashed, [host]:port), and `invoke trust`.

The known_hosts files are real OpenSSH files: written here, hashed with ``ssh-keygen -H`` and searched with
``ssh-keygen -F``, then read by the same code a deploy uses.
"""

from __future__ import annotations

import base64
import io
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from deployer.errors import ConnectError, DeployerError, HostKeyError
from deployer.ssh.known_hosts import KnownHosts
from deployer.ssh.transport import Endpoint, SSHTransport, fingerprint, load_known_hosts, verify_host_key
from deployer.ssh.trust import (
    HostKeyCheck,
    check_host_key,
    fetch_host_key,
    hash_name,
    known_hosts_line,
    project_known_hosts,
    trust,
    update_known_hosts,
)

needs_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen (openssh-client)")


def make_key(tmp_path: Path, name: str, kind: str = "ed25519") -> paramiko.PKey:
    """A real OpenSSH key pair made by ssh-keygen (paramiko cannot generate ed25519 keys)."""
    path = tmp_path / f"{name}_{kind}"
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    return paramiko.PKey.from_path(path)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, paramiko.PKey]:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("needs ssh-keygen")
    return {n: make_key(tmp_path, n) for n in ("web1", "web2", "other")}


@pytest.fixture(autouse=True)
def no_user_known_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own HOME, so the developer's ~/.ssh/known_hosts never takes part."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    return home


def ep(address: str = "10.0.0.1", port: int = 22, known: Path | None = None, **kw: Any) -> Endpoint:
    return Endpoint(
        name="web1", address=address, port=port, user="deploy", known_hosts=(str(known),) if known else (), **kw
    )


def ssh_keygen_hash(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-H", "-f", str(path)], check=True, capture_output=True)
    Path(f"{path}.old").unlink()


# --- verification -------------------------------------------------------------------------------------------


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("needs ssh-keygen")
    key = make_key(tmp_path, "fp")
    printed = subprocess.run(
        ["ssh-keygen", "-lf", str(tmp_path / "fp_ed25519.pub")], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert fingerprint(key) == printed


@pytest.mark.parametrize("port", [22, 2222])
@pytest.mark.parametrize("hashed", [False, True])
def test_plain_hashed_and_port_entries_verify(
    tmp_path: Path, keys: dict[str, paramiko.PKey], port: int, hashed: bool
) -> None:
    known = tmp_path / "known_hosts"
    name = "10.0.0.1" if port == 22 else "[10.0.0.1]:2222"
    known.write_text(
        f"# project hosts\n{name} {keys['web1'].get_name()} {keys['web1'].get_base64()}\n"
        f"10.0.0.2 {keys['web2'].get_name()} {keys['web2'].get_base64()}\n"
    )
    if hashed:
        ssh_keygen_hash(known)
        assert "10.0.0.1" not in known.read_text()
        # OpenSSH itself finds the hashed entry under the same name.
        found = subprocess.run(["ssh-keygen", "-F", name, "-f", str(known)], capture_output=True, text=True)
        assert found.returncode == 0 and keys["web1"].get_base64() in found.stdout
    endpoint = ep(port=port, known=known)
    assert endpoint.known_hosts_name == name
    verify_host_key(endpoint, keys["web1"], load_known_hosts(endpoint))  # accepted: no exception
    with pytest.raises(HostKeyError, match="HOST KEY CHANGED"):
        verify_host_key(endpoint, keys["other"], load_known_hosts(endpoint))


def test_port_entry_does_not_vouch_for_another_port(tmp_path: Path, keys: dict[str, paramiko.PKey]) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(f"[10.0.0.1]:2222 {keys['web1'].get_name()} {keys['web1'].get_base64()}\n")
    for port in (22, 2200):
        endpoint = ep(port=port, known=known)
        with pytest.raises(HostKeyError, match="is not known"):
            verify_host_key(endpoint, keys["web1"], load_known_hosts(endpoint))


def test_unknown_key_is_refused_with_type_fingerprint_and_hint(tmp_path: Path, keys: dict[str, paramiko.PKey]) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(f"10.0.0.2 {keys['web2'].get_name()} {keys['web2'].get_base64()}\n")
    endpoint = ep(known=known)
    with pytest.raises(HostKeyError) as info:
        verify_host_key(endpoint, keys["web1"], load_known_hosts(endpoint))
    text = str(info.value)
    assert f"web1: host key for 10.0.0.1 port 22 is not known: ssh-ed25519 {fingerprint(keys['web1'])}" in text
    assert "deployer trust --env <env> --hosts web1" in text


def test_changed_key_names_both_fingerprints(tmp_path: Path, keys: dict[str, paramiko.PKey]) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(f"10.0.0.1 {keys['web1'].get_name()} {keys['web1'].get_base64()}\n")
    endpoint = ep(known=known)
    with pytest.raises(HostKeyError) as info:
        verify_host_key(endpoint, keys["other"], load_known_hosts(endpoint))
    text = str(info.value)
    assert "HOST KEY CHANGED for 10.0.0.1 port 22" in text
    assert fingerprint(keys["web1"]) in text and fingerprint(keys["other"]) in text
    assert "ssh-keygen -R 10.0.0.1" in text


def test_user_and_project_files_are_both_read(
    tmp_path: Path, keys: dict[str, paramiko.PKey], no_user_known_hosts: Path
) -> None:
    (no_user_known_hosts / ".ssh" / "known_hosts").write_text(
        f"10.0.0.1 {keys['web1'].get_name()} {keys['web1'].get_base64()}\n"
    )
    project = tmp_path / "project_known_hosts"
    project.write_text(f"10.0.0.2 {keys['web2'].get_name()} {keys['web2'].get_base64()}\n")
    verify_host_key(ep(known=project), keys["web1"], load_known_hosts(ep(known=project)))
    second = ep("10.0.0.2", known=project)
    verify_host_key(second, keys["web2"], load_known_hosts(second))
    # use_user_known_hosts: false leaves only the project's file.
    strict = ep(known=project, use_user_known_hosts=False)
    with pytest.raises(HostKeyError, match="is not known"):
        verify_host_key(strict, keys["web1"], load_known_hosts(strict))


def test_unreadable_known_hosts_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "known_hosts"
    bad.mkdir()  # a directory: os.path.isfile is false, so it is skipped, not trusted
    assert load_known_hosts(ep(known=bad)).matching("10.0.0.1") == []


# --- agent forwarding -------------------------------------------------------------------------------------------


class _Channel:
    def exec_command(self, command: str) -> None:
        self.command = command


class _Transport:
    def open_session(self, timeout: float | None = None) -> _Channel:
        return _Channel()


@pytest.mark.parametrize("forward", [False, True])
def test_agent_is_forwarded_only_when_asked(monkeypatch: pytest.MonkeyPatch, forward: bool) -> None:
    handlers: list[object] = []
    monkeypatch.setattr(paramiko.agent, "AgentRequestHandler", lambda channel: handlers.append(channel))
    transport = object.__new__(SSHTransport)
    transport.endpoint = ep(forward_agent=forward)
    transport.name = "web1"
    transport.sessions = 0
    transport._transport = _Transport()  # type: ignore[assignment]
    transport._open("sh -s", 10)
    assert len(handlers) == (1 if forward else 0)


def test_forward_agent_is_off_by_default() -> None:
    from deployer.core.config import SSHConfig

    assert SSHConfig().forward_agent is False
    assert Endpoint("h", "10.0.0.1", 22, "u").forward_agent is False


# --- fetching a key: a key exchange, never a login ------------------------------------------------------------


class _RecordingServer(paramiko.ServerInterface):
    def __init__(self) -> None:
        self.auth_attempts = 0

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        self.auth_attempts += 1
        return paramiko.AUTH_FAILED

    def check_auth_none(self, username: str) -> int:
        self.auth_attempts += 1
        return paramiko.AUTH_FAILED


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[tuple[int, paramiko.PKey, _RecordingServer]]:
    """A one-connection paramiko SSH server on 127.0.0.1 that records authentication attempts."""
    if shutil.which("ssh-keygen") is None:
        pytest.skip("needs ssh-keygen")
    host_key = make_key(tmp_path, "server")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    server = _RecordingServer()
    done = threading.Event()

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        transport = paramiko.Transport(conn)
        transport.add_server_key(host_key)
        try:
            transport.start_server(server=server)
            done.wait(5)
        except (paramiko.SSHException, EOFError, OSError):
            pass
        finally:
            transport.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], host_key, server
    finally:
        done.set()
        listener.close()
        thread.join(5)


def test_fetch_host_key_does_not_authenticate(sshd: tuple[int, paramiko.PKey, _RecordingServer]) -> None:
    port, host_key, server = sshd
    offered = fetch_host_key(Endpoint("local", "127.0.0.1", port, "deploy", connect_timeout=5))
    assert offered.asbytes() == host_key.asbytes()
    assert server.auth_attempts == 0


def test_fetch_host_key_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectError, match=r"cannot connect to 127\.0\.0\.1"):
        fetch_host_key(Endpoint("gone", "127.0.0.1", port, "deploy", connect_timeout=2))


# --- writing known_hosts -----------------------------------------------------------------------------------------


def test_hashed_names_are_openssh_compatible(tmp_path: Path, keys: dict[str, paramiko.PKey]) -> None:
    salt = b"s" * 20
    assert hash_name("10.0.0.1", salt) == paramiko.HostKeys.hash_host("10.0.0.1", base64.b64encode(salt).decode())
    known = tmp_path / "known_hosts"
    update_known_hosts(known, [("[10.0.0.1]:2222", keys["web1"])], hashed=True)
    text = known.read_text()
    assert text.startswith("|1|") and "10.0.0.1" not in text
    found = subprocess.run(["ssh-keygen", "-F", "[10.0.0.1]:2222", "-f", str(known)], capture_output=True, text=True)
    assert found.returncode == 0
    endpoint = ep(port=2222, known=known)
    verify_host_key(endpoint, keys["web1"], load_known_hosts(endpoint))


def test_update_appends_and_replaces_only_what_it_is_told(tmp_path: Path, keys: dict[str, paramiko.PKey]) -> None:
    known = tmp_path / "known_hosts"
    k1, k2, other = keys["web1"], keys["web2"], keys["other"]
    known.write_text(
        "# keep this comment\n"
        f"@revoked * {other.get_name()} {other.get_base64()}\n"
        f"10.0.0.1,web1.example {k1.get_name()} {k1.get_base64()}\n"
        f"{hash_name('10.0.0.1')} {k1.get_name()} {k1.get_base64()}\n"
        f"10.0.0.2 {k2.get_name()} {k2.get_base64()}\n"
    )
    known.chmod(0o600)
    update_known_hosts(known, [("10.0.0.1", other)], remove=["10.0.0.1"])
    lines = known.read_text().splitlines()
    assert lines[0] == "# keep this comment"
    assert lines[1].startswith("@revoked ")
    assert lines[2] == f"web1.example {k1.get_name()} {k1.get_base64()}"  # the other name on the line survives
    assert lines[3] == f"10.0.0.2 {k2.get_name()} {k2.get_base64()}"  # the hashed 10.0.0.1 entry is gone
    assert lines[4] == known_hosts_line("10.0.0.1", other)
    assert len(lines) == 5
    assert known.stat().st_mode & 0o777 == 0o600
    new = tmp_path / "sub" / "fresh_known_hosts"
    update_known_hosts(new, [("10.0.0.9", k1)])
    assert new.stat().st_mode & 0o777 == 0o644


def test_project_file_must_be_configured(tmp_path: Path) -> None:
    with pytest.raises(DeployerError, match=r"ssh\.known_hosts is not set") as info:
        project_known_hosts(None, tmp_path / "inventory" / "prod.yml")
    assert "never writes to ~/.ssh/known_hosts" in str(info.value)
    assert (
        project_known_hosts("known_hosts", tmp_path / "inventory" / "prod.yml")
        == tmp_path / "inventory" / "known_hosts"
    )
    assert project_known_hosts("/etc/x", tmp_path / "prod.yml") == Path("/etc/x")


# --- the trust operation ---------------------------------------------------------------------------------------


def targets(known: Path, *ports: int) -> list[tuple[str, Endpoint]]:
    return [
        (f"web{i}", Endpoint(f"web{i}", f"10.0.0.{i}", port, "deploy", known_hosts=(str(known),)))
        for i, port in enumerate(ports, start=1)
    ]


def fake_fetch(offers: dict[str, paramiko.PKey]) -> Any:
    def fetch(endpoint: Endpoint, known: KnownHosts | None) -> paramiko.PKey:
        return offers[endpoint.name]

    return fetch


def test_trust_records_new_keys_only_after_confirmation(tmp_path: Path, keys: dict[str, paramiko.PKey]) -> None:
    known = tmp_path / "known_hosts"
    hosts = targets(known, 22, 2222)
    fetch = fake_fetch({"web1": keys["web1"], "web2": keys["web2"]})
    asked: list[list[str]] = []

    def decline(checks: Any) -> bool:
        asked.append([c.host for c in checks])
        return False

    result = trust(hosts, known, confirm=decline, fetch=fetch)
    assert asked == [["web1", "web2"]] and result.declined and not result.ok
    assert not known.exists()

    result = trust(hosts, known, confirm=lambda checks: True, fetch=fetch)
    assert result.ok and result.written == ["web1", "web2"]
    assert known.read_text().splitlines() == [
        known_hosts_line("10.0.0.1", keys["web1"]),
        known_hosts_line("[10.0.0.2]:2222", keys["web2"]),
    ]
    for name, endpoint in hosts:
        verify_host_key(endpoint, keys[name], load_known_hosts(endpoint))

    # Everything trusted: nothing to confirm, nothing written.
    before = known.read_text()
    result = trust(hosts, known, confirm=lambda checks: pytest.fail("asked needlessly"), fetch=fetch)
    assert result.ok and not result.written and {c.status for c in result.checks} == {"known"}
    assert known.read_text() == before


def test_trust_refuses_a_changed_key_unless_replace(tmp_path: Path, keys: dict[str, paramiko.PKey]) -> None:
    known = tmp_path / "known_hosts"
    hosts = targets(known, 22)
    update_known_hosts(known, [("10.0.0.1", keys["web1"])], hashed=True)
    before = known.read_text()
    fetch = fake_fetch({"web1": keys["other"]})
    result = trust(hosts, known, confirm=lambda checks: True, fetch=fetch)
    assert result.refused == ["web1"] and not result.ok
    [check] = result.checks
    assert check.status == "changed" and check.in_project
    assert check.recorded == (f"ssh-ed25519 {fingerprint(keys['web1'])}",)
    assert known.read_text() == before

    result = trust(hosts, known, confirm=lambda checks: True, fetch=fetch, replace=True)
    assert result.ok and result.written == ["web1"]
    assert known.read_text() == known_hosts_line("10.0.0.1", keys["other"]) + "\n"
    verify_host_key(hosts[0][1], keys["other"], load_known_hosts(hosts[0][1]))


def test_changed_key_recorded_in_the_users_file_is_not_replaceable(
    tmp_path: Path, keys: dict[str, paramiko.PKey], no_user_known_hosts: Path
) -> None:
    (no_user_known_hosts / ".ssh" / "known_hosts").write_text(known_hosts_line("10.0.0.1", keys["web1"]) + "\n")
    known = tmp_path / "known_hosts"
    check = check_host_key("web1", targets(known, 22)[0][1], keys["other"], known)
    assert check.status == "changed" and not check.in_project
    result = trust(
        targets(known, 22), known, confirm=lambda c: True, fetch=fake_fetch({"web1": keys["other"]}), replace=True
    )
    assert result.refused == ["web1"] and not known.exists()


def test_unreachable_host_is_reported_not_trusted(tmp_path: Path, keys: dict[str, paramiko.PKey]) -> None:
    known = tmp_path / "known_hosts"

    def fetch(endpoint: Endpoint, known_keys: KnownHosts | None) -> paramiko.PKey:
        if endpoint.name == "web2":
            raise ConnectError("web2", "cannot connect to 10.0.0.2:22: refused")
        return keys["web1"]

    result = trust(targets(known, 22, 22), known, confirm=lambda c: True, fetch=fetch)
    assert result.written == ["web1"] and "web2" in result.errors and not result.ok


def test_check_describes_type_and_fingerprint(tmp_path: Path, keys: dict[str, paramiko.PKey]) -> None:
    endpoint = targets(tmp_path / "kh", 2222)[0][1]
    check = HostKeyCheck("web1", endpoint, keys["web1"], "new")
    assert check.describe() == f"10.0.0.1 port 2222: ssh-ed25519 {fingerprint(keys['web1'])}"
    assert check.name == "[10.0.0.1]:2222"


# --- the task ------------------------------------------------------------------------------------------------------


def _task_inventory(tmp_path: Path, known_hosts: str | None) -> Path:
    from .helpers import BASE, write_inventory

    data = {**BASE, "ssh": {"user": "deploy", **({"known_hosts": known_hosts} if known_hosts else {})}}
    write_inventory(tmp_path / "inventory", data)
    return tmp_path / "inventory"


def run_trust(monkeypatch: pytest.MonkeyPatch, offers: dict[str, paramiko.PKey], **kwargs: Any) -> int:
    from invoke.context import Context
    from invoke.exceptions import Exit

    from deployer.cli.trust_tasks import trust as trust_task
    from deployer.ssh import trust as trust_module

    monkeypatch.setattr(trust_module, "fetch_host_key", fake_fetch(offers))
    try:
        trust_task(Context(), env="test", **kwargs)
    except Exit as exc:
        return exc.code
    return 0


def test_task_refuses_without_a_project_known_hosts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = _task_inventory(tmp_path, None)
    from invoke.context import Context
    from invoke.exceptions import Exit

    from deployer.cli.trust_tasks import trust as trust_task

    with pytest.raises(Exit) as info:
        trust_task(Context(), env="test", inventory_dir=str(directory), yes=True)
    assert info.value.code == 2
    assert "ssh.known_hosts is not set" in str(info.value.message)


def test_task_needs_yes_off_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], keys: dict[str, paramiko.PKey]
) -> None:
    directory = _task_inventory(tmp_path, "known_hosts")
    offers = {"web1": keys["web1"], "web2": keys["web2"], "web3": keys["other"]}
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal
    code = run_trust(monkeypatch, offers, inventory_dir=str(directory), host="web1")
    out = capsys.readouterr().err
    assert code == 1 and "standard input is not a terminal" in out
    assert f"10.0.0.1 port 22: ssh-ed25519 {fingerprint(keys['web1'])}" in out
    assert not (directory / "known_hosts").exists()

    code = run_trust(monkeypatch, offers, inventory_dir=str(directory), host="web1", yes=True, hashed=True)
    assert code == 0
    text = (directory / "known_hosts").read_text()
    assert text.count("\n") == 1 and text.startswith("|1|")  # only the selected host, hashed

    # A changed key: refused (exit 1, file untouched), then replaced with --replace.
    offers["web1"] = keys["other"]
    code = run_trust(monkeypatch, offers, inventory_dir=str(directory), yes=True)
    out = capsys.readouterr().err
    assert code == 1 and "CHANGED" in out and "--replace" in out
    assert (directory / "known_hosts").read_text().startswith(text)
    code = run_trust(monkeypatch, offers, inventory_dir=str(directory), yes=True, replace=True)
    assert code == 0


def test_task_prompts_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], keys: dict[str, paramiko.PKey]
) -> None:
    directory = _task_inventory(tmp_path, "known_hosts")

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Tty("n\n"))
    assert run_trust(monkeypatch, {"web1": keys["web1"]}, inventory_dir=str(directory), host="web1") == 1
    assert "[y/N]" in capsys.readouterr().err and not (directory / "known_hosts").exists()
    monkeypatch.setattr("sys.stdin", Tty("y\n"))
    assert run_trust(monkeypatch, {"web1": keys["web1"]}, inventory_dir=str(directory), host="web1") == 0
    assert (directory / "known_hosts").read_text() == known_hosts_line("10.0.0.1", keys["web1"]) + "\n"


def test_marker_lines_do_not_break_loading_and_revoked_keys_are_refused(
    tmp_path: Path, keys: dict[str, paramiko.PKey], no_user_known_hosts: Path
) -> None:
    k1, k2, other = keys["web1"], keys["web2"], keys["other"]
    # A user file as OpenSSH allows it: CA lines, revocations, a line nobody can parse.
    (no_user_known_hosts / ".ssh" / "known_hosts").write_text(
        f"@cert-authority *.example.com {other.get_name()} {other.get_base64()}\n"
        f"@revoked * {k2.get_name()} {k2.get_base64()}\n"
        "garbage-without-a-key\n"
        "10.0.0.9 ssh-ed25519 not!base64\n"
        f"10.0.0.1 {k1.get_name()} {k1.get_base64()}\n"
    )
    project = tmp_path / "known_hosts"
    project.write_text(f"10.0.0.2 {k2.get_name()} {k2.get_base64()}\n")
    first = ep(known=project)
    verify_host_key(first, k1, load_known_hosts(first))
    second = ep("10.0.0.2", known=project)
    with pytest.raises(HostKeyError, match="is REVOKED in known_hosts"):
        verify_host_key(second, k2, load_known_hosts(second))
    # A CA line vouches only for host certificates, never for a plain key.
    ca = ep("web.example.com", known=project)
    with pytest.raises(HostKeyError, match="is not known"):
        verify_host_key(ca, other, load_known_hosts(ca))
    # trust never records a revoked key.
    result = trust(
        [("web2", Endpoint("web2", "10.0.0.2", 22, "deploy", known_hosts=(str(project),)))],
        tmp_path / "other_known_hosts",
        confirm=lambda c: True,
        fetch=fake_fetch({"web2": k2}),
    )
    assert result.refused == ["web2"] and result.checks[0].status == "revoked"
    assert not (tmp_path / "other_known_hosts").exists()

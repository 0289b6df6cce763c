"""The known_hosts matcher, line for line against OpenSSH's own ``ssh-keygen -F`` on the same file.

The full verdict (accepted, unknown, changed, revoked) is compared with ``ssh`` itself connecting to a real host
in tests/e2e/test_known_hosts_openssh.py; here the name matching and line parsing are checked cheaply.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from deployer.ssh.known_hosts import (
    KnownHosts,
    canonical_host,
    hash_name,
    lookup_name,
    match_pattern_list,
    parse_line,
)

needs_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen (openssh-client)")


@pytest.fixture(scope="module")
def pub(tmp_path_factory: pytest.TempPathFactory) -> str:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("needs ssh-keygen")
    path = tmp_path_factory.mktemp("k") / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


PATTERNS = [
    "web1.example.com",
    "*.example.com",
    "web?.example.com",
    "*.example.com,!db*.example.com",
    "!web1.example.com",
    "web1.example.com,db1.example.com",
    "*",
    "*,!10.0.0.*",
    "[10.0.0.1]:2222",
    "[10.0.0.?]:2222,![10.0.0.9]:2222",
    "10.0.0.1",
    "10.0.0.*",
    "fd00::1",
    "[fd00::1]:2222",
    "[fd00::*]:*",
    "WEB1.EXAMPLE.COM",
    "*web*",
    "**.com",
    "?",
]
NAMES = [
    "web1.example.com",
    "web12.example.com",
    "db1.example.com",
    "10.0.0.1",
    "10.0.0.9",
    "[10.0.0.1]:2222",
    "[10.0.0.9]:2222",
    "fd00::1",
    "[fd00::1]:2222",
    "x",
    "example.com",
]


@pytest.mark.parametrize("name", NAMES)
def test_lines_matching_a_name_are_the_ones_ssh_keygen_finds(tmp_path: Path, pub: str, name: str) -> None:
    lines = [f"{p} {pub}" for p in PATTERNS]
    lines += [f"{hash_name(n, bytes(range(20)))} {pub}" for n in ("web1.example.com", "[10.0.0.1]:2222", "fd00::1")]
    lines += [f"@revoked {PATTERNS[1]} {pub}", f"@cert-authority {PATTERNS[7]} {pub}", "# comment", ""]
    path = tmp_path / "known_hosts"
    path.write_text("\n".join(lines) + "\n")
    found = subprocess.run(["ssh-keygen", "-F", name, "-f", str(path)], capture_output=True, text=True)
    theirs = sorted(int(n) for n in re.findall(r"found: line (\d+)", found.stdout))
    ours = sorted(k.line for k in KnownHosts.read([str(path)]).matching(name))
    assert ours == theirs


def test_negation_overrides_and_alone_vouches_for_nothing() -> None:
    assert match_pattern_list("db1.example.com", "*.example.com,!db*") == -1
    assert match_pattern_list("web1.example.com", "*.example.com,!db*") == 1
    assert match_pattern_list("web1.example.com", "!db*") == 0
    assert match_pattern_list("web1.example.com", "WEB1.Example.COM") == 1


def test_names_are_looked_up_as_openssh_does() -> None:
    assert lookup_name("Web1.Example.com", 22) == "web1.example.com"
    assert lookup_name("10.0.0.1", 2222) == "[10.0.0.1]:2222"
    assert lookup_name("FD00:0ABC:0000::0002", 22) == "fd00:abc::2"
    assert lookup_name("fd00::2", 2222) == "[fd00::2]:2222"
    assert canonical_host("web1") == "web1"


def test_unparseable_lines_are_skipped(pub: str) -> None:
    key_type, blob = pub.split()
    assert parse_line(f"host {pub}") is not None
    assert parse_line(f"  \thost {pub} comment here") is not None
    for bad in (
        "",
        "# comment",
        "host",
        f"host {key_type}",
        f"host ssh-rsa {blob}",  # the blob holds an ed25519 key
        f"host {key_type} AAAA!!",
        f"@trusted host {pub}",
        f"@revoked @revoked host {pub}",
        f"@revoked\thost {pub}",  # OpenSSH ends a marker at the first space on the line: an invalid marker
        f"|1|c2FsdA==|AAAA {pub}",  # a salt that is not 20 bytes: a bad hash
        f"host # {pub}",
    ):
        assert parse_line(bad) is None, bad
    assert parse_line(f"@revoked\thost\t{pub.replace(' ', chr(9))}") is not None  # tabs only: the marker ends at one


def test_verdicts(pub: str, tmp_path: Path) -> None:
    key_type, blob = pub.split()
    import base64

    offered = base64.b64decode(blob)
    other = parse_line(f"x {key_type} " + base64.b64encode(offered[:-1] + b"\x01").decode())
    assert other is not None
    wrong = f"{key_type} {base64.b64encode(other.blob).decode()}"

    def check(text: str, name: str = "[h]:2222", plain: str | None = "h") -> str:
        path = tmp_path / "kh"
        path.write_text(text)
        return KnownHosts.read([str(path)]).check(name, offered, plain_name=plain).verdict

    assert check(f"[h]:2222 {wrong}\n[h]:2222 {pub}\n") == "ok"
    assert check(f"[h]:2222 {wrong}\n") == "changed"
    assert check("") == "unknown"
    assert check(f"h {pub}\n") == "ok"  # the plain name vouches off port 22 ...
    assert check(f"h {pub}\n", plain=None) == "unknown"  # ... unless looked up by alias
    assert check(f"h {wrong}\n") == "unknown"
    assert check(f"[h]:2222 {pub}\n@revoked * {pub}\n") == "revoked"
    assert check(f"[h]:2222 {pub}\n@revoked other {pub}\n") == "ok"
    assert check(f"@cert-authority * {pub}\n") == "unknown"
    path = tmp_path / "kh"
    path.write_text(f"@cert-authority * {pub}\n")
    result = KnownHosts.read([str(path)]).check("h", offered)
    assert [k.where for k in result.authorities] == [f"{path}:1"]


def test_preferred_algorithms_put_recorded_types_first(pub: str) -> None:
    available = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256")
    known = KnownHosts([k for k in [parse_line(f"h {pub}")] if k])
    assert known.preferred_algorithms("h", available) == available
    assert known.preferred_algorithms("other", available) == available
    rsa_only = KnownHosts([k for k in [parse_line(f"h {pub}")] if k])
    object.__setattr__(rsa_only.keys[0], "key_type", "ssh-rsa")
    assert rsa_only.preferred_algorithms("h", available) == (
        "rsa-sha2-512",
        "rsa-sha2-256",
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
    )

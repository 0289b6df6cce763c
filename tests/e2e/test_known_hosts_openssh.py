"""The OpenSSH verdict table: for each known_hosts file, OpenSSH's own ``ssh`` and deployer connect to the same
real host and must reach the same verdict (accepted, unknown, changed, revoked).

One fleet host runs, besides its own sshd (port 22, one ed25519 key), a second sshd on port 2222 with three host
keys (ed25519, ECDSA, RSA) and a host certificate for the ed25519 key (signed by this test's CA), listening on
its IPv4 and on an IPv6 address given to the host for this test (port 22 and 2222 there). Each case writes
known_hosts file(s) from a template, then runs

    ssh -F /dev/null -o StrictHostKeyChecking=yes -o UserKnownHostsFile=<files> -o GlobalKnownHostsFile=/dev/null
        -o BatchMode=yes [-o HostKeyAlias=<alias>] -p <port> root@<address> true

and deployer's :class:`SSHTransport` (which logs in and runs ``true`` the same way) on the same files.
"""

from __future__ import annotations

import secrets
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from deployer.errors import HostKeyError
from deployer.remote.shell import Script
from deployer.ssh.known_hosts import hash_name
from deployer.ssh.transport import Endpoint, SSHTransport
from tests.fleet_fixtures import _require_fleet_support
from tests.harness.fleet import Fleet

pytestmark = pytest.mark.fleet

SECOND_SSHD = "/run/kh2"


@dataclass
class Target:
    fleet: Fleet
    v4: str
    v6: str
    keys: dict[str, str]
    """Template values: ``ed``/``ec``/``rsa`` (port 2222 keys), ``ed22`` (port 22), ``x_ed``/``x_ec`` (foreign)."""
    work: Path


def _pub(fleet: Fleet, path: str) -> str:
    return " ".join(fleet.exec("h1", f"cat {path}").stdout.split()[:2])


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    _require_fleet_support()
    fleet = Fleet(1).start()
    try:
        h1 = fleet.host("h1")
        # An IPv6 ULA on the host's link: the root side gets ::1, the host ::2 (nodad: usable at once).
        # The third group has a leading zero: the text `fdXX:XXXX:0XXX::2` is not the canonical one.
        groups = (secrets.randbelow(256), 0x1000 + secrets.randbelow(0xF000), secrets.randbelow(0x1000))
        prefix = f"fd{groups[0]:02x}:{groups[1]:x}:{groups[2]:x}::"
        v6 = f"{prefix}2"
        subprocess.run(["ip", "addr", "add", f"{prefix}1/64", "dev", f"{h1.netns}o", "nodad"], check=True)
        fleet.exec("h1", f"ip addr add {v6}/64 dev eth0 nodad")
        d = SECOND_SSHD
        work = tmp_path_factory.mktemp("known_hosts_table")
        fleet.exec(
            "h1", f"mkdir -p {d} && for t in ed25519 ecdsa rsa; do ssh-keygen -q -t $t -N '' -f {d}/key_$t; done"
        )
        # A host certificate for the ed25519 key, signed by a CA of this test, naming the host's addresses.
        for name, kind in (("ca", "ed25519"), ("x_ed", "ed25519"), ("x_ec", "ecdsa")):
            subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(work / name)], check=True)
        (work / "host_ed.pub").write_text(fleet.exec("h1", f"cat {d}/key_ed25519.pub").stdout)
        principals = f"{h1.address},{v6},web1.prod.example"
        sign = ["ssh-keygen", "-q", "-s", str(work / "ca"), "-I", "h1", "-h", "-n", principals, "-V", "-5m:+2h"]
        subprocess.run([*sign, str(work / "host_ed.pub")], check=True)
        cert = (work / "host_ed-cert.pub").read_text().strip()
        fleet.exec("h1", f"printf '%s\\n' '{cert}' > {d}/key_ed25519-cert.pub")
        fleet.exec(
            "h1",
            f"grep -v -e '^Port' -e '^ListenAddress' -e '^AddressFamily' -e '^HostKey' -e '^PidFile' "
            f"/run/fleet/sshd_config > {d}/sshd_config && "
            f"printf '%s\\n' 'AddressFamily any' 'ListenAddress {h1.address}:2222' 'ListenAddress [{v6}]:2222' "
            f"'ListenAddress [{v6}]:22' 'HostKey {d}/key_ed25519' 'HostKey {d}/key_ecdsa' 'HostKey {d}/key_rsa' "
            f"'HostCertificate {d}/key_ed25519-cert.pub' "
            f"'PidFile {d}/sshd.pid' >> {d}/sshd_config && /usr/sbin/sshd -f {d}/sshd_config -E {d}/sshd.log",
        )
        # The same keys without the certificate on port 2223: OpenSSH judges some files differently then.
        fleet.exec(
            "h1",
            f"grep -v -e '^HostCertificate' -e '^ListenAddress' -e '^PidFile' {d}/sshd_config > {d}/plain_config && "
            f"printf '%s\\n' 'ListenAddress {h1.address}:2223' 'PidFile {d}/plain.pid' >> {d}/plain_config && "
            f"/usr/sbin/sshd -f {d}/plain_config -E {d}/plain.log",
        )
        keys = {
            "ed": _pub(fleet, f"{d}/key_ed25519.pub"),
            "ec": _pub(fleet, f"{d}/key_ecdsa.pub"),
            "rsa": _pub(fleet, f"{d}/key_rsa.pub"),
            "ed22": _pub(fleet, "/run/fleet/ssh_host_ed25519_key.pub"),
            "x_ed": " ".join((work / "x_ed.pub").read_text().split()[:2]),
            "x_ec": " ".join((work / "x_ec.pub").read_text().split()[:2]),
            "ca": " ".join((work / "ca.pub").read_text().split()[:2]),
        }
        yield Target(fleet, h1.address, v6, keys, work)
    finally:
        fleet.stop()


@dataclass(frozen=True)
class Case:
    id: str
    files: tuple[str, ...]
    """known_hosts texts; ``{A}`` is the IPv4 address, ``{V6}`` the IPv6 one, ``{H:name}`` the hashed name."""
    expected: str
    """The verdict OpenSSH reaches (asserted too, so a case that stops testing what it says fails)."""
    port: int = 2222
    v6: bool = False
    alias: str | None = None
    typed: str | None = None
    """The address as given to both clients (default: the canonical text of the address)."""


CASES = [
    Case("exact [host]:port", ("[{A}]:2222 {ed}",), "ok"),
    Case("two keys of one type, right one second", ("[{A}]:2222 {x_ed}\n[{A}]:2222 {ed}",), "ok"),
    Case("two keys of one type, right one first", ("[{A}]:2222 {ed}\n[{A}]:2222 {x_ed}",), "ok"),
    Case("two files, right key in the second", ("[{A}]:2222 {x_ed}", "[{A}]:2222 {ed}"), "ok"),
    Case("wrong key of the offered type", ("[{A}]:2222 {x_ed}",), "changed"),
    Case("wrong ed25519 beside the right ECDSA key", ("[{A}]:2222 {x_ed}\n[{A}]:2222 {ec}",), "changed"),
    Case("only an ECDSA key recorded: it is negotiated", ("[{A}]:2222 {ec}",), "ok"),
    Case("only an RSA key recorded: it is negotiated", ("[{A}]:2222 {rsa}",), "ok"),
    Case("only a wrong ECDSA key recorded", ("[{A}]:2222 {x_ec}",), "changed"),
    Case("nothing recorded", ("# empty\n",), "unknown"),
    Case("another host only", ("[10.255.255.1]:2222 {ed}",), "unknown"),
    Case("* matches everything", ("* {ed}",), "ok"),
    Case("* and ? patterns", ("[{Apat}]:2222 {ed}",), "ok"),
    Case("? needs exactly one character", ("[{A}?]:2222 {ed}",), "unknown"),
    Case("comma list", ("web9.example,[{A}]:2222,db.example {ed}",), "ok"),
    Case("negated name: the line does not apply", ("*,!{A} {ed22}",), "unknown", port=22),
    Case("negated pattern: the line does not apply", ("*,!10.* {ed22}",), "unknown", port=22),
    Case("negated [host]:port, then the plain name matches", ("*,![{A}]:2222 {ed}",), "ok"),
    Case("both names negated", ("*,![{A}]:2222,!{A} {ed}",), "unknown"),
    Case("negation of another host", ("*,!db.example {ed}",), "ok"),
    Case("negation alone vouches for nothing", ("!db.example {ed}",), "unknown"),
    Case("negated line with a wrong key is no change", ("*,![{A}]:2222 {x_ed}\n[{A}]:2222 {ed}",), "ok"),
    Case("hashed entry", ("{H:[{A}]:2222} {ed}",), "ok"),
    Case("hashed entry, wrong key", ("{H:[{A}]:2222} {x_ed}",), "changed"),
    Case("hashed entry with a bad salt is skipped", ("|1|c2FsdA==|AAAAAAAAAAAAAAAAAAAAAAAAAAA= {x_ed}\n* {ed}",), "ok"),
    Case("plain host name vouches off port 22", ("{A} {ed}",), "ok"),
    Case("plain host name with a wrong key: unknown", ("{A} {x_ed}",), "unknown"),
    Case("port entry wins over the plain name", ("[{A}]:2223 {x_ed}\n{A} {ed}",), "changed", port=2223),
    Case("with a certificate the plain name still vouches (OpenSSH quirk)", ("[{A}]:2222 {x_ed}\n{A} {ed}",), "ok"),
    Case("no certificate: CA lines vouch for nothing", ("@cert-authority * {ca}",), "unknown", port=2223),
    Case("no certificate, plain key recorded", ("[{A}]:2223 {ed}",), "ok", port=2223),
    Case("[host]:22 is not the name for port 22", ("[{A}]:22 {ed22}",), "unknown", port=22),
    Case("port 22 is looked up by the plain name", ("{A} {ed22}",), "ok", port=22),
    Case("an entry for port 2222 says nothing about 22", ("[{A}]:2222 {ed22}",), "unknown", port=22),
    Case("@revoked refuses even an accepted key", ("[{A}]:2222 {ed}\n@revoked * {ed}",), "revoked"),
    Case("@revoked for another host only", ("[{A}]:2222 {ed}\n@revoked db.example {ed}",), "ok"),
    Case("@revoked of another key", ("@revoked * {x_ed}\n[{A}]:2222 {ed}",), "ok"),
    Case("@revoked<TAB> with spaces later is an invalid marker", ("[{A}]:2222 {ed}\n@revoked\t* {ed}",), "ok"),
    Case("@revoked with no host key recorded", ("@revoked * {ed}",), "revoked"),
    Case("@cert-authority vouches for no plain key", ("@cert-authority * {ed}",), "unknown"),
    Case("host certificate signed by a recorded CA", ("@cert-authority * {ca}",), "ok"),
    Case("CA line for [host]:port", ("@cert-authority [{A}]:2222 {ca}",), "ok"),
    Case("CA line under the plain name, off port 22", ("@cert-authority {A} {ca}",), "ok"),
    Case("CA line for other hosts only", ("@cert-authority *.example.net {ca}",), "unknown"),
    Case("another CA", ("@cert-authority * {x_ed}",), "unknown"),
    Case("another CA, the plain key recorded", ("@cert-authority * {x_ed}\n[{A}]:2222 {ed}",), "ok"),
    Case("the CA vouches despite a wrong plain key", ("@cert-authority * {ca}\n[{A}]:2222 {x_ed}",), "ok"),
    Case("revoked CA", ("@cert-authority * {ca}\n@revoked * {ca}",), "revoked"),
    Case("revoked certified key", ("@cert-authority * {ca}\n@revoked * {ed}",), "revoked"),
    Case("certificate principal via alias", ("@cert-authority * {ca}",), "ok", alias="web1.prod.example"),
    Case("alias not among the principals", ("@cert-authority * {ca}",), "unknown", alias="db9.prod.example"),
    Case(
        "alias not a principal, plain key recorded",
        ("@cert-authority * {ca}\ndb9.prod.example {ed}",),
        "ok",
        alias="db9.prod.example",
    ),
    Case("certificate over IPv6", ("@cert-authority * {ca}",), "ok", v6=True),
    Case("unknown marker: line skipped", ("@trusted [{A}]:2222 {ed}",), "unknown"),
    Case("two markers: line skipped", ("@revoked @revoked * {ed}\n[{A}]:2222 {ed}",), "ok"),
    Case(
        "comments, blank lines, indentation, trailing comment",
        ("# fleet\n\n   \n\t [{A}]:2222 {ed} root@h1 # trailing\n",),
        "ok",
    ),
    Case("key type not matching its blob: skipped", ("[{A}]:2222 ssh-rsa {ed_blob}",), "unknown"),
    Case("truncated line: skipped", ("[{A}]:2222 ssh-ed25519\n",), "unknown"),
    Case("garbage base64: skipped", ("[{A}]:2222 ssh-ed25519 AAAA!!!!\n",), "unknown"),
    Case("alias looked up verbatim, no port", ("web1.prod.example {ed}",), "ok", alias="web1.prod.example"),
    Case("alias matched case-insensitively", ("WEB1.Prod.EXAMPLE {ed}",), "ok", alias="web1.prod.example"),
    Case("alias against a wildcard", ("*.prod.example,!db*.prod.example {ed}",), "ok", alias="web1.prod.example"),
    Case("alias excluded by negation", ("*.prod.example,!db*.prod.example {ed}",), "unknown", alias="db1.prod.example"),
    Case("alias gets no plain-name fallback", ("{A} {ed}",), "unknown", alias="web1.prod.example"),
    Case("IPv6 [addr]:port", ("[{V6}]:2222 {ed}",), "ok", v6=True),
    Case("IPv6 hashed", ("{H:[{V6}]:2222} {ed}",), "ok", v6=True),
    Case("IPv6 wildcard", ("[fd*]:2222 {ed}",), "ok", v6=True),
    Case("IPv6 port 22, plain address", ("{V6} {ed}",), "ok", port=22, v6=True),
    Case("IPv6 port 22, [addr]:22 does not match", ("[{V6}]:22 {ed}",), "unknown", port=22, v6=True),
    Case("IPv6 wrong key", ("[{V6}]:2222 {x_ed}",), "changed", v6=True),
    Case("IPv6 typed with leading zeros, recorded canonically", ("[{V6}]:2222 {ed}",), "ok", v6=True, typed="{V6Z}"),
    Case("IPv6 recorded with leading zeros is not the host", ("[{V6Z}]:2222 {ed}",), "unknown", v6=True),
]


def _zero_padded(v6: str) -> str:
    """The same IPv6 address written with a 4-digit third group (``fd12:3456:abc::2`` -> ``...:0abc::2``)."""
    groups = v6.split(":")
    groups[2] = groups[2].rjust(4, "0")
    return ":".join(groups)


def render(text: str, target: Target) -> str:
    a, v6 = target.v4, target.v6
    octets = a.split(".")
    values = {
        **target.keys,
        "A": a,
        "V6": v6,
        "Apat": f"{octets[0]}.*.{octets[2]}.?",
        "ed_blob": target.keys["ed"].split()[1],
        "V6Z": _zero_padded(v6),
    }
    for name in (f"[{a}]:2222", f"[{v6}]:2222"):
        text = text.replace(
            f"{{H:{name.replace(a, '{A}').replace(v6, '{V6}')}}}", hash_name(name, secrets.token_bytes(20))
        )
    for key, value in values.items():
        text = text.replace(f"{{{key}}}", value)
    return text


def openssh_verdict(target: Target, files: list[Path], address: str, port: int, alias: str | None) -> str:
    argv = [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        str(target.fleet.client_key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "UserKnownHostsFile=" + " ".join(str(f) for f in files),
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "UpdateHostKeys=no",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=20",
        *(["-o", f"HostKeyAlias={alias}"] if alias else []),
        "-p",
        str(port),
        f"root@{address}",
        "true",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if proc.returncode == 0:
        return "ok"
    err = proc.stderr
    if "REVOKED HOST KEY" in err:
        return "revoked"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in err:
        return "changed"
    if "host key is known for" in err:
        return "unknown"
    return f"error: {shlex.join(argv)}: {err.strip()}"


def deployer_verdict(target: Target, files: list[Path], address: str, port: int, alias: str | None) -> str:
    endpoint = Endpoint(
        name="h1",
        address=address,
        port=port,
        user="root",
        connect_timeout=20,
        identity_file=str(target.fleet.client_key),
        known_hosts=tuple(str(f) for f in files),
        use_user_known_hosts=False,
        host_key_alias=alias,
    )
    try:
        transport = SSHTransport(endpoint)
    except HostKeyError as exc:
        text = str(exc)
        if "is REVOKED" in text:
            return "revoked"
        if "HOST KEY CHANGED" in text:
            return "changed"
        if "is not known" in text:
            return "unknown"
        return f"error: {text}"
    try:
        result = transport.run(Script(name="true", parts=("true\n",)))
        return "ok" if result.exit_status == 0 else f"error: exit {result.exit_status}"
    finally:
        transport.close()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_deployer_and_openssh_agree(target: Target, case: Case, tmp_path: Path) -> None:
    files = []
    for i, text in enumerate(case.files):
        path = tmp_path / f"known_hosts_{i}"
        path.write_text(render(text, target) + ("" if text.endswith("\n") else "\n"))
        files.append(path)
    address = target.v6 if case.v6 else target.v4
    if case.typed:
        address = render(case.typed, target)
    openssh = openssh_verdict(target, files, address, case.port, case.alias)
    ours = deployer_verdict(target, files, address, case.port, case.alias)
    listing = "\n".join(p.read_text() for p in files)
    assert openssh == case.expected, f"OpenSSH: {openssh}\n{listing}"
    assert ours == openssh, f"deployer: {ours}, OpenSSH: {openssh}\n{listing}"


def test_table_runs_against_keys_the_host_really_serves(target: Target) -> None:
    """The fixture's keys are the ones sshd serves (else every 'ok' case would test nothing)."""
    sock = paramiko.Transport((target.v4, 2222))
    try:
        sock.start_client(timeout=20)
        served = sock.get_remote_server_key()
    finally:
        sock.close()
    assert f"{served.get_name()} {served.get_base64()}" == target.keys["ed"]

"""Host certificates made by ssh-keygen, parsed and checked as OpenSSH checks them."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from deployer.ssh.certs import CertificateError, parse_certificate
from deployer.ssh.known_hosts import KnownHosts, parse_line


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("needs ssh-keygen")
    d = tmp_path_factory.mktemp("certs")
    for name, kind in (("ca", "ed25519"), ("rsa_ca", "rsa"), ("host", "ed25519"), ("host_ec", "ecdsa")):
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(d / name)], check=True)
    return d


def sign(keys: Path, key: str, *extra: str, ca: str = "ca") -> bytes:
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(keys / ca), "-I", "test", *extra, str(keys / f"{key}.pub")], check=True
    )
    return base64.b64decode((keys / f"{key}-cert.pub").read_text().split()[1])


def pub(keys: Path, name: str) -> str:
    return " ".join((keys / f"{name}.pub").read_text().split()[:2])


@pytest.mark.parametrize(("key", "ca"), [("host", "ca"), ("host_ec", "ca"), ("host", "rsa_ca")])
def test_host_certificate_is_parsed_and_its_signature_checked(keys: Path, key: str, ca: str) -> None:
    cert = parse_certificate(sign(keys, key, "-h", "-n", "web1,10.0.0.1", "-V", "-5m:+1h", ca=ca))
    assert cert.kind == 2 and cert.principals == ("web1", "10.0.0.1")
    assert cert.key_blob == base64.b64decode(pub(keys, key).split()[1])
    assert cert.ca_blob == base64.b64decode(pub(keys, ca).split()[1])
    assert cert.problem("web1") is None and cert.problem("10.0.0.1") is None
    assert "not among its principals" in (cert.problem("web2") or "")


def test_validity_kind_and_tampering(keys: Path) -> None:
    expired = parse_certificate(sign(keys, "host", "-h", "-V", "20200101:20200102"))
    assert expired.problem("any") == "it has expired"
    future = parse_certificate(sign(keys, "host", "-h", "-V", "+1d:+2d"))
    assert future.problem("any") == "it is not valid yet"
    no_principals = parse_certificate(sign(keys, "host", "-h"))
    assert no_principals.problem("anything") is None  # OpenSSH accepts a host certificate without principals
    user = parse_certificate(sign(keys, "host", "-n", "web1"))
    assert user.problem("web1") == "it is not a host certificate"
    blob = bytearray(sign(keys, "host", "-h", "-n", "web1"))
    blob[-70] ^= 1  # inside the signature... or the CA key: either way it must not verify
    with pytest.raises(CertificateError):
        parse_certificate(bytes(blob))


def test_known_hosts_verdicts_for_a_certificate(keys: Path, tmp_path: Path) -> None:
    cert = parse_certificate(sign(keys, "host", "-h", "-n", "web1", "-V", "-5m:+1h"))

    def verdict(text: str, principal: str = "web1") -> str:
        path = tmp_path / "kh"
        path.write_text(text)
        return KnownHosts.read([str(path)]).check_certificate("web1", cert, principal).verdict

    ca, host = pub(keys, "ca"), pub(keys, "host")
    assert verdict(f"@cert-authority * {ca}\n") == "ok"
    assert verdict(f"@cert-authority *.example {ca}\n") == "unknown"
    assert verdict(f"@cert-authority * {ca}\n@revoked * {ca}\n") == "revoked"
    assert verdict(f"@cert-authority * {ca}\n@revoked * {host}\n") == "revoked"
    assert verdict(f"@cert-authority * {ca}\n", principal="db1") == "unknown"
    assert verdict(f"@cert-authority * {ca}\nweb1 {host}\n", principal="db1") == "ok"  # its plain key
    assert verdict(f"web1 {host}\n") == "ok"
    line = parse_line(f"@cert-authority * {ca}")
    assert line is not None and line.marker == "@cert-authority"

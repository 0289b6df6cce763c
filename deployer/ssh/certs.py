"""OpenSSH host certificates (``PROTOCOL.certkeys``): parsed and checked as ``ssh`` checks them.

A host that has a certificate signed by a CA recorded in known_hosts as ``@cert-authority`` is accepted
when the certificate is a host certificate, valid now, names the host among its principals (or names no
principal at all, which OpenSSH accepts for host certificates) and carries no critical option. A certificate
that fails those checks is not an error by itself: like OpenSSH, deployer then judges the plain key inside it
against the ordinary known_hosts lines.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import paramiko
from paramiko.message import Message

from deployer.ssh.known_hosts import fingerprint_blob

CERT_SUFFIX = "-cert-v01@openssh.com"
HOST_CERT = 2
# Host certificate algorithms in OpenSSH's default order (its HostKeyAlgorithms lists them first).
CERT_ALGORITHMS = (
    "ssh-ed25519-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "rsa-sha2-512-cert-v01@openssh.com",
    "rsa-sha2-256-cert-v01@openssh.com",
)


_KEY_CLASSES: dict[str, type[paramiko.PKey]] = {
    "ssh-ed25519": paramiko.Ed25519Key,
    "ssh-rsa": paramiko.RSAKey,
    "ecdsa": paramiko.ECDSAKey,
}


class CertificateError(ValueError):
    """The certificate cannot be parsed or its CA signature does not verify."""


@dataclass(frozen=True)
class HostCertificate:
    """The fields of an OpenSSH certificate that host verification needs."""

    cert_type: str
    key_blob: bytes
    """The certified public key, as a plain key blob (what known_hosts lines hold)."""
    serial: int
    kind: int
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    critical_options: bytes
    ca_blob: bytes

    @property
    def ca_fingerprint(self) -> str:
        return fingerprint_blob(self.ca_blob)

    def problem(self, name: str, now: float | None = None) -> str | None:
        """Why OpenSSH would not accept this certificate for host ``name`` (None: it would)."""
        moment = int(time.time() if now is None else now)
        if self.kind != HOST_CERT:
            return "it is not a host certificate"
        if moment < self.valid_after:
            return "it is not valid yet"
        if moment >= self.valid_before:
            return "it has expired"
        if self.principals and name not in self.principals:
            return f"{name!r} is not among its principals ({', '.join(self.principals)})"
        if self.critical_options:
            return "it carries critical options"
        return None


def host_certificate(key: paramiko.PKey) -> HostCertificate | None:
    """The certificate a host presented (paramiko keeps it as the key's ``public_blob``), or None."""
    blob = getattr(key, "public_blob", None)
    if blob is None or not str(blob.key_type).endswith(CERT_SUFFIX):
        return None
    return parse_certificate(bytes(blob.key_blob))


def parse_certificate(blob: bytes) -> HostCertificate:
    """Parse an OpenSSH certificate blob and verify its CA signature (as OpenSSH does on receipt)."""
    try:
        msg = Message(blob)
        cert_type = msg.get_text()
        if not cert_type.endswith(CERT_SUFFIX):
            raise CertificateError(f"not a certificate: {cert_type}")
        key_class = _KEY_CLASSES.get(cert_type[: -len(CERT_SUFFIX)].split("-sha2-nistp")[0])
        if key_class is None:
            raise CertificateError(f"unsupported certificate type {cert_type}")
        key = key_class(msg=Message(blob))
        # The key class read the type, nonce and key fields of its own copy; skip as many bytes here.
        consumed = _key_fields_end(blob, cert_type)
        msg = Message(blob[consumed:])
        serial = msg.get_int64()
        kind = msg.get_int()
        key_id = msg.get_string().decode("utf-8", "replace")
        principals_msg = Message(msg.get_string())
        principals: list[str] = []
        while principals_msg.get_remainder():
            principals.append(principals_msg.get_string().decode("utf-8", "replace"))
        valid_after = msg.get_int64()
        valid_before = msg.get_int64()
        critical = msg.get_string()
        msg.get_string()  # extensions
        msg.get_string()  # reserved
        ca_blob = msg.get_string()
        signed_len = consumed + msg.packet.tell()
        signature = msg.get_string()
    except CertificateError:
        raise
    except Exception as exc:
        raise CertificateError(f"malformed certificate: {exc}") from None
    ca_type = Message(ca_blob).get_text()
    try:
        ca_key = paramiko.PKey.from_type_string(ca_type, ca_blob)
    except Exception as exc:
        raise CertificateError(f"unsupported CA key {ca_type}: {exc}") from None
    if not ca_key.verify_ssh_sig(blob[:signed_len], Message(signature)):
        raise CertificateError("the CA signature on the certificate does not verify")
    return HostCertificate(
        cert_type=cert_type,
        key_blob=key.asbytes(),
        serial=serial,
        kind=kind,
        key_id=key_id,
        principals=tuple(principals),
        valid_after=valid_after,
        valid_before=valid_before,
        critical_options=critical,
        ca_blob=ca_blob,
    )


def _key_fields_end(blob: bytes, cert_type: str) -> int:
    """Offset just past the certified key's own fields (type, nonce, then per-type public numbers)."""
    msg = Message(blob)
    msg.get_text()
    msg.get_string()  # nonce
    fields = {"ssh-ed25519": 1, "ssh-rsa": 2, "rsa-sha2-256": 2, "rsa-sha2-512": 2, "ssh-dss": 4}
    base = cert_type[: -len(CERT_SUFFIX)]
    count = 2 if base.startswith("ecdsa-") else fields.get(base)
    if count is None:
        raise CertificateError(f"unsupported certificate type {cert_type}")
    for _ in range(count):
        msg.get_string()  # an mpint is a string on the wire
    return int(msg.packet.tell())

"""known_hosts read and matched exactly as OpenSSH (``hostfile.c``, ``match.c``, ``sshconnect.c``) decides.

Paramiko's ``HostKeys`` keeps one key per host and key type and knows no patterns, so a host with two keys
of one type was refused as changed and ``*.example.com`` lines vouched for nothing. This module is our own
reading of the format, rule for rule:

* a line is ``[marker] names keytype base64 [comment]``; blank lines and ``#`` comments are skipped, and so
  is any line OpenSSH cannot parse (unknown marker, bad key, bad hash) — it vouches for nothing;
* ``names`` is a comma list of patterns with ``*`` and ``?``; a pattern starting with ``!`` that matches
  makes the whole line not apply; names are compared case-insensitively;
* ``|1|salt|hmac`` is a hashed name (HMAC-SHA1 of the name, salted), one name per line;
* a host on port 22 is looked up as ``host``, elsewhere as ``[host]:port``; when nothing at all is recorded
  under ``[host]:port``, a key recorded under the plain ``host`` still vouches (OpenSSH's "checking without
  port identifier");
* every line that matches takes part: the offered key is accepted when any plain line holds it, refused as
  changed when plain lines exist and none holds it (whatever their key type), unknown when there is none;
* ``@revoked`` lines that match the host refuse their key even when another line accepts it;
* ``@cert-authority`` lines vouch only for host certificates signed by that CA, never for a plain key
  (:meth:`KnownHosts.check_certificate`; a certificate that does not pass is judged as its plain key).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import ipaddress
import os
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, Protocol

Marker = Literal["", "@cert-authority", "@revoked"]
Verdict = Literal["ok", "unknown", "changed", "revoked"]

# Plain key types OpenSSH 9 reads from known_hosts (certificates are never recorded as host keys).
KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "ssh-rsa",
        "ssh-dss",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
_MARKERS: dict[str, Marker] = {"@cert-authority": "@cert-authority", "@revoked": "@revoked"}
_HASH_MAGIC = "|1|"
_SHA1_LEN = 20


def fingerprint_blob(blob: bytes) -> str:
    """OpenSSH-style ``SHA256:<base64>`` fingerprint of a public key blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def blob_type(blob: bytes) -> str | None:
    """The key type named inside a public key blob (its first SSH string), or None when malformed."""
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    if length > len(blob) - 4:
        return None
    try:
        return blob[4 : 4 + length].decode("ascii")
    except UnicodeDecodeError:
        return None


def canonical_host(host: str) -> str:
    """The host as OpenSSH names it in known_hosts: lowercased, and an IP address literal in its canonical
    text (OpenSSH resolves literals and prints them back: ``fd00:0abc::2`` is looked up as ``fd00:abc::2``)."""
    host = host.lower()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def lookup_name(host: str, port: int) -> str:
    """The name OpenSSH looks a host up under (``put_host_port``): ``host`` on port 22, else ``[host]:port``."""
    host = canonical_host(host)
    return host if port in (0, 22) else f"[{host}]:{port}"


@dataclass(frozen=True)
class KnownKey:
    """One parsed known_hosts line."""

    path: str
    line: int
    marker: Marker
    names: str
    key_type: str
    blob: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint_blob(self.blob)

    @property
    def where(self) -> str:
        """``file:line``, as OpenSSH names an offending line."""
        return f"{self.path}:{self.line}"

    def describe(self) -> str:
        return f"{self.key_type} {self.fingerprint} ({self.where})"

    def matches(self, name: str) -> bool:
        """True when this line applies to ``name`` (already lowercased, as OpenSSH lowercases host names)."""
        if self.names.startswith("|"):
            return _hashed_matches(name, self.names)
        return match_pattern_list(name, self.names) == 1


# --- matching (match.c) ---------------------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    # Only `*` and `?` are special in OpenSSH patterns; everything else is literal.
    parts = ("[\\s\\S]*" if c == "*" else "[\\s\\S]" if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts) + r"\Z")


def match_pattern(name: str, pattern: str) -> bool:
    """OpenSSH ``match_pattern``: the whole of ``name`` matches ``pattern`` (``*`` any run, ``?`` one char)."""
    return _pattern_regex(pattern).match(name) is not None


def match_pattern_list(name: str, patterns: str) -> int:
    """OpenSSH ``match_hostname``: 1 if a pattern of the comma list matches ``name``, -1 if a negated one
    (``!pattern``) does — which overrides any positive match — else 0. Patterns are lowercased."""
    got_positive = 0
    for sub in patterns.split(","):
        negated = sub.startswith("!")
        if negated:
            sub = sub[1:]
        if len(sub) >= 1023:  # OpenSSH's buffer for one pattern: a longer list does not match at all
            return 0
        if match_pattern(name, sub.lower()):
            if negated:
                return -1
            got_positive = 1
    return got_positive


def hash_name(name: str, salt: bytes) -> str:
    """OpenSSH's hashed host name: ``|1|base64(salt)|base64(HMAC-SHA1(salt, name))``."""
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"{_HASH_MAGIC}{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def _hash_salt(field: str) -> bytes | None:
    """The salt of a ``|1|salt|hmac`` field, or None when OpenSSH would call the hash bad."""
    if not field.startswith(_HASH_MAGIC):
        return None
    salt_b64, sep, _ = field[len(_HASH_MAGIC) :].partition("|")
    if not sep or not salt_b64 or len(salt_b64) > 1024:
        return None
    try:
        salt = base64.b64decode(salt_b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    return salt if len(salt) == _SHA1_LEN else None


def _hashed_matches(name: str, field: str) -> bool:
    salt = _hash_salt(field)
    return salt is not None and hmac.compare_digest(hash_name(name, salt), field)


# --- reading (hostfile.c) -------------------------------------------------------------------------------------


def _split_marker(rest: str) -> tuple[Marker | None, str]:
    """OpenSSH ``check_markers``: the marker and the rest of the line; None marker means an invalid one.

    A marker ends at the first space, or (if the line has none) the first tab — so ``@revoked<TAB>*`` on a
    line that has spaces later is an invalid marker to OpenSSH, and the line is skipped; so it is here.
    """
    marker: Marker = ""
    while rest.startswith("@"):
        if marker:
            return None, rest  # only one marker is allowed
        end = rest.find(" ")
        if end < 0:
            end = rest.find("\t")
        if end <= 1 or end >= 32:
            return None, rest
        found = _MARKERS.get(rest[:end])
        if found is None:
            return None, rest
        marker = found
        rest = rest[end:].lstrip(" \t")
    return marker, rest


def parse_line(text: str, path: str = "-", number: int = 0) -> KnownKey | None:
    """One known_hosts line, or None for a blank, comment or unparseable line (which OpenSSH skips too)."""
    rest = text.rstrip("\n").lstrip(" \t")
    if not rest or rest.startswith("#"):
        return None
    marker, rest = _split_marker(rest)
    if marker is None:
        return None
    names, rest = _token(rest)
    rest = rest.lstrip(" \t")
    if not names or not rest or rest.startswith("#"):
        return None
    if names.startswith("|") and _hash_salt(names) is None:
        return None  # "bad host hash": the line is skipped
    key_type, rest = _token(rest)
    encoded, _ = _token(rest.lstrip(" \t"))
    if key_type not in KEY_TYPES or not encoded:
        return None
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    if blob_type(blob) != key_type:
        return None
    return KnownKey(path, number, marker, names, key_type, blob)


def _token(text: str) -> tuple[str, str]:
    match = re.match(r"[^ \t]*", text)
    assert match is not None
    return match.group(0), text[match.end() :]


def parse(text: str, path: str = "-") -> list[KnownKey]:
    """Every usable line of a known_hosts text, in order."""
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        key = parse_line(line, path, number)
        if key is not None:
            keys.append(key)
    return keys


# --- deciding (sshconnect.c check_host_key) -------------------------------------------------------------------


@dataclass(frozen=True)
class HostKeyCheck:
    """What known_hosts says about the key a host offered, looked up under ``name``."""

    verdict: Verdict
    name: str
    offered_type: str
    offered_fingerprint: str
    recorded: tuple[KnownKey, ...] = ()
    """The plain lines for the host that did not hold the offered key (``changed``)."""
    matched: KnownKey | None = None
    """The line that vouched for the key (``ok``), or the ``@revoked`` line (``revoked``)."""
    authorities: tuple[KnownKey, ...] = ()
    """``@cert-authority`` lines that apply to the host (they vouch only for certificates)."""
    via_plain_name: bool = False
    """Accepted by an entry under the plain host name although the port is not 22."""
    certificate_problem: str | None = None
    """Why the host's certificate did not vouch (it was then judged as a plain key)."""

    @property
    def accepted(self) -> bool:
        return self.verdict == "ok"


@dataclass
class KnownHosts:
    """The lines of one or more known_hosts files, in the order OpenSSH would read them."""

    keys: list[KnownKey] = field(default_factory=list)
    files: tuple[str, ...] = ()

    @classmethod
    def read(cls, files: Iterable[str]) -> KnownHosts:
        """Read ``files`` in order; missing files (or directories) are skipped, as OpenSSH does.

        Raises ``OSError`` when an existing file cannot be read.
        """
        keys: list[KnownKey] = []
        read: list[str] = []
        for path in files:
            if not os.path.isfile(path):
                continue
            with open(path, encoding="utf-8", errors="surrogateescape") as handle:
                keys.extend(parse(handle.read(), path))
            read.append(path)
        return cls(keys, tuple(read))

    def matching(self, name: str) -> list[KnownKey]:
        """Every line (plain, CA or revoked) that applies to ``name``."""
        name = name.lower()
        return [k for k in self.keys if k.matches(name)]

    def plain_keys(self, name: str) -> list[KnownKey]:
        """The plain (unmarked) lines for ``name``: what ``deployer trust`` and key negotiation look at."""
        return [k for k in self.matching(name) if not k.marker]

    def revoked(self, name: str, blobs: Sequence[bytes]) -> KnownKey | None:
        """The first ``@revoked`` line for ``name`` holding one of ``blobs`` (a key, or a cert's key and CA)."""
        for key in self.matching(name):
            if key.marker == "@revoked" and key.blob in blobs:
                return key
        return None

    def check(self, name: str, offered: bytes, *, plain_name: str | None = None) -> HostKeyCheck:
        """OpenSSH's verdict on a plain host key ``offered`` (its blob) for a host looked up as ``name``.

        ``plain_name`` is the host without its port, tried when nothing at all is recorded under ``name``
        (pass it only off port 22 and when no host key alias is in use, as OpenSSH does).
        """
        offered_type = blob_type(offered) or "?"
        found = self._status(name, offered)
        if found.verdict == "unknown" and plain_name is not None and plain_name != name:
            fallback = self._status(plain_name, offered)
            if fallback.verdict == "ok":
                return HostKeyCheck(
                    "ok",
                    name,
                    offered_type,
                    fingerprint_blob(offered),
                    matched=fallback.matched,
                    via_plain_name=True,
                )
        return found

    def check_certificate(
        self,
        name: str,
        cert: HostCertificateLike,
        principal: str,
        *,
        plain_name: str | None = None,
        now: float | None = None,
    ) -> HostKeyCheck:
        """OpenSSH's verdict on a host certificate (``check_host_key`` with a certificate, step for step).

        Accepted when an ``@cert-authority`` line for the host holds its CA and the certificate is valid for
        ``principal`` (the host name, or the alias); refused as revoked when its key or CA is ``@revoked``.
        Otherwise the certificate is "downgraded" to its plain key, which :meth:`check` judges — first, off
        port 22, under the plain host name alone (so a plain-name line accepts it even when a ``[host]:port``
        line holds another key, as OpenSSH does when the host presents a certificate).
        """
        offered_type = blob_type(cert.key_blob) or "?"
        fp = fingerprint_blob(cert.key_blob)
        status, line = self._cert_status(name, cert)
        if status == "revoked":
            return HostKeyCheck("revoked", name, offered_type, fp, matched=line)
        if status == "ok" and line is not None:
            problem = cert.problem(principal, now)
            if problem is None:
                return HostKeyCheck("ok", name, offered_type, fp, matched=line)
            plain = self.check(name, cert.key_blob, plain_name=plain_name)
            return dataclasses.replace(plain, certificate_problem=f"certificate ({line.where}): {problem}")
        if plain_name is not None and plain_name != name:
            fallback, fallback_line = self._cert_status(plain_name, cert)
            if fallback == "ok" and fallback_line is not None and cert.problem(principal, now) is None:
                return HostKeyCheck("ok", name, offered_type, fp, matched=fallback_line, via_plain_name=True)
            if fallback != "revoked":
                downgraded = self._status(plain_name, cert.key_blob)
                if downgraded.verdict == "ok":
                    return dataclasses.replace(downgraded, name=name, via_plain_name=True)
        return self.check(name, cert.key_blob, plain_name=plain_name)

    def _cert_status(self, name: str, cert: HostCertificateLike) -> tuple[str, KnownKey | None]:
        """ "revoked", "ok" (a CA line for ``name`` holds the certificate's CA) or "new"."""
        applying = self.matching(name)
        revoked = next(
            (k for k in applying if k.marker == "@revoked" and k.blob in (cert.key_blob, cert.ca_blob)), None
        )
        if revoked is not None:
            return "revoked", revoked
        authority = next((k for k in applying if k.marker == "@cert-authority" and k.blob == cert.ca_blob), None)
        return ("ok", authority) if authority is not None else ("new", None)

    def _status(self, name: str, offered: bytes) -> HostKeyCheck:
        applying = self.matching(name)
        offered_type = blob_type(offered) or "?"
        fp = fingerprint_blob(offered)
        authorities = tuple(k for k in applying if k.marker == "@cert-authority")
        revoked = next((k for k in applying if k.marker == "@revoked" and k.blob == offered), None)
        if revoked is not None:
            return HostKeyCheck("revoked", name, offered_type, fp, matched=revoked, authorities=authorities)
        plain = [k for k in applying if not k.marker]
        holder = next((k for k in plain if k.blob == offered), None)
        if holder is not None:
            return HostKeyCheck("ok", name, offered_type, fp, matched=holder, authorities=authorities)
        verdict: Verdict = "changed" if plain else "unknown"
        return HostKeyCheck(verdict, name, offered_type, fp, recorded=tuple(plain), authorities=authorities)

    def preferred_algorithms(self, name: str, available: Sequence[str]) -> tuple[str, ...]:
        """``available`` host key algorithms (in OpenSSH's default order: certificates first) reordered as
        OpenSSH's ``order_hostkeyalgs`` does: unchanged when the first one's key type is recorded for
        ``name``; otherwise the algorithms whose key type is recorded, and every certificate algorithm when a
        ``@cert-authority`` line applies, go first. A host with several keys thus shows the one recorded."""
        applying = self.matching(name)
        types = {k.key_type for k in applying if not k.marker}
        has_ca = any(k.marker == "@cert-authority" for k in applying)
        if not available or _plain_type(available[0]) in types:
            return tuple(available)
        first = [a for a in available if (_is_cert(a) and has_ca) or _plain_type(a) in types]
        return tuple(first) + tuple(a for a in available if a not in first)


class HostCertificateLike(Protocol):
    """What :meth:`KnownHosts.check_certificate` needs of a certificate (see :mod:`deployer.ssh.certs`)."""

    @property
    def key_blob(self) -> bytes: ...

    @property
    def ca_blob(self) -> bytes: ...

    def problem(self, name: str, now: float | None = None) -> str | None: ...


def _is_cert(algorithm: str) -> bool:
    return algorithm.endswith("-cert-v01@openssh.com")


def _plain_type(algorithm: str) -> str:
    """The plain key type of an algorithm (``rsa-sha2-512`` and its certificate form sign with ``ssh-rsa``)."""
    base = algorithm.removesuffix("-cert-v01@openssh.com")
    return "ssh-rsa" if base in ("rsa-sha2-256", "rsa-sha2-512") else base

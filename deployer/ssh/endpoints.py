"""Connection settings for each host, from the inventory's ``ssh`` section, the host's own values and, when
asked (``ssh.config``), the operator's OpenSSH client config.

With ``ssh.config``, each host's ``address`` is looked up in the config as OpenSSH looks up the name given
on its command line: ``HostName``, ``User``, ``Port``, ``IdentityFile``, ``IdentitiesOnly``, ``HostKeyAlias``
and ``ProxyJump`` apply. The host's own ``port`` and ``user`` and the inventory's ``ssh.gateway`` still win,
as options on OpenSSH's command line win over its config. Each ProxyJump hop is itself looked up in the
config, so ``ProxyJump bastion,inner`` works with ``Host bastion`` / ``Host inner`` blocks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import paramiko

from deployer.core.config import HostConfig, SSHConfig
from deployer.core.inventory import Inventory
from deployer.errors import InventoryError
from deployer.ssh.transport import Endpoint, SSHTransport, Transport

Connector = Callable[[HostConfig], Transport]
"""Opens the transport to one host (injected: unit tests pass a fake)."""

_HOP_RE = re.compile(
    r"^(?:(?P<user>[^@\s]+)@)?(?:\[(?P<v6>[0-9A-Fa-f:.%\w]+)\]|(?P<host>[^:\s\[\]]+))(?::(?P<port>\d+))?$"
)
_MAX_HOPS = 8


def strip_brackets(address: str) -> str:
    """``[fd00::1]`` -> ``fd00::1``: sockets and known_hosts want the bare address."""
    return address[1:-1] if address.startswith("[") and address.endswith("]") else address


def parse_hop(spec: str, where: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (an IPv6 address in brackets) -> (user, host, port)."""
    match = _HOP_RE.fullmatch(spec.strip())
    if match is None:
        raise InventoryError(f"{where}: {spec!r} is not [user@]host[:port] (an IPv6 address goes in brackets)")
    port = match.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise InventoryError(f"{where}: port {port} in {spec!r} is out of range")
    return match.group("user"), match.group("v6") or match.group("host"), int(port) if port else None


def ssh_config_path(ssh: SSHConfig, inventory_path: Path) -> Path | None:
    """The OpenSSH config file ``ssh.config`` names: None when off."""
    if ssh.config is False:
        return None
    if ssh.config is True:
        return Path(os.path.expanduser("~/.ssh/config"))
    path = Path(os.path.expanduser(ssh.config))
    return path if path.is_absolute() else inventory_path.parent / path


def load_ssh_config(ssh: SSHConfig, inventory_path: Path) -> paramiko.SSHConfig | None:
    """The parsed OpenSSH config, or None when ``ssh.config`` is off. ``true`` and a missing ~/.ssh/config
    mean an empty config; a path that is named but missing or unreadable is an inventory error."""
    path = ssh_config_path(ssh, inventory_path)
    if path is None:
        return None
    if ssh.config is True and not path.exists():
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(str(path))
    except OSError as exc:
        raise InventoryError(
            f"{inventory_path}: ssh.config: cannot read {path}: {exc.strerror or exc}",
            hint="set ssh.config to an existing OpenSSH client config file, or `true` for ~/.ssh/config",
        ) from None
    except Exception as exc:  # paramiko raises assorted errors on bad syntax
        raise InventoryError(f"{inventory_path}: ssh.config: {path} cannot be parsed: {exc}") from None


class _Resolver:
    """Builds endpoints for one inventory (the OpenSSH config is read once)."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.ssh = inventory.config.ssh
        self.config = load_ssh_config(self.ssh, inventory.path)
        self.config_path = ssh_config_path(self.ssh, inventory.path)
        known_hosts: tuple[str, ...] = ()
        if self.ssh.known_hosts:
            path = Path(os.path.expanduser(self.ssh.known_hosts))
            known_hosts = (str(path if path.is_absolute() else inventory.path.parent / path),)
        self.known_hosts = known_hosts

    def _lookup(self, name: str) -> dict[str, object]:
        if self.config is None:
            return {}
        return dict(self.config.lookup(name))

    def _port(self, found: dict[str, object], name: str) -> int | None:
        raw = found.get("port")
        if raw is None:
            return None
        try:
            port = int(str(raw))
        except ValueError:
            port = 0
        if not 1 <= port <= 65535:
            raise InventoryError(f"{self.config_path}: Port {raw!r} for {name!r} is not a port number")
        return port

    def _identities(self, found: dict[str, object]) -> tuple[tuple[str, ...], bool]:
        files = found.get("identityfile")
        listed = tuple(str(f) for f in files) if isinstance(files, list) else ()
        if not listed and self.ssh.identity_file:
            listed = (self.ssh.identity_file,)
        only = str(found.get("identitiesonly", "no")).lower() == "yes"
        return listed, only

    def gateway_chain(self, spec: str, where: str, depth: int = 0) -> Endpoint | None:
        """The last hop of a comma-separated jump list, each hop's gateway the one before it."""
        if spec.strip().lower() == "none":
            return None
        gateway: Endpoint | None = None
        hops = [h for h in spec.split(",") if h.strip()]
        if depth + len(hops) > _MAX_HOPS:
            raise InventoryError(f"{where}: more than {_MAX_HOPS} jump hosts (a ProxyJump loop?)")
        for index, hop in enumerate(hops):
            user, name, port = parse_hop(hop, where)
            found = self._lookup(name)
            if index == 0 and found.get("proxyjump"):
                # The first hop is reached as OpenSSH reaches it: through its own ProxyJump, if any.
                gateway = self.gateway_chain(str(found["proxyjump"]), f"{self.config_path}: ProxyJump", depth + 1)
            identity_files, identities_only = self._identities(found)
            address = strip_brackets(str(found.get("hostname", name)))
            alias = found.get("hostkeyalias")
            gateway = Endpoint(
                name=f"gateway {name}",
                address=address,
                port=port or self._port(found, name) or 22,
                user=user or str(found.get("user") or self.ssh.user),
                connect_timeout=self.ssh.connect_timeout,
                keepalive=self.ssh.keepalive,
                keepalive_count=self.ssh.keepalive_count,
                identity_file=identity_files[0] if identity_files else None,
                identity_files=identity_files,
                identities_only=identities_only,
                known_hosts=self.known_hosts,
                use_user_known_hosts=self.ssh.use_user_known_hosts,
                host_key_alias=str(alias) if alias else None,
                gateway=gateway,
            )
        return gateway

    def endpoint(self, host: HostConfig) -> Endpoint:
        ssh = self.ssh
        found = self._lookup(strip_brackets(host.address))
        if ssh.gateway:
            gateway = self.gateway_chain(ssh.gateway, f"{self.inventory.path}: ssh.gateway")
        elif found.get("proxyjump"):
            gateway = self.gateway_chain(str(found["proxyjump"]), f"{self.config_path}: ProxyJump for {host.address}")
        else:
            gateway = None
        identity_files, identities_only = self._identities(found)
        alias = found.get("hostkeyalias")
        return Endpoint(
            name=host.name,
            address=strip_brackets(str(found.get("hostname", host.address))),
            port=host.port or self._port(found, host.address) or ssh.port,
            user=host.user or str(found.get("user") or ssh.user),
            connect_timeout=ssh.connect_timeout,
            command_timeout=ssh.command_timeout,
            keepalive=ssh.keepalive,
            keepalive_count=ssh.keepalive_count,
            identity_file=identity_files[0] if identity_files else None,
            identity_files=identity_files,
            identities_only=identities_only,
            known_hosts=self.known_hosts,
            use_user_known_hosts=ssh.use_user_known_hosts,
            forward_agent=ssh.forward_agent,
            host_key_alias=str(alias) if alias else None,
            gateway=gateway,
        )


def endpoint(inventory: Inventory, host: HostConfig) -> Endpoint:
    """Connection settings for ``host``: its own values over the OpenSSH config (``ssh.config``) over the
    inventory's ``ssh`` section."""
    return _Resolver(inventory).endpoint(host)


def ssh_connector(inventory: Inventory) -> Connector:
    """Connects to each host with :class:`SSHTransport`; hosts behind one gateway share its connection."""
    resolver = _Resolver(inventory)
    return lambda host: SSHTransport(resolver.endpoint(host))

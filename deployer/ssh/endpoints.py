"""Connection settings for each host, from the inventory's ``ssh`` section and the host's own values."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from deployer.core.config import HostConfig
from deployer.core.inventory import Inventory
from deployer.ssh.transport import Endpoint, SSHTransport, Transport

Connector = Callable[[HostConfig], Transport]
"""Opens the transport to one host (injected: unit tests pass a fake)."""


def endpoint(inventory: Inventory, host: HostConfig) -> Endpoint:
    """Connection settings for ``host``: its own values over the inventory's ``ssh`` section."""
    ssh = inventory.config.ssh
    known_hosts: tuple[str, ...] = ()
    if ssh.known_hosts:
        path = Path(os.path.expanduser(ssh.known_hosts))
        known_hosts = (str(path if path.is_absolute() else inventory.path.parent / path),)
    gateway = None
    if ssh.gateway:
        user, _, rest = ssh.gateway.rpartition("@")
        address, _, port = rest.partition(":")
        gateway = Endpoint(
            name=f"gateway {address}",
            address=address,
            port=int(port or 22),
            user=user or ssh.user,
            connect_timeout=ssh.connect_timeout,
            keepalive=ssh.keepalive,
            identity_file=ssh.identity_file,
            known_hosts=known_hosts,
            use_user_known_hosts=ssh.use_user_known_hosts,
        )
    return Endpoint(
        name=host.name,
        address=host.address,
        port=host.port or ssh.port,
        user=host.user or ssh.user,
        connect_timeout=ssh.connect_timeout,
        command_timeout=ssh.command_timeout,
        keepalive=ssh.keepalive,
        keepalive_count=ssh.keepalive_count,
        identity_file=ssh.identity_file,
        known_hosts=known_hosts,
        use_user_known_hosts=ssh.use_user_known_hosts,
        forward_agent=ssh.forward_agent,
        gateway=gateway,
    )


def ssh_connector(inventory: Inventory) -> Connector:
    return lambda host: SSHTransport(endpoint(inventory, host))

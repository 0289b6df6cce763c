"""Errors meant for operators: each says what happened and what to do next."""

from __future__ import annotations


class DeployerError(Exception):
    """Base class. ``hint`` is the next thing the operator should do."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  -> {self.hint}"


class InventoryError(DeployerError):
    """The inventory file is missing or invalid; the message names file and key path."""


class ArtifactError(DeployerError):
    """The release could not be built, found, or failed validation."""


class ConnectError(DeployerError):
    """A host could not be reached, authenticated, or its host key was not trusted."""

    def __init__(self, host: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{host}: {message}", hint=hint)
        self.host = host


class HostKeyError(ConnectError):
    """The host's key is unknown or differs from known_hosts."""


class RemoteCommandError(DeployerError):
    """A remote step exited non-zero or timed out."""

    def __init__(self, host: str, step: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{host}: {step}: {message}", hint=hint)
        self.host = host
        self.step = step


class LockedError(DeployerError):
    """Another deploy, migrate or rollback holds the lock."""


class PlanError(DeployerError):
    """The requested operation cannot be planned (e.g. nothing to roll back to)."""

"""Invoke entry point: `invoke --list` shows deployer's tasks (deploy, migrate, rollback, fleet.up, ...)."""

from deployer.tasks import ns  # noqa: F401

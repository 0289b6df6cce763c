"""Test configuration: fleet fixtures (real sshd hosts in namespaces) for the end-to-end suite."""

pytest_plugins = ["tests.fleet_fixtures"]

"""pytest plugin: fleets of real sshd hosts (see :mod:`tests.harness.fleet`).

Register it from ``tests/conftest.py`` with ``pytest_plugins = ["tests.fleet_fixtures"]``.

* ``fleet``: 3 fresh hosts per test; ``session_fleet``: 3 hosts shared by the session;
  ``make_fleet(n)``: as many fleets of any size as a test needs.  Teardown always runs.
* Tests using them are marked ``fleet`` automatically, and skipped when not root.
* With ``DEPLOYER_REQUIRE_FLEET=1`` (CI), a skipped fleet test fails the session.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.fleet import Fleet, FleetUnavailable, check_environment

FLEET_FIXTURES = frozenset({"fleet", "session_fleet", "make_fleet"})
REQUIRE_ENV = "DEPLOYER_REQUIRE_FLEET"
SKIP_REASON = "needs root to create network namespaces"

_skipped_fleet_tests: list[str] = []


def _require_fleet_support() -> None:
    if os.geteuid() != 0:
        pytest.skip(SKIP_REASON)
    try:
        check_environment()
    except FleetUnavailable as exc:
        pytest.skip(f"cannot run a fleet here: {exc}")


@pytest.fixture
def make_fleet() -> Iterator[Callable[..., Fleet]]:
    """Factory: ``make_fleet(n, base_dir=..., deploy_root=...)`` starts an n-host fleet, torn down after the test."""
    _require_fleet_support()
    fleets: list[Fleet] = []

    def make(size: int = 3, *, base_dir: Path | None = None, deploy_root: str = "/srv") -> Fleet:
        fleet = Fleet(size, base_dir=base_dir, deploy_root=deploy_root)
        fleets.append(fleet)
        return fleet.start()

    try:
        yield make
    finally:
        errors = []
        for fleet in reversed(fleets):
            try:
                fleet.stop()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def fleet(make_fleet: Callable[..., Fleet]) -> Fleet:
    """Three fresh hosts (h1, h2, h3) for one test."""
    return make_fleet(3)


@pytest.fixture(scope="session")
def session_fleet() -> Iterator[Fleet]:
    """Three hosts shared by every test of the session: do not break them (use ``fleet`` for faults)."""
    _require_fleet_support()
    with Fleet(3) as shared:
        yield shared


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fleet: end-to-end test against a fleet of real sshd hosts in network namespaces (needs root)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if FLEET_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.fleet)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "fleet" in report.keywords and not hasattr(report, "wasxfail"):
        _skipped_fleet_tests.append(report.nodeid)


def _fleet_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _fleet_required() and _skipped_fleet_tests and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _fleet_required() and _skipped_fleet_tests:
        terminalreporter.section("fleet tests skipped", sep="=", red=True, bold=True)
        terminalreporter.line(
            f"{REQUIRE_ENV}=1 but {len(_skipped_fleet_tests)} fleet test(s) were skipped; "
            "they must run here (as root, with iproute2, util-linux and openssh-server):",
            red=True,
        )
        for nodeid in _skipped_fleet_tests:
            terminalreporter.line(f"  {nodeid}")

"""The test fleet's database host (tests/harness/database.py) and the hello_pg builder: the pure parts."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pytest

from tests.harness.database import Database, _sql_literal
from tests.harness.examples import build_hello_pg

_NETWORK = ipaddress.IPv4Network("10.77.0.0/16")


@dataclass
class _FakeFleet:
    runid: str = "ab12"
    network: ipaddress.IPv4Network = _NETWORK


def test_database_host_lives_in_the_fleets_network_outside_the_hosts_range() -> None:
    db = Database(_FakeFleet())
    assert db.address == "10.77.254.2" and db.gateway == "10.77.254.1"
    assert db.netns == "dpab12db" and db.veth == "dpab12dbo"
    assert len(db.veth) <= 15  # IFNAMSIZ
    assert ipaddress.IPv4Address(db.address) in _NETWORK


def test_url_carries_the_random_password_and_can_be_varied() -> None:
    db = Database(_FakeFleet(), name="shop", user="shopper", port=6543)
    assert db.url == f"postgres://shopper:{db.password}@10.77.254.2:6543/shop"
    assert db.url_with(password="nope", name="other") == "postgres://shopper:nope@10.77.254.2:6543/other"
    assert len(db.password) >= 20 and Database(_FakeFleet()).password != db.password


@pytest.mark.parametrize("bad", ["Upper", "1abc", "a-b", "a;drop", "postgres", ""])
def test_names_must_be_plain_identifiers(bad: str) -> None:
    with pytest.raises(ValueError):
        Database(_FakeFleet(), name=bad)
    with pytest.raises(ValueError):
        Database(_FakeFleet(), user=bad)


def test_sql_literal_doubles_quotes_and_refuses_nul() -> None:
    assert _sql_literal("it's") == "'it''s'"
    assert _sql_literal("a\\b") == "'a\\b'"  # standard_conforming_strings: backslash is literal
    with pytest.raises(ValueError):
        _sql_literal("a\0b")


def test_operations_before_create_are_refused() -> None:
    db = Database(_FakeFleet())
    assert db.running is False
    for call in (db.start, db.stop, db.cut_link, lambda: db.query("SELECT 1")):
        with pytest.raises(RuntimeError, match="has not been created"):
            call()
    db.destroy()  # nothing to do, no error


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": "1.0"}, "semantic version"),
        ({"variant": "crash"}, "variant must be one of"),
        ({"migrations": 4}, "migrations must be"),
        ({"migrations": True}, "migrations must be"),
    ],
)
def test_build_hello_pg_rejects_bad_arguments_before_building(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_hello_pg(**kwargs)  # type: ignore[arg-type]

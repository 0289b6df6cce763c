"""History ordering, rollback targets, pruning; the probe parser on captured output."""

from __future__ import annotations

import json

from deployer.core.facts import LockInfo, format_age, parse_probe
from deployer.core.history import History


def rev(release: str, outcome: str = "success", event: str = "deploy", version: str | None = None) -> str:
    data = {"release": release, "outcome": outcome, "event": event, "version": version or release[-5:]}
    return "2026-11-24T00:00:00Z\t" + json.dumps(data)


R1, R2, R3, R4, R5 = (f"2026112400000{i}-0.{i}.0" for i in range(1, 6))


def test_order_comes_from_history_not_names() -> None:
    history = History.from_lines([rev(R3), rev(R1), rev(R2)])
    assert history.order() == [R3, R1, R2]


def test_latest_outcome_wins_and_failed_is_never_good() -> None:
    history = History.from_lines([rev(R1), rev(R2), rev(R3, "failed"), rev(R2, "failed", "rollback")])
    assert history.status(R1) == "success"
    assert history.status(R2) == "failed"
    assert history.good([R1, R2, R3]) == [R1]


def test_previous_good_skips_failed_and_missing() -> None:
    history = History.from_lines([rev(R1), rev(R2), rev(R3, "failed"), rev(R4)])
    assert history.previous_good(R4, [R1, R2, R3, R4]) == R2
    assert history.previous_good(R4, [R1, R3, R4]) == R1
    assert history.previous_good(R1, [R1, R2]) is None
    assert history.previous_good(None, [R1, R2]) == R2


def test_prune_keeps_newest_good_current_and_previous() -> None:
    history = History.from_lines([rev(R1), rev(R2), rev(R3, "failed"), rev(R4)])
    on_disk = [R1, R2, R3, R4, R5]
    # Deploying R5 with keep_releases=2: keep R5 (new) + one old good (R4) + protected previous (R4).
    assert history.releases_to_prune(on_disk, keep=1, protect=[R5, R4]) == [R1, R2, R3]
    # A protected old release survives even beyond keep.
    assert history.releases_to_prune(on_disk, keep=1, protect=[R5, R1]) == [R2, R3]


def test_prune_removes_unknown_directories() -> None:
    history = History.from_lines([rev(R1)])
    assert history.releases_to_prune([R1, "20200101000000-9.9.9"], keep=5, protect=[R1]) == ["20200101000000-9.9.9"]


def test_malformed_lines_are_skipped() -> None:
    history = History.from_lines(["garbage", "time\tnot json", "t\t[1,2]", rev(R1)])
    assert history.order() == [R1]


CAPTURED = f"""now=1763946000
arch=x86_64
libc=ldd (Debian GLIBC 2.36-9+deb12u4) 2.36
tool=tar
tool=sha256sum
tool=curl
exists=1
writable=1
disk_free_kb=52428800
current=releases/{R2}
release={R2}
release={R1}
release=.partial-{R3}
artifact={"a" * 64}
cookie=1
node_pid=4242
lock={{"token": "t1", "who": "alice", "host": "laptop", "pid": 99, "operation": "deploy", "since": 1763945800}}
rev={rev(R1)}
rev={rev(R2)}
"""


def test_parse_probe() -> None:
    facts = parse_probe(CAPTURED)
    assert facts.arch == "x86_64"
    assert facts.tools == frozenset({"tar", "sha256sum", "curl"})
    assert facts.disk_free_kb == 52428800
    assert facts.current_release == R2
    assert facts.releases == (R1, R2)  # history order; the partial directory is not a release
    assert facts.artifacts == frozenset({"a" * 64})
    assert facts.has_cookie and facts.node_pids == (4242,)
    assert facts.previous_good == R1
    assert facts.current_version == "0.2.0"
    assert facts.lock is not None and facts.lock.who == "alice" and not facts.lock_acquired


def test_parse_probe_of_a_fresh_host() -> None:
    facts = parse_probe("now=1\narch=aarch64\n")
    assert facts.current_release is None and facts.releases == () and facts.previous_good is None


def test_lock_description_has_age() -> None:
    info = LockInfo.parse('{"who": "bob", "host": "ci", "pid": 7, "operation": "rollback", "since": 1000}')
    assert info.describe(now=1000 + 3 * 3600 + 120) == "bob@ci (pid 7) running rollback since 3h02m ago"
    assert LockInfo.parse("not json").describe().startswith("unreadable lock info")
    assert format_age(59) == "59s" and format_age(61) == "1m01s" and format_age(90000) == "1d01h"

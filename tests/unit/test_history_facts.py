"""History ordering, rollback targets, pruning; the probe parser on captured output."""

from __future__ import annotations

import json
from pathlib import Path

from deployer.core.artifact import inspect_tarball
from deployer.core.facts import LockInfo, format_age, parse_probe
from deployer.core.history import History
from deployer.core.plan import plan_deploy

from .helpers import inventory, release_tarball


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


def test_prune_keeps_releases_the_history_does_not_account_for() -> None:
    history = History.from_lines([rev(R1)])
    unknown = "20200101000000-9.9.9"
    assert history.unaccounted([R1, unknown]) == [unknown]
    assert history.releases_to_prune([R1, unknown], keep=5, protect=[R1]) == []


def _long_history(deploys: int) -> tuple[list[str], list[str]]:
    """``deploys`` good deploys, each with a migrate record and every tenth one failed and reverted."""
    lines: list[str] = []
    ids = [f"{20250101000000 + i:014d}-1.{i}.0" for i in range(deploys)]
    for i, release in enumerate(ids):
        lines.append(rev(release, event="migrate"))
        lines.append(rev(release, "failed" if i % 10 == 9 else "success"))
    return ids, lines


def test_prune_after_a_long_history_keeps_what_it_cannot_see() -> None:
    ids, lines = _long_history(1000)
    # The probe reads the last 500 lines: the oldest releases on disk are outside that window.
    history = History.from_lines(lines[-500:])
    on_disk = [ids[0], ids[5], ids[800], *ids[-15:]]
    new = "20270101000000-2.0.0"
    # The current release (the last one) failed and was left current: protected all the same.
    prune = history.releases_to_prune([*on_disk, new], keep=3, protect=[new, ids[-1]])
    assert ids[0] not in prune and ids[5] not in prune  # unknown: kept (and the plan says so)
    assert history.unaccounted(on_disk) == [ids[0], ids[5]]
    # Known ones are pruned as before: the newest good ones and current stay, failed ones go.
    good = [r for r in ids[-15:] if history.status(r) == "success"]
    failed = [r for r in ids[-15:] if history.status(r) == "failed"]
    assert history.status(ids[-1]) == "failed" and len(failed) == 2 and failed[0] in prune
    assert set(prune) == ({ids[800], *ids[-15:]} - set(good[-3:]) - {ids[-1]})
    assert new not in prune and ids[-1] not in prune


def test_prune_after_rotation_deletes_nothing_unknown() -> None:
    ids, _ = _long_history(20)
    on_disk = ids[-6:]
    # revisions.log was rotated: only the current deploy's records are in it.
    history = History.from_lines([rev(ids[-1])])
    assert history.releases_to_prune(on_disk, keep=1, protect=[ids[-1]]) == []
    assert History.from_lines([]).releases_to_prune(on_disk, keep=1, protect=[]) == []


def test_prune_never_deletes_current_or_the_last_good_one() -> None:
    # keep_releases 1 (keep=0 old ones): the current release failed its revert and stays; the last good one
    # is the only rollback target left and stays too.
    history = History.from_lines([rev(R1), rev(R2), rev(R3, "failed"), rev(R4, "failed")])
    on_disk = [R1, R2, R3, R4, R5]
    assert history.last_good(on_disk) == R2
    assert history.releases_to_prune(on_disk, keep=0, protect=[R5, R4]) == [R1, R3]
    # The history may even say the current release failed: protected all the same.
    assert R4 not in history.releases_to_prune(on_disk, keep=0, protect=[R4])


def test_prune_with_full_history_of_thousands_of_records() -> None:
    ids, lines = _long_history(3000)
    history = History.from_lines(lines)
    on_disk = ids[-20:]
    prune = history.releases_to_prune(on_disk, keep=4, protect=[ids[-1]])
    kept = [r for r in on_disk if r not in prune]
    good = [r for r in on_disk if history.status(r) == "success"]
    assert kept == sorted(set(good[-4:]) | {ids[-1]})


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


def test_the_plan_prunes_only_what_the_history_accounts_for_and_says_so(tmp_path: Path) -> None:
    ids, lines = _long_history(600)
    on_disk = [ids[3], *ids[-7:]]  # ids[3] was deployed long before the 500 lines the probe reads
    probe = "now=1\narch=x86_64\nexists=1\nwritable=1\n" + f"current=releases/{ids[-2]}\n"
    probe += "".join(f"release={r}\n" for r in on_disk) + "".join(f"rev={line}\n" for line in lines[-500:])
    inv = inventory(tmp_path)
    artifact = inspect_tarball(release_tarball(tmp_path / "hello-9.0.0.tar.gz", version="9.0.0"), "hello")
    plan = plan_deploy(inv, artifact, {"web1": parse_probe(probe)}, who="t", cookie=None)
    host = plan.host("web1")
    script = host.activate.render()
    assert f"releases/{ids[3]}" not in script
    assert f"keep release {ids[3]}: revisions.log (as read) does not account for it, so it is never pruned" in (
        host.notes
    )
    removed = {n.removeprefix("remove old release ") for n in host.notes if n.startswith("remove old release ")}
    assert removed and ids[-2] not in removed and ids[3] not in removed
    assert all(f"releases/{r}" in script for r in removed)

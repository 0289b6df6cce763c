"""Hot upgrades, the pure parts: relup and node answers parsed, refusals decided, remote steps rendered."""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from deployer.core.history import History
from deployer.core.paths import RemoteLayout
from deployer.core.relup import (
    NodeRelease,
    Relup,
    TermError,
    hot_refusal,
    hot_root,
    parse_node_release,
    parse_relup,
    parse_term,
    read_relup,
)
from deployer.remote import relup as hot
from deployer.remote.flavours import flavour
from deployer.remote.fragments import HealthCheck

REBAR3 = flavour("rebar3")
LAYOUT = RemoteLayout("/srv/app", "hello_relup")
HEALTH = HealthCheck(http="http://127.0.0.1:4000/health", rpc=None, deadline=30, interval=1)

RELUP = """{"1.1.0",
 [{"1.0.0",[],
   [{load_object_code,{hello_relup,"1.1.0",[hello_relup_counter,hello_relup_web]}},
    point_of_no_return,
    {suspend,[hello_relup_counter]},
    {load,{hello_relup_counter,brutal_purge,brutal_purge}},
    {code_change,up,[{hello_relup_counter,[]}]},
    {resume,[hello_relup_counter]}]}],
 [{"1.0.0",[],[point_of_no_return, {apply,{application,stop,['sasl']}}]},
  {"0.9.0",[],[restart_new_emulator]}]}.
"""

NODE_ANSWER = """{deployer_node,"/srv/app/releases/20261129T200000Z-1.0.0","4242",
               [{"1.1.0",permanent},{"1.0.0",old}],
               ["1.0.0"]}
"""


def test_parse_term_reads_tuples_lists_strings_atoms_and_numbers() -> None:
    assert parse_term('{a, "b\\"c", [1, -2, 3.5], \'Q x\', [h | t]}.') == ("a", 'b"c', [1, -2, 3.5], "Q x", ["h", "t"])
    assert parse_term("[] % a comment\n") == []
    with pytest.raises(TermError, match="unexpected"):
        parse_term("{a, #{}}")
    with pytest.raises(TermError, match=r"missing \}|ends early"):
        parse_term("{a, b")
    with pytest.raises(TermError, match="after the term"):
        parse_term("a b")


def test_parse_relup_lists_the_up_and_down_versions() -> None:
    assert parse_relup(RELUP) == Relup(version="1.1.0", up_from=("1.0.0",), down_to=("1.0.0", "0.9.0"))
    with pytest.raises(TermError, match="a relup is"):
        parse_relup('{"1.1.0", []}.')


def _tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_read_relup_finds_the_versions_relup_or_none(tmp_path: Path) -> None:
    with_relup = _tarball(tmp_path / "a.tar.gz", {"releases/1.1.0/relup": RELUP.encode(), "bin/x": b""})
    assert read_relup(with_relup, "1.1.0") == parse_relup(RELUP)
    without = _tarball(tmp_path / "b.tar.gz", {"releases/1.1.0/start.boot": b""})
    assert read_relup(without, "1.1.0") is None
    wrong = _tarball(tmp_path / "c.tar.gz", {"releases/1.2.0/relup": RELUP.encode()})
    with pytest.raises(TermError, match=re.escape("c.tar.gz: releases/1.2.0/relup is the relup of 1.1.0, not 1.2.0")):
        read_relup(wrong, "1.2.0")
    broken = _tarball(tmp_path / "d.tar.gz", {"releases/1.1.0/relup": b"{oops"})
    with pytest.raises(TermError, match=re.escape("d.tar.gz: releases/1.1.0/relup")):
        read_relup(broken, "1.1.0")


def test_parse_node_release_reads_relx_eval_output() -> None:
    node = parse_node_release("warning: something\n" + NODE_ANSWER)
    assert node == NodeRelease(
        root="/srv/app/releases/20261129T200000Z-1.0.0",
        os_pid=4242,
        releases=(("1.1.0", "permanent"), ("1.0.0", "old")),
        down_to=("1.0.0",),
    )
    assert node.running == "1.1.0" and node.permanent == "1.1.0"
    assert node.root_release == "20261129T200000Z-1.0.0"
    installed = NodeRelease(root="/r", os_pid=1, releases=(("1.1.0", "current"), ("1.0.0", "permanent")))
    assert installed.running == "1.1.0" and installed.permanent == "1.0.0"
    assert parse_node_release("node=down\n") is None
    assert parse_node_release("{badrpc,nodedown}") is None
    assert parse_node_release('{deployer_node,"/r","notapid",[],[]}') is None


def _node(running: str = "1.0.0", status: str = "permanent") -> NodeRelease:
    return NodeRelease(root="/srv/app/releases/r1", os_pid=7, releases=((running, status),))


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"flavour": "mix"}, "hot upgrades need a relx (rebar3) release; app.flavour is mix"),
        ({"relup": None}, "the release 1.1.0 carries no relup (releases/1.1.0/relup): it has no upgrade instructions"),
        (
            {"node": None, "node_error": "the node is not running"},
            "no running node answered with its release version: the node is not running",
        ),
        ({"node": _node("1.1.0")}, "the node already runs 1.1.0"),
        ({"node": _node("0.9.0")}, "the node runs 0.9.0, and the relup of 1.1.0 upgrades only from 1.0.0"),
        (
            {"node": _node("1.0.0", "current")},
            "the node runs 1.0.0, installed but not made permanent: finish or undo that upgrade first",
        ),
        ({}, None),
    ],
)
def test_hot_refusal_names_the_reason(kwargs: dict[str, object], why: str | None) -> None:
    args: dict[str, object] = {
        "flavour": "rebar3",
        "relup": Relup("1.1.0", ("1.0.0",), ()),
        "version": "1.1.0",
        "node": _node(),
    }
    args.update(kwargs)
    assert hot_refusal(**args) == why  # type: ignore[arg-type]


def test_erl_string_escapes_quotes_and_backslashes() -> None:
    assert hot.erl_string('a"b\\c') == '"a\\"b\\\\c"'


def test_node_release_asks_the_node_through_the_launcher() -> None:
    rendered = hot.node_release(LAYOUT, REBAR3).render()
    assert (
        'out=$( ( cd "$d/shared"; launch 60 "$rid" home+script /srv/app/current/bin/hello_relup eval '
        "'Rels = [{V, S} || {_, V, _, S} <- release_handler:which_releases()], Running = case [V || {V, current} "
        '<- Rels] ++ [V || {V, permanent} <- Rels] of [R | _] -> R; [] -> "" end, Down = case file:consult('
        'filename:join([code:root_dir(), "releases", Running, "relup"])) of {ok, [{_, _, D}]} -> [V || {V, _, _} '
        "<- D]; _ -> [] end, {deployer_node, code:root_dir(), os:getpid(), Rels, Down}.' ) 2>&1 ) || true\n"
    ) in rendered
    assert 'if [ -z "$cur" ]; then echo node=none; exit 0; fi\n' in rendered
    assert 'if [ -z "$NODE_PIDS" ]; then echo node=down; exit 0; fi\n' in rendered


def _activate(fallback: str | None = None) -> str:
    return hot.hot_activate(
        LAYOUT,
        REBAR3,
        release_id="r2",
        name="hello_relup",
        version="1.1.0",
        from_version="1.0.0",
        root="/srv/app/releases/r1",
        os_pid=4242,
        sha256="ab" * 32,
        health=HEALTH,
        stop_timeout=20,
        tmp_suffix="t1",
        success_record='{"event":"hot-upgrade"}',
        fallback_record=fallback,
        prune_paths=["/srv/app/releases/r0"],
    ).render()


def test_hot_activate_renders_each_call_into_the_node_exactly() -> None:
    text = _activate()
    launch = 'out=$( ( cd "$d/shared"; launch 120 "$rid" home+script /srv/app/releases/r2/bin/hello_relup eval '
    tail = ' ) 2>&1 ) || out="$out (exit status $?)"\n'
    check = (
        "'Rels = [{V, S} || {_, V, _, S} <- release_handler:which_releases()], case {code:root_dir(), os:getpid(), "
        'lists:keyfind("1.0.0", 1, Rels), [V || {V, current} <- Rels]} of {"/srv/app/releases/r1", "4242", '
        "{_, permanent}, []} -> deployer_ok; Other -> {error, Other} end.'"
    )
    unpack = (
        '\'case release_handler:unpack_release("1.1.0/hello_relup") of {ok, "1.1.0"} -> deployer_ok; '
        '{error, {existing_release, "1.1.0"}} -> deployer_ok; Other -> {error, Other} end.\''
    )
    install = (
        "'case release_handler:install_release(\"1.1.0\") of {ok, _, _} -> deployer_ok; Other -> {error, Other} end.'"
    )
    verify = (
        "'case {[V || {_, V, _, current} <- release_handler:which_releases()], os:getpid()} of "
        '{["1.1.0"], "4242"} -> deployer_ok; Other -> {error, Other} end.\''
    )
    permanent = "'case release_handler:make_permanent(\"1.1.0\") of ok -> deployer_ok; Other -> {error, Other} end.'"
    positions = [text.index(launch + expr + tail) for expr in (check, unpack, install, verify, permanent)]
    assert positions == sorted(positions)
    # The switch comes after the last check that changes nothing, before the install.
    assert positions[1] < text.index("step switch\nrid=r2\n") < positions[2]
    assert (
        '    cp "$a" "$rd/"1.1.0/hello_relup.tar.gz.tmp\n'
        '    mv -f "$rd/"1.1.0/hello_relup.tar.gz.tmp "$rd/"1.1.0/hello_relup.tar.gz\n'
    ) in text
    assert "  rd=/srv/app/releases/r1/releases\n" in text
    assert 'if [ -z "$hot" ]; then fail "hot upgrade refused before the install: $why"; fi\n' in text
    assert "rm -rf /srv/app/releases/r0 ||" in text
    assert text.index("step permanent") < text.index("step record") < text.index("step prune")
    assert "printf '%s=%s\\n' hot_upgraded 4242\n" in text


def test_hot_activate_with_a_fallback_restarts_instead_of_failing() -> None:
    text = _activate('{"event":"deploy"}')
    assert "hot upgrade refused before the install" not in text
    start = text.index('if [ -z "$hot" ]; then\n  printf \'%s=%s\\n\' fallback "$why"\n')
    end = text.index("  exit 0\nfi\n", start)
    restart = text[start:end]
    for step in ("step switch", "step stop", "step start", "step health", "step record", "step prune"):
        assert step in restart
    assert '\'{"event":"deploy"}\'' in restart


def test_hot_revert_restores_the_root_then_restarts_the_previous_release() -> None:
    text = hot.hot_revert(
        LAYOUT,
        REBAR3,
        previous_id="r1",
        root="/srv/app/releases/r1",
        version="1.1.0",
        health=HEALTH,
        stop_timeout=20,
        tmp_suffix="t1",
        records=['{"event":"revert"}'],
        failure_records=['{"outcome":"failed"}'],
    ).render()
    assert (
        "step restore-root\n"
        "rd=/srv/app/releases/r1/releases\n"
        'if [ -f "$rd/lib".deployer-hot ]; then\n'
        "  for l in /srv/app/releases/r1/lib/*; do\n"
        '    if [ -e "$l" ] && ! grep -qxF "${l##*/}" "$rd/lib".deployer-hot; then rm -rf "$l"; fi\n'
        "  done\n"
        '  rm -f "$rd/lib".deployer-hot\n'
        "fi\n"
        'if [ -f "$rd/RELEASES".deployer-hot ]; then mv -f "$rd/RELEASES".deployer-hot "$rd/RELEASES"; fi\n'
        'if [ -f "$rd/start_erl.data".deployer-hot ]; then mv -f "$rd/start_erl.data".deployer-hot '
        '"$rd/start_erl.data"; fi\n'
        'rm -rf "$rd/"1.1.0\n'
    ) in text
    order = [
        'outcome":"failed',
        "step switch\nrid=r1",
        "step stop",
        "step restore-root",
        "step start",
        "step health",
        'event":"revert',
    ]
    positions = [text.index(marker) for marker in order]
    assert positions == sorted(positions)
    assert "deployer-run" in text and "hot-revert-t1" in text


def test_downgrade_installs_the_older_version_in_the_same_node() -> None:
    text = hot.downgrade(
        LAYOUT,
        REBAR3,
        target_id="r1",
        version="1.0.0",
        root="/srv/app/releases/r1",
        os_pid=4242,
        health=HEALTH,
        tmp_suffix="t2",
        success_record='{"event":"hot-downgrade"}',
    ).render()
    assert 'release_handler:install_release("1.0.0")' in text
    assert '{["1.0.0"], "4242"} -> deployer_ok' in text
    assert text.index("step switch\nrid=r1") < text.index("step install") < text.index("step health")
    assert text.index("step health") < text.index("step permanent") < text.index("step record")


def test_restore_root_puts_a_hot_upgraded_root_back_as_extracted() -> None:
    text = hot.restore_root(LAYOUT, "r1").render()
    assert (
        "step restore-root\n"
        "root=/srv/app/releases/r1\n"
        'rd="$root/releases"\n'
        'if [ -f "$rd/RELEASES".deployer-pristine ] && [ -f "$rd/start_erl.data".deployer-pristine ]; then\n'
        '  cp -p "$rd/RELEASES".deployer-pristine "$rd/RELEASES"\n'
        '  cp -p "$rd/start_erl.data".deployer-pristine "$rd/start_erl.data"\n'
        '  vsn=; read -r _erts vsn < "$rd/start_erl.data" || [ -n "$vsn" ]\n'
        '  for r in "$rd"/*/; do r=${r%/}; if [ "${r##*/}" != "$vsn" ]; then rm -rf "$r"; fi; done\n'
        '  if [ -f "$rd/lib".deployer-pristine ]; then\n'
        '    for l in "$root"/lib/*; do\n'
        '      if [ -e "$l" ] && ! grep -qxF "${l##*/}" "$rd/lib".deployer-pristine; then rm -rf "$l"; fi\n'
        "    done\n"
        "  fi\n"
        '  rm -f "$rd"/*.deployer-pristine "$rd"/*.deployer-hot\n'
        "  echo restored=1\n"
        "fi\n"
    ) in text


def test_hot_activate_keeps_the_pristine_root_only_once() -> None:
    text = _activate()
    assert (
        '    if [ ! -f "$rd/RELEASES".deployer-pristine ]; then\n'
        '      cp -p "$rd/RELEASES" "$rd/RELEASES".deployer-pristine\n'
        '      cp -p "$rd/start_erl.data" "$rd/start_erl.data".deployer-pristine\n'
        '      ls -1 /srv/app/releases/r1/lib > "$rd/lib".deployer-pristine\n'
        "    fi\n"
    ) in text


def test_restore_root_runs_on_a_hot_upgraded_root(tmp_path: Path) -> None:
    """The script, run by sh on a root as a hot upgrade leaves it (relx's start_erl.data has no newline)."""
    root = tmp_path / "releases" / "r1"
    rd = root / "releases"
    for directory in (rd / "1.0.0", rd / "1.1.0", root / "lib" / "app-1.0.0", root / "lib" / "app-1.1.0"):
        directory.mkdir(parents=True)
    (rd / "RELEASES").write_text("1.1.0 permanent, 1.0.0 old")
    (rd / "start_erl.data").write_text("13.1.5 1.1.0")
    (rd / "RELEASES.deployer-pristine").write_text("1.0.0 permanent")
    (rd / "start_erl.data.deployer-pristine").write_text("13.1.5 1.0.0")
    (rd / "lib.deployer-pristine").write_text("app-1.0.0\n")
    (rd / "RELEASES.deployer-hot").write_text("stale")
    script_ = hot.restore_root(RemoteLayout(str(tmp_path), "app"), "r1")
    run = subprocess.run(["sh", "-s"], input=script_.render(), capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "restored=1\n"
    assert (rd / "RELEASES").read_text() == "1.0.0 permanent"
    assert (rd / "start_erl.data").read_text() == "13.1.5 1.0.0"
    assert sorted(p.name for p in rd.iterdir()) == ["1.0.0", "RELEASES", "start_erl.data"]
    assert sorted(p.name for p in (root / "lib").iterdir()) == ["app-1.0.0"]
    again = subprocess.run(
        ["sh", "-s"], input=script_.render(), capture_output=True, text=True, timeout=30, check=False
    )
    assert again.returncode == 0 and again.stdout == "", "a second run (before a revert) must change nothing"


def test_hot_root_names_the_older_root_until_the_next_recorded_change() -> None:
    hot_line = '2026-11-29T21:00:00Z\t{"event":"hot-upgrade","outcome":"success","release":"r2","root":"r1"}'
    deploy_line = '2026-11-29T20:00:00Z\t{"event":"deploy","outcome":"success","release":"r1"}'
    migrate_line = '2026-11-29T21:01:00Z\t{"event":"migrate","outcome":"success","release":"r2"}'
    history = History.from_lines([deploy_line, hot_line, migrate_line])
    assert hot_root(history, "r2") == "r1"
    assert hot_root(history, "r1") is None
    later = History.from_lines([deploy_line, hot_line, '2026-11-29T22:00:00Z\t{"event":"rollback","release":"r1"}'])
    assert hot_root(later, "r1") is None
    assert hot_root(History.from_lines([deploy_line]), "r1") is None

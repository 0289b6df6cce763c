"""Remote commands are data: exact rendering, quoting, and secret masking."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from deployer.core.facts import parse_probe
from deployer.core.paths import RemoteLayout
from deployer.core.plan import Lifecycle, health_check, plan_lifecycle
from deployer.errors import PlanError
from deployer.remote import release as rc
from deployer.remote.flavours import flavour
from deployer.remote.fragments import LAUNCHER, expand_placeholders
from deployer.remote.shell import MASK, Script, Secret, env_file_text, template, words

from .helpers import BASE, inventory

LAYOUT = RemoteLayout("/srv/hello", "hello")
SECRET = Secret("HELLO_SECRET", SecretStr("hunter2-sentinel"))


def run_sh(script: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["sh", "-s"], input=script.encode(), capture_output=True, timeout=10, check=False)


def test_template_quotes_every_value() -> None:
    parts = template("rm -rf {{path}} && echo {{n}}\n", path="/srv/a b;c", n=3)
    assert Script("x", parts).render() == "rm -rf '/srv/a b;c' && echo 3\n"


def test_template_refuses_missing_and_unused_values() -> None:
    with pytest.raises(KeyError, match="has no value"):
        template("echo {{a}}")
    with pytest.raises(KeyError, match="never used"):
        template("echo", a="x")


def test_secret_is_masked_unless_revealed() -> None:
    script = Script("s", template("printf %s {{v}}\n", v=SECRET))
    assert script.render() == f"printf %s {MASK}\n"
    assert script.render(reveal=True) == "printf %s hunter2-sentinel\n"
    assert script.secrets == (SECRET,)
    assert "hunter2" not in script.remote_command()


def test_argv_scripts_cannot_carry_secrets() -> None:
    with pytest.raises(ValueError, match="passes secrets in argv"):
        Script("s", template("echo {{v}}", v=SECRET), stdin=False)


def test_unlock_renders_exactly() -> None:
    script = rc.unlock(LAYOUT, "tok123")
    body = script.render()
    assert body.startswith(rc.PRELUDE)
    assert body.endswith(
        "__deployer_main() {\n"
        "d=/srv/hello\napp=hello\n"
        "step unlock\n"
        'if [ -d "$d/.lock" ] && grep -qF tok123 "$d/.lock/info" 2>/dev/null; then\n'
        '  rm -rf "$d/.lock"; echo unlocked=1\nfi\n'
        "\n}\n__deployer_main </dev/null\n"
    )
    assert script.remote_command() == "sh -s"


def test_receive_artifact_is_an_argv_script_with_stdin_free_for_data() -> None:
    sha = "a" * 64
    script = rc.receive_artifact(LAYOUT, sha)
    assert not script.stdin
    assert script.remote_command().startswith("sh -c 'set -eu")
    text = script.render()
    assert f"sha={sha}\n" in text
    assert 'cat > "$t"\n' in text
    assert 'mv -f "$t" "$d/artifacts/$sha.tar.gz"' in text


def test_migrate_runs_the_flavour_eval_through_the_launcher_under_the_deadline_and_records() -> None:
    script = rc.migrate(
        LAYOUT,
        flavour("mix"),
        release_id="20261124010203-0.1.0",
        expression="Hello.Release.migrate()",
        timeout=99,
        record='{"event":"migrate"}',
    )
    text = script.render()
    assert text.endswith(
        "__deployer_main() {\n"
        "d=/srv/hello\napp=hello\n"
        "step migrate\nrid=20261124010203-0.1.0\nset +e\n"
        "launch 99 \"$rid\" home /srv/hello/releases/20261124010203-0.1.0/bin/hello eval 'Hello.Release.migrate()'\n"
        "status=$?\n"
        "set -e\n"
        'if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then fail "migration timed out after 99s"; fi\n'
        '[ "$status" -eq 0 ] || exit "$status"\n'
        "step record\n"
        'printf \'%s\\t%s\\n\' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \'{"event":"migrate"}\' >> "$d/revisions.log"\n'
        "\n}\n__deployer_main </dev/null\n"
    )
    assert "# deployer helpers: launch\n" in text  # only the helper it calls
    assert script.timeout == 99 + 30  # the host enforces 99s; the local deadline leaves room to report it


def test_activate_contains_the_phases_in_order() -> None:
    health = rc.HealthCheck(http="http://127.0.0.1:4000/health", rpc=None, deadline=30, interval=0.5)
    script = rc.activate(
        LAYOUT,
        flavour("mix"),
        release_id="20261124010203-0.2.0",
        health=health,
        stop_timeout=20,
        tmp_suffix="abcd",
        success_record='{"a":1}',
        prune_releases=["20200101000000-0.0.1"],
        prune_artifacts=["b" * 64],
    )
    text = script.render()
    order = [text.index(f"step {s}\n") for s in ("switch", "env", "stop", "start", "health", "record", "prune")]
    assert order == sorted(order)
    assert 'ln -s "releases/$rid" "$t"\nmv -T "$t" "$d/current"\n' in text
    assert "stop_node 20\n" in text
    assert 'curl -fsS -o /dev/null --max-time "$SECS" http://127.0.0.1:4000/health' in text
    # The pruned release leaves no env file behind: there is only the environment's one.
    assert "rm -rf /srv/hello/releases/20200101000000-0.0.1 /srv/hello/artifacts/" in text
    assert "shared/env/20200101000000-0.0.1.env" not in text
    assert f"/srv/hello/artifacts/{'b' * 64}.tar.gz" in text
    assert script.run_id == "activate-abcd"


def test_prepare_masks_env_and_cookie() -> None:
    env = env_file_text({"HELLO_PORT": "4000", "HELLO_SECRET": SECRET})
    cookie = Secret("cookie", SecretStr("COOKIEVALUE123"))
    script = rc.prepare(LAYOUT, release_id="20261124010203-0.1.0", sha256="c" * 64, env_file=env, cookie=cookie)
    masked = script.render()
    assert "hunter2" not in masked and "COOKIEVALUE123" not in masked
    revealed = script.render(reveal=True)
    assert "hunter2-sentinel" in revealed and "COOKIEVALUE123" in revealed


def test_flavour_mapping() -> None:
    mix, rebar, distillery = flavour("mix"), flavour("rebar3"), flavour("distillery")
    assert mix.daemon == ("daemon",) and mix.eval("M.f()") == ("eval", "M.f()")
    assert rebar.remote == ("remote_console",)
    assert ("RELX_REPLACE_OS_VARS", "true") in rebar.runtime_env
    assert distillery.daemon == ("start",)
    assert ("REPLACE_OS_VARS", "true") in distillery.runtime_env


# --- property tests: arbitrary strings arrive byte for byte and never run ------------------------------

hostile = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=60),
    st.sampled_from(["$(touch /tmp/pwned)", "`id`", "'; rm -rf / #", '"$HOME"', "a\nb", "-rf", "--", "\\", "*"]),
)


@settings(max_examples=150, deadline=None)
@given(hostile)
def test_quoted_values_reach_the_shell_as_data(value: str) -> None:
    script = Script("t", template("printf '%s' {{v}}\n", v=value))
    result = run_sh(script.render())
    assert result.returncode == 0, result.stderr
    assert result.stdout == value.encode()


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,8}", fullmatch=True), hostile, min_size=1, max_size=4))
def test_env_file_values_reach_the_node_byte_for_byte(
    tmp_path_factory: pytest.TempPathFactory, values: dict[str, str]
) -> None:
    d = tmp_path_factory.mktemp("srv")
    (d / "shared" / "env").mkdir(parents=True)
    (d / "shared" / ".cookie").write_text("C00KIE")
    env = env_file_text({k: Secret(k, SecretStr(v)) if i % 2 else v for i, (k, v) in enumerate(values.items())})
    (d / "shared" / "env" / "r1.env").write_text(env.render(reveal=True))
    names = list(values)
    show = "".join(f'printf "%s\\0" "${name}"\n' for name in names)
    argv = ["env", "-i", "PATH=/usr/bin:/bin", "/bin/sh", "-c", LAUNCHER, "launch", str(d), "r1", "home"]
    result = subprocess.run([*argv, "/bin/sh", "-c", show], capture_output=True, timeout=10, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(b"\0")[:-1] == [values[n].encode() for n in names]


@settings(max_examples=60, deadline=None)
@given(st.lists(hostile, min_size=1, max_size=4))
def test_words_are_separate_arguments(values: list[str]) -> None:
    script = Script("t", ("for a in ", *words(values), '; do printf "%s\\0" "$a"; done\n'))
    result = run_sh(script.render())
    assert result.stdout.split(b"\0")[:-1] == [v.encode() for v in values]


# --- ${NAME} in the health URL -------------------------------------------------------------------------------------


def test_health_url_placeholders_are_the_hosts_plain_env_values(tmp_path: Path) -> None:
    assert expand_placeholders("http://127.0.0.1:${PORT}/h?x=${A}", {"PORT": "4001", "A": "b"}) == (
        "http://127.0.0.1:4001/h?x=b"
    )
    data = copy.deepcopy(BASE)
    data["health"] = {"http": "http://127.0.0.1:${HELLO_PORT}/health"}
    data["hosts"][0]["env"] = {"HELLO_PORT": "4999"}
    inv = inventory(tmp_path, data)
    assert health_check(inv, inv.hosts[0]).http == "http://127.0.0.1:4999/health"
    assert health_check(inv).http == "http://127.0.0.1:4000/health"  # env.clear's value
    data["health"] = {"http": "http://127.0.0.1:${HELLO_SECRET}/health"}
    with pytest.raises(PlanError, match=r"health.http: \$\{HELLO_SECRET\} is not a plain env value of host"):
        health_check(inventory(tmp_path / "2", data), inv.hosts[0])


@pytest.mark.parametrize("operation", ["start", "restart"])
def test_start_and_restart_check_each_hosts_own_health_url(tmp_path: Path, operation: Lifecycle) -> None:
    # Issue 15: the node operations expanded `${HELLO_PORT}` with env.clear's value on every host.
    data = copy.deepcopy(BASE)
    data["health"] = {"http": "http://127.0.0.1:${HELLO_PORT}/health"}
    data["hosts"][0]["env"] = {"HELLO_PORT": "4999"}
    inv = inventory(tmp_path, data)
    rid = "20260101000000-0.1.0"
    facts = {h.name: parse_probe(f"now=1\ncurrent=releases/{rid}\nrelease={rid}\n") for h in inv.hosts}
    plan = plan_lifecycle(inv, operation, facts)
    first, second = (plan.host(h.name).activate.render() for h in inv.hosts[:2])
    assert "http://127.0.0.1:4999/health" in first and "4000" not in first
    assert "http://127.0.0.1:4000/health" in second


def test_the_artifact_is_hashed_once_per_host() -> None:
    env = env_file_text({})
    plain = rc.prepare(LAYOUT, release_id="r1", sha256="c" * 64, env_file=env, cookie=None).render()
    assert "sha256_of" not in plain  # receive_artifact verified it before giving it its name
    assert "sha256_of" in rc.receive_artifact(LAYOUT, "c" * 64).render()
    verified = rc.prepare(LAYOUT, release_id="r1", sha256="c" * 64, env_file=env, cookie=None, verify=True).render()
    assert f'actual=$(sha256_of "$a") || actual=\n[ "$actual" = {"c" * 64} ]' in verified

"""The Dockerfile `deployer init --docker` writes for `build.strategy: docker`: exact renderings."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployer.build.dockerfile import DEFAULT_BASE_IMAGE, PLATFORM_FILE, project_files, render_dockerfile

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

PROBE = (
    '(echo "arch=$(uname -m)"; echo "libc=$( (ldd --version 2>&1 || true) | head -n 1)"; '
    'echo "openssl=$( (openssl version 2>/dev/null || true) | head -n 1)") > /out/deployer-platform.txt'
)
HEADER = [
    "# syntax=docker/dockerfile:1",
    "# Builds the {release} release for deployer's `build.strategy: docker`; only the tarball leaves:",
    "#   docker build --network host --output type=local,dest=_build/deployer .",
    "# BUILDER_IMAGE (deployer's `build.image`): a Debian image as old as the targets' (its libc and",
    "# OpenSSL are the release's).",
]


def test_the_default_base_image_is_debian_bookworm() -> None:
    assert DEFAULT_BASE_IMAGE == "debian:bookworm-slim"
    assert PLATFORM_FILE == "deployer-platform.txt"


def test_project_files_of_the_examples() -> None:
    assert project_files(EXAMPLES / "hello", "mix") == (["mix.exs"], ["config", "lib", "priv"])
    assert project_files(EXAMPLES / "hello_erl", "rebar3") == (
        ["rebar.config", "rebar.config.script"],
        ["config", "src", "priv"],
    )


def test_mix_project_without_a_lock_file_is_exact() -> None:
    text = render_dockerfile(
        tool="mix",
        release="hello",
        dependency_files=["mix.exs"],
        source_dirs=["config", "lib", "priv"],
        base_image="localhost/bookworm-base",
        build_args=["HELLO_VERSION"],
    )
    assert text.splitlines() == [
        *(line.format(release="hello") for line in HEADER),
        "ARG BUILDER_IMAGE=localhost/bookworm-base",
        "FROM ${BUILDER_IMAGE} AS build",
        "RUN apt-get update \\",
        " && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends erlang-nox erlang-dev elixir"
        " git ca-certificates \\",
        " && rm -rf /var/lib/apt/lists/*",
        "ENV LANG=C.UTF-8 MIX_ENV=prod",
        "WORKDIR /src",
        "# Dependencies first: these layers stay cached until the files below change.",
        "COPY mix.exs ./",
        "RUN mix deps.get --only prod",
        "COPY config config",
        "RUN mix deps.compile",
        "# The sources: a change here rebuilds only what follows.",
        "COPY lib lib",
        "COPY priv priv",
        "ARG HELLO_VERSION",
        "RUN mix release --overwrite \\",
        " && mkdir -p /out \\",
        " && find _build -name 'hello-*.tar.gz' -not -path '*/rel/*' -exec cp {} /out/ \\; \\",
        " && " + PROBE,
        "",
        "FROM scratch AS release",
        "COPY --from=build /out/ /",
    ]
    assert text.endswith("COPY --from=build /out/ /\n")


def test_mix_project_with_a_lock_file_gets_hex_before_its_dependencies() -> None:
    text = render_dockerfile(
        tool="mix",
        release="shop",
        dependency_files=["mix.exs", "mix.lock"],
        source_dirs=["lib", "rel"],
        packages=["erlang-nox", "elixir"],
    )
    lines = text.splitlines()
    start = lines.index("ARG BUILDER_IMAGE=debian:bookworm-slim")
    assert lines[start:] == [
        "ARG BUILDER_IMAGE=debian:bookworm-slim",
        "FROM ${BUILDER_IMAGE} AS build",
        "RUN apt-get update \\",
        " && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends erlang-nox elixir \\",
        " && rm -rf /var/lib/apt/lists/*",
        "ENV LANG=C.UTF-8 MIX_ENV=prod",
        "WORKDIR /src",
        "# Dependencies first: these layers stay cached until the files below change.",
        "COPY mix.exs mix.lock ./",
        "RUN mix local.hex --force && mix local.rebar --force",
        "RUN mix deps.get --only prod",
        "RUN mix deps.compile",
        "# The sources: a change here rebuilds only what follows.",
        "COPY lib lib",
        "COPY rel rel",
        "RUN mix release --overwrite \\",
        " && mkdir -p /out \\",
        " && find _build -name 'shop-*.tar.gz' -not -path '*/rel/*' -exec cp {} /out/ \\; \\",
        " && " + PROBE,
        "",
        "FROM scratch AS release",
        "COPY --from=build /out/ /",
    ]


def test_rebar3_project_is_exact() -> None:
    files, dirs = project_files(EXAMPLES / "hello_erl", "rebar3")
    text = render_dockerfile(
        tool="rebar3", release="hello_erl", dependency_files=files, source_dirs=dirs, build_args=["HELLO_ERL_VERSION"]
    )
    assert text.splitlines() == [
        *(line.format(release="hello_erl") for line in HEADER),
        "ARG BUILDER_IMAGE=debian:bookworm-slim",
        "FROM ${BUILDER_IMAGE} AS build",
        "RUN apt-get update \\",
        " && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends erlang-nox erlang-dev rebar3"
        " git ca-certificates \\",
        " && rm -rf /var/lib/apt/lists/*",
        "ENV LANG=C.UTF-8",
        "WORKDIR /src",
        "# Dependencies first: these layers stay cached until the files below change.",
        "COPY rebar.config rebar.config.script ./",
        "RUN rebar3 as prod get-deps && rebar3 as prod compile --deps_only",
        "COPY config config",
        "# The sources: a change here rebuilds only what follows.",
        "COPY src src",
        "COPY priv priv",
        "ARG HELLO_ERL_VERSION",
        "RUN rebar3 as prod tar \\",
        " && mkdir -p /out \\",
        " && find _build/prod/rel -name 'hello_erl-*.tar.gz' -exec cp {} /out/ \\; \\",
        " && " + PROBE,
        "",
        "FROM scratch AS release",
        "COPY --from=build /out/ /",
    ]


@pytest.mark.parametrize(
    ("tool", "files", "needed"), [("mix", ["mix.lock"], "mix.exs"), ("rebar3", [], "rebar.config")]
)
def test_the_build_file_is_required(tool: str, files: list[str], needed: str) -> None:
    with pytest.raises(ValueError, match=f"a {tool} project's Dockerfile needs {needed}"):
        render_dockerfile(tool=tool, release="x", dependency_files=files, source_dirs=["lib"])  # type: ignore[arg-type]

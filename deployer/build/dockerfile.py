"""The Dockerfile ``build.strategy: docker`` builds with, as ``deployer init --docker`` writes it.

Two stages:

``build``
    ``FROM ${BUILDER_IMAGE}`` (``build.image`` sets it; default :data:`DEFAULT_BASE_IMAGE`), a Debian
    image: Erlang and Elixir (or rebar3) come from the image's own Debian packages, so the release's
    ERTS links the libc and OpenSSL of that Debian release, which is what the targets must have
    (``deployer.core.compat`` checks). Layers are ordered so a change to the sources rebuilds only
    the last ones: the packages, then the dependency files (``mix.exs``/``mix.lock``,
    ``rebar.config``/``rebar.lock``) and the fetched and compiled dependencies, then ``config``, and
    only then the sources and the release build. The build writes the tarball and
    :data:`PLATFORM_FILE` (the build container's ``uname -m``, ``ldd --version``, ``openssl
    version``: what :func:`deployer.core.compat.BuildPlatform.parse_probe` reads) into ``/out``.
``release``
    ``FROM scratch`` with only ``/out``: what ``docker build --output type=local`` (or ``podman``)
    exports.

``apt-get`` in the build stage needs the network: deployer builds with ``--network host``
(``build.network``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from deployer.core.compat import PLATFORM_PROBE

DEFAULT_BASE_IMAGE = "debian:bookworm-slim"
"""The builder stage's default base: Debian 12, like the hosts the example fleet runs. Build for the
targets' Debian (or Ubuntu) release: its libc must be no newer than theirs."""

PLATFORM_FILE = "deployer-platform.txt"
"""Written next to the tarball in the exported stage: the build container's platform probe output."""

Tool = Literal["mix", "rebar3"]

# Debian packages the build stage installs, per tool. erlang-nox: ERTS and the OTP applications a
# release may include, without the GUI ones; erlang-dev: headers for NIFs; git and ca-certificates
# for git and Hex dependencies.
DEFAULT_PACKAGES: dict[Tool, tuple[str, ...]] = {
    "mix": ("erlang-nox", "erlang-dev", "elixir", "git", "ca-certificates"),
    "rebar3": ("erlang-nox", "erlang-dev", "rebar3", "git", "ca-certificates"),
}
# What the dependency layer needs, in COPY order; a file the project lacks is left out.
DEPENDENCY_FILES: dict[Tool, tuple[str, ...]] = {
    "mix": ("mix.exs", "mix.lock"),
    "rebar3": ("rebar.config", "rebar.config.script", "rebar.lock"),
}
# Copied after the dependency layers, in this order (config first: dependencies may read it).
SOURCE_DIRS: dict[Tool, tuple[str, ...]] = {
    "mix": ("config", "lib", "priv", "rel"),
    "rebar3": ("config", "apps", "src", "include", "priv", "rel"),
}


def project_files(root: Path, tool: Tool) -> tuple[list[str], list[str]]:
    """The dependency files and source directories of the project in ``root`` that the Dockerfile
    copies (those of :data:`DEPENDENCY_FILES` and :data:`SOURCE_DIRS` that exist)."""
    files = [name for name in DEPENDENCY_FILES[tool] if (root / name).is_file()]
    dirs = [name for name in SOURCE_DIRS[tool] if (root / name).is_dir()]
    return files, dirs


def _platform_probe() -> str:
    """:data:`PLATFORM_PROBE` as one shell list (a Dockerfile RUN line)."""
    return "; ".join(line for line in PLATFORM_PROBE.splitlines() if line)


def render_dockerfile(
    *,
    tool: Tool,
    release: str,
    dependency_files: Sequence[str],
    source_dirs: Sequence[str],
    base_image: str = DEFAULT_BASE_IMAGE,
    build_args: Sequence[str] = (),
    packages: Sequence[str] | None = None,
) -> str:
    """A two-stage Dockerfile building ``release`` with ``mix release`` or ``rebar3 as prod tar``.

    Args:
        tool: ``mix`` or ``rebar3``.
        release: The release name (the tarball is ``<release>-<version>.tar.gz``).
        dependency_files: Copied before the dependencies are fetched (see :func:`project_files`);
            for mix it must include ``mix.exs``, for rebar3 ``rebar.config``.
        source_dirs: Copied after the dependency layers, in order (see :func:`project_files`).
        base_image: The default of the ``BUILDER_IMAGE`` build arg (``build.image`` overrides it);
            a Debian-based image, :data:`DEFAULT_BASE_IMAGE` unless given.
        build_args: Names declared with ``ARG`` just before the release build (deployer passes
            ``build.env`` names as ``--build-arg NAME``); declaring them late keeps the dependency
            layers cached when their values change.
        packages: Debian packages of the build stage (default :data:`DEFAULT_PACKAGES` of the tool).

    Mix projects with a ``mix.lock`` get Hex and rebar (``mix local.hex``/``local.rebar``, which
    need hex.pm); without one there is nothing to fetch from Hex and the build works offline.
    """
    required = DEPENDENCY_FILES[tool][0]
    if required not in dependency_files:
        raise ValueError(f"a {tool} project's Dockerfile needs {required} among the dependency files")
    wanted = " ".join(packages if packages is not None else DEFAULT_PACKAGES[tool])
    lines = [
        "# syntax=docker/dockerfile:1",
        f"# Builds the {release} release for deployer's `build.strategy: docker`; only the tarball leaves:",
        "#   docker build --network host --output type=local,dest=_build/deployer .",
        "# BUILDER_IMAGE (deployer's `build.image`): a Debian image as old as the targets' (its libc and",
        "# OpenSSL are the release's).",
        f"ARG BUILDER_IMAGE={base_image}",
        "FROM ${BUILDER_IMAGE} AS build",
        "RUN apt-get update \\",
        f" && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {wanted} \\",
        " && rm -rf /var/lib/apt/lists/*",
        "ENV LANG=C.UTF-8" + (" MIX_ENV=prod" if tool == "mix" else ""),
        "WORKDIR /src",
        "# Dependencies first: these layers stay cached until the files below change.",
        f"COPY {' '.join(dependency_files)} ./",
    ]
    has_config = "config" in source_dirs
    rest = [d for d in source_dirs if d != "config"]
    if tool == "mix":
        if "mix.lock" in dependency_files:
            lines.append("RUN mix local.hex --force && mix local.rebar --force")
        lines.append("RUN mix deps.get --only prod")
        if has_config:
            lines.append("COPY config config")
        lines.append("RUN mix deps.compile")
        build_command = "mix release --overwrite"
        find = f"find _build -name '{release}-*.tar.gz' -not -path '*/rel/*'"
    else:
        lines.append("RUN rebar3 as prod get-deps && rebar3 as prod compile --deps_only")
        if has_config:
            lines.append("COPY config config")
        build_command = "rebar3 as prod tar"
        find = f"find _build/prod/rel -name '{release}-*.tar.gz'"
    lines.append("# The sources: a change here rebuilds only what follows.")
    lines += [f"COPY {name} {name}" for name in rest]
    lines += [f"ARG {name}" for name in build_args]
    lines += [
        f"RUN {build_command} \\",
        " && mkdir -p /out \\",
        f" && {find} -exec cp {{}} /out/ \\; \\",
        f" && ({_platform_probe()}) > /out/{PLATFORM_FILE}",
        "",
        "FROM scratch AS release",
        "COPY --from=build /out/ /",
        "",
    ]
    return "\n".join(lines)


__all__ = [
    "DEFAULT_BASE_IMAGE",
    "DEFAULT_PACKAGES",
    "PLATFORM_FILE",
    "project_files",
    "render_dockerfile",
]

"""Shared builders for unit tests: inventories and tarballs made on the fly."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import yaml

from deployer.core.inventory import Inventory, load_inventory

BASE: dict[str, Any] = {
    "app": {"name": "hello"},
    "deploy_to": "/srv/hello",
    "ssh": {"user": "deploy"},
    "hosts": [
        {"name": "web1", "address": "10.0.0.1", "roles": ["app", "migrator"]},
        {"name": "web2", "address": "10.0.0.2"},
        {"name": "web3", "address": "10.0.0.3"},
    ],
    "env": {"clear": {"HELLO_PORT": "4000", "HELLO_DATA_DIR": "${shared}/data"}, "secret": ["HELLO_SECRET"]},
    "migrate": {"eval": "Hello.Release.migrate()"},
    "health": {"http": "http://127.0.0.1:4000/health", "deadline": 20},
}


def write_inventory(directory: Path, data: dict[str, Any], env: str = "test") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{env}.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def inventory(tmp_path: Path, data: dict[str, Any] | None = None, *, secret: str = "s3cr3t-value") -> Inventory:
    write_inventory(tmp_path / "inventory", data or BASE)
    return load_inventory("test", tmp_path / "inventory", environ={"HELLO_SECRET": secret})


def add_file(tar: tarfile.TarFile, name: str, data: bytes = b"x", mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def release_tarball(
    path: Path,
    *,
    app: str = "hello",
    version: str = "0.1.0",
    extra: list[tarfile.TarInfo] | None = None,
    with_bin: bool = True,
) -> Path:
    """A minimal release-shaped tarball: bin/<app>, releases/start_erl.data, releases/<vsn>/."""
    with tarfile.open(path, "w:gz") as tar:
        if with_bin:
            add_file(tar, f"bin/{app}", b"#!/bin/sh\n", 0o755)
        add_file(tar, "releases/start_erl.data", f"13.1.5 {version}\n".encode())
        info = tarfile.TarInfo(f"releases/{version}")
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
        add_file(tar, "erts-13.1.5/bin/beam.smp", b"\x7fELF", 0o755)
        for member in extra or []:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return path


def deployer_cli(*args: str) -> int:
    """``deployer ARGS`` in this process (as the console script runs it); its exit status."""
    from deployer.cli.program import main

    try:
        main(["deployer", *args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0

"""Upload throughput alone: deployer's transport (cipher and chunk variants) against OpenSSH, N hosts at once.

    python -m benchmarks.upload [--hosts 20] [--mb 50] [--repeats 3]

Every method sends the same file to every host in parallel and the time until the last host has it is
measured, with the CPU it took on this machine (clients) and on the hosts (:class:`CpuMeter`):

* ``paramiko <cipher>``: ``SSHTransport.upload`` (the plain exec channel deployer uses, with the same
  remote script: ``cat`` into a temp file, sha256sum, rename) over connections opened beforehand, as in
  a deploy; in a child process, one thread per host like the executor;
* ``ssh <cipher>``: OpenSSH ``ssh host sh -c '<the same script>' < file`` (connection setup included);
* ``scp``: OpenSSH ``scp`` (SFTP protocol; connection setup included), the baseline's upload.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import REPO, CpuMeter, Deployment, Network, make_deployment, median

PARAMIKO_VARIANTS: dict[str, tuple[str, str | None]] = {
    # name: (cipher, mac) — the mac is irrelevant for AEAD ciphers
    "aes128-ctr+hmac-sha2-256": ("aes128-ctr", "hmac-sha2-256"),
    "aes128-ctr+hmac-sha2-256-etm": ("aes128-ctr", "hmac-sha2-256-etm@openssh.com"),
    "aes128-gcm": ("aes128-gcm@openssh.com", None),
    "aes256-gcm": ("aes256-gcm@openssh.com", None),
}
OPENSSH_CIPHERS = ("chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com", "aes128-ctr")


def _receive_script(deploy_to: str, sha: str) -> str:
    from deployer.core.paths import RemoteLayout
    from deployer.remote import release as rc

    return rc.receive_artifact(RemoteLayout(deploy_to, "hello"), sha).render()


# --- child: paramiko uploads ----------------------------------------------------------------------------


def child(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inventory-dir", required=True)
    parser.add_argument("--file", required=True)
    parser.add_argument("--sha", required=True)
    parser.add_argument("--cipher", default="")
    parser.add_argument("--mac", default="")
    parser.add_argument("--chunk", type=int, default=0)
    args = parser.parse_args(argv)

    import paramiko

    from deployer.core.inventory import load_inventory
    from deployer.core.paths import RemoteLayout
    from deployer.remote import release as rc
    from deployer.ssh import transport
    from deployer.ssh.endpoints import endpoint

    if args.cipher:
        paramiko.Transport._preferred_ciphers = (args.cipher,)  # type: ignore[attr-defined]
    if args.mac:
        paramiko.Transport._preferred_macs = (args.mac,)  # type: ignore[attr-defined]
    if args.chunk:
        transport.UPLOAD_CHUNK = args.chunk
    inventory = load_inventory("bench", args.inventory_dir)
    layout = RemoteLayout(inventory.config.deploy_to, inventory.config.app.name)
    script = rc.receive_artifact(layout, args.sha)
    conns = [transport.SSHTransport(endpoint(inventory, h)) for h in inventory.hosts]
    negotiated = sorted({f"{c.paramiko_transport.local_cipher} / {c.paramiko_transport.local_mac}" for c in conns})
    failures: list[str] = []
    times: dict[str, float] = {}

    def one(conn: transport.SSHTransport) -> None:
        started = time.monotonic()
        result = conn.upload(script, Path(args.file))
        times[conn.name] = round(time.monotonic() - started, 4)
        if not result.ok:
            failures.append(f"{conn.name}: {result.stderr.strip()}")

    cpu_before = os.times()
    started = time.monotonic()
    threads = [threading.Thread(target=one, args=(c,)) for c in conns]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    cpu_after = os.times()
    for conn in conns:
        conn.close()
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    print(json.dumps({"seconds": seconds, "client_cpu": cpu, "negotiated": negotiated, "failures": failures}))
    return 1 if failures else 0


# --- parent ---------------------------------------------------------------------------------------------


def _paramiko(deployment: Deployment, file: Path, sha: str, cipher: str, mac: str | None, chunk: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "benchmarks.upload", "child", "--inventory-dir", str(deployment.inventory_dir)]
    argv += ["--file", str(file), "--sha", sha, "--cipher", cipher, "--mac", mac or "", "--chunk", str(chunk)]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"paramiko upload failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def _openssh(deployment: Deployment, file: Path, sha: str, method: str, cipher: str | None) -> dict[str, Any]:
    network = deployment.network
    script = _receive_script(deployment.deploy_to, sha)
    for host in deployment.hosts:
        (deployment.local_dir(host) / "incoming").mkdir(parents=True, exist_ok=True)
    failures: list[str] = []

    def one(index: int) -> None:
        route = network.routes[index]
        if method == "scp":
            argv = network.scp_argv(route, [file], f"{deployment.deploy_to}/incoming")
            if cipher:
                argv[1:1] = ["-c", cipher]
            done = subprocess.run(argv, capture_output=True, timeout=900, check=False)
        else:
            ssh = network.ssh_argv(route)
            argv = [ssh[0], *(["-c", cipher] if cipher else []), *ssh[1:], "sh -c " + shlex.quote(script)]
            with file.open("rb") as handle:
                done = subprocess.run(argv, stdin=handle, capture_output=True, timeout=900, check=False)
        if done.returncode != 0:
            failures.append(f"{route.host.name}: {done.stderr.decode(errors='replace').strip()}")

    started = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(network.routes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    if failures:
        raise RuntimeError(f"{method} upload failed: {failures[:3]}")
    return {"seconds": seconds, "negotiated": [cipher or "default (chacha20-poly1305@openssh.com)"]}


def methods(chunks: list[int]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = [("scp (default cipher)", {"kind": "scp", "cipher": None})]
    out += [(f"ssh {c}", {"kind": "ssh", "cipher": c}) for c in OPENSSH_CIPHERS]
    for name, (cipher, mac) in PARAMIKO_VARIANTS.items():
        out.append((f"paramiko {name}", {"kind": "paramiko", "cipher": cipher, "mac": mac, "chunk": 0}))
    for chunk in chunks:
        cipher, mac = PARAMIKO_VARIANTS["aes128-gcm"]
        out.append(
            (
                f"paramiko aes128-gcm chunk {chunk // 1024} KiB",
                {"kind": "paramiko", "cipher": cipher, "mac": mac, "chunk": chunk},
            )
        )
    return out


def upload_matrix(
    deployment: Deployment,
    file: Path,
    sha: str,
    meter: CpuMeter,
    repeats: int,
    chunks: list[int],
    log: Any = print,
    only: str = "",
) -> list[dict[str, Any]]:
    """Every method ``repeats`` times, interleaved (method 1..n, then again), medians."""
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    plan = [(n, s) for n, s in methods(chunks) if not wanted or any(w in n for w in wanted)]
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in plan}
    size = file.stat().st_size * len(deployment.hosts)
    for _ in range(repeats):
        for name, spec in plan:
            meter.settle()
            before = meter.snapshot()
            if spec["kind"] == "paramiko":
                outcome = _paramiko(deployment, file, sha, spec["cipher"], spec["mac"], spec["chunk"])
            else:
                outcome = _openssh(deployment, file, sha, spec["kind"], spec["cipher"])
            outcome["cpu"] = meter.since(before)
            if "client_cpu" in outcome:  # the uploads alone, without the child's start and connections
                outcome["cpu"]["client"] = round(outcome["client_cpu"], 2)
            samples[name].append(outcome)
            log(
                f"  {name:<48} {outcome['seconds']:6.2f}s  {size / outcome['seconds'] / 1e6:7.1f} MB/s  "
                f"cpu hosts {outcome['cpu']['hosts']:5.2f}s client {outcome['cpu']['client']:5.2f}s"
            )
    rows = []
    for name, runs in samples.items():
        seconds = median([r["seconds"] for r in runs])
        rows.append(
            {
                "method": name,
                "seconds": seconds,
                "mb_per_s": round(size / seconds / 1e6, 1) if seconds else None,
                "cpu_hosts": median([r["cpu"]["hosts"] for r in runs]),
                "cpu_client": median([r["cpu"]["client"] for r in runs]),
                "negotiated": runs[0].get("negotiated"),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:
        return child(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.upload", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--mb", type=float, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunks", default="", help="extra chunk sizes in KiB for paramiko aes128-gcm, e.g. 32,1024")
    parser.add_argument("--only", default="", help="comma-separated substrings of the method names to run")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    from deployer.core.artifact import sha256_file
    from tests.harness.fleet import Fleet

    chunks = [int(c) * 1024 for c in args.chunks.split(",") if c.strip()]
    with tempfile.TemporaryDirectory(prefix="deployer-upload-") as tmp, Fleet(args.hosts) as fleet:
        work = Path(tmp)
        file = work / "blob.bin"
        file.write_bytes(os.urandom(int(args.mb * 1e6)))
        sha = sha256_file(file)
        network = Network(fleet, fleet.hosts, work)
        deployment = make_deployment(fleet, network, work, "upload")
        rows = upload_matrix(deployment, file, sha, CpuMeter(fleet), args.repeats, chunks, only=args.only)
    print()
    print(f"{args.hosts} hosts x {args.mb:g} MB, medians of {args.repeats}:")
    for row in rows:
        print(
            f"  {row['method']:<48} {row['seconds']:6.2f}s {row['mb_per_s']:7.1f} MB/s  "
            f"cpu hosts {row['cpu_hosts']:5.2f}s client {row['cpu_client']:5.2f}s  {row['negotiated']}"
        )
    if args.output:
        args.output.write_text(json.dumps({"hosts": args.hosts, "mb": args.mb, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

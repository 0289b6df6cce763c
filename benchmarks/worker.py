"""One deployer run in its own process, so its peak RSS is its own: prints a JSON summary on stdout.

    python -m benchmarks.worker --inventory-dir DIR --env bench --tarball PATH

``api.deploy`` runs in-process here (the same call ``invoke deploy`` makes, without the console
report); ``api_seconds`` times that call alone, ``inspect_seconds`` the local sha256 and tarball
validation before it. The parent also times the whole process (interpreter start and imports).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

STARTED = time.monotonic()
# As the `deployer` command starts (deployer.cli.program.console): no search for pydantic plugins.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")


def _status_kb(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process from /proc, in KiB."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inventory-dir", required=True)
    parser.add_argument("--env", default="bench")
    parser.add_argument("--tarball", required=True)
    parser.add_argument("--app", default="hello")
    args = parser.parse_args(argv)

    from deployer.core.artifact import inspect_tarball
    from deployer.core.config import HostConfig
    from deployer.core.inventory import load_inventory
    from deployer.core.outcome import NullEvents
    from deployer.engine.clock import process_started
    from deployer.operations import release as api
    from deployer.ssh.endpoints import endpoint
    from deployer.ssh.transport import SSHTransport, Transport

    class UploadClock(NullEvents):
        """When the first upload started and the last one ended: the upload phase, however scheduled."""

        def __init__(self) -> None:
            self.first: float | None = None
            self.last: float | None = None

        def step(self, host: str, step: str, status: str, detail: str = "") -> None:
            if step != "upload":
                return
            now = time.monotonic()
            if status == "start" and self.first is None:
                self.first = now
            elif status == "done":
                self.last = now

        @property
        def elapsed(self) -> float | None:
            return round(self.last - self.first, 4) if self.first and self.last else None

    uploads = UploadClock()

    imported = time.monotonic()
    inventory = load_inventory(args.env, args.inventory_dir)
    started = time.monotonic()
    artifact = inspect_tarball(args.tarball, args.app)
    inspected = time.monotonic()
    rss_before = _status_kb("VmRSS")
    ciphers: dict[str, str] = {}

    def connect(host: HostConfig) -> Transport:
        transport = SSHTransport(endpoint(inventory, host))
        raw = transport.paramiko_transport
        ciphers[host.name] = f"{raw.local_cipher} / {raw.local_mac}"
        return transport

    result = api.deploy(inventory, artifact, api.Options(connector=connect, events=uploads, started=process_started()))
    finished = time.monotonic()
    report = result.report
    usage = resource.getrusage(resource.RUSAGE_SELF)
    summary = {
        "ok": report.ok,
        "error": report.error,
        "release": report.release,
        "migrated_on": report.migrated_on,
        "api_seconds": round(finished - inspected, 4),
        "reported_seconds": round(report.duration, 4),
        "inspect_seconds": round(inspected - started, 4),
        "startup_seconds": round(imported - STARTED, 4),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
        "rss_before_deploy_kb": rss_before,
        "peak_rss_kb": _status_kb("VmHWM") or usage.ru_maxrss,
        "artifact": {"sha256": artifact.sha256, "size": artifact.size},
        "ciphers": sorted(set(ciphers.values())),
        "upload_phase": uploads.elapsed,
        "hosts": [
            {
                "host": h.host,
                "outcome": h.outcome,
                "sessions": h.sessions,
                "uploaded_bytes": h.uploaded_bytes,
                "timings": h.timings,
                "error": h.error,
            }
            for h in report.hosts
        ],
    }
    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    status = main()
    # The way the `deployer` command ends (deployer.cli.program.console): no interpreter teardown.
    from deployer.cli.program import exit_now

    exit_now(status)

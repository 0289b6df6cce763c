"""Benchmark deployer against a raw OpenSSH baseline on a local fleet (needs root).

    python -m benchmarks.run [--sizes 1,5,20] [--repeats 3] [--latency-ms 25] [--large-mb 50]
    .venv/bin/python benchmarks/run.py ...
    invoke bench ...

Starts one fleet of max(sizes) hosts, builds the example release once, and runs the scenarios:
``lan-N`` for every size, ``latency-N`` (a LatencyProxy per host) and ``large-N`` (a ~50 MB
release) on the largest size. Writes ``benchmarks/results/latest.json`` and the results table in
``benchmarks/README.md``. It prints numbers; it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import Bench, Scenario, machine, ratio

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "latest.json"
README = HERE / "README.md"
START_MARK = "<!-- results:start -->"
END_MARK = "<!-- results:end -->"

TARGETS = {
    "lan": 0.95,  # deployer / baseline, whole commands, N hosts
    "latency": 0.95,
    "busy": 0.95,  # hosts each seeing hundreds of processes
    "redeploy": 0.25,  # re-deploy of the running release / an upgrade, whole commands
    "host_cpu": 1.0,  # hosts' non-BEAM CPU, deployer / baseline
    "upload": 1.2,  # deployer upload phase / parallel scp, large artifact
    "sessions": 5,  # non-migrator host
}


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    sizes = sorted({int(s) for s in str(args.sizes).split(",") if s.strip()})
    largest = max(sizes)
    out = [Scenario(f"lan-{n}", n, args.repeats, label=f"{n} host(s), LAN") for n in sizes]
    if args.latency_ms > 0:
        out.append(
            Scenario(
                f"latency-{largest}",
                largest,
                args.repeats,
                delay_ms=args.latency_ms,
                redeploy=False,
                label=f"{largest} hosts, +{args.latency_ms:g} ms each way",
            )
        )
    if args.large_mb > 0:
        base = args.base_size
        out.append(
            Scenario(
                f"large-{largest}",
                largest,
                args.repeats,
                pad_bytes=max(64, int(args.large_mb * 1e6) - base),
                redeploy=False,
                label=f"{largest} hosts, {args.large_mb:g} MB release",
            )
        )
    if args.busy_procs > 0:
        # Last: the idle processes stay on those hosts for the rest of the run.
        out.append(
            Scenario(
                f"busy-{largest}",
                largest,
                args.repeats,
                idle_procs=args.busy_procs,
                label=f"{largest} hosts, each seeing >= {args.busy_procs} processes",
            )
        )
    return out


def evaluate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met."""
    checks: list[dict[str, Any]] = []
    by_name = {r["name"]: r for r in results}
    lan = [r for r in results if r["name"].startswith("lan-")]
    if lan:
        top = max(lan, key=lambda r: r["hosts"])
        checks.append(
            _check(f"{top['hosts']} hosts: deployer / baseline", top["upgrade"].get("ratio_whole"), TARGETS["lan"])
        )
    for name, result in by_name.items():
        u = result["upgrade"]
        if name.startswith("busy-") and u:
            label = f"{result['hosts']} hosts x {result.get('processes_per_host', '?')} processes"
            checks.append(
                _check(f"{label}: deployer / baseline (whole commands)", u.get("ratio_whole"), TARGETS["busy"])
            )
            ours, theirs = u["host_cpu_deployer"].get("non_beam"), u["host_cpu_baseline"].get("non_beam")
            checks.append(_check(f"{label}: hosts' non-BEAM CPU, deployer / baseline", ratio(ours, theirs), 1.0))
            if "redeploy" in result:
                again = result["redeploy"]
                checks.append(
                    _check(
                        f"{label}: re-deploy of the running release / upgrade",
                        ratio(again["process_seconds"], u["deployer_process_seconds"]),
                        TARGETS["redeploy"],
                    )
                )
                checks.append(_check(f"{label}: nodes restarted by the re-deploy", again.get("nodes_restarted"), 0))
        if name.startswith("latency-"):
            checks.append(
                _check(
                    f"{result['hosts']} hosts, latency: deployer / baseline",
                    result["upgrade"].get("ratio_whole"),
                    TARGETS["latency"],
                )
            )
        if name.startswith("large-"):
            checks.append(
                _check(
                    f"{result['hosts']} hosts x {result['artifact_bytes'] / 1e6:.0f} MB: upload phase / parallel scp",
                    result["upgrade"].get("upload_ratio"),
                    TARGETS["upload"],
                )
            )
    redeploys = [r["redeploy"]["bytes_uploaded"] for r in results if "redeploy" in r]
    if redeploys:
        checks.append(_check("re-deploy: bytes uploaded", max(redeploys), 0))
    sessions = [r["upgrade"].get("sessions_non_migrator_max") for r in results if r["upgrade"]]
    sessions += [
        n
        for r in results
        if "first_deploy" in r
        for h, n in r["first_deploy"]["deployer"]["sessions"].items()
        if h != r["first_deploy"]["deployer"].get("migrated_on")
    ]
    clean = [s for s in sessions if s is not None]
    if clean:
        checks.append(_check("SSH sessions, non-migrator host", max(clean), TARGETS["sessions"]))
    return checks


def _check(name: str, value: float | None, target: float) -> dict[str, Any]:
    return {"target": name, "limit": target, "value": value, "met": value is not None and value <= target}


def table(data: dict[str, Any]) -> str:
    """The Markdown block written between the markers in benchmarks/README.md."""
    m = data["machine"]
    lines = [
        f"Run {data['finished']} ({data['duration_s'] / 60:.1f} min), {data['config']['repeats']} repeats, medians. "
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, Linux {m['kernel']}, {m['os']}; "
        f"{m['openssh']}; Python {m['python']}, paramiko {m['paramiko']}, cryptography {m['cryptography']}.",
        "",
        "Upgrade of a running node (new artifact, must be uploaded). Whole commands: deployer = "
        "`python -m benchmarks.worker` (interpreter start, imports, inventory load, artifact checks, "
        "`api.deploy` lock to unlock, exit); *reported* = the duration deployer's report states (counted from "
        "its process start); baseline = reading its configuration, writing the env file, then per host in "
        "parallel `scp` + one `ssh` script, to the last exit. Both sides wait `health.stable_for` (5 s). "
        "Host CPU = seconds the fleet hosts' processes used, non-BEAM (sshd, shells, tar, hash, health "
        "checks, ...) and BEAM (the nodes, migration VMs, epmd, run_erl); load = 1-minute load average when "
        "each run started (the machine is shared), other work = the rest of the machine, in cores out of "
        f"{m['cores']}.",
        "",
        "| scenario | deployer | (reported) | baseline | **ratio** | (api call) | upload phase deployer / scp "
        "| host non-BEAM CPU deployer / baseline | BEAM CPU | client CPU | sessions/host (migrator) "
        "| load | other work |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def pair(u: dict[str, Any], key: str) -> str:
        ours, theirs = u["host_cpu_deployer"].get(key), u["host_cpu_baseline"].get(key)
        return f"{ours:.1f} / {theirs:.1f}" if ours is not None and theirs is not None else "-"

    for r in data["scenarios"]:
        u = r["upgrade"]
        if not u:
            continue
        client = f"{u['deployer_client_cpu_seconds']:.1f} / {u['baseline_client_cpu_seconds']:.1f}"
        lines.append(
            f"| {r['label']} | {u['deployer_process_seconds']:.2f} s | {u.get('reported_seconds') or 0:.2f} s "
            f"| {u['baseline_seconds']:.2f} s | **{u['ratio_whole']:.2f}** | {u['ratio']:.2f} "
            f"| {u['upload_phase_deployer']:.2f} s / {u['upload_phase_baseline']:.2f} s ({u['upload_ratio']:.2f}) "
            f"| {pair(u, 'non_beam')} s | {pair(u, 'beam')} s | {client} s "
            f"| {u['sessions_non_migrator_max'] or '-'} ({u['sessions_migrator']}) "
            f"| {u.get('loadavg_1m') or 0:.2f} | {u['other_work_cores']:.2f} cores |"
        )
    kinds = ("sshd", "shell", "tar", "hash", "health", "other")
    lines += [
        "",
        "Hosts' CPU by kind of process, seconds per upgrade (medians), deployer / baseline "
        "(`benchmarks/hostcpu.py`: process accounting for the processes that exited, /proc for the rest):",
        "",
        "| scenario | " + " | ".join(kinds) + " | non-BEAM | BEAM |",
        "|---|" + "---:|" * (len(kinds) + 2),
    ]
    for r in data["scenarios"]:
        u = r["upgrade"]
        if u and u.get("host_cpu_deployer"):
            cells = " | ".join(pair(u, k) for k in (*kinds, "non_beam", "beam"))
            lines.append(f"| {r['label']} | {cells} |")
    redeploys = [r for r in data["scenarios"] if "redeploy" in r]
    if redeploys:
        lines += ["", "Re-deploy of the release every host already runs (whole command):", ""]
        lines += [
            "| scenario | deployer | / upgrade | bytes uploaded | nodes restarted | hosts | sessions/host (migrator) |",
            "|---|---:|---:|---:|---:|---|---:|",
        ]
        for r in redeploys:
            again = r["redeploy"]
            sessions = again["sessions"]
            migrator = again.get("migrated_on")
            others = [n for h, n in sessions.items() if h != migrator]
            upgrade = r["upgrade"].get("deployer_process_seconds")
            share = f"{again['process_seconds'] / upgrade:.2f}" if upgrade else "-"
            outcomes = ", ".join(f"{n} {o}" for o, n in (again.get("outcomes") or {}).items())
            lines.append(
                f"| {r['label']} | {again['process_seconds']:.2f} s | {share} | {again['bytes_uploaded']} "
                f"| {again.get('nodes_restarted', '-')} | {outcomes} "
                f"| {max(others) if others else '-'} ({sessions.get(migrator, '-')}) |"
            )
    lines += ["", "| target | limit | measured | met |", "|---|---:|---:|:---:|"]
    for check in data["targets"]:
        lines.append(
            f"| {check['target']} | {check['limit']} | {check['value']} | {'yes' if check['met'] else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


def write_readme(block: str, readme: Path = README) -> None:
    text = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{START_MARK}\n{END_MARK}\n"
    if START_MARK not in text:
        text += f"\n{START_MARK}\n{END_MARK}\n"
    head, _, rest = text.partition(START_MARK)
    _, _, tail = rest.partition(END_MARK)
    readme.write_text(f"{head}{START_MARK}\n{block}{END_MARK}{tail}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,5,20", help="fleet sizes for the LAN scenarios (default 1,5,20)")
    parser.add_argument("--repeats", type=int, default=3, help="timed upgrades per side and scenario (default 3)")
    parser.add_argument("--latency-ms", type=float, default=25.0, help="added latency per direction; 0 skips")
    parser.add_argument("--large-mb", type=float, default=50.0, help="size of the large release in MB; 0 skips")
    parser.add_argument(
        "--busy-procs",
        type=int,
        default=400,
        help="busy-N: every host sees at least this many processes (idle ones added); 0 skips (default 400)",
    )
    parser.add_argument("--only", default="", help="comma-separated scenario names to run (e.g. lan-20,large-20)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    parser.add_argument("--no-readme", action="store_true", help="do not update benchmarks/README.md")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tests.harness.examples import build_hello
    from tests.harness.fleet import Fleet

    started = time.monotonic()
    print("building the example release (cached after the first build) ...", flush=True)
    base = build_hello("0.1.0", migrations=2)
    args.base_size = base.stat().st_size
    plan = scenarios(args)
    if args.only:
        wanted = {s.strip() for s in args.only.split(",")}
        plan = [s for s in plan if s.name in wanted]
    if not plan:
        print("no scenario selected", file=sys.stderr)
        return 2
    size = max(s.hosts for s in plan)
    results: list[dict[str, Any]] = []
    info = machine()
    print(f"machine: {info}", flush=True)

    def log(text: str) -> None:
        print(f"{time.monotonic() - started:6.0f}s {text}", flush=True)

    with (
        tempfile.TemporaryDirectory(prefix="deployer-bench-") as tmp,
        Fleet(size) as fleet,
        Bench(fleet, base, Path(tmp), log) as bench,
    ):
        log(f"fleet {fleet.runid} up: {size} hosts")
        for index, scenario in enumerate(plan):
            results.append(bench.run(scenario))
            if all(later.hosts != scenario.hosts for later in plan[index + 1 :]):
                bench.release(scenario.hosts)  # stop those nodes: idle VMs would only add noise
    data = {
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round(time.monotonic() - started, 1),
        "machine": info,
        "config": {
            "sizes": args.sizes,
            "repeats": args.repeats,
            "latency_ms_per_direction": args.latency_ms,
            "large_mb": args.large_mb,
            "base_artifact_bytes": args.base_size,
            "deployer_side": "api.deploy in a child process (python -m benchmarks.worker)",
        },
        "scenarios": results,
    }
    data["targets"] = evaluate(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(data, indent=2) + "\n")
    block = table(data)
    print()
    print(block)
    print(f"results written to {args.output}")
    if not args.no_readme:
        write_readme(block)
        print(f"table written to {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``invoke bench``: deployer against a raw OpenSSH baseline on a local fleet (needs root).

The benchmark lives in the repository's ``benchmarks/`` (not in the installed package); this task runs
``python -m benchmarks.run`` from the repository root with the same interpreter.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

REPO = Path(__file__).resolve().parents[2]


@task(
    help={
        "sizes": "Fleet sizes for the LAN scenarios, comma-separated (default 1,5,20).",
        "repeats": "Timed upgrades per side and scenario; medians are reported (default 3).",
        "latency_ms": "Latency added per direction by a proxy in front of each host; 0 skips (default 25).",
        "large_mb": "Size of the large release in MB; 0 skips (default 50).",
        "only": "Run only these scenarios, comma-separated (e.g. lan-20,large-20).",
        "output": "Where to write the JSON results (default benchmarks/results/latest.json).",
        "no_readme": "Do not update the results table in benchmarks/README.md.",
    }
)
def bench(
    c: Context,
    sizes: str = "1,5,20",
    repeats: int = 3,
    latency_ms: float = 25.0,
    large_mb: float = 50.0,
    only: str = "",
    output: str = "",
    no_readme: bool = False,
) -> None:
    """Benchmark deploys (N hosts, LAN, latency, a large release, a re-deploy) against scp + ssh; print medians."""
    if not (REPO / "benchmarks" / "run.py").is_file():
        raise Exit("the benchmarks are not here: run `invoke bench` from a checkout of the deployer repository", 1)
    argv = [sys.executable, "-m", "benchmarks.run", "--sizes", sizes, "--repeats", str(repeats)]
    argv += ["--latency-ms", f"{latency_ms:g}", "--large-mb", f"{large_mb:g}"]
    if only:
        argv += ["--only", only]
    if output:
        argv += ["--output", str(Path(output).resolve())]
    if no_readme:
        argv.append("--no-readme")
    with c.cd(str(REPO)):
        result = c.run(shlex.join(argv), pty=False, warn=True)
    if result is None or result.exited != 0:
        raise Exit(code=result.exited if result is not None else 1)

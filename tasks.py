"""Invoke entry point: `invoke --list` shows deployer's tasks (deploy, migrate, rollback, fleet.up, ...).

A project of yours needs only the first import; `bench` exists in this repository alone (benchmarks/).
"""

from deployer.bench_tasks import bench
from deployer.tasks import ns

ns.add_task(bench)

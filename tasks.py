"""This repository's Invoke entry point: deployer's user tasks plus the development tasks.

``fleet.up/down/show`` (a local fleet of real sshd hosts) and ``bench`` live in ``tests/harness`` and are
registered only here, never in the installed package: a project of yours needs only
``from deployer.tasks import ns``.
"""

from invoke.collection import Collection

from deployer.tasks import ns
from tests.harness import fleet_tasks
from tests.harness.bench_tasks import bench

ns.add_collection(Collection.from_module(fleet_tasks, name="fleet"))
ns.add_task(bench)

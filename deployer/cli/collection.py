"""The one collection of user tasks: what ``deployer --list`` and a project's ``invoke --list`` show.

Only tasks for operating your own fleet belong here; the repository's test fleet and benchmark tasks are
registered by the repository's root ``tasks.py``, never shipped to users.
"""

from invoke.collection import Collection

from deployer.cli.env_tasks import TASKS as ENV_TASKS
from deployer.cli.exec_tasks import TASKS as EXEC_TASKS
from deployer.cli.init_task import init
from deployer.cli.lock_task import lock
from deployer.cli.ops_tasks import TASKS as OPS_TASKS
from deployer.cli.release_tasks import config, deploy, history, migrate, rollback, unlock
from deployer.cli.setup_task import TASKS as SETUP_TASKS
from deployer.cli.trust_tasks import trust
from deployer.cli.upgrade_task import upgrade

ns = Collection(
    deploy,
    upgrade,
    migrate,
    rollback,
    history,
    lock,
    unlock,
    config,
    trust,
    init,
    *OPS_TASKS,
    *EXEC_TASKS,
    *SETUP_TASKS,
    *ENV_TASKS,
)

__all__ = ["ns"]

"""deployer's Invoke collection, for a project's own ``tasks.py``::

    from deployer.tasks import ns  # noqa: F401

``deployer deploy --env prod`` then runs the same tasks as the ``deployer`` console script. The tasks
themselves live in :mod:`deployer.cli`.
"""

from deployer.cli.collection import ns

__all__ = ["ns"]

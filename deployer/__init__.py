"""deployer: ship Erlang/Elixir OTP releases to fleets of bare-metal hosts over SSH.

The Invoke collection lives in :mod:`deployer.cli.release_tasks`; the library API in :mod:`deployer.operations.release`.
"""

__version__ = "0.1.0"

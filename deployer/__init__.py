"""deployer: ship Erlang/Elixir OTP releases to fleets of bare-metal hosts over SSH.

The tasks live in :mod:`deployer.cli` (collected in :mod:`deployer.tasks`); the library API in
:mod:`deployer.operations`.
"""

__version__ = "0.1.0"

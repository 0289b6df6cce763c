"""deployer: ship Erlang/Elixir OTP releases to fleets of bare-metal hosts over SSH.

The Invoke collection lives in :mod:`deployer.tasks`; the library API in :mod:`deployer.api`.
"""

__version__ = "0.1.0"

"""Test tooling that never ships in the wheel: local fleets of real hosts, the latency proxy, example builders,
and the repository-only tasks (``fleet.*``, ``bench``)."""

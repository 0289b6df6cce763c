"""Test helpers: a local fleet of real sshd hosts (:mod:`deployer.testing.fleet`) and a
latency-adding TCP proxy (:mod:`deployer.testing.proxy`).

Nothing is imported here, so importing :mod:`deployer.testing` stays cheap; import the
submodules you need.
"""

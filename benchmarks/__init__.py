"""Benchmarks of deployer against a raw OpenSSH baseline on a local fleet of real sshd hosts.

Run ``invoke bench``, ``python -m benchmarks.run`` or ``python benchmarks/run.py`` (as root);
see ``benchmarks/README.md`` for what is measured and the latest results.
"""

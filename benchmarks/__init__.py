"""Benchmarks of maas-rpc against raw Twisted AMP, measured in the same run.

Run them with ``python -m benchmarks`` (see ``benchmarks/README.md``). They
are never part of the test suite, and nothing here asserts on time.
"""

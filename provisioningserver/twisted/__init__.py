"""Twisted modules exposed under the import paths MAAS uses."""

__all__: list[str] = []

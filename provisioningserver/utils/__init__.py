"""Utilities shared by the region and the clusters."""

__all__: list[str] = []

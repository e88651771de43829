"""Tests for :mod:`maasserver.eventloop`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from maasserver.config import RegionConfig
from maasserver.eventloop import RegionEventLoop
from maasserver.rpc.stores import (
    PostgreSQLAdvertisementStore,
    SQLiteAdvertisementStore,
)


def _store(loop: RegionEventLoop) -> object:
    return loop.services.getServiceNamed("rpc-advertise").store


def test_populate_uses_the_sqlite_store_by_default(tmp_path: Path) -> None:
    loop = RegionEventLoop()
    loop.populate(RegionConfig(data_dir=tmp_path))
    store = _store(loop)
    assert isinstance(store, SQLiteAdvertisementStore)
    assert store.path == tmp_path / "eventloops.sqlite3"


def test_populate_uses_the_postgresql_store_when_configured(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    url = "postgresql://maas@db.invalid/maas"
    loop = RegionEventLoop()
    # Nothing connects until the services start.
    loop.populate(RegionConfig(data_dir=tmp_path, database_url=url))
    store = _store(loop)
    assert isinstance(store, PostgreSQLAdvertisementStore)
    assert store.url == url
    assert (store.schema, store.table) == ("public", "maas_rpc_eventloops")


def test_populate_without_psycopg_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    loop = RegionEventLoop()
    config = RegionConfig(data_dir=tmp_path, database_url="postgresql:///maas")
    with pytest.raises(ImportError, match="psycopg"):
        loop.populate(config)
    assert not loop.populated

"""Fixtures for the store tests: every semantic test runs against both stores."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from storage.interface import Store
from storage.lmdb_store import LmdbStore
from storage.memory_store import MemoryStore


@pytest.fixture(params=["memory", "lmdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        made: Store = MemoryStore()
    else:
        made = LmdbStore(tmp_path / "store", map_size=1 << 20)
    yield made
    made.close()

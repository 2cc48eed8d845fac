"""Shared fixtures. tests/ is on sys.path (pytest's rootdir conftest), so `helpers.tiny` imports."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_ADAPTERS = REPO.parent / "shared" / "real_adapters"


@pytest.fixture(scope="session")
def real_adapters() -> Path:
    """../shared/real_adapters (third-party adapters used as read-only test inputs)."""
    if not REAL_ADAPTERS.is_dir():
        pytest.skip("../shared/real_adapters not present")
    return REAL_ADAPTERS

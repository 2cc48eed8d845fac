"""Shared fixtures. tests/ is on sys.path (pytest's rootdir conftest), so `helpers.tiny` imports."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_ADAPTERS = REPO.parent / "shared" / "real_adapters"


REAL_SKIP_REASON = ("../shared/real_adapters not present (a fresh clone): tests on third-party adapters are "
                    "skipped; the committed sample set (sample_adapters/) covers the pages and the workflow")
#: For tests that name ../shared paths directly instead of taking the `real_adapters` fixture.
needs_real_adapters = pytest.mark.skipif(not REAL_ADAPTERS.is_dir(), reason=REAL_SKIP_REASON)


@pytest.fixture(scope="session")
def real_adapters() -> Path:
    """../shared/real_adapters (third-party adapters used as read-only test inputs); skips without them."""
    if not REAL_ADAPTERS.is_dir():
        pytest.skip(REAL_SKIP_REASON)
    return REAL_ADAPTERS

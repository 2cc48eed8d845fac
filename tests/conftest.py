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


@pytest.fixture(scope="session")
def pg_cluster():  # noqa: ANN201 - helpers.pg_cluster.Cluster
    """A throwaway PostgreSQL cluster (Debian's server binaries, temp dir, free 127.0.0.1 port) for the session."""
    from helpers.pg_cluster import server_bin, start_cluster, stop_cluster

    if server_bin() is None:
        pytest.skip("PostgreSQL server binaries absent (/usr/lib/postgresql/*/bin/initdb): "
                    "`make system` installs Debian's postgresql")
    pytest.importorskip("psycopg", reason="psycopg not installed: pip install -e '.[test]'")
    cluster = start_cluster()
    yield cluster
    stop_cluster(cluster)


@pytest.fixture(params=["sqlite", "postgresql"])
def review_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh review store location: a SQLite file path, or a PostgreSQL URL (psycopg driver)."""
    if request.param == "sqlite":
        return str(tmp_path / "review.db")
    return request.getfixturevalue("pg_cluster").new_database()

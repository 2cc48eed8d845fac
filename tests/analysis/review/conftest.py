"""Review-store backends for the tests: a SQLite file, and a real throwaway PostgreSQL cluster.

The PostgreSQL cluster (tests/helpers/pg_cluster.py) is started once per test session and each test
gets a fresh database in it. The tests skip, saying why, only where the server binaries are absent.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers.pg_cluster import Cluster, server_bin, start_cluster, stop_cluster


@pytest.fixture(scope="session")
def pg_cluster() -> Cluster:
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

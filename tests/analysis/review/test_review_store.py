"""The review store: status derivation, append-only history, schema versioning, locations."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from review_helpers import recipe_mapping

from analysis.errors import ReviewError
from analysis.review import SCHEMA_VERSION, Event, ReviewStore, derive_status, propose, resolve_db_url


def _event(i: int, kind: str, decision: str | None = None) -> Event:
    return Event(id=i, proposal_id=1, created_at=f"t{i}", kind=kind, author="a", decision=decision, text="x")


@pytest.fixture()
def store(tmp_path: Path) -> ReviewStore:
    s = ReviewStore(tmp_path / "review.db")
    yield s
    s.close()


def test_status_rules_pure() -> None:
    assert derive_status([]) == "open"
    assert derive_status([_event(1, "created"), _event(2, "comment")]) == "open"
    history = [_event(1, "created"), _event(2, "decision", "approve"), _event(3, "decision", "changes"),
               _event(4, "comment")]
    assert derive_status(history) == "changes requested"
    assert derive_status(history + [_event(5, "decision", "reject")]) == "rejected"


def test_status_in_store_latest_decision_wins_and_list_agrees(store: ReviewStore) -> None:
    a = propose(store, recipe_mapping(), "merge A", "ann")
    b = propose(store, recipe_mapping(), "merge B", "bob")
    assert store.get(a).status == "open"
    store.add_decision(a, author="cy", decision="reject", rationale="too much overlap")
    store.add_comment(a, author="ann", text="fixed the weights")
    assert store.get(a).status == "rejected"  # a comment does not reopen
    store.add_decision(a, author="cy", decision="approve", rationale="ok now")
    store.add_decision(b, author="cy", decision="changes", rationale="lower rank")
    listed = {s.id: s for s in store.list_proposals()}
    assert listed[a].status == store.get(a).status == "approved"
    assert listed[b].status == store.get(b).status == "changes requested"
    assert [s.id for s in store.list_proposals()] == [b, a]  # newest first
    p = store.get(a)
    assert [e.kind for e in p.events] == ["created", "decision", "comment", "decision"]
    assert listed[a].updated_at == p.events[-1].created_at > p.created_at
    assert [d.decision for d in p.decisions] == ["reject", "approve"]  # history kept, nothing overwritten


def test_history_is_append_only_at_the_database_level(store: ReviewStore, tmp_path: Path) -> None:
    pid = propose(store, recipe_mapping(), "t", "ann")
    store.add_comment(pid, author="bob", text="first")
    con = sqlite3.connect(tmp_path / "review.db")
    for sql in ("UPDATE events SET text='rewritten'", "DELETE FROM events", "UPDATE proposals SET title='x'",
                "DELETE FROM proposals"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute(sql)
    con.close()
    assert [e.text for e in store.get(pid).comments] == ["first"]


def test_bad_writes_are_refused_with_one_line(store: ReviewStore) -> None:
    pid = propose(store, recipe_mapping(), "t", "ann")
    with pytest.raises(ReviewError, match="no proposal with id 999"):
        store.add_comment(999, author="a", text="x")
    with pytest.raises(ReviewError, match="no proposal with id 999"):
        store.get(999)
    with pytest.raises(ReviewError, match="decision 'maybe'"):
        store.add_decision(pid, author="a", decision="maybe", rationale="r")
    with pytest.raises(ReviewError, match="rationale must not be empty"):
        store.add_decision(pid, author="a", decision="approve", rationale="  ")
    with pytest.raises(ReviewError, match="author must not be empty"):
        store.add_comment(pid, author="", text="x")
    assert len(store.get(pid).events) == 1


def test_schema_created_versioned_and_wal(store: ReviewStore, tmp_path: Path) -> None:
    assert store.schema_version() == SCHEMA_VERSION
    con = sqlite3.connect(tmp_path / "review.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    con.close()
    ReviewStore(tmp_path / "review.db").close()  # reopening does not add a second version row
    con = sqlite3.connect(tmp_path / "review.db")
    assert con.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 1
    con.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "review.db"
    ReviewStore(db).close()
    con = sqlite3.connect(db)
    con.execute("INSERT INTO schema_version VALUES (?, 'later', '9.9')", (SCHEMA_VERSION + 1,))
    con.commit()
    con.close()
    with pytest.raises(ReviewError, match=rf"schema version {SCHEMA_VERSION + 1}.*upgrade adapter-atlas"):
        ReviewStore(db)


def test_not_a_database_is_one_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ReviewError, match="junk.db"):
        ReviewStore(junk)


def test_location_from_argument_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTER_ATLAS_DB", str(tmp_path / "env" / "r.db"))
    assert resolve_db_url() == f"sqlite:///{tmp_path / 'env' / 'r.db'}"
    assert resolve_db_url(tmp_path / "arg.db") == f"sqlite:///{tmp_path / 'arg.db'}"
    assert resolve_db_url("postgresql://u:p@h/db") == "postgresql://u:p@h/db"
    monkeypatch.delenv("ADAPTER_ATLAS_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert resolve_db_url() == f"sqlite:///{tmp_path / 'xdg' / 'adapter-atlas' / 'review.db'}"
    s = ReviewStore("sqlite:///" + str(tmp_path / "url.db"))  # a SQLAlchemy URL works as well
    assert s.schema_version() == SCHEMA_VERSION and (tmp_path / "url.db").exists()
    s.close()

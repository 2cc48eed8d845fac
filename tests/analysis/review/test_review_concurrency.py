"""Many writers at once, and a writer killed mid-write: no acknowledged write is lost."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import review_helpers
from review_helpers import comment_writer, first_opener, recipe_mapping

from analysis.review import ReviewStore, propose

PROCS, PER_PROC = 4, 25
HELPERS = Path(review_helpers.__file__)


def _sound(store: ReviewStore) -> bool:
    """SQLite's own integrity check; PostgreSQL has none to ask (n/a), its WAL is the server's job."""
    return store.integrity_check() == ("ok" if store.is_sqlite else "n/a")


def test_concurrent_writer_processes_lose_nothing(review_db: str) -> None:
    db = review_db
    with ReviewStore(db) as store:
        pid = propose(store, recipe_mapping(), "contended", "ann")
    ctx = mp.get_context("spawn")  # fresh interpreters: real separate processes and connections
    with ctx.Pool(PROCS) as pool:
        acked = pool.starmap(comment_writer, [(db, pid, w, PER_PROC) for w in range(PROCS)])
    all_acked = [eid for ids in acked for eid in ids]
    assert len(all_acked) == PROCS * PER_PROC and len(set(all_acked)) == PROCS * PER_PROC
    with ReviewStore(db) as store:
        comments = store.get(pid).comments
        assert _sound(store)
    assert sorted(e.id for e in comments) == sorted(all_acked)
    assert {e.text for e in comments} == {f"w{w}-c{i}" for w in range(PROCS) for i in range(PER_PROC)}
    for w in range(PROCS):  # each process's own writes are in its own order
        mine = [e.text for e in comments if e.author == f"worker-{w}"]
        assert mine == [f"w{w}-c{i}" for i in range(PER_PROC)]


def test_processes_racing_to_create_a_new_store(review_db: str) -> None:
    """The first use creates the schema; several processes doing it at once all succeed, once."""
    with mp.get_context("spawn").Pool(PROCS) as pool:
        assert pool.map(first_opener, [review_db] * PROCS) == [1] * PROCS
    from sqlalchemy import func, select

    from analysis.review import models as m

    with ReviewStore(review_db) as store:
        rows = store._read(lambda c: c.execute(select(func.count()).select_from(m.schema_version)).scalar())
        assert rows == 1 and _sound(store)


def test_writer_killed_mid_work_leaves_store_intact(review_db: str) -> None:
    db = review_db
    with ReviewStore(db) as store:
        pid = propose(store, recipe_mapping(), "victim", "ann")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    victim = subprocess.Popen([sys.executable, str(HELPERS), db, str(pid)], stdout=subprocess.PIPE, text=True,
                              env=env)
    acked: list[int] = []
    deadline = time.monotonic() + 60
    while len(acked) < 40 and time.monotonic() < deadline:
        line = victim.stdout.readline()
        if not line:
            break
        acked.append(int(line))
    victim.send_signal(signal.SIGKILL)  # lands while it is writing the next comment
    victim.wait(timeout=30)
    acked += [int(line) for line in victim.stdout.read().split()]  # acknowledged before dying
    assert len(acked) >= 40, "the writer did not get going"
    with ReviewStore(db) as store:
        assert _sound(store)
        ids = {e.id for e in store.get(pid).comments}
        assert set(acked) <= ids and len(ids) - len(acked) <= 1  # at most the in-flight one committed unacked
        store.add_comment(pid, author="after", text="the store still takes writes")  # no stale lock
        assert store.get(pid).comments[-1].author == "after"


def test_uncommitted_transaction_of_killed_process_vanishes(tmp_path: Path) -> None:
    db = tmp_path / "review.db"
    with ReviewStore(db) as store:
        pid = propose(store, recipe_mapping(), "t", "ann")
        store.add_comment(pid, author="bob", text="committed")
    # a raw writer holds the write lock with an uncommitted comment, then dies
    code = ("import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None);"
            "c.execute('BEGIN IMMEDIATE');"
            "c.execute(\"INSERT INTO events(proposal_id,created_at,kind,author,text) VALUES (1,'t','comment','x','lost')\");"
            "print('inside', flush=True); time.sleep(600)")
    victim = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True)
    assert victim.stdout.readline().strip() == "inside"
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    with ReviewStore(db) as store:
        assert store.integrity_check() == "ok"
        assert [e.text for e in store.get(pid).comments] == ["committed"]
        store.add_comment(pid, author="bob", text="next")
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def test_writer_waits_for_a_held_lock_instead_of_failing(tmp_path: Path) -> None:
    db = tmp_path / "review.db"
    with ReviewStore(db) as store:
        pid = propose(store, recipe_mapping(), "t", "ann")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's long write
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        pending = pool.apply_async(comment_writer, (str(db), pid, 9, 1))
        time.sleep(1.5)  # the writer is now waiting on the lock (busy_timeout + retries)
        assert not pending.ready()
        holder.execute("COMMIT")
        holder.close()
        (eid,) = pending.get(timeout=60)
    with ReviewStore(db) as store:
        assert [e.id for e in store.get(pid).comments] == [eid]


def test_uncommitted_postgresql_transaction_of_killed_process_vanishes(pg_cluster) -> None:  # noqa: ANN001
    db = pg_cluster.new_database()
    with ReviewStore(db) as store:
        pid = propose(store, recipe_mapping(), "t", "ann")
        store.add_comment(pid, author="bob", text="committed")
    dsn = db.replace("postgresql+psycopg://", "postgresql://")
    code = ("import psycopg,sys,time; c=psycopg.connect(sys.argv[1]);"
            "c.execute(\"INSERT INTO events(proposal_id,created_at,kind,author,text) "
            "VALUES (%s,'t','comment','x','lost')\", (int(sys.argv[2]),));"
            "print('inside', flush=True); time.sleep(600)")
    victim = subprocess.Popen([sys.executable, "-c", code, dsn, str(pid)], stdout=subprocess.PIPE, text=True)
    assert victim.stdout.readline().strip() == "inside"  # the insert is done, inside an open transaction
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    with ReviewStore(db) as store:  # the server rolls the dead connection's transaction back
        assert [e.text for e in store.get(pid).comments] == ["committed"]
        store.add_comment(pid, author="bob", text="next")
        assert [e.text for e in store.get(pid).comments] == ["committed", "next"]

"""The review store: proposals, comments and decisions behind SQLAlchemy 2.

Why it looks like this:
- Many app sessions and CLI processes write at once. Every write is one short transaction; on
  SQLite it starts with `BEGIN IMMEDIATE` (the write lock is taken up front, so two writers never
  deadlock upgrading a read lock), the connection waits `busy_timeout` for the lock, and a write
  that still finds the database locked is retried with jittered exponential backoff. A method
  that returned has committed: no acknowledged write is lost.
- WAL journaling lets readers work while one writer commits, and a process killed mid-write
  leaves the file intact: its uncommitted transaction simply never happened.
- Any SQLAlchemy URL works (PostgreSQL included); SQLite is the default, one file per machine.
- History is append-only (see `models.py`); the status is derived, never stored.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, func, inspect, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

import analysis.review.models as m
from analysis._version import __version__
from analysis.errors import ReviewError
from analysis.recipe_contract import RecipeContract

log = logging.getLogger(__name__)

T = TypeVar("T")
ENV_VAR = "ADAPTER_ATLAS_DB"
BUSY_TIMEOUT_MS = 5_000
MAX_ATTEMPTS = 12
CONNECT_TIMEOUT_ENV = "ADAPTER_ATLAS_DB_CONNECT_TIMEOUT_S"  # a server that accepts TCP and never answers
DEFAULT_CONNECT_TIMEOUT_S = 5
LIMITS = {"title": 300, "author": 200, "text": 100_000}
SCHEMA_LOCK_KEY = 0x41544C53  # "ATLS": the advisory lock serialising schema creation on PostgreSQL
MAX_ID = 2**63 - 1  # SQLite INTEGER PRIMARY KEY
MAX_ID_32 = 2**31 - 1  # INTEGER on PostgreSQL, MySQL and the rest


def default_db_path() -> Path:
    """`$XDG_DATA_HOME/adapter-atlas/review.db`, else `~/.local/share/adapter-atlas/review.db`."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "adapter-atlas" / "review.db"


def resolve_db_url(db: str | os.PathLike[str] | None = None) -> str:
    """`--db` value, else `$ADAPTER_ATLAS_DB`, else the default file. A plain path means SQLite.

    A SQLite path must be (or become) a regular file: one under a file, a directory, or a FIFO
    (which SQLite would open and then block on forever) is refused with one line.
    """
    value = str(db) if db is not None else (os.environ.get(ENV_VAR) or str(default_db_path()))
    if "://" in value:
        return value
    if not value.strip() or "\0" in value:
        raise ReviewError(f"review store {value!r}: a file path or a SQLAlchemy URL is needed")
    path = Path(value).expanduser().resolve()
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ReviewError(f"review store {path}: {ancestor} is a file, not a folder: choose another --db")
    if path.exists() and not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file (a FIFO, socket or device)"
        raise ReviewError(f"review store {path} is {kind}: --db must name a SQLite file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReviewError(f"review store {path}: cannot create its folder ({exc.strerror})") from None
    return f"sqlite:///{path}"


def _driver(url: URL) -> URL:
    """`postgresql://` means psycopg (3) here: the test extra installs it, psycopg2 is not a dependency."""
    if url.drivername == "postgresql" and importlib.util.find_spec("psycopg2") is None \
            and importlib.util.find_spec("psycopg") is not None:
        return url.set(drivername="postgresql+psycopg")
    return url


def connect_timeout() -> int:
    """Seconds a network store gets to answer a new connection (whole seconds: libpq's unit)."""
    try:
        value = int(os.environ.get(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_CONNECT_TIMEOUT_S
    return value if 1 <= value <= 600 else DEFAULT_CONNECT_TIMEOUT_S


def _masked(url: str) -> str:
    """A URL as it may be shown: any password between `user:` and `@` replaced by ***."""
    return re.sub(r"(//[^/:@]*:)[^@/]*@", r"\1***@", url)


def check_id(proposal_id: int, max_id: int = MAX_ID) -> int:
    """An id the backend can look up. Python ints are unbounded; SQLite's INTEGER keys are signed 64-bit,
    PostgreSQL's (and MySQL's) INTEGER 32-bit: a larger id would be a driver error, not "no proposal"."""
    if isinstance(proposal_id, bool) or not isinstance(proposal_id, int) or not 1 <= proposal_id <= max_id:
        raise ReviewError(f"no proposal with id {str(proposal_id)[:40]}: ids are whole numbers from 1 to {max_id}")
    return proposal_id


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _is_transient(exc: DBAPIError) -> bool:
    """SQLite busy/locked, or a PostgreSQL serialization failure/deadlock: worth trying again."""
    code = getattr(exc.orig, "pgcode", None) or getattr(exc.orig, "sqlstate", None)
    if code in ("40001", "40P01"):
        return True
    message = str(exc.orig).lower()
    return isinstance(exc, OperationalError) and ("locked" in message or "busy" in message)


class ReviewStore:
    """Open (and on first use create) a review store at `db` (path or SQLAlchemy URL)."""

    def __init__(self, db: str | os.PathLike[str] | None = None, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS):
        self.url = resolve_db_url(db)
        try:
            url = _driver(make_url(self.url))
            url.port  # noqa: B018 - parsed lazily: `127.0.0.1:notaport` fails here, not at the first query
        except (ArgumentError, ValueError) as exc:
            why = "" if not isinstance(exc, ValueError) else (
                " (its port is not a number)" if "int()" in str(exc) else f" ({exc})")
            raise ReviewError(f"review store: '{_masked(self.url)}' is neither a file path nor a valid SQLAlchemy "
                              f"URL{why}") from None
        self.display_url = url.render_as_string(hide_password=True)
        self.is_sqlite = url.get_backend_name() == "sqlite"
        self.max_id = MAX_ID if self.is_sqlite else MAX_ID_32
        self._busy_timeout_ms = busy_timeout_ms
        try:
            connect_args = {"timeout": busy_timeout_ms / 1000} if self.is_sqlite else (
                {"connect_timeout": connect_timeout()} if url.get_backend_name() == "postgresql" else {})
            self.engine: Engine = create_engine(url, connect_args=connect_args)
        except (ArgumentError, ImportError) as exc:
            raise ReviewError(f"review store {self.display_url}: cannot open ({exc})") from None
        if self.is_sqlite:
            self._install_sqlite_hooks()
        self._retry(self._ensure_schema, retry_any_db_error=True)

    # ------------------------------------------------------------------ connection plumbing
    def _install_sqlite_hooks(self) -> None:
        busy = self._busy_timeout_ms

        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _on_begin)
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={int(busy)}")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # a commit is on disk before we acknowledge it
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(self.engine, "begin")
        def _on_begin(conn: Connection) -> None:
            write = conn.get_execution_options().get("atlas_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    def _retry(self, work: Callable[[], T], *, retry_any_db_error: bool = False) -> T:
        """Run `work` (one whole transaction) again on transient lock errors, with backoff."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return work()
            except DBAPIError as exc:
                timed_out = "timeout expired" in str(exc.orig).lower()  # the server never answered: do not wait again
                transient = _is_transient(exc) or (retry_any_db_error and attempt < 3 and not timed_out)
                if not transient or attempt == MAX_ATTEMPTS:
                    raise ReviewError(f"review store {self.display_url}: {str(exc.orig).strip()}") from None
                delay = min(2.0, 0.02 * 2 ** attempt) * (0.5 + random.random())
                log.debug("review store busy (attempt %d), retrying in %.3fs", attempt, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _write(self, work: Callable[[Connection], T]) -> T:
        def once() -> T:
            with self.engine.connect() as conn:
                conn = conn.execution_options(atlas_write=True)
                with conn.begin():
                    return work(conn)
        return self._retry(once)

    def _read(self, work: Callable[[Connection], T]) -> T:
        def once() -> T:
            with self.engine.connect() as conn, conn.begin():
                return work(conn)
        return self._retry(once)

    def _ensure_schema(self) -> None:
        """Create the tables on first use; refuse a store written by a newer adapter-atlas."""
        def work(conn: Connection) -> None:
            if conn.dialect.name == "postgresql":
                # Creating tables is not atomic across sessions on PostgreSQL: two first users would both
                # see no table and one would fail on a duplicate catalog row. Take turns (held to commit).
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            if not inspect(conn).has_table("schema_version"):
                m.metadata.create_all(conn)
                if self.is_sqlite:
                    for ddl in m.SQLITE_APPEND_ONLY_TRIGGERS:
                        conn.exec_driver_sql(ddl)
                conn.execute(m.schema_version.insert().values(
                    version=m.SCHEMA_VERSION, applied_at=utc_now(), tool_version=__version__))
                log.info("created review store %s (schema %d)", self.display_url, m.SCHEMA_VERSION)
                return
            found = conn.execute(select(func.max(m.schema_version.c.version))).scalar()
            if found is None or found > m.SCHEMA_VERSION:
                raise ReviewError(
                    f"review store {self.display_url} has schema version {found}; this adapter-atlas "
                    f"({__version__}) understands up to {m.SCHEMA_VERSION}: upgrade adapter-atlas")
        self._write(work)

    def schema_version(self) -> int:
        return int(self._read(lambda c: c.execute(select(func.max(m.schema_version.c.version))).scalar()))

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "ReviewStore":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes (one transaction each)
    def create_proposal(self, *, recipe: RecipeContract, recipe_text: str, recipe_sha256: str, title: str,
                        author: str, preview: Mapping[str, Any] | None, source_dir: str | None) -> int:
        """Insert a proposal and its `created` event together; returns the new id."""
        title, author = _clean("title", title), _clean("author", author)
        preview_json = json.dumps(preview, allow_nan=False, default=str) if preview is not None else None

        def work(conn: Connection) -> int:
            now = utc_now()
            pid = conn.execute(m.proposals.insert().values(
                created_at=now, title=title, author=author, method=recipe.method,
                recipe_text=recipe_text, recipe_sha256=recipe_sha256, inputs_json=m.inputs_to_json(recipe),
                preview_json=preview_json, source_dir=source_dir)).inserted_primary_key[0]
            conn.execute(m.events.insert().values(
                proposal_id=pid, created_at=now, kind="created", author=author, decision=None, text=title))
            return int(pid)
        return self._write(work)

    def add_comment(self, proposal_id: int, *, author: str, text: str) -> int:
        return self._append(proposal_id, "comment", _clean("author", author), None, _clean("text", text))

    def add_decision(self, proposal_id: int, *, author: str, decision: str, rationale: str) -> int:
        if decision not in m.DECISIONS:
            raise ReviewError(f"decision '{decision}' is not one of {', '.join(m.DECISIONS)}")
        return self._append(proposal_id, "decision", _clean("author", author), decision,
                            _clean("rationale", rationale))

    def _append(self, proposal_id: int, kind: str, author: str, decision: str | None, body: str) -> int:
        check_id(proposal_id, self.max_id)

        def work(conn: Connection) -> int:
            self._require(conn, proposal_id)
            return int(conn.execute(m.events.insert().values(
                proposal_id=proposal_id, created_at=utc_now(), kind=kind, author=author,
                decision=decision, text=body)).inserted_primary_key[0])
        return self._write(work)

    # ------------------------------------------------------------------ reads
    def _require(self, conn: Connection, proposal_id: int) -> Any:
        row = conn.execute(select(m.proposals).where(m.proposals.c.id == check_id(proposal_id, self.max_id))).first()
        if row is None:
            raise ReviewError(f"no proposal with id {proposal_id} in review store {self.display_url}")
        return row

    def get(self, proposal_id: int) -> m.Proposal:
        """One proposal with its whole history, read in one transaction (a consistent snapshot)."""
        def work(conn: Connection) -> m.Proposal:
            row = self._require(conn, proposal_id)
            rows = conn.execute(select(m.events).where(m.events.c.proposal_id == row.id)
                                .order_by(m.events.c.id)).all()
            return m.Proposal(
                id=row.id, title=row.title, author=row.author, method=row.method, created_at=row.created_at,
                recipe_text=row.recipe_text, recipe_sha256=row.recipe_sha256,
                inputs=m.inputs_from_json(row.inputs_json),
                preview=json.loads(row.preview_json) if row.preview_json else None,
                source_dir=row.source_dir,
                events=tuple(m.Event(id=e.id, proposal_id=e.proposal_id, created_at=e.created_at, kind=e.kind,
                                     author=e.author, decision=e.decision, text=e.text) for e in rows))
        return self._read(work)

    def list_proposals(self) -> list[m.ProposalSummary]:
        """Every proposal with its derived status (latest decision wins) and last activity, newest first."""
        ev = m.events
        last_event = (select(ev.c.proposal_id, func.max(ev.c.id).label("eid"))
                      .group_by(ev.c.proposal_id).subquery())
        last_decision = (select(ev.c.proposal_id, func.max(ev.c.id).label("did"))
                         .where(ev.c.kind == "decision").group_by(ev.c.proposal_id).subquery())
        le, ld = ev.alias("le"), ev.alias("ld")
        p = m.proposals
        query = (select(p.c.id, p.c.title, p.c.author, p.c.method, p.c.created_at,
                        le.c.created_at.label("updated_at"), ld.c.decision)
                 .outerjoin(last_event, last_event.c.proposal_id == p.c.id)
                 .outerjoin(le, le.c.id == last_event.c.eid)
                 .outerjoin(last_decision, last_decision.c.proposal_id == p.c.id)
                 .outerjoin(ld, ld.c.id == last_decision.c.did)
                 .order_by(p.c.id.desc()))
        rows = self._read(lambda conn: conn.execute(query).all())
        return [m.ProposalSummary(id=r.id, title=r.title, author=r.author, method=r.method,
                                  status=m.DECISIONS.get(r.decision or "", m.OPEN), created_at=r.created_at,
                                  updated_at=r.updated_at or r.created_at) for r in rows]

    def integrity_check(self) -> str:
        """SQLite's own `PRAGMA integrity_check` ("ok" when sound); other backends report "n/a"."""
        if not self.is_sqlite:
            return "n/a"
        return str(self._read(lambda c: c.execute(text("PRAGMA integrity_check")).scalar()))


def _clean(field: str, value: str) -> str:
    """Strip, refuse empty or oversized free text with one line naming the field."""
    value = (value or "").strip()
    limit = LIMITS.get(field, LIMITS["text"])
    if not value:
        raise ReviewError(f"review: {field} must not be empty")
    if len(value) > limit:
        raise ReviewError(f"review: {field} is {len(value)} characters, at most {limit} allowed")
    return value

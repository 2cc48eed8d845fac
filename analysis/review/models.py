"""What the review store keeps: the table schema, the recipe contract, and the read-side values.

The store is append-only by design. A proposal row is written once (its recipe text, input hashes
and preview snapshot never change afterwards), and everything that happens to it later (comments,
decisions) is a new row in `events`. The status is therefore never stored: it is derived from the
events (`derive_status`), so two reviewers deciding at the same time cannot overwrite each other,
and the history shows exactly who decided what, in which order.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

from sqlalchemy import Column, ForeignKey, Index, Integer, MetaData, String, Table, Text

from analysis.recipe_contract import RecipeContract

SCHEMA_VERSION = 1

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", String(40), nullable=False),
    Column("tool_version", String(40), nullable=False),
)

proposals = Table(
    "proposals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", String(40), nullable=False),
    Column("title", Text, nullable=False),
    Column("author", Text, nullable=False),
    Column("method", Text, nullable=False),
    Column("recipe_text", Text, nullable=False),
    Column("recipe_sha256", String(64), nullable=False),
    Column("inputs_json", Text, nullable=False),
    Column("preview_json", Text, nullable=True),
    Column("source_dir", Text, nullable=True),
    sqlite_autoincrement=True,  # ids are never reused, even after a row would be lost
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("proposal_id", Integer, ForeignKey("proposals.id"), nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("kind", String(16), nullable=False),  # created | comment | decision
    Column("author", Text, nullable=False),
    Column("decision", String(16), nullable=True),  # approve | reject | changes (decisions only)
    Column("text", Text, nullable=False),
    Index("ix_events_proposal", "proposal_id", "id"),
    sqlite_autoincrement=True,
)

# SQLite refuses to rewrite history at the database level, not only in our API.
SQLITE_APPEND_ONLY_TRIGGERS = tuple(
    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
    f"BEGIN SELECT RAISE(ABORT, 'review store is append-only: {op} on {table} refused'); END"
    for table in ("proposals", "events")
    for op in ("UPDATE", "DELETE")
)

DECISIONS: dict[str, str] = {"approve": "approved", "reject": "rejected", "changes": "changes requested"}
OPEN = "open"


# ----------------------------------------------------------------------------- read-side values
@dataclass(frozen=True)
class InputRecord:
    name: str
    path: str
    sha256: str
    format: str


@dataclass(frozen=True)
class Event:
    id: int
    proposal_id: int
    created_at: str
    kind: str
    author: str
    decision: str | None
    text: str


@dataclass(frozen=True)
class ProposalSummary:
    id: int
    title: str
    author: str
    method: str
    status: str
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class Proposal:
    """One proposal with its full history, as read in one transaction."""

    id: int
    title: str
    author: str
    method: str
    created_at: str
    recipe_text: str
    recipe_sha256: str
    inputs: tuple[InputRecord, ...]
    preview: Mapping[str, Any] | None
    source_dir: str | None
    events: tuple[Event, ...]

    @property
    def status(self) -> str:
        return derive_status(self.events)

    @property
    def updated_at(self) -> str:
        return self.events[-1].created_at if self.events else self.created_at

    @property
    def comments(self) -> tuple[Event, ...]:
        return tuple(e for e in self.events if e.kind == "comment")

    @property
    def decisions(self) -> tuple[Event, ...]:
        return tuple(e for e in self.events if e.kind == "decision")

    @property
    def latest_decision(self) -> Event | None:
        return self.decisions[-1] if self.decisions else None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready mapping (what `review show --json` prints)."""
        return {
            "id": self.id,
            "title": self.title,
            "author": self.author,
            "method": self.method,
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "recipe_sha256": self.recipe_sha256,
            "recipe_text": self.recipe_text,
            "inputs": [asdict(i) for i in self.inputs],
            "preview": self.preview,
            "source_dir": self.source_dir,
            "events": [asdict(e) for e in self.events],
        }


def derive_status(history: Iterable[Event]) -> str:
    """The latest decision wins (events are in id order); a proposal without decisions is open.

    Comments never change the status: a reviewer who only comments has not decided.
    """
    status = OPEN
    for event in history:
        if event.kind == "decision" and event.decision in DECISIONS:
            status = DECISIONS[event.decision]
    return status


def inputs_to_json(recipe: RecipeContract) -> str:
    return json.dumps([{"name": i.name, "path": i.path, "sha256": i.sha256, "format": i.format}
                       for i in recipe.inputs])


def inputs_from_json(text: str) -> tuple[InputRecord, ...]:
    return tuple(InputRecord(**row) for row in json.loads(text))

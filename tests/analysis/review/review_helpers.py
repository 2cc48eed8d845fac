"""Shared helpers for the review tests: a valid recipe on disk, and writer processes."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

EVIL = "<script>alert('x')</script>"


def recipe_mapping(names: tuple[str, ...] = ("alpha", "beta"), paths: tuple[str, ...] | None = None,
                   method: str = "ties") -> dict[str, Any]:
    paths = paths or tuple(f"adapters/{n}" for n in names)
    return {
        "atlas_recipe": 1,
        "tool_version": "0.1.0",
        "inputs": [{"name": n, "path": p, "sha256": f"{i:064x}", "format": "peft"}
                   for i, (n, p) in enumerate(zip(names, paths))],
        "method": method,
        "parameters": {"density": 0.2, "note": "k|v"},
        "weights": [0.5] * len(names),
        "export": {"format": "peft", "rank": 8},
    }


def write_merge_dir(root: Path, recipe: dict[str, Any], preview: dict[str, Any] | None = None) -> Path:
    """A merge output directory as the merge lab writes it: recipe.yaml (+ preview.json)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    if preview is not None:
        (root / "preview.json").write_text(json.dumps(preview), encoding="utf-8")
    return root


def comment_writer(db: str, proposal_id: int, worker: int, count: int) -> list[int]:
    """One writer process: `count` comments, returns the event ids it was acknowledged."""
    from analysis.review import ReviewStore

    store = ReviewStore(db)
    ids = [store.add_comment(proposal_id, author=f"worker-{worker}", text=f"w{worker}-c{i}")
           for i in range(count)]
    store.close()
    return ids


def first_opener(db: str) -> int:
    """Open a store that may not exist yet (racing other processes to create it); returns its schema version."""
    from analysis.review import ReviewStore

    with ReviewStore(db) as store:
        return store.schema_version()


def acknowledging_writer(db: str, proposal_id: int) -> None:
    """Writes comments forever, printing each id only after the store acknowledged it."""
    from analysis.review import ReviewStore

    store = ReviewStore(db)
    i = 0
    while True:
        eid = store.add_comment(proposal_id, author="victim", text=f"ack-{i} " + "x" * 20_000)
        sys.stdout.write(f"{eid}\n")
        sys.stdout.flush()
        i += 1


if __name__ == "__main__":  # python review_helpers.py DB ID : the SIGKILL victim
    acknowledging_writer(sys.argv[1], int(sys.argv[2]))

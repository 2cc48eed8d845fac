"""The served app for the real-browser tests: one `adapter-atlas serve` per module on the sample set.

The server reads its review store from a temporary SQLite file (`ADAPTER_ATLAS_DB`) seeded with one
proposal, so the Review page never touches a user's own store. Set ATLAS_E2E_URL to test a server
that is already running instead. Screenshots land in tests/e2e/screenshots/ (gitignored).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.browser import (
    ARGS,
    CHROMIUM,
    PROPOSAL_COMMENT,
    PROPOSAL_RATIONALE,
    PROPOSAL_TITLE,
    VIEWPORT,
    start_server,
    stop_server,
)

if not Path(CHROMIUM).exists():
    pytest.skip("Debian chromium is not installed at /usr/bin/chromium (CI installs it with `make system`)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def review_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A fresh review store with one proposal carrying a comment and an approval; returns (db, id)."""
    from analysis.review import ReviewStore, propose

    db = tmp_path_factory.mktemp("review") / "review.db"
    recipe = {"atlas_recipe": 1, "tool_version": "0.1.0", "method": "ties", "parameters": {"density": 0.2},
              "weights": None, "export": {"format": "peft", "rank": 8},
              "inputs": [{"name": n, "path": f"/nonexistent/{n}", "sha256": f"{i:064x}", "format": "peft"}
                         for i, n in enumerate(("sst2", "imdb"))]}
    with ReviewStore(db) as store:
        pid = propose(store, recipe, PROPOSAL_TITLE, "ann",
                      preview={"tasks": {"sst2": {"core_intact": 0.91}, "imdb": {"core_intact": 0.88}}})
        store.add_comment(pid, author="bob", text=PROPOSAL_COMMENT)
        store.add_decision(pid, author="cy", decision="approve", rationale=PROPOSAL_RATIONALE)
    return db, pid


@pytest.fixture(scope="module")
def server_url(review_db: tuple[Path, int]):
    if os.environ.get("ATLAS_E2E_URL"):
        yield os.environ["ATLAS_E2E_URL"].rstrip("/")
        return
    proc, url = start_server({"ADAPTER_ATLAS_DB": str(review_db[0])})
    try:
        yield url
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture()
def new_page(browser):
    """A page in a fresh browser context (no cookies, no session): what a colleague opening a link gets."""
    contexts = []

    def make():
        ctx = browser.new_context(viewport=dict(VIEWPORT))
        contexts.append(ctx)
        return ctx.new_page()

    yield make
    for ctx in contexts:
        ctx.close()


@pytest.fixture()
def page(new_page):
    return new_page()

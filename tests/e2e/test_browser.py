"""Real-browser check of the app: `adapter-atlas serve` on a free port, Debian chromium, every page.

Each page must render its charts (plotly elements in the DOM) and show no exception box.
Screenshots land in tests/e2e/screenshots/ (gitignored) for a human to look at.
Set ATLAS_E2E_URL to test a server that is already running instead of starting one.
The server started here reads its review store from a temporary SQLite file (`ADAPTER_ATLAS_DB`)
that the module seeds with one proposal first, so the review page never touches a user's own store.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(__file__).resolve().parent / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
# (url path, title on the page, plotly charts expected at least); the default page lives at "/"
PAGES = [("", "Adapters", 1), ("overlap", "Overlap", 2), ("subspaces", "Subspaces", 2),
         ("clusters", "Clusters", 2), ("capacity", "Capacity", 2)]
# pages other engineers own join the navigation when their files exist; they must at least render cleanly
PAGES += [(url, title, 0) for url, title in (("merge", "Merge"), ("review", "Review"))
          if (REPO / "app" / "app_pages" / f"{url}.py").is_file()]

if not Path(CHROMIUM).exists():
    pytest.skip("Debian chromium is not installed at /usr/bin/chromium (CI installs it with `make system`)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen | None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"adapter-atlas serve exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


# a title a browser would turn bold if the page rendered it as HTML instead of text
PROPOSAL_TITLE = "Merge <b>sst2</b> + imdb"
PROPOSAL_COMMENT = "Rank 8 keeps the sst2 core intact"
PROPOSAL_RATIONALE = "Preview numbers hold up on both tasks"


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
    port = _free_port()
    exe = Path(sys.executable).with_name("adapter-atlas")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "analysis.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ADAPTER_ATLAS_DB": str(review_db[0])}
    proc = subprocess.Popen(cmd + ["serve", "--port", str(port)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def page():
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1500, "height": 1000})
        yield context.new_page()
        browser.close()


def _settle(page, min_charts: int, timeout_ms: int = 240_000) -> None:
    """Wait until the script run is over and the expected charts are drawn."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=60_000)
    page.wait_for_selector("h1", timeout=timeout_ms)
    page.wait_for_function(
        """n => document.querySelectorAll('.js-plotly-plot').length >= n
              || document.querySelector('[data-testid="stException"]') !== null""",
        arg=min_charts, timeout=timeout_ms)
    page.wait_for_function("""() => !document.querySelector('[data-testid="stStatusWidget"] button')
                                    || !document.querySelector('[data-testid="stStatusWidget"]').innerText.includes('Stop')""",
                           timeout=timeout_ms)
    page.wait_for_timeout(1500)  # plotly finishes its layout after the last delta


def _screenshot(page, name: str) -> None:
    """Streamlit scrolls inside its main section, so grow the viewport to the content before the shot."""
    height = page.evaluate("""() => Math.max(...[...document.querySelectorAll(
        '[data-testid="stMain"], [data-testid="stAppViewContainer"], [data-testid="stMainBlockContainer"]')]
        .map(e => e.scrollHeight), 800)""")
    page.set_viewport_size({"width": 1500, "height": min(int(height) + 80, 9000)})
    page.wait_for_timeout(1200)
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    page.set_viewport_size({"width": 1500, "height": 1000})


@pytest.mark.parametrize("path,title,min_charts", PAGES)
def test_page_renders(server_url: str, page, path: str, title: str, min_charts: int) -> None:
    page.goto(f"{server_url}/{path}", wait_until="domcontentloaded")
    _settle(page, min_charts)
    _screenshot(page, path or "adapters")
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, exceptions.first.inner_text()[:2000]
    assert page.get_by_role("heading", name=title).count() >= 1
    assert page.locator(".js-plotly-plot").count() >= min_charts
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0, \
        page.locator('[data-testid="stAlertContentError"]').first.inner_text()


def test_url_carries_view(server_url: str, page) -> None:
    """The query string names the page, the adapters and the metric, and a shared link restores them."""
    page.goto(f"{server_url}/overlap", wait_until="domcontentloaded")
    _settle(page, 2)
    page.wait_for_function("() => location.search.includes('metric=')", timeout=30_000)
    shared = page.url
    assert "page=overlap" in shared and "adapter=" in shared
    page.goto(shared.replace("metric=subspace_similarity", "metric=cosine"), wait_until="domcontentloaded")
    _settle(page, 2)
    assert page.get_by_text("Cosine of the updates").count() >= 1


def test_hover_names_both_adapters_and_click_opens_the_pair(server_url: str, page) -> None:
    page.goto(f"{server_url}/overlap", wait_until="domcontentloaded")
    _settle(page, 2)
    pair_title = lambda: page.locator(".js-plotly-plot").nth(1).locator(".gtitle").text_content()  # noqa: E731
    heat = page.locator(".js-plotly-plot").first
    labels = [t.text_content() for t in heat.locator(".ytick text").all()]
    n = len(labels)
    assert n >= 2
    box = heat.locator(".nsewdrag").first.bounding_box()
    bottom_left = (box["x"] + box["width"] / (2 * n), box["y"] + box["height"] * (1 - 1 / (2 * n)))  # row n, col 1
    page.mouse.move(*bottom_left)
    page.wait_for_timeout(800)
    hover = page.locator(".hoverlayer").first.text_content()
    assert labels[-1] in hover and labels[0] in hover and "Subspace similarity" in hover
    if n < 3:
        pytest.skip("one pair only: a click cannot change it")
    before = pair_title()
    assert labels[-1] not in before  # the default pair is the first two
    page.mouse.click(*bottom_left)
    page.wait_for_function("t => document.querySelectorAll('.js-plotly-plot')[1]"
                           ".querySelector('.gtitle').textContent !== t", arg=before, timeout=60_000)
    after = pair_title()
    assert labels[0] in after and labels[-1] in after


def test_review_proposal_opens_by_its_link(server_url: str, page, review_db: tuple[Path, int]) -> None:
    """A pasted `/review?proposal=ID` link shows that proposal: its title as text, discussion and decision."""
    if os.environ.get("ATLAS_E2E_URL"):
        pytest.skip("the seeded review store only backs the server this module starts")
    if not (REPO / "app" / "app_pages" / "review.py").is_file():
        pytest.skip("the review page is not in this checkout")
    _, pid = review_db
    page.goto(f"{server_url}/review?proposal={pid}", wait_until="domcontentloaded")
    _settle(page, 0)
    page.get_by_text(PROPOSAL_COMMENT).first.wait_for(timeout=60_000)
    _screenshot(page, "review_proposal")
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, exceptions.first.inner_text()[:2000]
    heading = page.get_by_role("heading", name=f"#{pid}")
    assert heading.count() >= 1
    assert heading.first.inner_text().strip() == f"#{pid} · {PROPOSAL_TITLE}"  # the markup stays literal text
    assert heading.first.locator("b").count() == 0
    assert page.get_by_text(PROPOSAL_COMMENT).count() >= 1
    assert page.get_by_text(PROPOSAL_RATIONALE).count() >= 1
    status = page.locator('[data-testid="stMetric"]').filter(has_text="Status")
    assert "approved" in status.first.inner_text()
    assert "approved" in page.get_by_text("decided").first.inner_text()
    assert "proposal=" in page.url and str(pid) in page.url

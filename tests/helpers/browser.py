"""Driving the served app from Playwright: start `adapter-atlas serve`, wait for a run to settle, read and set widgets.

Debian's chromium only (`/usr/bin/chromium`, never `playwright install`), headless, 1440x900 like a laptop.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1440, "height": 900}
REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "tests" / "e2e" / "screenshots"
# the seeded proposal: a title a browser would turn bold if the page rendered it as HTML instead of text
PROPOSAL_TITLE = "Merge <b>sst2</b> + imdb"
PROPOSAL_COMMENT = "Rank 8 keeps the sst2 core intact"
PROPOSAL_RATIONALE = "Preview numbers hold up on both tasks"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen | None, timeout: float = 120.0) -> None:
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


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = Path(sys.executable).with_name("adapter-atlas")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "analysis.cli"]
    proc = subprocess.Popen(cmd + ["serve", "--port", str(port)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc)
    return proc, url


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def settle(page: Any, min_charts: int = 0, timeout_ms: int = 240_000) -> None:
    """Wait until the script run is over and at least `min_charts` plotly charts are drawn."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=60_000)
    page.wait_for_selector("h1", timeout=timeout_ms)
    page.wait_for_function(
        """n => document.querySelectorAll('.js-plotly-plot').length >= n
              || document.querySelector('[data-testid="stException"]') !== null""",
        arg=min_charts, timeout=timeout_ms)
    for pause in (400, 1200):  # a rerun asked for by the last click may start a moment later
        page.wait_for_function(IDLE_JS, timeout=timeout_ms)
        page.wait_for_timeout(pause)  # plotly finishes its layout after the last delta
    page.wait_for_function(IDLE_JS, timeout=timeout_ms)


# the script is not running (Streamlit marks its root with the run state) and no Stop button shows
IDLE_JS = """() => { const app = document.querySelector('[data-testid="stApp"]');
                     const w = document.querySelector('[data-testid="stStatusWidget"]');
                     return app && app.dataset.testScriptState === 'notRunning'
                            && (!w || !w.innerText.includes('Stop')); }"""


def screenshot(page: Any, name: str) -> Path:
    """The whole page: Streamlit scrolls inside its main section, so grow the viewport to the content first."""
    height = page.evaluate("""() => Math.max(...[...document.querySelectorAll(
        '[data-testid="stMain"], [data-testid="stAppViewContainer"], [data-testid="stMainBlockContainer"]')]
        .map(e => e.scrollHeight), 900)""")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}_1440x900.png"))  # what a laptop shows first
    page.set_viewport_size({"width": VIEWPORT["width"], "height": min(int(height) + 80, 9000)})
    page.wait_for_timeout(1000)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(VIEWPORT)
    return path


WIDGET_STATE_JS = """() => {
  const main = document.querySelector('[data-testid="stMain"]') || document;
  const out = [];
  for (const el of main.querySelectorAll('[data-testid="stSelectbox"], [data-testid="stMultiSelect"], '
      + '[data-testid="stSlider"], [data-testid="stRadio"], [data-testid="stNumberInput"], '
      + '[data-testid="stTextInput"], [data-testid="stTextArea"]')) {
    const label = (el.querySelector('label') || {}).innerText || '';
    let value = el.innerText.replace(label, '').trim();
    const checked = el.querySelector('input:checked');
    if (checked) value = checked.closest('label').innerText.trim();
    const input = el.querySelector('input, textarea');
    if (input && el.dataset.testid !== 'stMultiSelect' && el.dataset.testid !== 'stRadio'
        && el.dataset.testid !== 'stSlider') value = input.value || value;
    out.push([el.dataset.testid, label.trim(), value]);
  }
  const titles = [...document.querySelectorAll('.js-plotly-plot .gtitle')].map(t => t.textContent);
  return {widgets: out, titles: titles, h1: (document.querySelector('h1') || {}).innerText};
}"""


def widget_state(page: Any) -> dict[str, Any]:
    """Every control on the page (kind, label, shown value) and every chart title, for before/after comparisons."""
    return page.evaluate(WIDGET_STATE_JS)


def widget(page: Any, kind: str, label: str) -> Any:
    return page.locator(f'[data-testid="{kind}"]').filter(has=page.locator("label", has_text=label)).first


def select(page: Any, label: str, option: str | int) -> str:
    """Pick `option` (its text, or its position) in the selectbox labelled `label`; wait for the rerun."""
    options = page.get_by_role("option")
    for _ in range(4):  # a rerun that lands during the click closes the list again
        widget(page, "stSelectbox", label).locator("input").first.click()
        try:
            options.first.wait_for(timeout=5_000)
            break
        except Exception:  # noqa: BLE001 - playwright's TimeoutError; try the click again
            page.keyboard.press("Escape")
            settle(page)
    choice = options.nth(option) if isinstance(option, int) else options.filter(has_text=option).first
    text = choice.inner_text()
    choice.click()
    settle(page)
    return text


def add_to_multiselect(page: Any, label: str, option: str) -> None:
    for _ in range(4):
        widget(page, "stMultiSelect", label).locator("input").first.click()
        try:
            page.get_by_role("option").first.wait_for(timeout=5_000)
            break
        except Exception:  # noqa: BLE001 - playwright's TimeoutError; try the click again
            settle(page)
    page.get_by_role("option").filter(has_text=option).first.click()
    page.keyboard.press("Escape")
    settle(page)


def remove_chip(page: Any, label: str, name: str) -> None:
    widget(page, "stMultiSelect", label).get_by_role("button", name=f"Remove {name}").click()
    settle(page)


def choose_radio(page: Any, label: str, option: str) -> None:
    widget(page, "stRadio", label).locator("label").filter(has_text=option).first.click()
    settle(page)


def press_slider(page: Any, label: str, key: str, times: int = 1) -> None:
    thumb = widget(page, "stSlider", label).get_by_role("slider").first
    thumb.focus()
    for _ in range(times):
        thumb.press(key)
    page.wait_for_timeout(400)
    settle(page)


def type_number(page: Any, label: str, text: str) -> None:
    box = widget(page, "stNumberInput", label).locator("input")
    box.fill(text)
    box.press("Enter")
    settle(page)


def wait_for_url(page: Any, fragment: str, timeout_ms: int = 30_000) -> str:
    page.wait_for_function("f => location.href.includes(f)", arg=fragment, timeout=timeout_ms)
    return page.url

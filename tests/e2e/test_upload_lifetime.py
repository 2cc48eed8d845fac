"""Uploads in a real served app: a zip lands in the session's own folder, a zip bomb is one error box while
the server keeps serving, and the folder goes away when the browser session ends.

The server runs with its own TMPDIR (so the upload folder is this test's) and a 1 s disconnected-session
TTL (Streamlit's default keeps a closed tab's session 120 s for a reconnect).
"""
from __future__ import annotations

import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from helpers.browser import REPO, VIEWPORT, settle, start_server, stop_server
from helpers.zips import deflate_zeros, raw_zip

pytestmark = pytest.mark.e2e


def _sample_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in sorted((REPO / "sample_adapters" / "math_add").iterdir()):
            zf.write(p, f"math_add/{p.name}")
    return path


def _areas(tmp: Path) -> list[Path]:
    base = tmp / "adapter-atlas-uploads"
    return sorted(base.glob("s-*")) if base.is_dir() else []


def _upload(page, file: Path) -> None:  # noqa: ANN001 - a playwright Page
    page.get_by_role("tab", name="Upload").click()
    page.locator('[data-testid="stFileUploader"] input[type="file"]').first.set_input_files(str(file))


def test_upload_area_lives_and_dies_with_the_session(tmp_path: Path, browser) -> None:  # noqa: ANN001
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    good = _sample_zip(tmp_path / "math.zip")
    data, crc = deflate_zeros(1024)
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(raw_zip([{"name": "a/adapter_model.safetensors", "data": data, "method": 8, "crc": crc,
                               "usize": 1 << 30}]))
    proc, url = start_server({"TMPDIR": str(tmp), "STREAMLIT_SERVER_DISCONNECTED_SESSION_TTL": "1", "ADAPTER_ATLAS_UPLOAD_TTL_S": "2",
                              "ADAPTER_ATLAS_DB": str(tmp_path / "review.db")})
    try:
        ctx = browser.new_context(viewport=dict(VIEWPORT))
        page = ctx.new_page()
        page.goto(f"{url}/adapters")
        settle(page, min_charts=1)
        _upload(page, good)
        page.get_by_text("Opened 1 uploaded file(s).").wait_for(timeout=120_000)
        (area,) = _areas(tmp)
        assert list(area.glob("*/math/math_add/adapter_model.safetensors"))

        other = browser.new_context(viewport=dict(VIEWPORT))  # a second visitor uploads a bomb
        bad = other.new_page()
        bad.goto(f"{url}/adapters")
        settle(bad, min_charts=1)
        t0 = time.monotonic()
        _upload(bad, bomb)
        box = bad.locator('[data-testid="stAlertContentError"]').first
        box.wait_for(timeout=60_000)
        assert "Upload refused" in box.inner_text() and "zip bomb" in box.inner_text()
        refused_s = time.monotonic() - t0
        assert len(_areas(tmp)) == 2 and not list(_areas(tmp)[0].parent.glob("s-*/*/a"))  # nothing unpacked
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=10) as r:  # the server still serves
            assert r.status == 200
        page.get_by_role("tab", name="Sample set").click()  # and the first visitor's session still answers
        page.get_by_role("button", name="Open the sample set").first.wait_for(timeout=60_000)
        other.close()
        ctx.close()
        deadline = time.monotonic() + 90
        while _areas(tmp) and time.monotonic() < deadline:
            time.sleep(1)
        assert _areas(tmp) == [], "upload areas outlived their sessions"
        print(f"bomb refused in the browser within {refused_s:.1f}s (upload included); areas removed")
    finally:
        stop_server(proc)

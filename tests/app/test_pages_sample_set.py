"""Every page in Streamlit's AppTest on the committed sample set: runs in a fresh clone (no ../shared).

tests/app/test_pages.py checks the pages in depth on the real gemma-3-270m trio from ../shared and skips
without it; this file keeps the pages covered everywhere, with one number per page checked against the
library computed directly (a second route).
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from analysis.adapters import load_adapter
from analysis.overlap import aggregate, overlap_table

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "app" / "streamlit_app.py")
SAMPLES = REPO / "sample_adapters"
NAMES = ["math_add", "math_max", "format_date"]
PAGES = ["overlap", "subspaces", "clusters", "capacity", "merge", "review"]


@pytest.fixture()
def app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AppTest:
    monkeypatch.setenv("ADAPTER_ATLAS_ADAPTERS", os.pathsep.join(str(SAMPLES / n) for n in NAMES))
    monkeypatch.setenv("ADAPTER_ATLAS_ROOTS", str(SAMPLES))
    monkeypatch.setenv("ADAPTER_ATLAS_DB", str(tmp_path / "review.db"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return AppTest.from_file(APP, default_timeout=600)


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _z(trace: dict) -> np.ndarray:
    z = trace["z"]
    if isinstance(z, dict):  # plotly's typed-array encoding
        flat = np.frombuffer(base64.b64decode(z["bdata"]), dtype=z["dtype"])
        return flat.reshape([int(x) for x in str(z["shape"]).split(",")])
    return np.asarray(z, dtype=float)


def test_sample_set_pages_run_and_match_the_library(app: AppTest) -> None:
    at = app.run()
    _ok(at)
    inventory = at.dataframe[0].value
    assert list(inventory["adapter"]) == NAMES
    norms = [load_adapter(SAMPLES / n).total_norm() for n in NAMES]
    np.testing.assert_allclose(inventory["total norm"], norms, rtol=1e-9)
    for page in PAGES:
        at.switch_page(f"app_pages/{page}.py").run()
        _ok(at)
        if page == "overlap":
            at.selectbox(key="atlas_metric").select("cosine").run()
            heat = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
            table = overlap_table([load_adapter(SAMPLES / n, name=n) for n in NAMES])
            order = [NAMES.index(n) for n in heat["y"]]
            expected = aggregate(table, "cosine")[np.ix_(order, order)]
            off = ~np.eye(len(NAMES), dtype=bool)
            np.testing.assert_allclose(_z(heat)[off], expected[off], atol=1e-9)

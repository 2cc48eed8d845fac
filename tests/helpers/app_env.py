"""The AppTest set-up the page tests share: the app opened on three committed fixture adapters.

tests/fixtures/page_adapters/ (built by tests/fixtures/build_page_adapters.py, ~40 KB each): a tiny Llama-shaped
base, 6 layers x q/k/v/o, rank 4; `adapter` and `adapter_curriculum_stage1` overlap strongly, `adapter_seed123` is
independent. tests/fixtures/other_base/ is one adapter of another base (distilbert). No ../shared needed.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[2]
PAGE_SET = REPO / "tests" / "fixtures" / "page_adapters"
OTHER_BASE = REPO / "tests" / "fixtures" / "other_base"
NAMES = ["adapter", "adapter_curriculum_stage1", "adapter_seed123"]
LAYERS, WIDTH, RANK = 6, 64, 4  # of the fixture set: q_proj is (64, 64)
APP = str(REPO / "app" / "streamlit_app.py")


def page_app(monkeypatch: pytest.MonkeyPatch, *, timeout: int = 300, **env: str) -> AppTest:
    """An AppTest whose default adapter set is the fixture trio, browsable only under its folder."""
    monkeypatch.setenv("ADAPTER_ATLAS_ADAPTERS", os.pathsep.join(str(PAGE_SET / n) for n in NAMES))
    monkeypatch.setenv("ADAPTER_ATLAS_ROOTS", str(PAGE_SET))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return AppTest.from_file(APP, default_timeout=timeout)

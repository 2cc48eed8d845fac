"""`load_model(spec)`: the model, its tokenizer and its identity, loaded strictly from local files.

Loaded models are cached per process and spec (loading a real model takes tens of seconds). Callers that
change weights (the evaluator) restore them bit-exactly (`analysis.evaluation.fit.applied_deltas`).
transformers' own failures on a folder that is not a loadable causal LM become one ModelLoadError line.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from analysis.errors import ModelLoadError
from analysis.evaluation.model import (
    DTYPES,
    LoadedModel,
    ModelIdentity,
    ModelSpec,
    check_folder,
    classify,
    combined_sha256,
    file_sha256,
    pick_device,
    pick_dtype,
)

log = logging.getLogger(__name__)

_CACHE: dict[tuple[str, str | None, str, str, str | None], LoadedModel] = {}
_LOCK = threading.Lock()


def _quiet_transformers() -> tuple[int, Any]:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return level, hf_logging


def _prepare_tokenizer(tokenizer: Any) -> Any:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _from_pretrained(where: Path, dtype: str, gguf_file: str | None = None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw: dict[str, Any] = {"local_files_only": True}
    if gguf_file is not None:
        kw["gguf_file"] = gguf_file
    level, hf_logging = _quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(where), **kw)
        model = AutoModelForCausalLM.from_pretrained(str(where), dtype=DTYPES[dtype], **kw)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        target = where / gguf_file if gguf_file else where
        raise ModelLoadError(f"{target}: cannot be loaded as a causal language model ({first})") from None
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()
    return model, tokenizer


def _architecture(model: Any) -> str:
    archs = getattr(model.config, "architectures", None) or [type(model).__name__]
    return str(archs[0])


def _load(spec: ModelSpec, device: str, dtype: str) -> LoadedModel:
    kind, path = classify(spec)
    if kind == "sample":
        from analysis.base_model import base_record, load_base_model, verified_gguf

        rec = base_record()
        gguf = verified_gguf()
        # the same cached object as `load_base_model()` (lru_cache keys f() and f(float32) apart)
        model, tokenizer = load_base_model() if dtype == "float32" else load_base_model(DTYPES[dtype])
        files: tuple[tuple[str, str], ...] = ((gguf.name, rec["sha256"]),)
        ident = ModelIdentity("sample", rec.get("hf_equivalent") or rec["name"],
                              _architecture(model), combined_sha256(list(files)), f"{rec['package']}=={rec['version']}",
                              files, device, dtype, aliases=(rec["name"], str(gguf)))
    elif kind == "gguf":
        assert path is not None
        files = ((path.name, file_sha256(path)),)
        model, tokenizer = _from_pretrained(path.parent, dtype, gguf_file=path.name)
        ident = ModelIdentity("gguf", str(path), _architecture(model), combined_sha256(list(files)), None, files,
                              device, dtype, aliases=(path.stem,))
    else:
        assert path is not None
        config, weights = check_folder(path)
        if kind == "folder":
            files = tuple((w.name, file_sha256(w)) for w in weights)
            sha, revision, name = combined_sha256(list(files)), None, str(path)
        else:  # the HF cache: name and revision identify it; hashing a large snapshot is left out
            files, sha, revision, name = (), None, path.name, str(spec.source)
        model, tokenizer = _from_pretrained(path, dtype)
        aliases = tuple(a for a in (config.get("_name_or_path"), path.name, str(path)) if isinstance(a, str) and a)
        ident = ModelIdentity(kind, name, _architecture(model), sha, revision, files, device, dtype, aliases=aliases)
    if device != "cpu":
        model = model.to(device)
    model.eval()
    return LoadedModel(model, _prepare_tokenizer(tokenizer), ident)


def load_model(spec: ModelSpec | None = None) -> LoadedModel:
    """The model of `spec` (default: the sample base), cached per process and resolved device/dtype."""
    spec = spec or ModelSpec()
    device = pick_device(spec.device)
    dtype = pick_dtype(spec.dtype, device)
    key = (str(spec.source) if spec.source is not None else "", spec.revision, device, dtype,
           str(Path(spec.source).expanduser().resolve()) if spec.source else None)
    with _LOCK:
        if key not in _CACHE:
            log.info("loading model %s on %s (%s)", spec.source or "sample base", device, dtype)
            _CACHE[key] = _load(spec, device, dtype)
        return _CACHE[key]


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()

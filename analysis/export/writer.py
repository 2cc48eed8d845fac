"""Export a merge result atomically: weights, `recipe.yaml`, optional `preview.json`.

Atomic because a half-written adapter directory is worse than none: everything is written into a
temporary directory next to the target, re-read and compared, and only then renamed into place. An
existing target is refused unless `force`, in which case it is swapped out only after the new one is
complete. The safetensors header carries the recipe's sha256, so weights and recipe can be matched.
Checks on the target, fsync and the clean-up after a killed export live in `analysis.export.outdir`.
"""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from analysis.adapters.model import Adapter, Delta
from analysis.errors import RecipeError
from analysis.export.delta import delta_files
from analysis.export.diffusers import WEIGHTS_NAME as DIFFUSERS_WEIGHTS
from analysis.export.diffusers import diffusers_files
from analysis.export.kohya import kohya_files
from analysis.export.layout import export_dtype
from analysis.export.outdir import check_out_dir, publish, write_durable, write_marker
from analysis.export.peft import peft_files
from analysis.export.recipe import Recipe, recipe_sha256, recipe_to_yaml

log = logging.getLogger(__name__)

Files = tuple[dict[str, torch.Tensor], dict[str, str], dict[str, str]]  # tensors, text files, extra metadata
Writer = Callable[[Mapping[str, Delta], "int | None", "str | None", list[Adapter], torch.dtype], Files]


def _peft(m: Mapping[str, Delta], rank: int | None, base: str | None, inputs: list[Adapter], dtype: torch.dtype) -> Files:
    return (*peft_files(m, rank=rank, base_model=base, inputs=inputs, dtype=dtype), {})


def _diffusers(m: Mapping[str, Delta], rank: int | None, base: str | None, inputs: list[Adapter],
               dtype: torch.dtype) -> Files:
    tensors, meta = diffusers_files(m, rank=rank, dtype=dtype)
    return tensors, {}, meta


def _kohya(m: Mapping[str, Delta], rank: int | None, base: str | None, inputs: list[Adapter], dtype: torch.dtype) -> Files:
    tensors, meta = kohya_files(m, rank=rank, inputs=inputs, dtype=dtype)
    return tensors, {}, meta


def _delta(m: Mapping[str, Delta], rank: int | None, base: str | None, inputs: list[Adapter], dtype: torch.dtype) -> Files:
    return delta_files(m, dtype)


WRITERS: dict[str, tuple[str, Writer]] = {
    "peft": ("adapter_model.safetensors", _peft),
    "diffusers": (DIFFUSERS_WEIGHTS, _diffusers),
    "kohya": ("lora.safetensors", _kohya),
    "delta": ("delta.safetensors", _delta),
}


def common_base(adapters: list[Adapter]) -> str | None:
    bases = sorted({a.base_model for a in adapters if a.base_model})
    return bases[0] if len(bases) == 1 else None


def render_tensors(modules: Mapping[str, Delta], recipe: Recipe, *, inputs: list[Adapter]) -> tuple[str, Files]:
    """(weights file name, (tensors, text files, writer metadata)) of the export `recipe.export` describes."""
    weights_name, writer = WRITERS[recipe.export.format]
    return weights_name, writer(modules, recipe.export.rank, common_base(inputs), inputs,
                                export_dtype(recipe.export.dtype))


def render_export(modules: Mapping[str, Delta], recipe: Recipe, *, inputs: list[Adapter],
                  preview: Mapping[str, Any] | None = None) -> tuple[str, dict[str, torch.Tensor], dict[str, str], dict[str, str]]:
    """(weights file name, tensors, safetensors metadata, text files) without touching the disk."""
    weights_name, (tensors, texts, meta) = render_tensors(modules, recipe, inputs=inputs)
    text = recipe_to_yaml(recipe)
    metadata = {"format": "pt", "atlas_recipe_sha256": recipe_sha256(recipe), **meta}
    texts = {**texts, "recipe.yaml": text}
    if preview is not None:
        texts["preview.json"] = json.dumps(preview, indent=2, sort_keys=True, default=float) + "\n"
    return weights_name, tensors, metadata, texts


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """safetensors serialisation with a byte-stable header: the library writes `__metadata__` from a hash
    map whose order changes from process to process, so the header is re-emitted with sorted keys
    (tensor entries and data are already in a fixed order). Needed for recipes to replay to identical bytes."""
    raw = save(dict(tensors), metadata=dict(metadata))
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    ordered = {"__metadata__": dict(sorted(meta.items())), **header}
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # keep the data 8-byte aligned, as the library does
    # one copy of the tensor data, not three (a slice and a concatenation each copied it: 2 GB more at 700 MB)
    return b"".join((len(text).to_bytes(8, "little"), text, memoryview(raw)[8 + n:]))


def _verify(tmp: Path, weights_name: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
            texts: Mapping[str, str]) -> None:
    """Re-read what was written and compare; raises RecipeError on any mismatch."""
    back = load_file(str(tmp / weights_name))
    if set(back) != set(tensors) or any(not torch.equal(back[k], tensors[k]) for k in tensors):
        raise RecipeError(f"{tmp / weights_name}: re-read tensors differ from what was written")
    with safe_open(str(tmp / weights_name), framework="pt") as f:
        if dict(f.metadata() or {}) != dict(metadata):
            raise RecipeError(f"{tmp / weights_name}: re-read header metadata differs from what was written")
    for name, text in texts.items():
        if (tmp / name).read_text() != text:
            raise RecipeError(f"{tmp / name}: re-read text differs from what was written")


def export_merge(modules: Mapping[str, Delta], recipe: Recipe, out: str | Path, *, inputs: list[Adapter],
                 preview: Mapping[str, Any] | None = None, force: bool = False) -> Path:
    """Write the export described by `recipe.export` into directory `out`, atomically. Returns `out`.

    Every file and the folder are fsync'd before the rename, and the parent after it, so a power cut
    leaves either the old export or the complete new one. An `out` that is, holds or lies inside an
    input is refused even with `force` (see `check_out_dir`).
    """
    out = Path(out)
    check_out_dir(out, inputs=[a.path for a in inputs if getattr(a, "path", None)], force=force)
    weights_name, tensors, metadata, texts = render_export(modules, recipe, inputs=inputs, preview=preview)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write_marker(tmp)
        write_durable(tmp / weights_name, safetensors_bytes(tensors, metadata))
        for name, text in texts.items():
            write_durable(tmp / name, text.encode())
        _verify(tmp, weights_name, tensors, metadata, texts)
        for file in tmp.iterdir():
            os.chmod(file, 0o644)
        publish(tmp, out)  # the one swap rule (analysis.export.outdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %d tensors to %s", len(tensors), out)
    return out


def zip_directory(path: str | Path) -> bytes:
    """The directory as zip bytes (for the app's download button), files in name order."""
    buf = io.BytesIO()
    root = Path(path)
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            zf.write(file, arcname=str(Path(root.name) / file.relative_to(root)))
    return buf.getvalue()

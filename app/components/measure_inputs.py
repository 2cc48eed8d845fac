"""The Merge page's measuring inputs: a model and data files a visitor names on the server.

No Streamlit here. Every visitor-named path goes through `sources.confine` (links and '..' resolved, then a
configured root required: ADAPTER_ATLAS_ROOTS) before anything reads it; a model must be a folder or a
.gguf file, data a JSONL/YAML file or a folder. `stamp` keys the caches by each file's size and mtime, so an
edited data file is measured again.
"""
from __future__ import annotations

from pathlib import Path

from app.components.sources import FolderRefusedError, confine

DATA_SUFFIXES = (".jsonl", ".yaml", ".yml")


def confine_model(text: str) -> str:
    """The resolved model path (a folder or a .gguf file under the roots), or one refusal line."""
    path = confine(text)
    if not (path.is_dir() or (path.is_file() and path.suffix.lower() == ".gguf")):
        raise FolderRefusedError(f"{path}: not a model folder or a .gguf file")
    return str(path)


def confine_data(lines: str) -> tuple[str, ...]:
    """Resolved data paths, one per non-empty line (files .jsonl/.yaml or folders under the roots)."""
    out = []
    for raw in lines.splitlines():
        if not raw.strip():
            continue
        path = confine(raw)
        if not (path.is_dir() or (path.is_file() and path.suffix.lower() in DATA_SUFFIXES)):
            raise FolderRefusedError(f"{path}: not a data folder or a {'/'.join(DATA_SUFFIXES)} file")
        out.append(str(path))
    return tuple(out)


def stamp(paths: tuple[str, ...]) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime_ns) of every file under `paths`: a cache key that changes when a file does."""
    out = []
    for p in paths:
        root = Path(p)
        files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
        out += [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files[:10_000]]
    return tuple(out)

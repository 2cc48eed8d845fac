"""Finding adapters under folder roots, and a cheap change signature for each.

An adapter location is a directory holding `adapter_config.json` (PEFT; its sub-folders, e.g.
`checkpoint-*`, are still searched) or any weights file (.safetensors/.bin/.pt/.pth) outside such a
directory (kohya, diffusers, LyCORIS keep one adapter per file). Hidden folders are skipped. What
fails to load later is reported by the scan, not filtered here.

The signature (file names, sizes and mtimes) only decides whether a location must be hashed again; the
identity of an adapter is the sha256 of its files (`Adapter.sha256`), computed for new or changed ones.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

from analysis.adapters.load import CONFIG_NAME, WEIGHT_SUFFIXES
from analysis.errors import AdapterFormatError


def find_adapters(roots: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Every adapter location under the roots, resolved, each once, sorted."""
    found: set[Path] = set()
    for root in roots:
        path = Path(root).expanduser().resolve()
        if not path.exists():
            raise AdapterFormatError(f"{path}: no such file or directory")
        found.update(_walk(path))
    return sorted(found)


def _walk(root: Path) -> Iterator[Path]:
    if root.is_file():
        if root.suffix.lower() in WEIGHT_SUFFIXES:
            yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if CONFIG_NAME in filenames:
            yield here
            continue  # its weights belong to the directory adapter
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in WEIGHT_SUFFIXES:
                yield here / name


def signature(location: Path) -> str:
    """name:size:mtime_ns of the files that make up the adapter; '' when they cannot be read."""
    try:
        if location.is_dir():
            files = sorted(p for p in location.iterdir() if p.is_file()
                           and (p.name == CONFIG_NAME or p.suffix.lower() in WEIGHT_SUFFIXES))
        else:
            files = [location]
        parts = []
        for p in files:
            st = p.stat()
            parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(parts)
    except OSError:
        return ""

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


def find_adapters(roots: Sequence[str | os.PathLike[str]],
                  unlisted: list[tuple[str, str]] | None = None) -> list[Path]:
    """Every adapter location under the roots, resolved, each once, sorted.

    A root must be a folder this process can list or a weights file (a FIFO, a device or an unreadable
    folder is refused, never scanned as empty); a folder inside a root that cannot be listed is appended
    to `unlisted` as (path, reason) so the scan reports it instead of skipping it silently."""
    found: set[Path] = set()
    for path in check_roots(roots):
        found.update(_walk(path, unlisted))
    return sorted(found)


def check_roots(roots: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The roots resolved, or one AdapterFormatError line for the first that is missing, unreadable or not a
    folder / weights file (checked before a scan touches its index)."""
    out = []
    for root in roots:
        path = Path(root).expanduser().resolve()
        if not path.exists():
            raise AdapterFormatError(f"{path}: no such file or directory")
        if path.is_dir():
            try:
                with os.scandir(path):
                    pass
            except OSError as exc:
                raise AdapterFormatError(f"{path}: cannot list this folder ({exc.strerror}), nothing to scan") from None
        elif not path.is_file():
            raise AdapterFormatError(f"{path}: not a folder or a regular file (a FIFO, socket or device): "
                                     "nothing to scan")
        elif path.suffix.lower() not in WEIGHT_SUFFIXES:
            raise AdapterFormatError(f"{path}: not an adapter weights file ({', '.join(WEIGHT_SUFFIXES)}) nor a folder")
        out.append(path)
    return out


def _walk(root: Path, unlisted: list[tuple[str, str]] | None = None) -> Iterator[Path]:
    if root.is_file():
        if root.suffix.lower() in WEIGHT_SUFFIXES:
            yield root
        return

    def skipped(exc: OSError) -> None:
        if unlisted is not None:
            unlisted.append((str(exc.filename), f"cannot list this folder ({exc.strerror})"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=skipped):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if CONFIG_NAME in filenames:
            yield here
            continue  # its weights belong to the directory adapter
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in WEIGHT_SUFFIXES:
                if (here / name).is_file():
                    yield here / name
                elif unlisted is not None:  # reading a FIFO would block the scan forever
                    unlisted.append((str(here / name), "not a regular file (a FIFO, socket or device)"))


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

"""Where the adapters on screen come from: the sample set, an upload, or a server folder.

No Streamlit here, so every rule (which folders a browser may name, how an upload lands on disk)
is a plain function that tests can call directly. The server must never read a folder a user
merely typed: `confine` is the one rule (resolve links and '..', then require a configured root) and
the folder picker, the shared-URL filter and the Review page's recipe field all go through it.
Uploads land in per-session folders with size, entry and ratio limits (`app.components.uploads`).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from analysis.errors import AtlasError
from app.components.uploads import (  # noqa: F401 - re-exported for the pickers
    ADAPTER_FILE_SUFFIXES,
    UPLOAD_BASE,
    UploadArea,
    UploadLimits,
    UploadRefusedError,
    save_upload,
)

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_ROOTS = "ADAPTER_ATLAS_ROOTS"
ENV_ADAPTERS = "ADAPTER_ATLAS_ADAPTERS"


class FolderRefusedError(AtlasError):
    """A server-side folder outside the configured roots (or missing) was asked for."""


def default_adapter_paths(repo_root: Path = REPO_ROOT) -> list[Path]:
    """The set the app opens with.

    An explicit list from `adapter-atlas serve PATH...` (passed as ADAPTER_ATLAS_ADAPTERS) wins;
    then the repo's trained sample adapters; else the three gemma-3-270m adapters from the shared
    test inputs, which are three real adapters of one base and so make a meaningful atlas.
    """
    explicit = os.environ.get(ENV_ADAPTERS, "")
    if explicit.strip():
        return [Path(p).resolve() for p in explicit.split(os.pathsep) if p.strip()]
    samples = sorted(p.parent for p in (repo_root / "sample_adapters").glob("*/adapter_config.json"))
    if samples:
        return samples
    gemma = repo_root.parent / "shared" / "real_adapters" / "gemma3-270m-svg-lora"
    return sorted(p.parent for p in gemma.glob("*/adapter_config.json"))


def configured_roots(repo_root: Path = REPO_ROOT) -> list[Path]:
    """Folders a browser user may open on the server: ADAPTER_ATLAS_ROOTS, else the bundled sets."""
    env = os.environ.get(ENV_ROOTS, "")
    if env.strip():
        return [Path(p).expanduser().resolve() for p in env.split(os.pathsep) if p.strip()]
    defaults = [repo_root / "sample_adapters", repo_root.parent / "shared" / "real_adapters"]
    return [p.resolve() for p in defaults if p.is_dir()]


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


MAX_PATH_CHARS = 4096
MAX_NAME_BYTES = 255


def confine(text: str | os.PathLike[str], roots: list[Path] | None = None) -> Path:
    """The resolved path when it lies under one of `roots`, else one FolderRefusedError line.

    The one rule for every path a visitor names (folder picker, shared URL, the Review page's recipe
    file): symlinks and '..' are resolved first, so a link inside a root pointing outside it is refused
    like the outside path itself; NUL and over-long names are refused before touching the disk.
    """
    roots = configured_roots() if roots is None else roots
    raw = os.fspath(text).strip()
    if not raw:
        raise FolderRefusedError("no path given: type a path under one of the allowed roots")
    if "\0" in raw:
        raise FolderRefusedError("path refused: it contains a NUL character")
    if len(raw) > MAX_PATH_CHARS or any(len(part.encode("utf-8", "replace")) > MAX_NAME_BYTES
                                        for part in Path(raw).parts):
        raise FolderRefusedError(f"path refused: {len(raw)} characters, or a name longer than "
                                 f"{MAX_NAME_BYTES} bytes ({raw[:60]}...)")
    try:
        path = Path(raw).expanduser().resolve()  # resolves symlinks and '..'
    except (OSError, RuntimeError, ValueError) as exc:  # RuntimeError: a symlink loop
        raise FolderRefusedError(f"{raw[:200]}: cannot be resolved ({exc})") from None
    if not any(_inside(path, r) for r in roots):
        allowed = ", ".join(str(r) for r in roots) or "(none configured: set ADAPTER_ATLAS_ROOTS)"
        raise FolderRefusedError(f"{path}: outside the allowed roots {allowed}")
    return path


def _escaping_link(folder: Path, roots: list[Path]) -> Path | None:
    """A direct child of an adapter folder that is a link leaving the roots (the loader would follow it)."""
    for child in folder.iterdir():
        if child.is_symlink():
            try:
                confine(child, roots)
            except FolderRefusedError:
                return child
    return None


def _confined_child(child: Path, roots: list[Path]) -> bool:
    try:
        confine(child, roots)
        return not (child.is_dir() and _escaping_link(child, roots))
    except (FolderRefusedError, OSError):
        log.warning("not listing %s: it leads outside the allowed roots", child)
        return False


def is_adapter_location(path: Path) -> bool:
    """A PEFT-style directory (config or weights inside) or a single weights file."""
    if path.is_file():
        return path.suffix in ADAPTER_FILE_SUFFIXES
    if not path.is_dir():
        return False
    if (path / "adapter_config.json").is_file():
        return True
    return any(p.suffix in ADAPTER_FILE_SUFFIXES for p in path.iterdir() if p.is_file())


def resolve_server_folder(text: str, roots: list[Path] | None = None) -> list[Path]:
    """The adapters inside a server folder, after checking it lies under a configured root.

    A folder that is itself an adapter gives [folder]; otherwise each direct child that is an
    adapter (directory or weights file) is returned, sorted by name. Children that are links leaving
    the roots are neither listed nor loaded.
    """
    roots = configured_roots() if roots is None else roots
    if not text.strip():
        raise FolderRefusedError("no folder given: type a path under one of the allowed roots")
    path = confine(text, roots)
    if not path.exists():
        raise FolderRefusedError(f"{path}: no such file or folder")
    if path.is_file() or (path / "adapter_config.json").is_file():
        if path.is_dir() and (link := _escaping_link(path, roots)) is not None:
            raise FolderRefusedError(f"{link}: a link leading outside the allowed roots")
        return [path]
    if not path.is_dir():
        raise FolderRefusedError(f"{path}: not a regular file or folder")
    # child adapter folders, then loose weights files (a kohya/diffusers folder holds one adapter per file)
    children = sorted(p for p in path.iterdir() if _confined_child(p, roots))
    found = [p for p in children if p.is_dir() and is_adapter_location(p)]
    found += [p for p in children if p.is_file() and p.suffix in ADAPTER_FILE_SUFFIXES]
    if not found:
        raise FolderRefusedError(f"{path}: no adapter inside (expected adapter_config.json or a weights file)")
    return list(dict.fromkeys(p.resolve() for p in found))  # a link inside the root names its target once


def allowed_paths(paths: list[str], roots: list[Path] | None = None) -> list[Path]:
    """Filter paths from a shared URL to those the server may read (roots, defaults, uploads)."""
    roots = (configured_roots() if roots is None else roots) + [UPLOAD_BASE.resolve()]
    defaults = {p.resolve() for p in default_adapter_paths()}
    kept = []
    for text in paths:
        try:
            p = confine(text, roots + sorted(defaults))
            ok = p.exists() and not (p.is_dir() and p not in defaults and _escaping_link(p, roots))
        except (FolderRefusedError, OSError):
            ok = False
        if ok:
            kept.append(p)
        else:
            log.warning("ignoring adapter path from URL outside the allowed roots: %.200s", text)
    return kept

"""Where the adapters on screen come from: the sample set, an upload, or a server folder.

No Streamlit here, so every rule (which folders a browser may name, how an upload lands on disk)
is a plain function that tests can call directly. The server must never read a folder a user
merely typed: `resolve_server_folder` refuses anything outside the configured roots, and
`allowed_paths` applies the same rule to paths arriving in a shared URL.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from analysis.errors import AdapterFormatError, AtlasError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_REAL = REPO_ROOT.parent / "shared" / "real_adapters"
ADAPTER_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
UPLOAD_BASE = Path(tempfile.gettempdir()) / "adapter-atlas-uploads"
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
    adapter (directory or weights file) is returned, sorted by name.
    """
    roots = configured_roots() if roots is None else roots
    if not text.strip():
        raise FolderRefusedError("no folder given: type a path under one of the allowed roots")
    path = Path(text.strip()).expanduser().resolve()  # resolves symlinks and '..'
    if not any(_inside(path, r) for r in roots):
        allowed = ", ".join(str(r) for r in roots) or "(none configured: set ADAPTER_ATLAS_ROOTS)"
        raise FolderRefusedError(f"{path}: outside the allowed roots {allowed}")
    if not path.exists():
        raise FolderRefusedError(f"{path}: no such file or folder")
    if path.is_file() or (path / "adapter_config.json").is_file():
        return [path]
    # child adapter folders, then loose weights files (a kohya/diffusers folder holds one adapter per file)
    found = sorted(p for p in path.iterdir() if p.is_dir() and is_adapter_location(p))
    found += sorted(p for p in path.iterdir() if p.is_file() and p.suffix in ADAPTER_FILE_SUFFIXES)
    if not found:
        raise FolderRefusedError(f"{path}: no adapter inside (expected adapter_config.json or a weights file)")
    return found


def allowed_paths(paths: list[str], roots: list[Path] | None = None) -> list[Path]:
    """Filter paths from a shared URL to those the server may read (roots, defaults, uploads)."""
    roots = (configured_roots() if roots is None else roots) + [UPLOAD_BASE.resolve()]
    defaults = {p.resolve() for p in default_adapter_paths()}
    kept = []
    for text in paths:
        p = Path(text).resolve()
        if (p in defaults or any(_inside(p, r) for r in roots)) and p.exists():
            kept.append(p)
        else:
            log.warning("ignoring adapter path from URL outside the allowed roots: %s", text)
    return kept


def _safe_member(name: str) -> PurePosixPath:
    member = PurePosixPath(name)
    if member.is_absolute() or ".." in member.parts:
        raise AdapterFormatError(f"zip entry {name!r}: absolute or '..' paths are refused")
    return member


def _adapter_root(folder: Path) -> Path:
    """The folder holding the adapter inside an extracted upload (zips often wrap one directory)."""
    configs = sorted(folder.rglob("adapter_config.json"))
    if configs:
        return configs[0].parent
    weights = sorted(p for p in folder.rglob("*") if p.suffix in ADAPTER_FILE_SUFFIXES)
    if len(weights) == 1:
        return weights[0]
    if weights:
        return weights[0].parent
    raise AdapterFormatError(f"{folder.name}: upload holds no adapter_config.json and no weights file "
                             f"({', '.join(ADAPTER_FILE_SUFFIXES)})")


def _upload_label(files: list[tuple[str, bytes]], digest: str) -> str:
    """A readable folder name: the zip's stem, the uploaded directory's name, or upload-<hash>."""
    first = PurePosixPath(files[0][0].replace("\\", "/"))
    if len(files) == 1 and first.suffix.lower() == ".zip":
        return first.stem
    parents = {PurePosixPath(n.replace("\\", "/")).parent.name for n, _ in files}
    if len(parents) == 1 and "" not in parents:
        return parents.pop()
    return f"upload-{digest[:8]}"


def save_upload(files: list[tuple[str, bytes]], base: Path = UPLOAD_BASE) -> Path:
    """Write uploaded files to their own temp folder and return the adapter path inside it.

    Accepts one zip (a PEFT directory zipped), one weights file, or the files of one PEFT
    directory (picked one by one or as a folder). The folder is named by the content hash, so a
    rerun of the page reuses it, and inside by the upload's own name, which becomes the adapter's.
    """
    if not files:
        raise AdapterFormatError("upload: no files received")
    h = hashlib.sha256()
    for name, data in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    digest = h.hexdigest()
    label = _upload_label(files, digest)
    if len(files) == 1 and files[0][0].lower().endswith(".zip"):
        name, data = files[0]
        target = base / digest[:16] / label
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                for info in zf.infolist():
                    member = _safe_member(info.filename)
                    if info.is_dir():
                        continue
                    out = target / Path(*member.parts)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(zf.read(info))
        except zipfile.BadZipFile as exc:
            raise AdapterFormatError(f"{name}: not a readable zip archive ({exc})") from exc
        target.mkdir(parents=True, exist_ok=True)
        return _adapter_root(target)
    target = base / digest[:16] / ("" if len(files) == 1 else label)
    target.mkdir(parents=True, exist_ok=True)
    for name, data in files:
        (target / PurePosixPath(name.replace("\\", "/")).name).write_bytes(data)  # basename only
    if len(files) == 1:
        return target / PurePosixPath(files[0][0].replace("\\", "/")).name
    return _adapter_root(target)

"""How an upload lands on the server's disk without letting one visitor exhaust it.

A shared server must survive a hostile zip. So, for every upload:
- the central directory is checked first (entry count, declared unpacked size, compression ratio,
  encryption, compression method, entry names), and a bad archive is refused before one byte is
  inflated;
- members are then streamed to disk in 1 MiB chunks, never read whole, and the same limits are
  enforced on the bytes actually produced (a header that lies about sizes is caught, not trusted);
- each browser session writes under its own folder (`UploadArea`), removed when the session ends
  (the area's finalizer runs when Streamlit drops the session state) or, as a backstop, after a TTL;
- all sessions together stay under a quota.
Every refusal is one `UploadRefusedError` line naming the upload and the entry. No Streamlit here.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
import weakref
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, MutableMapping

from analysis.errors import AdapterFormatError

log = logging.getLogger(__name__)

UPLOAD_BASE = Path(tempfile.gettempdir()) / "adapter-atlas-uploads"
ADAPTER_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
CHUNK = 1 << 20
MiB, GiB = 1 << 20, 1 << 30
# Only these: zipfile inflates deflate with a bounded output per read, but bzip2/lzma chunks without
# a bound, so a lying bzip2 member could fill memory before its size is checked. Every zip tool writes deflate.
SUPPORTED_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_AREA_NAME = re.compile(r"^s-[0-9a-f]{32}$")
MARKER = ".adapter-atlas-upload-area"


class UploadRefusedError(AdapterFormatError):
    """An upload broke a limit or a rule (size, ratio, entries, names, encryption, quota)."""


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "") or default)
    except ValueError:
        return default


@dataclass(frozen=True)
class UploadLimits:
    """Per upload: unpacked bytes, zip entries, compression ratio; all sessions: quota; areas: TTL."""

    max_unpacked: int = 4 * GiB
    max_entries: int = 1000
    max_ratio: float = 200.0  # safetensors barely compress (~1.1x); only a bomb reaches 200x
    ratio_floor: int = 1 * MiB  # small members (configs) may compress as well as they like
    quota: int = 16 * GiB
    ttl_s: float = 600.0  # how long an area outlives the last sign of its session

    @classmethod
    def from_env(cls) -> "UploadLimits":
        d = cls()
        return cls(max_unpacked=_env_int("ADAPTER_ATLAS_UPLOAD_MAX_BYTES", d.max_unpacked),
                   max_entries=_env_int("ADAPTER_ATLAS_UPLOAD_MAX_ENTRIES", d.max_entries),
                   quota=_env_int("ADAPTER_ATLAS_UPLOAD_QUOTA_BYTES", d.quota),
                   ttl_s=float(_env_int("ADAPTER_ATLAS_UPLOAD_TTL_S", int(d.ttl_s))))


def _size(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


# ------------------------------------------------------------------ per-session areas, TTL, quota
def _own_folder(base: Path) -> None:
    """The shared upload folder (in /tmp by default) must be a real folder this server owns: another
    local user could otherwise pre-create it, or a link in its place, and read or redirect uploads."""
    base.mkdir(parents=True, mode=0o700, exist_ok=True)
    st = os.lstat(base)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise UploadRefusedError(f"upload folder {base} is a link or not owned by this server: remove it, or set "
                                 "TMPDIR to a private folder")


class UploadArea:
    """One session's upload folder: `<base>/s-<random>/`, its marker naming the owning session.

    Removed by `close()`, by the garbage collector when the session state holding it is dropped, at
    interpreter exit, or by `sweep` once its session has not been seen for the TTL (the app's janitor,
    `app.components.upload_session`, asks Streamlit which sessions are alive; a killed server's areas
    simply age out)."""

    def __init__(self, base: Path = UPLOAD_BASE, *, limits: UploadLimits | None = None, session_id: str = ""):
        self.base = Path(base)
        self.limits = limits or UploadLimits.from_env()
        _own_folder(self.base)
        self.path = self.base / f"s-{secrets.token_hex(16)}"
        self.path.mkdir(parents=True, mode=0o700)
        (self.path / MARKER).write_text(session_id)
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)

    def close(self) -> None:
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def touch(self) -> None:
        os.utime(self.path / MARKER)


def session_area(state: "MutableMapping[str, Any]", key: str = "adapters_upload_area", *,
                 session_id: str = "") -> UploadArea:
    """The session's upload area, kept in its (Streamlit) session state so it lives and dies with it."""
    area = state.get(key)
    if not isinstance(area, UploadArea) or area.closed:
        area = state[key] = UploadArea(session_id=session_id)
        sweep(area.base, ttl_s=area.limits.ttl_s, keep=area.path)  # areas a killed server left behind
    return area


def sweep(base: Path = UPLOAD_BASE, *, ttl_s: float, keep: Path | None = None, now: float | None = None,
          alive: Callable[[str], bool] | None = None) -> int:
    """Remove upload areas not seen for more than `ttl_s`; returns how many.

    An area whose owning session `alive(session_id)` says is still there is touched instead (seen now).
    Only folders named like ours and holding our marker are touched at all.
    """
    now = time.time() if now is None else now
    removed = 0
    if not base.is_dir():
        return 0
    for area in base.iterdir():
        if not _AREA_NAME.match(area.name) or area == keep or area.is_symlink():
            continue
        marker = area / MARKER
        try:
            age = now - marker.stat().st_mtime
            owner = marker.read_text(errors="replace").strip() if alive is not None else ""
        except OSError:
            continue
        if owner and alive is not None and alive(owner):
            os.utime(marker)
            continue
        if age > ttl_s:
            shutil.rmtree(area, ignore_errors=True)
            removed += 1
            log.info("removed upload area %s (its session gone for %.0fs)", area, age)
    return removed


def usage(base: Path = UPLOAD_BASE) -> int:
    """Bytes on disk under every upload area."""
    total = 0
    for dirpath, _dirs, files in os.walk(base):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


class _Budget:
    """Bytes this upload may still write: min(per-upload limit, what the quota leaves)."""

    def __init__(self, label: str, area: UploadArea):
        self.label, self.limits = label, area.limits
        self.quota_left = area.limits.quota - usage(area.base)
        self.written = 0

    def check_declared(self, total: int) -> None:
        if total > self.limits.max_unpacked:
            raise UploadRefusedError(f"{self.label}: unpacks to {_size(total)}, more than the "
                                     f"{_size(self.limits.max_unpacked)} an upload may take")
        if total > self.quota_left:
            raise UploadRefusedError(f"{self.label}: needs {_size(total)} but the server's upload space has "
                                     f"{_size(max(self.quota_left, 0))} left; try again later")

    def add(self, n: int, entry: str) -> None:
        self.written += n
        if self.written > self.limits.max_unpacked or self.written > self.quota_left:
            raise UploadRefusedError(f"{self.label}: entry {entry!r} unpacks past the upload limit "
                                     f"({_size(min(self.limits.max_unpacked, self.quota_left))})")


# ------------------------------------------------------------------ zip checks and streaming
def _member_parts(label: str, name: str) -> tuple[str, ...]:
    """The path parts of a zip entry, or a refusal for names that could land anywhere odd."""
    shown = name if len(name) <= 120 else name[:120] + "..."
    if "\0" in name:
        raise UploadRefusedError(f"{label}: entry {shown!r}: NUL in the name is refused")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise UploadRefusedError(f"{label}: entry {shown!r}: absolute paths are refused")
    parts = tuple(p for p in PurePosixPath(norm).parts if p not in ("", "."))
    if ".." in parts:
        raise UploadRefusedError(f"{label}: entry {shown!r}: '..' paths are refused")
    if not parts:
        raise UploadRefusedError(f"{label}: an entry with an empty name is refused")
    if len(norm) > 1024 or any(len(p.encode()) > 255 for p in parts):
        raise UploadRefusedError(f"{label}: entry {shown!r}: name too long")
    return parts


def _check_directory(label: str, infos: list[zipfile.ZipInfo], budget: _Budget) -> list[tuple[zipfile.ZipInfo, tuple]]:
    """Everything that can be judged from the central directory, before inflating anything."""
    limits = budget.limits
    if len(infos) > limits.max_entries:
        raise UploadRefusedError(f"{label}: {len(infos)} entries, at most {limits.max_entries} allowed")
    files: dict[tuple, zipfile.ZipInfo] = {}
    dirs: set[tuple] = set()
    plan = []
    for info in infos:
        parts = _member_parts(label, info.filename)
        if info.flag_bits & 0x1:
            raise UploadRefusedError(f"{label}: entry {info.filename!r} is encrypted; upload an unencrypted zip")
        if info.compress_type not in SUPPORTED_METHODS:
            raise UploadRefusedError(f"{label}: entry {info.filename!r} uses compression method {info.compress_type}; "
                                     f"supported: {', '.join(SUPPORTED_METHODS.values())}")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UploadRefusedError(f"{label}: entry {info.filename!r} is a symbolic link; links are refused")
        prefixes = {parts[:i] for i in range(1, len(parts))}
        if info.is_dir():
            if parts in files:
                raise UploadRefusedError(f"{label}: entry {info.filename!r} is both a file and a folder")
            dirs |= prefixes | {parts}
            continue
        clash = next((p for p in prefixes if p in files), None)
        if parts in files or parts in dirs or clash is not None:
            other = "/".join(clash) if clash else info.filename
            raise UploadRefusedError(f"{label}: entry {info.filename!r} clashes with entry {other!r} "
                                     "(the same path twice, or a file used as a folder)")
        files[parts] = info
        dirs |= prefixes
        if info.file_size > limits.ratio_floor and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            ratio = info.file_size / max(info.compress_size, 1)
            raise UploadRefusedError(f"{label}: entry {info.filename!r} inflates {ratio:.0f}x "
                                     f"({_size(info.compress_size)} -> {_size(info.file_size)}), more than "
                                     f"{limits.max_ratio:.0f}x: refused as a zip bomb")
        plan.append((info, parts))
    budget.check_declared(sum(info.file_size for info, _ in plan))
    return plan


def _stream_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: Path, budget: _Budget, label: str) -> None:
    """Copy one member to `out` in chunks, counting real bytes against the declared size and the budget."""
    written = 0
    with zf.open(info) as src, open(out, "xb") as dst:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > info.file_size:
                raise UploadRefusedError(f"{label}: entry {info.filename!r} inflates past its declared size "
                                         f"({info.file_size} bytes): the archive is corrupt or hostile")
            budget.add(len(chunk), info.filename)
            dst.write(chunk)
    if written != info.file_size:
        raise UploadRefusedError(f"{label}: entry {info.filename!r} holds {written} bytes, "
                                 f"its header says {info.file_size}")


def extract_zip(label: str, data: bytes | BinaryIO, target: Path, budget: _Budget) -> None:
    """Check the archive, then stream its files under `target` (which must not exist yet)."""
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        with zipfile.ZipFile(source) as zf:
            plan = _check_directory(label, zf.infolist(), budget)
            target.mkdir(parents=True)
            for info, parts in plan:
                out = target.joinpath(*parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                _stream_member(zf, info, out, budget, label)
    except UploadRefusedError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError,
            RuntimeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UploadRefusedError(f"{label}: not a readable zip archive ({reason})") from None
    except OSError as exc:  # the server's disk, not the archive (no space left, ...)
        raise UploadRefusedError(f"{label}: could not be saved on the server ({exc.strerror or exc})") from None


# ------------------------------------------------------------------ the entry point
def adapter_root(folder: Path) -> Path:
    """The folder holding the adapter inside an extracted upload (zips often wrap one directory)."""
    configs = sorted(folder.rglob("adapter_config.json"))
    if configs:
        return configs[0].parent
    weights = sorted(p for p in folder.rglob("*") if p.suffix in ADAPTER_FILE_SUFFIXES and p.is_file())
    if len(weights) == 1:
        return weights[0]
    if weights:
        return weights[0].parent
    raise AdapterFormatError(f"{folder.name}: upload holds no adapter_config.json and no weights file "
                             f"({', '.join(ADAPTER_FILE_SUFFIXES)})")


def _basename(label: str, name: str) -> str:
    base = PurePosixPath(name.replace("\\", "/")).name
    if not base or base in (".", "..") or "\0" in base or len(base.encode()) > 255:
        raise UploadRefusedError(f"upload: file name {name[:120]!r} is refused (empty, NUL or too long)")
    return base


def _label(files: list[tuple[str, bytes]], digest: str) -> str:
    """A readable folder name: the zip's stem, the uploaded directory's name, or upload-<hash>."""
    first = PurePosixPath(files[0][0].replace("\\", "/"))
    if len(files) == 1 and first.suffix.lower() == ".zip":
        stem = first.stem
    else:
        parents = {PurePosixPath(n.replace("\\", "/")).parent.name for n, _ in files}
        stem = parents.pop() if len(parents) == 1 else ""
    stem = re.sub(r"[^\w.+-]", "_", stem)[:100].strip(".")
    return stem or f"upload-{digest[:8]}"


def save_upload(files: list[tuple[str, bytes]], area: UploadArea) -> Path:
    """Write one upload batch into the session's area and return the adapter path inside it.

    Accepts one zip (a PEFT directory zipped), one weights file, or the files of one PEFT directory.
    The folder is named by the content hash, so a rerun of the page reuses it.
    """
    if not files:
        raise AdapterFormatError("upload: no files received")
    if area.closed:
        raise UploadRefusedError("upload: this session's upload area was already removed; reload the page")
    area.touch()
    sweep(area.base, ttl_s=area.limits.ttl_s, keep=area.path)
    h = hashlib.sha256()
    for name, data in sorted(files):
        h.update(name.encode("utf-8", "replace") + b"\0" + hashlib.sha256(data).digest())
    digest = h.hexdigest()
    label = _label(files, digest)
    holder = area.path / digest[:16]
    is_zip = len(files) == 1 and files[0][0].lower().endswith(".zip")
    if holder.is_dir():  # this exact batch was saved before in this session
        return _result(holder, files, label, is_zip)
    budget = _Budget(f"upload {files[0][0][:120]!r}" if is_zip else "upload", area)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=area.path))
    try:
        if is_zip:
            extract_zip(budget.label, files[0][1], staging / label, budget)
        else:
            names = [_basename(label, n) for n, _ in files]
            if len(set(names)) != len(names):
                raise UploadRefusedError("upload: two files with the same name")
            budget.check_declared(sum(len(d) for _, d in files))
            folder = staging if len(files) == 1 else staging / label
            folder.mkdir(exist_ok=True)
            for name, (_, data) in zip(names, files):
                budget.add(len(data), name)
                (folder / name).write_bytes(data)
        _result(staging, files, label, is_zip)  # refuse an upload holding no adapter before keeping it
        try:
            os.replace(staging, holder)
        except OSError:
            if not holder.is_dir():  # else the same batch was just saved by another run: use that one
                raise UploadRefusedError(f"upload: could not be saved on the server ({holder})") from None
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _result(holder, files, label, is_zip)


def _result(holder: Path, files: list[tuple[str, bytes]], label: str, is_zip: bool) -> Path:
    if len(files) == 1 and not is_zip:
        return holder / _basename(label, files[0][0])
    return adapter_root(holder / label)

"""Where an export may go, checked before any work, and what a killed export leaves behind.

`check_out_dir` answers every question about `--out` that can be answered without merging: it must not
be, hold or lie inside an input (with `--force` that input would be deleted), must not be an existing
file or FIFO, must not lie under a file or in a kernel filesystem, and its parent must accept a new
file (probed, not guessed from permission bits: root passes `os.access` on a read-only mount).
One rule for every writer: `--force` replaces only an earlier export (`check_replaceable`: an empty folder,
or one holding our recipe.yaml / plan.json / consolidation recipe.json and nothing but files our exporters
write); a folder with anything else in it is refused even with `--force`, naming a file it holds.
`check_out_file` is the same rule for a single output file (a report): an existing file needs `--force`,
and an input, or any file inside an input adapter folder, is refused always.

An export writes into `.<name>.tmp-*` beside its target and, when replacing, parks the old target in
`.<name>.old-*`. Each such folder holds a marker naming its writer (host and pid). `clean_stale` removes
ours whose writer is gone (or that are older than a day), and puts a parked target back when the kill
landed between the two renames of a replacement, so no kill -9 loses the previous export.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from analysis.errors import RecipeError

log = logging.getLogger(__name__)

MARKER = ".adapter-atlas-export"
STALE_AFTER_S = 24 * 3600.0
KERNEL_FS = (Path("/proc"), Path("/sys"), Path("/dev"))
_OURS = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-[A-Za-z0-9_]{6,}$")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out_dir(out: str | os.PathLike[str], *, inputs: Iterable[str | os.PathLike[str]] = (),
                  force: bool = False) -> Path:
    """Refuse a bad `--out` with one RecipeError line before any merge work; returns the resolved path."""
    text = os.fspath(out)
    if not text.strip() or "\0" in text:
        raise RecipeError(f"--out {text!r}: an output directory path is needed (no NUL characters)")
    target = Path(text).expanduser().absolute()
    resolved = target.resolve()
    for item in inputs:
        inp = Path(item).expanduser().resolve()
        if _inside(resolved, inp) or _inside(inp, resolved):
            how = ("is" if resolved == inp else "lies inside" if _inside(resolved, inp) else "holds")
            raise RecipeError(f"--out {target} {how} the input {inp}: refused, it would be overwritten "
                              "(choose another --out)")
    if any(_inside(resolved, fs) for fs in KERNEL_FS):
        raise RecipeError(f"--out {target}: {resolved} is in a kernel filesystem, not a place for files")
    if resolved.parent.is_dir():  # first: a replacement killed mid-swap puts the previous export back
        clean_stale(resolved.parent)
    if resolved.exists() or target.is_symlink():
        if not resolved.is_dir():
            raise RecipeError(f"--out {target} exists and is not a directory: refused")
        if not force:
            raise RecipeError(f"{target} already exists; pass --force to replace it")
        check_replaceable(resolved, shown=target)
    ancestor = resolved.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RecipeError(f"--out {target} lies under {ancestor}, which is a file, not a directory")
    try:  # a real probe: permission bits say nothing to root on a read-only mount
        fd, probe = tempfile.mkstemp(prefix=f".{resolved.name[:100]}.probe-", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RecipeError(f"--out {target}: cannot write in {ancestor} ({exc.strerror})") from None
    return resolved


def check_out_place(out: str | os.PathLike[str], what: str = "--out") -> Path:
    """Refuse (one RecipeError line) a folder that is updated in place (a population index) where no folder can
    be: an existing non-folder, a path under a file, a kernel filesystem, a parent that refuses a new file."""
    text = os.fspath(out)
    if not text.strip() or "\0" in text:
        raise RecipeError(f"{what} {text!r}: a directory path is needed (no NUL characters)")
    target = Path(text).expanduser().absolute()
    resolved = target.resolve()
    if any(_inside(resolved, fs) for fs in KERNEL_FS):
        raise RecipeError(f"{what} {target}: {resolved} is in a kernel filesystem, not a place for files")
    if resolved.exists() and not resolved.is_dir():
        raise RecipeError(f"{what} {target} exists and is not a directory: refused")
    ancestor = resolved if resolved.is_dir() else resolved.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RecipeError(f"{what} {target} lies under {ancestor}, which is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".atlas.probe-", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RecipeError(f"{what} {target}: cannot write in {ancestor} ({exc.strerror})") from None
    return resolved


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_out_file(out: str | os.PathLike[str], what: str = "--out", *,
                   inputs: Iterable[str | os.PathLike[str]] = (), force: bool = False) -> Path:
    """Refuse a bad output *file* path (a report) with one RecipeError line before the work that fills it.

    An input (the file itself, a hard link to it, or anything inside an input folder, checked after
    resolving symlinks) is refused even with `force`; any other existing file needs `force`.
    """
    text = os.fspath(out)
    if not text.strip() or "\0" in text:
        raise RecipeError(f"{what} {text!r}: a file path is needed (no NUL characters)")
    target = Path(text).expanduser().absolute()
    resolved = target.resolve()
    for item in inputs:
        inp = Path(item).expanduser().resolve()
        if _inside(resolved, inp) or _same_file(resolved, inp):
            how = "is" if resolved == inp or not inp.is_dir() else "lies inside"
            raise RecipeError(f"{what} {target} {how} the input {inp}: refused even with --force, it would "
                              "be overwritten (choose another file)")
    if any(_inside(resolved, fs) for fs in KERNEL_FS):
        raise RecipeError(f"{what} {target}: {resolved} is in a kernel filesystem, not a place for files")
    if resolved.is_dir():
        raise RecipeError(f"{what} {target} is a directory: give a file name")
    if resolved.exists() or target.is_symlink():
        if not resolved.is_file():
            raise RecipeError(f"{what} {target} exists and is not a regular file: refused")
        if not force:
            raise RecipeError(f"{what} {target} already exists; pass --force to replace it")
    ancestor = resolved.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RecipeError(f"{what} {target} lies under {ancestor}, which is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{resolved.name[:100]}.probe-", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RecipeError(f"{what} {target}: cannot write in {ancestor} ({exc.strerror})") from None
    return resolved


# What our exporters write: the merge export (peft / kohya / delta + recipe.yaml, preview.json), the
# consolidation export (+ training.json, recipe.json) and a plan (plan.json + one export per group).
EXPORT_FILES = frozenset({MARKER, "recipe.yaml", "preview.json", "adapter_model.safetensors", "adapter_config.json",
                          "lora.safetensors", "delta.safetensors", "training.json", "recipe.json", "plan.json"})
_GROUP = re.compile(r"^group\d{2,}_")
_COPIED = (".safetensors", ".json", ".yaml", ".md", ".bin", ".pt", ".pth")  # a singleton group is a copied adapter


def _signed(folder: Path) -> bool:
    """Whether `folder` carries the file only our exports write at its top."""
    if (folder / "recipe.yaml").is_file() or (folder / "plan.json").is_file():
        return True
    try:
        return "atlas_consolidation" in json.loads((folder / "recipe.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError, UnicodeDecodeError):
        return False


def _foreign(folder: Path, *, in_plan_group: bool = False, depth: int = 0) -> Path | None:
    """The first entry under `folder` that no export of ours writes, or None."""
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink():
            return entry
        if entry.is_dir():
            if depth == 0 and (folder / "plan.json").is_file() and _GROUP.match(entry.name):
                found = _foreign(entry, in_plan_group=True, depth=1)
                if found is not None:
                    return found
                continue
            return entry
        if not entry.is_file():
            return entry
        if entry.name in EXPORT_FILES or (in_plan_group and entry.name.endswith(_COPIED)):
            continue
        return entry
    return None


def check_replaceable(folder: Path, *, shown: Path | None = None) -> None:
    """Refuse (RecipeError, one line) to replace `folder` unless it is empty or an earlier export of ours.

    `--force` means "replace my earlier export", never "delete whatever is there": a folder without our
    signature file, or with anything our exporters do not write, is refused naming one such file.
    """
    shown = folder if shown is None else shown
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise RecipeError(f"--out {shown}: cannot list the existing folder ({exc.strerror})") from None
    if not entries:
        return
    try:
        foreign = _foreign(folder) if _signed(folder) else entries[0]
    except OSError as exc:
        raise RecipeError(f"--out {shown}: cannot list the existing folder ({exc.strerror})") from None
    if foreign is not None:
        if not _signed(folder):  # name a file the user would miss, not just a folder
            foreign = next((e for e in entries if e.is_file() and not e.is_symlink()), foreign)
        if foreign.is_dir() and not foreign.is_symlink():
            foreign = next((f for f in sorted(foreign.rglob("*")) if f.is_file()), foreign)
        rel = foreign.relative_to(folder)
        why = "which no export of ours writes" if _signed(folder) else "and it is not an earlier export (no recipe.yaml)"
        raise RecipeError(f"--out {shown} holds {rel}, {why}: refused even with --force, it would be deleted "
                          "(choose another --out, or remove the folder yourself)")


def recipe_input_paths(recipe: str | os.PathLike[str] | None) -> list[str]:
    """The input paths a recipe names, for `check_out_dir` before a replay; [] when it cannot be read
    (the replay itself then reports why, in one line)."""
    if not recipe:
        return []
    from analysis.errors import AtlasError
    from analysis.export.recipe import load_recipe

    try:
        return [item.path for item in load_recipe(recipe).inputs]
    except AtlasError:
        return []


def write_marker(folder: Path) -> None:
    (folder / MARKER).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                             "started": time.time()}))


def _writer_gone(marker: Path, now: float) -> bool:
    try:
        info = json.loads(marker.read_text())
        age = now - float(info.get("started", marker.stat().st_mtime))
    except (OSError, ValueError, TypeError, AttributeError):
        return False
    if age > STALE_AFTER_S:
        return True
    if info.get("host") != socket.gethostname():
        return False  # another machine's export on a shared disk: only the age decides
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return False


def clean_stale(parent: Path, *, now: float | None = None) -> list[Path]:
    """Remove our leftover `.<name>.tmp-*` / `.<name>.old-*` folders in `parent` whose writer is gone.

    A parked `.<name>.old-*/previous` whose target is missing is moved back first (the kill landed
    between the two renames of a `--force` replacement). Folders without our marker are never touched.
    """
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _OURS.match(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir() or not _writer_gone(entry / MARKER, now):
            continue
        target = parent / match["name"]
        previous = entry / "previous"
        if match["kind"] == "old" and previous.is_dir() and not target.exists() and not target.is_symlink():
            os.replace(previous, target)
            log.warning("restored %s from an export killed while replacing it", target)
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
        log.info("removed %s, left by a killed export", entry)
    return removed


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A fresh `.<name>.tmp-*` folder beside `out`, marked as ours, to write a whole export into.

    On a clean exit the folder replaces `out` (`publish`); on an error it is removed and `out` is untouched;
    after a kill -9 the next `check_out_dir` of that parent removes it. So a writer that fills the folder
    in many steps (a plan: one export per group, then plan.json) leaves the previous export or the new
    one, never a half of each."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write_marker(tmp)
        yield tmp
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(tmp: Path, out: Path) -> None:
    """Swap the finished staging folder `tmp` in for `out`: everything fsync'd, the previous `out` parked in
    `.<name>.old-*/previous` between the two renames (`clean_stale` puts it back if a kill lands there)."""
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; an export is meant to be shared
    for folder, _dirs, files in os.walk(tmp):
        for name in files:
            fsync_path(Path(folder) / name)
        fsync_path(Path(folder))
    if out.exists() or out.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        write_marker(old)
        os.replace(out, old / "previous")
        os.replace(tmp, out)
        fsync_path(out.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    (out / MARKER).unlink(missing_ok=True)  # kept until now so a kill earlier leaves a folder `clean_stale` knows
    fsync_path(out)
    fsync_path(out.parent)


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's entries are durable only once it is synced)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())

"""Rendering and writing review reports (HTML for archiving, Markdown for pull requests).

Files are written atomically (a temporary file beside the target, fsync, rename, fsync of the folder), so
a reader, a browser auto-reload, a CI upload or a kill -9 never sees half a report. `write_report` refuses
an input of the proposal (or any file inside an input folder) always, and an existing file unless
`force` (`analysis.export.outdir.check_out_file`); without `force` the final step is a hard link, which
fails rather than replace a file that appeared after the check.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

from analysis.errors import ReviewError
from analysis.review.evidence import InputOverlap, input_overlap
from analysis.review.models import Proposal
from analysis.review.report_html import render_html
from analysis.review.report_md import render_markdown

Format = Literal["html", "md"]
FORMATS: tuple[str, ...] = ("html", "md")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would have given the file (mkstemp makes it 0600)


def render_report(proposal: Proposal, fmt: str, overlap: InputOverlap | None = None) -> str:
    """The report text; `overlap` is computed from the recipe's inputs when not given."""
    if fmt not in FORMATS:
        raise ReviewError(f"report format '{fmt}' is not one of {', '.join(FORMATS)}")
    overlap = input_overlap(proposal) if overlap is None else overlap
    return render_html(proposal, overlap) if fmt == "html" else render_markdown(proposal, overlap)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, replace: bool = True) -> Path:
    """Write `text` to `path` so that the file is either the old one (or none) or the whole new one.

    `replace=False` never replaces an existing file, even one created after the caller's check.
    """
    target = Path(path).expanduser()
    if target.is_dir():
        raise ReviewError(f"{target}: is a directory, expected a report file name")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        if replace:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # fails with FileExistsError instead of replacing
            except FileExistsError:
                raise ReviewError(f"{target} already exists; pass --force to replace it") from None
            except OSError:  # a filesystem without hard links: check once more, then rename
                if target.exists() or target.is_symlink():
                    raise ReviewError(f"{target} already exists; pass --force to replace it") from None
                os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def write_report(proposal: Proposal, fmt: str, out: str | os.PathLike[str],
                 overlap: InputOverlap | None = None, *, force: bool = False) -> Path:
    """Render and atomically write one report; returns the written path.

    Refused (one line) when `out` is an input of the proposal or lies inside an input folder, even with
    `force`, and when `out` exists unless `force`.
    """
    from analysis.export.outdir import check_out_file

    inputs = [i.path for i in proposal.inputs if i.path]
    check_out_file(out, inputs=inputs, force=force)
    text = render_report(proposal, fmt, overlap)
    check_out_file(out, inputs=inputs, force=force)  # again: the overlap work can take a while
    try:
        return atomic_write_text(out, text, replace=force)
    except OSError as exc:
        raise ReviewError(f"{out}: cannot write the report ({exc.strerror or exc})") from None

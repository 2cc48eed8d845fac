"""Rendering and writing review reports (HTML for archiving, Markdown for pull requests).

Files are written atomically (a temporary file beside the target, fsync, `os.replace`), so a
reader, a browser auto-reload or a CI upload never sees half a report.
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


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` to `path` so that the file is either the old one or the whole new one."""
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
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_report(proposal: Proposal, fmt: str, out: str | os.PathLike[str],
                 overlap: InputOverlap | None = None) -> Path:
    """Render and atomically write one report; returns the written path."""
    try:
        return atomic_write_text(out, render_report(proposal, fmt, overlap))
    except OSError as exc:
        raise ReviewError(f"{out}: cannot write the report ({exc.strerror or exc})") from None

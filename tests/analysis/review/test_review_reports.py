"""Reports: offline HTML and Markdown, every user string escaped, atomic writes, real overlap."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from review_helpers import EVIL, recipe_mapping

from analysis.review import ReviewStore, propose
from analysis.review.escape import md_text
from analysis.review.evidence import input_overlap
from analysis.review.reports import atomic_write_text, render_report, write_report

SAMPLES = Path(__file__).resolve().parents[3] / "sample_adapters"  # committed: runs in a fresh clone
PREVIEW = {"method": "ties", "tasks": {EVIL: {"core_intact": 0.91, "cosine": 0.66}, "svg": {"core_intact": 0.8,
                                                                                              "cosine": 0.5}}}


@pytest.fixture()
def evil_proposal(tmp_path: Path):
    store = ReviewStore(tmp_path / "review.db")
    recipe = recipe_mapping(names=(EVIL, "a|b`c`"), method=EVIL)
    recipe["parameters"]["note"] = EVIL
    pid = propose(store, recipe, title=EVIL, author="@team " + EVIL, preview=PREVIEW)
    store.add_comment(pid, author=EVIL, text=f"see {EVIL} and [link](javascript:alert(1)) | ` ``` ")
    store.add_decision(pid, author="rev", decision="reject", rationale=EVIL + "\n# heading")
    yield store.get(pid)
    store.close()


def test_html_escapes_every_user_string(evil_proposal) -> None:
    html_text = render_report(evil_proposal, "html")
    assert "<script>alert" not in html_text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html_text
    assert html_text.count("&lt;script&gt;") >= 6  # title, author, input, method, comment, rationale, recipe
    assert "rejected" in html_text and "Discussion" in html_text


def test_html_is_offline_and_self_contained(evil_proposal) -> None:
    html_text = render_report(evil_proposal, "html")
    from plotly.offline import get_plotlyjs

    bundle = get_plotlyjs()
    assert bundle in html_text  # plotly.js inline (the preview has a bar chart)
    rest = html_text.replace(bundle, "")
    assert not re.search(r"https?://", rest), "a URL outside the embedded plotly bundle"
    assert not re.search(r"<script[^>]+src\s*=", html_text, re.I)
    assert not re.search(r"<link\b", html_text, re.I) and "@import" not in rest
    assert "Plotly.newPlot" in rest


def test_markdown_neutralises_html_tables_code_and_mentions(evil_proposal) -> None:
    md = render_report(evil_proposal, "md")
    assert "<script>" not in md and "</script>" not in md
    assert "&lt;script&gt;" in md
    assert "a\\|b\\`c\\`" in md  # a pipe cannot split a table cell, a backtick cannot open code
    assert "@team" not in md  # no mention is pinged
    assert "](javascript" not in md.replace("\\]\\(", "")  # the link syntax is escaped
    assert "\n# heading" not in md and "\\# heading" in md
    groups: list[list[int]] = [[]]
    for line in md.splitlines():  # every row of a table keeps the header's column count
        if line.startswith("|"):
            groups[-1].append(len(re.findall(r"(?<!\\)\|", line)))
        elif groups[-1]:
            groups.append([])
    tables = [g for g in groups if g]
    assert len(tables) >= 3 and all(len(set(g)) == 1 for g in tables)


def test_md_text_renders_back_to_the_original_characters() -> None:
    import html

    raw = "x<y> & a|b `c` *d* _e_ [f](g) #h @i"
    escaped = md_text(raw)
    unescaped = html.unescape(re.sub(r"\\(.)", r"\1", escaped)).replace("\u2060", "")
    assert unescaped == raw


def test_report_without_inputs_says_so(evil_proposal, tmp_path: Path) -> None:
    overlap = input_overlap(evil_proposal)
    assert not overlap.available and "not available" in overlap.reason
    md = render_report(evil_proposal, "md", overlap)
    assert "not available" in md


def test_atomic_write_replaces_whole_file(evil_proposal, tmp_path: Path) -> None:
    out = tmp_path / "reports" / "r.md"
    write_report(evil_proposal, "md", out)
    first = out.read_text()
    assert first.startswith("## Merge proposal #")
    atomic_write_text(out, "new")
    assert out.read_text() == "new"
    assert [p.name for p in out.parent.iterdir()] == ["r.md"]  # no temp file left behind
    mode = out.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def _direct_cosine(dirs: list[Path]) -> np.ndarray:
    """Whole-adapter cosine from the raw safetensors factors (uniform scale per adapter cancels)."""
    from safetensors.numpy import load_file

    deltas = []
    for d in dirs:
        t = load_file(str(d / "adapter_model.safetensors"))
        mods = sorted(k[: -len(".lora_A.weight")] for k in t if k.endswith(".lora_A.weight"))
        deltas.append(np.concatenate([(t[m + ".lora_B.weight"].astype(np.float64)
                                       @ t[m + ".lora_A.weight"].astype(np.float64)).ravel() for m in mods]))
    g = np.array([[a @ b for b in deltas] for a in deltas])  # (N, N)
    n = np.sqrt(np.diag(g))  # (N,)
    return g / np.outer(n, n)


def test_real_inputs_give_heatmaps_and_hash_checks(tmp_path: Path) -> None:
    pytest.importorskip("analysis.adapters.load")
    pytest.importorskip("analysis.overlap")
    from analysis.adapters import load_adapter

    dirs = [SAMPLES / "math_add", SAMPLES / "math_max"]
    recipe = recipe_mapping(names=("svg-main", "svg-seed123"), paths=tuple(str(d) for d in dirs))
    recipe["inputs"][0]["sha256"] = load_adapter(dirs[0]).sha256  # what the merge lab records
    store = ReviewStore(tmp_path / "review.db")
    p = store.get(propose(store, recipe, "gemma svg merge", "ann", preview=PREVIEW))
    overlap = input_overlap(p)
    assert overlap.available, overlap.reason
    assert overlap.labels == ("svg-main", "svg-seed123") and overlap.n_modules == len(load_adapter(dirs[0]).modules)
    np.testing.assert_allclose(overlap.matrices["cosine"], _direct_cosine(dirs), atol=1e-6)
    assert [c.matches for c in overlap.hashes] == [True, False]  # the second hash is a placeholder
    html_text = render_report(p, "html", overlap)
    assert html_text.count("Plotly.newPlot") >= 4  # three heatmaps + the preview chart
    assert "matches" in html_text and "DIFFERS" in html_text
    md = render_report(p, "md", overlap)
    assert "Overlap (aggregated cosine)" in md and f"{overlap.matrices['cosine'][0, 1]:.4g}" in md
    store.close()

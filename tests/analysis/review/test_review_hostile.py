"""The review store and CLI on hostile or unlucky input: one line and exit 2, never a traceback or a hang.

Ids past the 64-bit range, `--db` under a file / a directory / a FIFO, FIFOs and non-UTF-8 bytes where
evidence is read, Markdown and HTML in titles. Id checks run on both backends (SQLite, PostgreSQL).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from review_helpers import recipe_mapping, write_merge_dir

from analysis.cli import main
from analysis.errors import ReviewError
from analysis.review import ReviewStore, propose

REPO = Path(__file__).resolve().parents[3]
HUGE = (2**63, 10**30, -(2**64))
MD_TITLE = "# Big [click](https://evil.example) <img src=x onerror=alert(1)> | a | **b** $x^2$"


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err.strip()


def test_ids_past_the_integer_range(review_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    with ReviewStore(review_db) as store:
        pid = propose(store, recipe_mapping(), "t", "ann")
        for bad in (*HUGE, 0, 2**63 - 1, 2**31):  # 2**31: past PostgreSQL's INTEGER
            with pytest.raises(ReviewError, match=f"no proposal with id {str(bad)[:20]}"):
                store.get(bad)
            with pytest.raises(ReviewError, match="no proposal with id"):
                store.add_comment(bad, author="a", text="t")
        assert store.get(pid).title == "t"
    for bad in ("9223372036854775808", "99999999999999999999999", "-1", "1e3"):
        for sub in (["show", bad], ["comment", bad, "--author", "a", "--text", "t"],
                    ["decide", bad, "--author", "a", "--decision", "approve", "--rationale", "r"]):
            with pytest.raises(SystemExit) as info:  # argparse: usage line + one error line, exit 2
                main(["review", *sub, "--db", review_db])
            assert info.value.code == 2
            err = capsys.readouterr().err
            assert "invalid proposal id" in err and "Traceback" not in err
    code, _, err = _cli(capsys, "review", "show", str(2**63 - 1), "--db", review_db)
    assert code == 2 and err.count("\n") == 0 and "no proposal with id" in err


@pytest.mark.timeout(60)
def test_db_paths_that_cannot_be_a_sqlite_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    fifo = tmp_path / "fifo.db"
    os.mkfifo(fifo)  # SQLite would open it read-write and block forever on the first read
    cases = {a_file / "review.db": "is a file, not a folder", a_file / "deep" / "review.db": "is a file, not a folder",
             tmp_path: "is a directory", fifo: "not a regular file"}
    for db, needle in cases.items():
        code, _, err = _cli(capsys, "review", "list", "--db", str(db))
        assert code == 2 and needle in err and "\n" not in err, err
    assert a_file.read_text() == "x"


@pytest.mark.timeout(60)
def test_evidence_files_that_are_fifos_or_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "review.db")
    fifo_recipe = tmp_path / "fifo_merge"
    fifo_recipe.mkdir()
    os.mkfifo(fifo_recipe / "recipe.yaml")
    fifo_preview = write_merge_dir(tmp_path / "fifo_preview", recipe_mapping())
    os.mkfifo(fifo_preview / "preview.json")
    latin = tmp_path / "latin"
    latin.mkdir()
    (latin / "recipe.yaml").write_bytes(yaml.safe_dump(recipe_mapping()).encode() + b"# caf\xe9\n")
    lone_fifo = tmp_path / "preview.fifo"
    os.mkfifo(lone_fifo)
    for argv, needle in (([str(fifo_recipe)], "FIFO"), ([str(fifo_recipe / "recipe.yaml")], "FIFO"),
                         ([str(fifo_preview)], "FIFO"), ([str(latin)], "can't decode byte 0xe9"),
                         ([str(write_merge_dir(tmp_path / "ok", recipe_mapping())), "--preview", str(lone_fifo)],
                          "FIFO")):
        code, out, err = _cli(capsys, "review", "propose", *argv, "--title", "t", "--author", "a", "--db", db)
        assert code == 2 and needle in err and "\n" not in err and out == "", err
    with ReviewStore(db) as store:
        assert store.list_proposals() == []


@pytest.mark.timeout(120)
def test_report_with_an_input_that_became_a_fifo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The overlap of the inputs is not available (said in the report), the export still succeeds."""
    good = Path(shutil.copytree(REPO / "sample_adapters" / "math_add", tmp_path / "math_add"))
    fifo = tmp_path / "gone"
    os.mkfifo(fifo)
    db = str(tmp_path / "review.db")
    with ReviewStore(db) as store:
        pid = propose(store, recipe_mapping(names=("math_add", "gone"), paths=(str(good), str(fifo))), "t", "a")
    code, _, err = _cli(capsys, "review", "export", str(pid), "--format", "md", "--out", str(tmp_path / "r.md"),
                        "--db", db)
    assert code == 0, err
    assert "FIFO" in err and "not a regular file" in (tmp_path / "r.md").read_text()


def test_markdown_and_html_in_titles_stay_literal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "review.db")
    with ReviewStore(db) as store:
        pid = propose(store, recipe_mapping(), MD_TITLE, "ann\n# not a heading")
        assert store.get(pid).title == MD_TITLE  # stored verbatim: escaping is the renderer's job
    code, out, _ = _cli(capsys, "review", "show", str(pid), "--db", db)
    assert code == 0 and MD_TITLE in out.splitlines()[0]  # a terminal shows it as typed
    for fmt in ("md", "html"):
        target = tmp_path / f"r.{fmt}"
        assert _cli(capsys, "review", "export", str(pid), "--format", fmt, "--out", str(target), "--db", db)[0] == 0
        text = target.read_text()
        assert "<img src" not in text and "&lt;img src" in text
        if fmt == "md":  # in HTML these are plain characters already
            assert "](https://evil" not in text and "**b**" not in text and "\n# not a heading" not in text


def test_report_out_checked_before_the_overlap_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import analysis.review.evidence as evidence

    db = str(tmp_path / "review.db")
    with ReviewStore(db) as store:
        pid = propose(store, recipe_mapping(), "t", "ann")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")

    def no_work(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the overlap was computed before --out was checked")

    monkeypatch.setattr(evidence, "input_overlap", no_work)
    for out, needle in ((a_file / "r.md", "which is a file"), (tmp_path, "is a directory"),
                        (Path("/proc/atlas-report.md"), "kernel filesystem")):
        code, _, err = _cli(capsys, "review", "export", str(pid), "--format", "md", "--out", str(out), "--db", db)
        assert code == 2 and needle in err and "\n" not in err, err
    assert a_file.read_text() == "x"


def test_postgres_server_that_never_answers_does_not_hang(capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A loopback listener that accepts TCP and stays silent: `review list` gives up after the connect timeout
    (once, not once per retry) with one line that hides the password."""
    import socket
    import threading
    import time

    pytest.importorskip("psycopg")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list = []
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    monkeypatch.setenv("ADAPTER_ATLAS_DB_CONNECT_TIMEOUT_S", "1")
    t0 = time.monotonic()
    try:
        code, _out, err = _cli(capsys, "review", "list", "--db",
                               f"postgresql://u:secret@127.0.0.1:{server.getsockname()[1]}/x")
    finally:
        server.close()
    assert code == 2 and "timeout" in err and len(err.splitlines()) == 1, err
    assert "secret" not in err
    assert time.monotonic() - t0 < 15  # it hung forever before


@pytest.mark.parametrize("url, expect", [
    ("postgresql://u:pw@127.0.0.1:notaport/x", "its port is not a number"),
    ("postgresql://u:pw@127.0.0.1:99999999/x", "invalid port number"),
])
def test_postgres_url_with_a_bad_port_is_one_line(url: str, expect: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = _cli(capsys, "review", "list", "--db", url)
    assert code == 2 and expect in err and len(err.splitlines()) == 1, err
    assert ":pw@" not in err

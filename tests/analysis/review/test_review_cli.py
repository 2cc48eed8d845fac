"""`adapter-atlas review ...` as a user runs it: subprocesses, exit codes, stdout contracts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from review_helpers import EVIL, recipe_mapping, write_merge_dir

REPO = Path(__file__).resolve().parents[3]


def run(*args: str, db: Path, env_db: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("ADAPTER_ATLAS_DB", None)
    argv = [sys.executable, "-m", "analysis.cli", "review", *args]
    if env_db:
        env["ADAPTER_ATLAS_DB"] = str(db)
    else:
        argv += ["--db", str(db)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, cwd=REPO)


@pytest.fixture()
def merge_dir(tmp_path: Path) -> Path:
    preview = {"method": "ties", "tasks": {"sst2": {"core_intact": 0.9}}}
    return write_merge_dir(tmp_path / "merge", recipe_mapping(), preview)


def test_full_review_flow(tmp_path: Path, merge_dir: Path) -> None:
    db = tmp_path / "review.db"
    r = run("propose", str(merge_dir), "--title", "Merge A+B", "--author", "ann", db=db)
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.strip().splitlines()[-1])  # the id is the last line
    r2 = run("propose", str(merge_dir / "recipe.yaml"), "--title", EVIL, "--author", "bob", db=db, env_db=True)
    assert r2.returncode == 0 and int(r2.stdout.splitlines()[-1]) == pid + 1  # env var reaches the same store

    assert run("comment", str(pid), "--author", "cy", "--text", "rank 8 is tight", db=db).returncode == 0
    r = run("decide", str(pid), "--author", "cy", "--decision", "changes", "--rationale", "try 16", db=db)
    assert r.returncode == 0 and "changes requested" in r.stdout
    r = run("decide", str(pid), "--author", "dee", "--decision", "approve", "--rationale", "ok", db=db)
    assert "approved" in r.stdout

    r = run("list", db=db)
    assert r.returncode == 0
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["id", "title", "author", "status", "updated"]
    assert rows[0].split()[0] == str(pid + 1) and "open" in rows[0]
    assert rows[1].split()[:3] == [str(pid), "Merge", "A+B"] and "approved" in rows[1]

    r = run("show", str(pid), "--json", db=db)
    shown = json.loads(r.stdout)
    assert shown["id"] == pid and shown["status"] == "approved" and shown["title"] == "Merge A+B"
    assert [e["kind"] for e in shown["events"]] == ["created", "comment", "decision", "decision"]
    assert [e["decision"] for e in shown["events"]][2:] == ["changes", "approve"]
    assert shown["preview"] == {"method": "ties", "tasks": {"sst2": {"core_intact": 0.9}}}
    assert shown["recipe_text"] == (merge_dir / "recipe.yaml").read_text()
    assert {"name", "path", "sha256", "format"} == set(shown["inputs"][0])
    r = run("show", str(pid), db=db)
    assert r.returncode == 0 and "rank 8 is tight" in r.stdout and "decided approved" in r.stdout

    for fmt in ("html", "md"):
        out = tmp_path / f"report.{fmt}"
        r = run("export", str(pid + 1), "--format", fmt, "--out", str(out), db=db)
        assert r.returncode == 0, r.stderr
        text = out.read_text()
        assert "<script>alert" not in text and "Merge proposal #" in text


def test_user_errors_exit_2_with_one_line(tmp_path: Path, merge_dir: Path) -> None:
    db = tmp_path / "review.db"
    for args in (("show", "77"), ("decide", "77", "--author", "a", "--decision", "reject", "--rationale", "r")):
        r = run(*args, db=db)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.strip().count("\n") == 0 and "no proposal with id 77" in r.stderr
        assert "Traceback" not in r.stderr
    (merge_dir / "recipe.yaml").write_text("atlas_recipe: 1\nmethod: ties\n")
    r = run("propose", str(merge_dir), "--title", "t", "--author", "a", db=db)
    assert r.returncode == 2 and "recipe.yaml" in r.stderr and r.stdout == ""
    r = run("decide", "1", "--author", "a", "--decision", "maybe", "--rationale", "r", db=db)
    assert r.returncode == 2  # argparse refuses the choice

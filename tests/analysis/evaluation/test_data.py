"""Task data is read and validated whole before any model loads: every bad row is one `file:line` error."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from analysis.adapters.model import Adapter
from analysis.errors import EvaluationDataError
from analysis.evaluation import load_data, load_task, read_rows


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


GOOD = {"prompt": "p", "answer": "a"}


@pytest.mark.parametrize("bad, reason", [
    ("{not json", "not a JSON line"),
    ('["a list"]', "expected a JSON object"),
    ('{"answer": "a"}', "expected keys prompt+answer"),  # a prompt alone is valid: load_task refuses it to score
    ('{"prompt": 3, "answer": "a"}', "'prompt' must be a string"),
    ('{"messages": []}', "non-empty list"),
    ('{"messages": [{"role": "user", "content": "q"}]}', "last message must be the assistant"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}', "role 'bot'"),
    ('{"text": "  "}', "'text' is empty"),
    ('{"prompt": "p", "completion": ""}', "'completion' is empty"),
    ('{"a": ' * 20 + "1" + "}" * 20, "nested too deeply"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_bad_row_is_one_line_naming_file_and_line(tmp_path: Path, bad: str, reason: str) -> None:
    path = _jsonl(tmp_path / "t.jsonl", [GOOD, "", bad, GOOD])
    with pytest.raises(EvaluationDataError) as exc:
        read_rows(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}:3: ") and reason in msg and "\n" not in msg


def test_non_utf8_and_empty_files(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"prompt": "caf\xe9", "answer": "a"}\n')
    with pytest.raises(EvaluationDataError, match=r"latin\.jsonl:2: not UTF-8 text"):
        read_rows(path)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(EvaluationDataError, match="no rows"):
        read_rows(tmp_path / "empty.jsonl")


def test_every_row_kind_and_hash_of_the_bytes_read(tmp_path: Path) -> None:
    rows = [GOOD, {"prompt": "p", "completion": " c"}, {"text": "hello"},
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                          {"role": "assistant", "content": "a"}]}]
    path = _jsonl(tmp_path / "mix.jsonl", rows)
    sha, parsed = read_rows(path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [r.kind for r in parsed] == ["answer", "completion", "text", "chat"] and [r.line for r in parsed] == [1, 2, 3, 4]
    assert parsed[3].answer == "a" and parsed[3].messages[0] == ("system", "s")


def test_metric_rules_for_text_rows(tmp_path: Path) -> None:
    text = _jsonl(tmp_path / "general.jsonl", [{"text": "a b c"}, {"text": "d e"}])
    assert load_task("g", text, "both").metric == "nll"  # nothing to generate: NLL only
    with pytest.raises(EvaluationDataError, match=r"general\.jsonl:1: a \{\"text\"\} row has no answer"):
        load_task("g", text, "exact")
    mixed = _jsonl(tmp_path / "mixed.jsonl", [GOOD, {"text": "x"}])
    with pytest.raises(EvaluationDataError, match=r"mixed\.jsonl:2:"):
        load_task("m", mixed, "both")
    assert load_task("m", mixed, "nll").metrics == ("nll",)


def test_folder_layouts_and_duplicates(tmp_path: Path) -> None:
    for t in ("alpha", "beta"):
        (tmp_path / "nested" / t).mkdir(parents=True)
        _jsonl(tmp_path / "nested" / t / "eval.jsonl", [GOOD])
    (tmp_path / "flat").mkdir()
    _jsonl(tmp_path / "flat" / "gamma.jsonl", [GOOD, GOOD])
    data = load_data([tmp_path / "nested", tmp_path / "flat"])
    assert data.names == ["alpha", "beta", "gamma"] and data.get("gamma").n_rows == 2
    with pytest.raises(EvaluationDataError, match="task 'alpha' is given twice"):
        load_data([tmp_path / "nested", tmp_path / "nested" / "alpha" / "eval.jsonl"], metric="exact")
    with pytest.raises(EvaluationDataError, match="no such data file or folder"):
        load_data([tmp_path / "nope"])
    with pytest.raises(EvaluationDataError, match="no task 'delta'.*alpha, beta, gamma"):
        data.select(["delta"])


def _adapter(path: Path, sha: str) -> Adapter:
    return Adapter(name="display-name", path=path, format="peft", base_model=None, config={}, modules={},
                   _sha256=sha)


def test_mapping_assigns_tasks_by_path_or_sha256_never_by_name(tmp_path: Path) -> None:
    _jsonl(tmp_path / "add.jsonl", [GOOD])
    _jsonl(tmp_path / "wiki.jsonl", [{"text": "general text"}])
    (tmp_path / "ads" / "math").mkdir(parents=True)
    sha = "ab" * 32
    mapping = tmp_path / "tasks.yaml"
    mapping.write_text("tasks:\n  add: {file: add.jsonl}\n  general: {file: wiki.jsonl, metric: nll}\n"
                       "adapters:\n  - {path: ads/math, tasks: [add, general]}\n"
                       f"  - {{sha256: {sha}, tasks: [general]}}\n")
    data = load_data([mapping], metric="exact")
    assert data.names == ["add", "general"] and data.get("general").metric == "nll"
    by_path = _adapter(tmp_path / "ads" / "math", "cd" * 32)
    by_hash = _adapter(tmp_path / "elsewhere", sha)
    other = _adapter(tmp_path / "add", "ef" * 32)
    assert data.for_adapter(by_path) == ["add", "general"]
    assert data.for_adapter(by_hash) == ["general"] and data.own_task(by_hash) == "general"
    assert data.for_adapter(other) == ["add", "general"]  # not in the mapping: every task
    assert data.own_task(other) == "add"  # its folder's name, not its display name
    with pytest.raises(EvaluationDataError, match="exactly one"):
        data.own_task(by_path)


@pytest.mark.parametrize("text, reason", [
    ("tasks: {a: {file: a.jsonl}}\nadapters: [{tasks: [a]}]\n", "exactly one of path or sha256"),
    ("tasks: {a: {file: a.jsonl}}\nadapters: [{name: x, tasks: [a]}]\n", "adapters.0.name"),
    ("tasks: {a: {file: a.jsonl}}\nadapters: [{path: x, tasks: [b]}]\n", "unknown task 'b'"),
    ("tasks: {a: {file: a.jsonl, metric: bleu}}\n", "not one of exact, nll, both"),
    ("tasks: [a\n", "not valid YAML"),
])
def test_bad_mapping_is_one_line(tmp_path: Path, text: str, reason: str) -> None:
    _jsonl(tmp_path / "a.jsonl", [GOOD])
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(EvaluationDataError, match=reason) as exc:
        load_data([tmp_path / "m.yaml"])
    assert "\n" not in str(exc.value) and str(tmp_path / "m.yaml") in str(exc.value)

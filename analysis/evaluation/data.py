"""Task data: every file read and fully validated before any model loads.

A task is a name, a JSONL file and a metric. Rows may be
- `{"prompt", "answer"}`      the sample protocol: the scored continuation is " " + answer + "\\n"
                               (no space when the prompt already ends in whitespace);
- `{"prompt", "completion"}`  the completion is the continuation, verbatim (leading space included);
- `{"messages": [...]}`       a chat, rendered with the model's chat template; the last turn must be the
                               assistant's and is the answer;
- `{"text"}`                  plain text, loss only (e.g. a general-text check that a merge leaves the
                               base model's general ability intact);
- `{"prompt"}`                a prompt alone, unlabeled: only for the data-light retention estimate
                               (`--prompts`, `analysis.forecast.Forecast`), never scored.
A bad row is refused with `file:line` and the reason, and nothing is evaluated on half a file: the whole
file is parsed and checked here, before any caller loads a model.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from analysis.errors import EvaluationDataError

Metric = Literal["exact", "nll", "both", "prompts"]
METRICS: tuple[str, ...] = ("exact", "nll", "both")  # what a user scores with; "prompts" is the estimate's input
RowKind = Literal["answer", "completion", "chat", "text", "prompt"]
MAX_FILE_BYTES = 256 * 1024 * 1024  # one task file; far above any eval split
MAX_LINE_CHARS = 1_000_000
MAX_DEPTH = 8  # {"messages": [{"role", "content"}]} is depth 3
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Example:
    """One validated row. `messages` holds (role, content) pairs for chat rows; `text` for text rows."""

    line: int
    kind: RowKind
    prompt: str = ""
    answer: str = ""
    messages: tuple[tuple[str, str], ...] = ()
    text: str = ""

    @property
    def has_answer(self) -> bool:
        return self.kind not in ("text", "prompt")

    @property
    def has_prompt(self) -> bool:
        """A prompt the model can continue (every kind but plain text)."""
        return self.kind != "text"


@dataclass(frozen=True)
class TaskData:
    """A task's validated rows with the file's identity: what a reviewer needs to know was measured."""

    name: str
    path: Path
    metric: Metric
    sha256: str
    rows: tuple[Example, ...]

    @property
    def n_rows(self) -> int:
        return len(self.rows)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics this task is scored with: ("exact",), ("nll",), both, or none (prompts only)."""
        if self.metric == "prompts":
            return ()
        return ("exact", "nll") if self.metric == "both" else (self.metric,)

    def limited(self, limit: int | None) -> tuple[Example, ...]:
        return self.rows[:limit] if limit else self.rows

    @property
    def kind(self) -> str:
        """The rows' kind when they share one (`text`: generic text, scored by NLL only), else "mixed"."""
        kinds = {r.kind for r in self.rows}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def record(self, limit: int | None = None) -> dict[str, Any]:
        """{task, file, sha256, rows, n, metric, kind}: the data line of the evidence (n = rows evaluated)."""
        return {"task": self.name, "file": str(self.path), "sha256": self.sha256, "rows": self.n_rows,
                "n": len(self.limited(limit)), "metric": self.metric, "kind": self.kind}


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value, iteratively (never recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            return d
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def _text(row: dict[str, Any], key: str, where: str) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise EvaluationDataError(f"{where}: '{key}' must be a string, found {type(value).__name__}")
    return value


def _chat(row: dict[str, Any], where: str) -> Example:
    msgs = row["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise EvaluationDataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    pairs = []
    for k, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise EvaluationDataError(f"{where}: messages[{k}] must be an object with string 'role' and 'content'")
        if m["role"] not in ROLES:
            raise EvaluationDataError(f"{where}: messages[{k}] has role '{m['role'][:40]}', expected one of "
                                      f"{', '.join(ROLES)}")
        pairs.append((m["role"], m["content"]))
    if pairs[-1][0] != "assistant" or len(pairs) < 2:
        raise EvaluationDataError(f"{where}: the last message must be the assistant's answer, after at least one "
                                  "other turn")
    return Example(0, "chat", answer=pairs[-1][1], messages=tuple(pairs))


def parse_row(row: Any, where: str) -> Example:
    """One decoded JSON value as an Example, or one EvaluationDataError naming `where` and the reason."""
    if not isinstance(row, dict):
        raise EvaluationDataError(f"{where}: expected a JSON object, found {type(row).__name__}")
    if "messages" in row:
        return _chat(row, where)
    if "prompt" in row and "answer" in row:
        return Example(0, "answer", prompt=_text(row, "prompt", where), answer=_text(row, "answer", where))
    if "prompt" in row and "completion" in row:
        ex = Example(0, "completion", prompt=_text(row, "prompt", where), answer=_text(row, "completion", where))
        if not ex.answer:
            raise EvaluationDataError(f"{where}: 'completion' is empty")
        return ex
    if "prompt" in row:
        ex = Example(0, "prompt", prompt=_text(row, "prompt", where))
        if not ex.prompt.strip():
            raise EvaluationDataError(f"{where}: 'prompt' is empty")
        return ex
    if "text" in row:
        ex = Example(0, "text", text=_text(row, "text", where))
        if not ex.text.strip():
            raise EvaluationDataError(f"{where}: 'text' is empty")
        return ex
    keys = ", ".join(sorted(str(k)[:40] for k in row)[:6]) or "none"
    raise EvaluationDataError(f"{where}: expected keys prompt+answer, prompt+completion, messages, text or prompt; "
                              f"found {keys}")


def read_rows(path: str | Path) -> tuple[str, tuple[Example, ...]]:
    """(sha256 of the bytes, rows) of one JSONL file; the hash and the rows come from the same bytes."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationDataError(f"{path}: no such data file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise EvaluationDataError(f"{path}: {size} bytes, above the {MAX_FILE_BYTES} byte limit for a task file")
    data = path.read_bytes()
    rows: list[Example] = []
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        where = f"{path}:{lineno}"
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte order mark
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EvaluationDataError(f"{where}: not UTF-8 text (byte {exc.start + 1} of the line)") from None
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            raise EvaluationDataError(f"{where}: line of {len(line)} characters, above {MAX_LINE_CHARS}")
        try:
            value = json.loads(line, parse_constant=lambda c: math.nan)
        except RecursionError:
            raise EvaluationDataError(f"{where}: JSON nested too deeply (at most {MAX_DEPTH} levels)") from None
        except json.JSONDecodeError as exc:
            raise EvaluationDataError(f"{where}: not a JSON line ({exc.msg} at column {exc.colno})") from None
        if _depth(value) > MAX_DEPTH:
            raise EvaluationDataError(f"{where}: JSON nested too deeply (at most {MAX_DEPTH} levels)")
        ex = parse_row(value, where)
        rows.append(Example(lineno, ex.kind, ex.prompt, ex.answer, ex.messages, ex.text))
    if not rows:
        raise EvaluationDataError(f"{path}: no rows")
    return hashlib.sha256(data).hexdigest(), tuple(rows)


def resolve_metric(rows: Sequence[Example], metric: str, path: Path) -> Metric:
    """The metric a file can be scored with: exact match needs an answer on every row.

    `both` on a file of text rows only is NLL (nothing to generate); any other mix of text rows with
    exact match is refused at the first text row."""
    if metric == "prompts":  # the data-light estimate: every row must give a prompt (answers are not read)
        bare = [r for r in rows if not r.has_prompt]
        if bare:
            raise EvaluationDataError(f"{path}:{bare[0].line}: a {{\"text\"}} row has no prompt; the data-light "
                                      "estimate needs prompt, prompt/answer, prompt/completion or messages rows")
        return "prompts"
    if metric not in METRICS:
        raise EvaluationDataError(f"{path}: metric '{metric}' is not one of {', '.join(METRICS)}")
    unlabeled = [r for r in rows if r.kind == "prompt"]
    if unlabeled:
        raise EvaluationDataError(f"{path}:{unlabeled[0].line}: a {{\"prompt\"}} row has no answer to score; "
                                  "prompt-only rows serve the data-light estimate (--prompts), not evaluation")
    text_rows = [r for r in rows if not r.has_answer]
    if metric == "both" and len(text_rows) == len(rows):
        return "nll"
    if metric in ("exact", "both") and text_rows:
        raise EvaluationDataError(f"{path}:{text_rows[0].line}: a {{\"text\"}} row has no answer to match; "
                                  "exact match needs prompt/answer, prompt/completion or messages rows "
                                  "(use metric nll for text)")
    return metric  # type: ignore[return-value]


def load_task(name: str, path: str | Path, metric: str = "exact") -> TaskData:
    """One task file read and validated."""
    path = Path(path)
    sha, rows = read_rows(path)
    return TaskData(name=name, path=path.resolve(), metric=resolve_metric(rows, metric, path), sha256=sha, rows=rows)

"""A set of tasks from the user's data: files, folders or a mapping file, all read before any model loads.

`--data PATH` (repeatable) accepts
- a JSONL file: one task, named by the file's stem (by its folder for `<task>/eval.jsonl`);
- a folder `DIR/<task>/eval.jsonl` (the sample layout; `split` picks another file name) or a folder of
  `*.jsonl` files (one task per file);
- a mapping file (YAML) naming tasks and, optionally, which adapters each is for:

      tasks:
        math_add: {file: data/math_add.jsonl, metric: exact}    # relative to the YAML file
        general:  {file: data/wiki.jsonl, metric: nll}
      adapters:                                                   # optional; by path or sha256, never by name
        - {path: adapters/math_add, tasks: [math_add, general]}
        - {sha256: 3f2a..., tasks: [general]}

An adapter the mapping does not list is scored on every task. An adapter's *own* task (the denominator of
retention in `plan` and `consolidate`) is the one task the mapping gives it, else the task named like the
adapter's folder (or its file's stem for a single-file adapter: its path, never its display name).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from analysis.adapters.model import Adapter
from analysis.errors import EvaluationDataError
from analysis.evaluation.data import METRICS, TaskData, load_task

SAMPLE_TASKS_DIR = Path(__file__).resolve().parents[2] / "sample_adapters" / "tasks"
MAX_MAPPING_BYTES = 1024 * 1024
SPLIT_NAMES = ("eval", "train", "test", "validation")


class _TaskEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    metric: str | None = None


class _AdapterEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    tasks: list[str]


class _Mapping(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: dict[str, _TaskEntry]
    adapters: list[_AdapterEntry] = []


@dataclass(frozen=True)
class Assignment:
    """Tasks for the adapter at `path` (resolved) or with content hash `sha256`."""

    tasks: tuple[str, ...]
    path: Path | None = None
    sha256: str | None = None

    def matches(self, adapter: Adapter) -> bool:
        if self.sha256 is not None:
            return adapter.sha256 == self.sha256
        return self.path is not None and Path(adapter.path).resolve() == self.path


@dataclass(frozen=True)
class TaskSet:
    """Validated tasks, in order, with the mapping's assignments (empty: every adapter on every task)."""

    tasks: tuple[TaskData, ...]
    assignments: tuple[Assignment, ...] = ()

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def get(self, name: str) -> TaskData:
        for t in self.tasks:
            if t.name == name:
                return t
        raise EvaluationDataError(f"no task '{name}' in the data (tasks: {', '.join(self.names) or 'none'})")

    def select(self, names: Sequence[str]) -> "TaskSet":
        """Only `names`, in that order; an unknown name is one error listing the known ones."""
        return TaskSet(tuple(self.get(n) for n in names), self.assignments)

    def for_adapter(self, adapter: Adapter) -> list[str]:
        """The tasks `adapter` is scored on: its mapping entry's, else every task."""
        for a in self.assignments:
            if a.matches(adapter):
                return [n for n in a.tasks if n in self.names]
        return self.names

    def own_task(self, adapter: Adapter) -> str:
        """The task whose score is this adapter's own (mapping: exactly one task; else its folder name)."""
        for a in self.assignments:
            if a.matches(adapter):
                if len(a.tasks) != 1:
                    raise EvaluationDataError(f"{adapter.path}: the mapping gives it {len(a.tasks)} tasks; its own "
                                              "task must be exactly one")
                return a.tasks[0]
        path = Path(adapter.path)
        named = path.parent.name if path.is_file() and path.name.startswith("adapter_model.") else (
            path.stem if path.is_file() else path.name)  # a PEFT folder, its weights file, or a single file
        if named in self.names:
            return named
        raise EvaluationDataError(f"{adapter.path}: no task for this adapter: name its folder like a task "
                                  f"({', '.join(self.names[:8])}) or assign one in a mapping file (by path or sha256)")

    def records(self, limit: int | None = None) -> list[dict[str, Any]]:
        return [t.record(limit) for t in self.tasks]


def _folder_tasks(folder: Path, split: str, metric: str) -> list[TaskData]:
    nested = sorted(p for p in folder.iterdir() if (p / f"{split}.jsonl").is_file())
    if nested:
        return [load_task(p.name, p / f"{split}.jsonl", metric) for p in nested]
    flat = sorted(p for p in folder.glob("*.jsonl") if p.is_file())
    if flat:
        return [load_task(p.stem, p, metric) for p in flat]
    raise EvaluationDataError(f"{folder}: no task data (expected DIR/<task>/{split}.jsonl or DIR/*.jsonl)")


def _mapping(path: Path, default_metric: str) -> tuple[list[TaskData], list[Assignment]]:
    if path.stat().st_size > MAX_MAPPING_BYTES:
        raise EvaluationDataError(f"{path}: mapping file above {MAX_MAPPING_BYTES} bytes")
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise EvaluationDataError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise EvaluationDataError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    try:
        spec = _Mapping.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise EvaluationDataError(f"{path}: {where}: {err['msg']}") from None
    tasks = []
    for name, entry in spec.tasks.items():
        metric = default_metric if default_metric == "prompts" else (entry.metric or default_metric)
        if metric not in (*METRICS, "prompts"):
            raise EvaluationDataError(f"{path}: tasks.{name}.metric '{metric}' is not one of {', '.join(METRICS)}")
        tasks.append(load_task(name, (path.parent / entry.file), metric))
    assignments = []
    for k, a in enumerate(spec.adapters):
        if (a.path is None) == (a.sha256 is None):
            raise EvaluationDataError(f"{path}: adapters.{k}: give exactly one of path or sha256 (never a name)")
        unknown = [t for t in a.tasks if t not in spec.tasks]
        if unknown:
            raise EvaluationDataError(f"{path}: adapters.{k}: unknown task '{unknown[0]}'")
        where = (path.parent / a.path).resolve() if a.path is not None else None
        assignments.append(Assignment(tuple(a.tasks), where, a.sha256))
    return tasks, assignments


def load_prompts(paths: Sequence[str | Path] | None, *, split: str = "eval") -> TaskSet:
    """Unlabeled prompts per task for the data-light estimate (`analysis.forecast.Forecast`): the same forms as
    `load_data` (a file, DIR/<task>/eval.jsonl, a mapping), every row giving a prompt; answers are never read."""
    return load_data(paths, metric="prompts", split=split)


def load_data(paths: Sequence[str | Path] | None, *, metric: str = "exact", split: str = "eval") -> TaskSet:
    """Every task of `paths` (default: the sample tasks), read and validated; duplicate task names refused."""
    if metric not in (*METRICS, "prompts"):
        raise EvaluationDataError(f"metric '{metric}' is not one of {', '.join(METRICS)}")
    if not paths:
        if not SAMPLE_TASKS_DIR.is_dir():
            raise EvaluationDataError(f"{SAMPLE_TASKS_DIR}: the sample tasks are not on disk; pass --data")
        paths = [SAMPLE_TASKS_DIR]
    tasks: list[TaskData] = []
    assignments: list[Assignment] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            tasks += _folder_tasks(p, split, metric)
        elif p.suffix.lower() in (".yaml", ".yml") and p.is_file():
            more, given = _mapping(p, metric)
            tasks += more
            assignments += given
        elif p.is_file():  # named by its stem; DIR/<task>/eval.jsonl given directly is still <task>
            tasks.append(load_task(p.parent.name if p.stem in SPLIT_NAMES else p.stem, p, metric))
        else:
            raise EvaluationDataError(f"{p}: no such data file or folder")
    seen: dict[str, Path] = {}
    for t in tasks:
        if t.name in seen:
            raise EvaluationDataError(f"task '{t.name}' is given twice ({seen[t.name]} and {t.path})")
        seen[t.name] = t.path
    return TaskSet(tuple(tasks), tuple(assignments))


def sample_task_names() -> list[str]:
    """Names of the sample tasks with an eval split on disk (empty when the sample set is absent)."""
    if not SAMPLE_TASKS_DIR.is_dir():
        return []
    return sorted(p.name for p in SAMPLE_TASKS_DIR.iterdir() if (p / "eval.jsonl").is_file())

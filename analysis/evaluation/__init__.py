"""One evaluation layer: a model spec x validated task data x metric, used by every face.

    from analysis.evaluation import Evaluator, ModelSpec, load_data, load_model
    data = load_data(["my_tasks.jsonl"], metric="both")      # every file validated before any model loads
    ev = Evaluator(load_model(ModelSpec("models/my-llama")), data)
    ev.check(adapters)                                        # modules and shapes fit, or one error line
    ev.score(adapter.modules)                                 # {task: TaskScore(accuracy, nll, n, ...)}

Model: the sample base (default), a local transformers folder, a GGUF file or a model id already in the
local Hugging Face cache; never a download. Data: JSONL rows prompt/answer, prompt/completion, chat
messages or text; a folder DIR/<task>/eval.jsonl; a YAML mapping of tasks to adapters (by path or sha256).
Metrics: exact match by greedy generation, teacher-forced answer NLL, or both.
"""
from __future__ import annotations

from analysis.evaluation.data import METRICS, Example, Metric, TaskData, load_task, read_rows
from analysis.evaluation.evaluator import Evaluator, TaskScore
from analysis.evaluation.fit import applied_deltas, check_fit
from analysis.evaluation.loader import load_model
from analysis.evaluation.measure import Measure
from analysis.evaluation.model import LoadedModel, ModelIdentity, ModelSpec
from analysis.evaluation.retention import nll_retention, retention
from analysis.evaluation.tasks import SAMPLE_TASKS_DIR, TaskSet, load_data, load_prompts, sample_task_names

__all__ = ["METRICS", "SAMPLE_TASKS_DIR", "Evaluator", "Example", "LoadedModel", "Measure", "Metric",
           "ModelIdentity", "ModelSpec", "TaskData", "TaskScore", "TaskSet", "applied_deltas", "check_fit",
           "load_data", "load_model", "load_prompts", "load_task", "nll_retention", "read_rows", "retention", "sample_task_names"]

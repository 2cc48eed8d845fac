"""The Merge page's Measured section on a model folder and data files under the server's roots.

Two adapters of a tiny random-weight Llama folder (with its tokenizer), both under ADAPTER_ATLAS_ROOTS: the
page measures the merge, each input and the base on that folder, names whose numbers they are (identity,
data file, n), and the numbers equal the Evaluator's on the same adapters. A path outside the roots is one
error box; nothing is read from it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers.model_folders import model_folder
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    from helpers.tiny import save_peft_adapter
    from transformers import AutoModelForCausalLM

    folder = model_folder(tmp_path, "llama", seed=6)
    paths = []
    for k, task in enumerate(["left", "right"]):
        base = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
        save_peft_adapter(base, tmp_path / task, seed=40 + k, r=2, lora_alpha=4, base_model=str(folder),
                          target_modules=["q_proj", "v_proj"])
        paths.append(tmp_path / task)
    data = tmp_path / "left.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"left {w}\nOutput:", "answer": w}) + "\n"
                            for w in ("ab", "cd", "ef")), encoding="utf-8")
    monkeypatch.setenv("ADAPTER_ATLAS_ADAPTERS", os.pathsep.join(map(str, paths)))
    monkeypatch.setenv("ADAPTER_ATLAS_ROOTS", str(tmp_path))
    monkeypatch.setenv("ADAPTER_ATLAS_DB", str(tmp_path / "review.db"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return {"folder": folder, "data": data, "left": paths[0], "right": paths[1]}


def test_measured_rows_on_a_server_model_show_whose_numbers_they_are(served: dict[str, Path]) -> None:
    from analysis.adapters import load_adapter
    from analysis.evaluation import Evaluator, ModelSpec, load_data, load_model

    at = AppTest.from_file(str(REPO / "app" / "streamlit_app.py"), default_timeout=600)
    at = at.run().switch_page("app_pages/merge.py").run()
    at.multiselect(key="merge_methods").set_value(["linear"]).run()
    at.button(key="merge_compare").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.radio(key="merge_eval_model_kind").set_value("Model on the server").run()
    at.text_input(key="merge_eval_model").input(str(served["folder"])).run()
    at.radio(key="merge_eval_data_kind").set_value("Data on the server").run()
    at.text_area(key="merge_eval_data").input(str(served["data"])).run()
    at.selectbox(key="merge_eval_metric").select("both").run()
    if at.toggle(key="merge_general").value:  # the page's own general-text check is not this test's subject
        at.toggle(key="merge_general").set_value(False).run()
    at.button(key="merge_measure").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    from analysis.adapters.safe_text import markdown_text
    from analysis.workflow.decision import RETENTION_HEADER

    captions = " ".join(c.value for c in at.caption)  # names and paths are shown literally (markdown-escaped)
    shown = markdown_text(f"measured on {served['folder']} (folder, LlamaForCausalLM, sha256", limit=None)
    assert shown in captions
    assert markdown_text(f"left: {served['data']}", limit=None) in captions and "3 of 3 rows" in captions
    decision = next(d.value for d in at.dataframe if list(d.value.columns) == list(RETENTION_HEADER))
    assert set(decision["task"]) == {"left"} and set(decision["n"]) == {"3"}  # n beside every retention
    table = next(d.value for d in at.dataframe if "model" in d.value.columns)
    assert list(table["model"]) == ["base model", "merge: linear", "adapter: left", "adapter: right"]
    ev = Evaluator(load_model(ModelSpec(str(served["folder"]))), load_data([served["data"]], metric="both"))
    own = ev.score(load_adapter(served["left"]).modules)["left"]
    row = table[table["model"] == "adapter: left"].iloc[0]
    assert row["left (nll)"] == pytest.approx(own.nll, rel=1e-6)
    assert row["left (exact)"] == pytest.approx(own.accuracy)
    assert table[table["model"] == "base model"].iloc[0]["left (nll)"] == pytest.approx(ev.score({})["left"].nll)


def test_a_model_path_outside_the_roots_is_one_error(served: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
                                                     ) -> None:
    outside = model_folder(tmp_path_factory.mktemp("outside"), "llama")
    at = AppTest.from_file(str(REPO / "app" / "streamlit_app.py"), default_timeout=600)
    at = at.run().switch_page("app_pages/merge.py").run()
    at.multiselect(key="merge_methods").set_value(["linear"]).run()
    at.button(key="merge_compare").click().run()
    at.radio(key="merge_eval_model_kind").set_value("Model on the server").run()
    at.text_input(key="merge_eval_model").input(str(outside)).run()
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "outside the allowed roots" in errors[0]

"""Every path a visitor names in the app goes through `sources.confine` (AppTest, files built in tmp_path):
the Merge page's "plan.json to show" box, the Review page's recipe folder and the preview.json beside it, the
inputs a proposal's overlap tab would load; an unknown page path is named, never replaced silently."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from streamlit.testing.v1 import AppTest

from analysis.review import ReviewStore, propose

REPO = Path(__file__).resolve().parents[2]
REVIEW = str(REPO / "app" / "app_pages" / "review.py")
PLAN = {"tasks": ["a", "b"], "groups": [{"tasks": ["a", "b"], "method": "isolation", "parameters": {},
                                         "predicted": {"a": 0.95, "b": 0.93}, "path": "group00_a+b"}],
        "min_retention": 0.9, "adapters_in": 2, "adapters_out": 1}


def _plan_section() -> None:
    from app.components import plan_view

    plan_view.render()


def _show_plan(path: str) -> AppTest:
    at = AppTest.from_function(_plan_section, default_timeout=60).run()
    box = next(t for t in at.text_input if t.label.startswith("plan.json to show"))
    return box.input(path).run()


def _shows_plan(at: AppTest) -> bool:
    return any("group00_a+b" in df.value.to_string() for df in at.dataframe)


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    root, private = tmp_path / "root", tmp_path / "private"
    root.mkdir()
    private.mkdir()
    monkeypatch.setenv("ADAPTER_ATLAS_ROOTS", str(root))
    return root, private


def test_plan_box_reads_only_under_the_roots(roots: tuple[Path, Path]) -> None:
    root, private = roots
    (private / "plan.json").write_text(json.dumps(PLAN))
    (root / "plan.json").write_text(json.dumps(PLAN))
    (root / "linked").mkdir()
    (root / "linked" / "plan.json").symlink_to(private / "plan.json")  # a link in a root leading out
    for refused in (str(private / "plan.json"), str(private), str(root / "linked"), str(root / "linked" / "plan.json"),
                    str(root / ".." / "private" / "plan.json")):
        at = _show_plan(refused)
        assert not at.exception
        assert any("outside the allowed roots" in e.value for e in at.error), (refused, [e.value for e in at.error])
        assert not _shows_plan(at), refused  # nothing of the outside plan was rendered
    at = _show_plan(str(root / "plan.json"))
    assert not at.exception and not at.error and _shows_plan(at)  # the plan under the root is shown


def test_plan_box_refuses_a_fifo_or_non_plan(roots: tuple[Path, Path]) -> None:
    import os

    root, _ = roots
    os.mkfifo(root / "fifo.json")
    (root / "list.json").write_text("[1, 2]")
    (root / "other.json").write_text(json.dumps({"groups": [{"tasks": 3}]}))
    for name, expect in (("fifo.json", "not a readable plan.json"), ("list.json", "not a readable plan.json"),
                         ("other.json", "not a plan.json written by")):
        at = _show_plan(str(root / name))
        assert not at.exception and any(expect in e.value for e in at.error), name


def _recipe(folder: Path, inputs: list[str]) -> Path:
    folder.mkdir(parents=True)
    recipe = {"atlas_recipe": 1, "tool_version": "0.1.0", "method": "ties", "parameters": {"density": 0.2},
              "weights": None, "export": {"format": "peft", "rank": 8},
              "inputs": [{"name": Path(p).name, "path": p, "sha256": "0" * 64, "format": "peft"} for p in inputs]}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return folder


def test_review_recipe_and_preview_links_out_are_refused(roots: tuple[Path, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root, private = roots
    monkeypatch.setenv("ADAPTER_ATLAS_DB", str(tmp_path / "review.db"))
    secret = _recipe(private / "merged", ["/nonexistent/a", "/nonexistent/b"])
    (secret / "preview.json").write_text(json.dumps({"tasks": {"secret": {"core_intact": 1.0}}}))
    (root / "a").mkdir()
    (root / "a" / "recipe.yaml").symlink_to(secret / "recipe.yaml")  # the recipe inside the folder leads out
    b = _recipe(root / "b", ["/nonexistent/a", "/nonexistent/b"])
    (b / "preview.json").symlink_to(secret / "preview.json")  # the preview propose reads leads out
    for refused in (root / "a", root / "b", root / "b" / "recipe.yaml"):
        at = AppTest.from_file(REVIEW, default_timeout=60).run()
        fields = {t.label: t for t in at.text_input}
        fields["recipe.yaml or the merge output directory"].input(str(refused))
        fields["Title"].input("t")
        fields["Your name"].input("ann")
        at = at.button(key="FormSubmitter:review_propose_form-Propose").click().run()
        assert not at.exception and any("outside the allowed roots" in e.value for e in at.error), refused
    with ReviewStore(tmp_path / "review.db") as store:
        assert store.list_proposals() == []


def test_review_overlap_loads_no_input_outside_the_roots(roots: tuple[Path, Path], tmp_path: Path) -> None:
    from app.cache.review import review_overlap

    root, private = roots
    (private / "adapter").mkdir()
    (root / "adapter").mkdir()
    db = str(tmp_path / "review.db")
    with ReviewStore(db) as store:
        pid = propose(store, yaml.safe_load((_recipe(root / "m", [str(private / "adapter"), str(root / "adapter")])
                                              / "recipe.yaml").read_text()), "t", "ann")
        sha = store.get(pid).recipe_sha256
    result = review_overlap(f"sqlite:///{db}", pid, sha)
    assert not result.available and "not loaded here" in result.reason and "outside the allowed roots" in result.reason


@pytest.mark.parametrize("url, base, expect", [
    ("http://h:8501/nosuchpage", "", "nosuchpage"),
    ("http://h:8501/", "", None),
    ("http://h:8501", "", None),
    ("http://h:8501/adapters", "", None),
    ("http://h:8501/atlas", "atlas", None),
    ("http://h:8501/atlas/nosuchpage", "/atlas/", "nosuchpage"),
    ("http://h:8501/a/b", "", "a/b"),
    (None, "", None),
])
def test_unknown_page(url: str | None, base: str, expect: str | None) -> None:
    from app.components.not_found import unknown_page

    assert unknown_page(url, base, ["adapters", "overlap", "home"]) == expect

"""`--force` replaces only an earlier export: a folder of the user's own files is refused, named, and kept.

The rule (`analysis.export.outdir.check_replaceable`) is shared by the merge export, `plan --out` and
`consolidate --out`; these tests build the folders themselves and check every byte survives a refusal.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from analysis.cli import main
from analysis.errors import AtlasError, RecipeError
from analysis.export.outdir import check_out_dir, check_replaceable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "merge"))
from merge_factories import peft_adapter  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _user_folder(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "thesis.tex").write_text("\\documentclass{article} years of work")
    (root / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return root


def test_merge_force_refuses_a_folder_of_user_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    important = _user_folder(tmp_path / "important")
    before = _snapshot(important)
    code, err = _cli(capsys, "merge", str(REPO / "sample_adapters" / "math_add"),
                     str(REPO / "sample_adapters" / "math_max"), "--method", "linear", "--out", str(important),
                     "--force")
    assert code == 2 and "\n" not in err, err
    assert "refused even with --force" in err and "thesis.tex" in err, err
    assert _snapshot(important) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["important"]  # no temp or parked folder either


def test_force_replaces_an_earlier_export_and_nothing_else(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    a, b = peft_adapter(tmp_path, "a", seed=1), peft_adapter(tmp_path, "b", seed=2)
    out = tmp_path / "merged"
    args = ("merge", str(a.path), str(b.path), "--method", "linear", "--out", str(out))
    assert _cli(capsys, *args)[0] == 0
    first = _snapshot(out)
    assert "recipe.yaml" in first
    code, err = _cli(capsys, *args)
    assert code == 2 and "pass --force" in err  # an existing export still needs --force
    assert _cli(capsys, *args, "--weights", "0.3,0.7", "--force")[0] == 0  # an earlier export: replaced
    second = _snapshot(out)
    assert set(second) == set(first) and second["adapter_model.safetensors"] != first["adapter_model.safetensors"]
    (out / "notes.txt").write_text("my notes on this merge")
    code, err = _cli(capsys, *args, "--force")
    assert code == 2 and "notes.txt" in err and "\n" not in err, err
    assert _snapshot(out) == {**second, "notes.txt": b"my notes on this merge"}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli(capsys, "merge", str(a.path), str(b.path), "--method", "linear", "--out", str(empty), "--force")[0] == 0
    assert (empty / "recipe.yaml").is_file()


def test_replaceable_shapes(tmp_path: Path) -> None:
    def folder(name: str, files: dict[str, str]) -> Path:
        root = tmp_path / name
        root.mkdir()
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        return root

    weights = {"adapter_model.safetensors": "w", "adapter_config.json": "{}"}
    consolidated = {**weights, "training.json": "{}", "recipe.json": json.dumps({"atlas_consolidation": 1})}
    plan = {"plan.json": "{}", "group00_a+b/recipe.yaml": "x", "group00_a+b/preview.json": "{}",
            **{f"group00_a+b/{k}": v for k, v in weights.items()},
            **{f"group01_c/{k}": v for k, v in weights.items()}, "group01_c/README.md": "copied with the adapter"}
    for name, files in {"merge": {**weights, "recipe.yaml": "x", "preview.json": "{}"}, "kohya":
                        {"lora.safetensors": "w", "recipe.yaml": "x"}, "consolidated": consolidated,
                        "plan": plan}.items():
        check_replaceable(folder(name, files))  # earlier exports of ours: no error
    refused = {  # folder -> the name the one-line refusal must give
        "user_adapter": (weights, "adapter_config.json"),  # an adapter without our recipe: somebody's input
        "their_recipe": ({**weights, "recipe.json": "{}"}, "adapter_config.json"),
        "merge_plus_notes": ({**weights, "recipe.yaml": "x", "zz_notes.txt": "mine"}, "zz_notes.txt"),
        "plan_plus_thesis": ({**plan, "group01_c/thesis.tex": "mine"}, "thesis.tex"),
        "plan_plus_folder": ({**plan, "drafts/a.md": "mine"}, "drafts/a.md"),
        "merge_plus_subfolder": ({"recipe.yaml": "x", "sub/data.csv": "1"}, "sub/data.csv"),
    }
    for name, (files, needle) in refused.items():
        root = folder(name, files)
        before = _snapshot(root)
        with pytest.raises(RecipeError, match="refused even with --force") as info:
            check_out_dir(root, force=True)
        assert needle in str(info.value) and "\n" not in str(info.value), (name, info.value)
        assert _snapshot(root) == before
    linked = folder("linked", {"recipe.yaml": "x"})
    (linked / "adapter_model.safetensors").symlink_to(_user_folder(tmp_path / "elsewhere") / "thesis.tex")
    with pytest.raises(RecipeError, match="adapter_model.safetensors"):
        check_out_dir(linked, force=True)


def test_consolidate_and_plan_writers_use_the_same_rule(tmp_path: Path) -> None:
    from analysis.consolidate.export import prepare_out
    from analysis.plan.export import export_plan

    important = _user_folder(tmp_path / "important")
    before = _snapshot(important)
    with pytest.raises(AtlasError, match="refused even with --force"):
        prepare_out(important, True)
    with pytest.raises(AtlasError, match="refused even with --force"):
        export_plan(None, [], important, force=True)  # type: ignore[arg-type]  # refused before the plan is read
    assert _snapshot(important) == before
    with pytest.raises(AtlasError, match="already exists; pass --force"):
        prepare_out(important, False)

"""The README's library example, extracted from README.md and run as written (in a scratch folder that sees
the committed sample set), so the documented five lines cannot drift from the API."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## The library", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the library section holds one python example"
    return blocks[0]


def test_readme_library_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = _example()
    assert len([line for line in code.splitlines() if line.strip()]) == 5
    (tmp_path / "sample_adapters").symlink_to(REPO / "sample_adapters")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    run, table = scope["run"], scope["table"]
    assert (tmp_path / "merged" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "merged" / "recipe.yaml").is_file() and (tmp_path / "merged" / "preview.json").is_file()
    assert len(table) == len(scope["adapters"].shared) > 0
    assert [t["name"] for t in run.evidence["tasks"]] == ["format_date", "math_add"]


def test_readme_layout_names_every_library_module_and_top_level_folder() -> None:
    """The Layout section cannot drift from the tree: every module and package of analysis/, every folder of
    app/ and every top-level folder of the repository is named in it."""
    layout = (REPO / "README.md").read_text().split("## Layout", 1)[1].split("```", 2)[1]
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", layout))
    wanted = {p.stem for p in (REPO / "analysis").iterdir()
              if p.suffix == ".py" and p.name != "__init__.py" or (p / "__init__.py").is_file()}
    wanted |= {p.name for p in (REPO / "app").iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    wanted |= {"analysis", "app", "bench", "tests", "sample_adapters"}
    assert "isolation" in wanted and "workflow" in wanted  # the scan sees modules and packages
    assert sorted(wanted - words) == []

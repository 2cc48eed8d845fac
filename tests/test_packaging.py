"""The installed wheel ships the app's pages, its server config, the sample set and the base metadata.

Built from a copy of the tracked files (so the shared working tree gets no build/ or egg-info), installed
with `pip install --target` into a temp folder, and asked from there (not from the checkout) which
adapters the app opens with.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("setuptools", reason="setuptools is needed to build the wheel without network")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=False)
    if files.returncode != 0:
        pytest.skip("not a git checkout: the wheel is built from the tracked files")
    src = tmp_path_factory.mktemp("src")
    for rel in filter(None, files.stdout.decode().split("\0")):
        if (REPO / rel).is_file() and not rel.startswith("tests/"):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                            "-w", str(out)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (whl,) = out.glob("adapter_atlas-*.whl")
    return whl


def test_wheel_holds_pages_config_sample_set_and_base_metadata(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(["git", "ls-files", "sample_adapters", "app"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    missing = [f for f in tracked if f not in names]
    assert not missing, f"tracked files the wheel lacks: {missing[:10]}"
    assert {"sample_adapters/base.json", "app/.streamlit/config.toml", "app/app_pages/review.py"} <= names
    assert sum(n.endswith("adapter_model.safetensors") for n in names) >= 10


def test_installed_wheel_opens_on_the_sample_set(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from app.components import sources;"
            "print(sources.REPO_ROOT); print(*[p.name for p in sources.default_adapter_paths()])")
    run = subprocess.run([sys.executable, "-I", "-c", code, str(target)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-3000:]
    root, names = run.stdout.splitlines()
    assert Path(root) == target  # answered by the installed copy, not the checkout
    assert len(names.split()) == 10 and "math_add" in names.split()
    assert (target / "sample_adapters" / "base.json").is_file()

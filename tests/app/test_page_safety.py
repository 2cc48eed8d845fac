"""Pages on hostile input (AppTest, committed sample adapters only): the Review page's recipe field is
confined to the roots, an adapter's base-model name stays literal text, a shared URL cannot open a
link that leaves a root, and visitors never get tracebacks."""
from __future__ import annotations

import json
import os
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml
from streamlit.testing.v1 import AppTest

from analysis.review import ReviewStore

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "app" / "streamlit_app.py")
REVIEW = str(REPO / "app" / "app_pages" / "review.py")
SAMPLE = REPO / "sample_adapters"
HOSTILE_BASE = "**bold** <img src=x onerror=alert(1)> [click](https://evil.example) `code`"


def _recipe_dir(folder: Path) -> Path:
    folder.mkdir(parents=True)
    recipe = {"atlas_recipe": 1, "tool_version": "0.1.0", "method": "ties", "parameters": {"density": 0.2},
              "weights": None, "export": {"format": "peft", "rank": 8},
              "inputs": [{"name": n, "path": f"/nonexistent/{n}", "sha256": "0" * 64, "format": "peft"}
                         for n in ("a", "b")]}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return folder


def _propose_from_form(at: AppTest, path: str) -> AppTest:
    fields = {t.label: t for t in at.text_input}
    fields["recipe.yaml or the merge output directory"].input(path)
    fields["Title"].input("from a file")
    fields["Your name"].input("ann")
    return at.button(key="FormSubmitter:review_propose_form-Propose").click().run()


def test_review_recipe_file_confined_to_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    inside, outside = _recipe_dir(root / "merged"), _recipe_dir(tmp_path / "private" / "merged")
    (root / "link").symlink_to(outside, target_is_directory=True)
    monkeypatch.setenv("ADAPTER_ATLAS_ROOTS", str(root))
    monkeypatch.setenv("ADAPTER_ATLAS_DB", str(tmp_path / "review.db"))
    for refused in (str(outside), str(root / "link"), "/etc/passwd", "x\0y"):
        at = _propose_from_form(AppTest.from_file(REVIEW, default_timeout=60).run(), refused)
        assert not at.exception
        assert any("outside the allowed roots" in e.value or "NUL" in e.value for e in at.error), refused
    with ReviewStore(tmp_path / "review.db") as store:
        assert store.list_proposals() == []  # nothing was read from outside the roots
    at = _propose_from_form(AppTest.from_file(REVIEW, default_timeout=60).run(), str(inside))
    assert not at.exception and not at.error
    with ReviewStore(tmp_path / "review.db") as store:
        assert [p.title for p in store.list_proposals()] == ["from a file"]


def test_review_page_on_both_backends(review_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Review page lists, opens and comments on a proposal in a SQLite file and in PostgreSQL alike."""
    from analysis.review import propose

    monkeypatch.setenv("ADAPTER_ATLAS_DB", review_db)
    with ReviewStore(review_db) as store:
        pid = propose(store, yaml.safe_load((_recipe_dir_text())), "shared store", "ann")
    at = AppTest.from_file(REVIEW, default_timeout=60)
    at.query_params["proposal"] = str(pid)
    at.run()
    assert not at.exception and not at.error
    assert "shared store" in at.header[0].value
    at.text_input(key="review_author").input("bo")
    at.text_area(key="review_comment_text").input("looks right")
    at.button(key="FormSubmitter:review_comment_form-Add comment").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    with ReviewStore(review_db) as store:
        assert [(e.author, e.text) for e in store.get(pid).comments] == [("bo", "looks right")]


def _recipe_dir_text() -> str:
    return yaml.safe_dump({"atlas_recipe": 1, "tool_version": "0.1.0", "method": "ties",
                           "parameters": {"density": 0.2}, "weights": None, "export": {"format": "peft", "rank": 8},
                           "inputs": [{"name": n, "path": f"/nonexistent/{n}", "sha256": "0" * 64, "format": "peft"}
                                      for n in ("a", "b")]})


def test_review_link_with_an_id_past_the_integer_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTER_ATLAS_DB", str(tmp_path / "review.db"))
    at = AppTest.from_file(REVIEW, default_timeout=60)
    at.query_params["proposal"] = "99999999999999999999999"
    at.run()
    assert not at.exception and any("no proposal with id" in e.value for e in at.error)


def _sample_copy(dst: Path, base: str) -> Path:
    shutil.copytree(SAMPLE / "math_add", dst)
    config = json.loads((dst / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base}))
    return dst


def test_base_model_name_renders_as_literal_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = _sample_copy(tmp_path / "a", HOSTILE_BASE)
    b = _sample_copy(tmp_path / "b", "HuggingFaceTB/SmolLM2-135M-Instruct")
    monkeypatch.setenv("ADAPTER_ATLAS_ADAPTERS", os.pathsep.join([str(a), str(b)]))
    monkeypatch.setenv("ADAPTER_ATLAS_ROOTS", str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    warning = next(w.value for w in at.warning if "different base models" in w.value)
    assert "<img" not in warning and "**bold**" not in warning and "](https" not in warning
    assert "&lt;img" in warning and "\\*\\*bold\\*\\*" in warning  # escaped: shown exactly as written


def test_url_cannot_open_a_link_leaving_the_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, secret = tmp_path / "root", tmp_path / "secret"
    good = _sample_copy(root / "good", "HuggingFaceTB/SmolLM2-135M-Instruct")
    stolen = _sample_copy(secret / "stolen", "HuggingFaceTB/SmolLM2-135M-Instruct")
    (root / "escape").symlink_to(stolen, target_is_directory=True)
    monkeypatch.setenv("ADAPTER_ATLAS_ADAPTERS", str(good))
    monkeypatch.setenv("ADAPTER_ATLAS_ROOTS", str(root))
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["adapter"] = [str(good), str(root / "escape")]
    at.run()
    assert not at.exception
    opened = at.session_state["atlas_adapters"]
    assert str(good.resolve()) in opened and not any("escape" in p or "secret" in p for p in opened)


def test_visitors_never_see_tracebacks(tmp_path: Path) -> None:
    from analysis.commands import serve
    from analysis.errors import AtlasError

    config = tomllib.loads((REPO / "app" / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] in ("none", "type")  # not "full"/"stacktrace": no server paths
    cmd = serve.streamlit_command(host="127.0.0.1", port=8501)
    assert cmd[cmd.index("--client.showErrorDetails") + 1] == "none"  # whatever config the server finds
    with pytest.raises(AtlasError, match="--root must be an existing folder"):
        serve.serve_env([], [tmp_path / "missing"])


def _upload_script() -> None:
    import os

    import streamlit as st

    from app.components import pickers

    with open(os.environ["ATLAS_TEST_ZIP"], "rb") as f:
        path = pickers.open_upload([(os.environ["ATLAS_TEST_ZIP_NAME"], f.read())])
    st.session_state["opened"] = path


@pytest.mark.parametrize("kind", ["bomb", "traversal", "adapter"])
def test_upload_refusals_are_one_error_box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    import io
    import zipfile

    from helpers.zips import deflate_zeros, raw_zip

    if kind == "bomb":
        data, crc = deflate_zeros(1024)
        blob = raw_zip([{"name": "a/adapter_model.safetensors", "data": data, "method": 8, "crc": crc,
                         "usize": 1 << 30}])
    elif kind == "traversal":
        blob = raw_zip([{"name": "../../evil/adapter_config.json", "data": b"{}"}])
    else:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for p in sorted((SAMPLE / "math_add").iterdir()):
                zf.write(p, f"math_add/{p.name}")
        blob = buf.getvalue()
    (tmp_path / "upload.zip").write_bytes(blob)
    monkeypatch.setenv("ATLAS_TEST_ZIP", str(tmp_path / "upload.zip"))
    monkeypatch.setenv("ATLAS_TEST_ZIP_NAME", f"{kind}.zip")
    at = AppTest.from_function(_upload_script, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    area = at.session_state["adapters_upload_area"]
    if kind == "adapter":
        assert not at.error and Path(at.session_state["opened"]).name == "math_add"
        assert area.path in Path(at.session_state["opened"]).parents
    else:
        (box,) = at.error
        assert box.value.startswith("Upload refused:") and "\n" not in box.value
        assert ("zip bomb" if kind == "bomb" else "paths are refused") in box.value and "<" not in box.value
        assert at.session_state["opened"] is None
        assert [p.name for p in area.path.iterdir()] == [".adapter-atlas-upload-area"]  # nothing kept

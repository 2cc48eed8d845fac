"""Where adapters come from: default set, allowed server roots, and how uploads land on disk."""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest

from analysis.adapters import load_adapter
from analysis.errors import AdapterFormatError
from app.components import sources
from app.components.sources import FolderRefusedError, UploadArea, confine, resolve_server_folder, save_upload

SAMPLES = Path(__file__).resolve().parents[2] / "sample_adapters"  # committed: these run in a fresh clone


def _peft_dir(root: Path, name: str = "tiny") -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text("{}")
    (d / "adapter_model.safetensors").write_bytes(b"x")
    return d


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


# --- default set and roots -----------------------------------------------------------------------

def test_default_prefers_samples_then_gemma(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sources.ENV_ADAPTERS, raising=False)
    repo = tmp_path / "repo"
    gemma = tmp_path / "shared" / "real_adapters" / "gemma3-270m-svg-lora"
    g1, g2 = _peft_dir(gemma, "b"), _peft_dir(gemma, "a")
    (repo / "sample_adapters").mkdir(parents=True)
    assert sources.default_adapter_paths(repo) == [g2, g1]  # no samples yet: the shared gemma trio, sorted
    s1 = _peft_dir(repo / "sample_adapters", "sst2")
    (repo / "sample_adapters" / "tasks").mkdir()  # a folder without adapter_config.json is not an adapter
    assert sources.default_adapter_paths(repo) == [s1]


def test_explicit_adapters_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = _peft_dir(tmp_path, "a"), _peft_dir(tmp_path, "b")
    monkeypatch.setenv(sources.ENV_ADAPTERS, os.pathsep.join([str(b), str(a)]))
    assert sources.default_adapter_paths(tmp_path) == [b.resolve(), a.resolve()]


def test_roots_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sources.ENV_ROOTS, os.pathsep.join([str(tmp_path / "x"), str(tmp_path / "y")]))
    assert sources.configured_roots() == [(tmp_path / "x").resolve(), (tmp_path / "y").resolve()]


# --- server folders ------------------------------------------------------------------------------

def test_folder_inside_root_lists_adapters(tmp_path: Path) -> None:
    root = tmp_path / "root"
    a, b = _peft_dir(root / "set", "a"), _peft_dir(root / "set", "b")
    (root / "set" / "loose.safetensors").write_bytes(b"x")
    (root / "set" / "notes").mkdir()
    found = resolve_server_folder(str(root / "set"), [root.resolve()])
    assert found == [a.resolve(), b.resolve(), (root / "set" / "loose.safetensors").resolve()]
    assert resolve_server_folder(str(a), [root.resolve()]) == [a.resolve()]  # an adapter folder itself


@pytest.mark.parametrize("escape", ["outside", "dotdot", "symlink"])
def test_folder_outside_roots_refused(tmp_path: Path, escape: str) -> None:
    root, outside = tmp_path / "root", tmp_path / "secret"
    root.mkdir()
    _peft_dir(outside, "stolen")
    text = {"outside": str(outside), "dotdot": str(root / ".." / "secret")}.get(escape)
    if escape == "symlink":
        (root / "link").symlink_to(outside, target_is_directory=True)
        text = str(root / "link")
    with pytest.raises(FolderRefusedError, match="outside the allowed roots"):
        resolve_server_folder(text, [root.resolve()])


def test_folder_missing_or_empty(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "empty").mkdir(parents=True)
    with pytest.raises(FolderRefusedError, match="no such file"):
        resolve_server_folder(str(root / "nope"), [root.resolve()])
    with pytest.raises(FolderRefusedError, match="no adapter inside"):
        resolve_server_folder(str(root / "empty"), [root.resolve()])
    with pytest.raises(FolderRefusedError, match="no folder given"):
        resolve_server_folder("  ", [root.resolve()])


def test_url_paths_filtered_to_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sources.ENV_ADAPTERS, raising=False)
    root = tmp_path / "root"
    inside, outside = _peft_dir(root, "in"), _peft_dir(tmp_path / "other", "out")
    kept = sources.allowed_paths([str(inside), str(outside), str(root / "missing")], [root.resolve()])
    assert kept == [inside.resolve()]


# --- uploads -------------------------------------------------------------------------------------

def test_zip_of_peft_dir_loads_like_the_dir(tmp_path: Path) -> None:
    src = SAMPLES / "math_max"
    data = _zip({f"adapter_seed123/{p.name}": p.read_bytes() for p in src.iterdir()})
    area = UploadArea(tmp_path)
    path = save_upload([("seed.zip", data)], area)
    assert path.name == "adapter_seed123" and (path / "adapter_config.json").is_file()
    uploaded, original = load_adapter(path), load_adapter(src)
    assert uploaded.sha256 == original.sha256  # same bytes, same content hash
    assert sorted(uploaded.modules) == sorted(original.modules)
    assert save_upload([("seed.zip", data)], area) == path  # a rerun reuses the same folder


def test_files_of_a_dir_and_single_file(tmp_path: Path) -> None:
    src = SAMPLES / "math_add"
    files = [(f"adapter/{p.name}", p.read_bytes()) for p in src.iterdir()]
    area = UploadArea(tmp_path)
    path = save_upload(files, area)
    assert path.name == "adapter" and load_adapter(path).sha256 == load_adapter(src).sha256
    single = save_upload([("model.safetensors", b"\x00" * 8)], area)
    assert single.name == "model.safetensors" and single.read_bytes() == b"\x00" * 8


def test_zip_traversal_refused(tmp_path: Path) -> None:
    with pytest.raises(AdapterFormatError, match=r"'\.\./evil\.txt'"):
        save_upload([("evil.zip", _zip({"../evil.txt": b"x"}))], UploadArea(tmp_path / "up"))
    assert not (tmp_path / "evil.txt").exists()


def test_bad_zip_and_empty_zip(tmp_path: Path) -> None:
    with pytest.raises(AdapterFormatError, match="not a readable zip"):
        save_upload([("broken.zip", b"PK\x03\x04 nonsense")], UploadArea(tmp_path))
    with pytest.raises(AdapterFormatError, match="no adapter_config.json and no weights"):
        save_upload([("readme.zip", _zip({"README.md": b"hi"}))], UploadArea(tmp_path))
    with pytest.raises(AdapterFormatError, match="no files"):
        save_upload([], UploadArea(tmp_path))


def test_browser_paths_never_escape(tmp_path: Path) -> None:
    area = UploadArea(tmp_path / "up")  # held: the area's folder goes when the last reference does
    path = save_upload([("../../a/adapter_config.json", b"{}"), ("../../a/adapter_model.safetensors", b"x")],
                       area)
    assert (tmp_path / "up") in path.parents and sorted(p.name for p in path.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors"]


# --- one confinement rule for the picker, the URL filter and the Review page ------------------------

@pytest.mark.parametrize(("text", "needle"), [("a\0b", "NUL"), ("x" * 5000, "5000 characters"),
                                              ("/" + "n" * 300, "longer than 255 bytes")])
def test_hostile_names_refused_with_a_line(tmp_path: Path, text: str, needle: str) -> None:
    root = (tmp_path / "root").resolve()
    root.mkdir()
    for call in (lambda: confine(text, [root]), lambda: resolve_server_folder(text, [root])):
        with pytest.raises(FolderRefusedError, match=needle) as info:
            call()
        assert "\n" not in str(info.value) and len(str(info.value)) < 400
    assert sources.allowed_paths([text], [root]) == []


def _root_with_escapes(tmp_path: Path) -> tuple[Path, Path]:
    """A root holding a real adapter, a link to an adapter outside, and an adapter whose weights link out."""
    root, outside = (tmp_path / "root"), (tmp_path / "secret")
    good = _peft_dir(root, "good")
    stolen = _peft_dir(outside, "stolen")
    (root / "escape").symlink_to(stolen, target_is_directory=True)
    (root / "loose.safetensors").symlink_to(stolen / "adapter_model.safetensors")
    sneaky = root / "sneaky"
    sneaky.mkdir()
    (sneaky / "adapter_config.json").write_text("{}")
    (sneaky / "adapter_model.safetensors").symlink_to(stolen / "adapter_model.safetensors")
    inner = root / "inner_link"  # a link that stays inside the root is fine
    inner.symlink_to(good, target_is_directory=True)
    return root.resolve(), good.resolve()


def test_links_leaving_a_root_are_neither_listed_nor_loaded(tmp_path: Path) -> None:
    root, good = _root_with_escapes(tmp_path)
    assert resolve_server_folder(str(root), [root]) == [good]  # good, and inner_link -> good, listed once
    for name in ("escape", "loose.safetensors", "sneaky"):
        with pytest.raises(FolderRefusedError, match="outside the allowed roots"):
            resolve_server_folder(str(root / name), [root])
    urls = [str(root / n) for n in ("good", "escape", "loose.safetensors", "sneaky", "inner_link")]
    assert sources.allowed_paths(urls, [root]) == [good, good]
    with pytest.raises(FolderRefusedError, match="outside the allowed roots"):
        confine(root / "escape" / "adapter_config.json", [root])


def test_symlink_loop_refused(tmp_path: Path) -> None:
    root = (tmp_path / "root").resolve()
    root.mkdir()
    (root / "a").symlink_to(root / "b")
    (root / "b").symlink_to(root / "a")
    with pytest.raises(FolderRefusedError):
        resolve_server_folder(str(root / "a"), [root])

"""Hostile and unlucky zip uploads are refused with one line, quickly, without filling memory or disk.

The archives are built byte by byte (`helpers.zips.raw_zip`), so a test can declare sizes, flags and methods
that no well-behaved zip writer would produce.
"""
from __future__ import annotations

import gc
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from helpers.zips import raw_zip

from analysis.adapters import load_adapter
from app.components.uploads import MARKER, UploadArea, UploadLimits, UploadRefusedError, save_upload, sweep

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_adapters" / "math_add"
MiB = 1 << 20


@pytest.fixture()
def area(tmp_path: Path) -> UploadArea:
    a = UploadArea(tmp_path / "uploads", limits=UploadLimits(quota=256 * MiB))
    yield a
    a.close()


def _left(area: UploadArea) -> list[str]:
    return sorted(str(p.relative_to(area.path)) for p in area.path.rglob("*") if p.name != MARKER)


# --- the bomb -------------------------------------------------------------------------------------

BOMB_CHILD = """
import re, sys, time
sys.path[:0] = [{repo!r}, {tests!r}]
from helpers.zips import deflate_mixed, deflate_zeros, raw_zip
from app.components.uploads import UploadArea, UploadRefusedError, save_upload

def kb(field):
    return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

kind = {kind!r}
data, crc = deflate_mixed(128) if kind == "legit-128MiB" else deflate_zeros(1024)
usize = {{"declared-1GiB": 1 << 30, "header-lies-512KiB": 512 << 10, "legit-128MiB": 128 << 20}}[kind]
zipped = raw_zip([{{"name": "a/adapter_model.safetensors", "data": data, "method": 8, "crc": crc, "usize": usize}}])
area = UploadArea({base!r})
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = kb("VmRSS")
t0 = time.perf_counter()
try:
    path = save_upload([("bomb.zip", zipped)], area)
    print("ACCEPTED", path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*")))
except UploadRefusedError as exc:
    print("REFUSED", exc)
print("ZIPBYTES", len(zipped))
print("SECONDS", time.perf_counter() - t0)
print("RSS_KB", kb("VmHWM") - before)
print("LEFT", sum(1 for p in area.path.rglob("*") if p.is_file()) - 1)
open("/proc/self/clear_refs", "w").write("5")  # control: the meter sees a 64 MiB buffer
before = kb("VmRSS")
buf = b"\\1" * (64 << 20)
print("CONTROL_KB", kb("VmHWM") - before)
"""


@pytest.mark.parametrize("kind", ["declared-1GiB", "header-lies-512KiB", "legit-128MiB"])
def test_bombs_refused_fast_and_members_streamed_with_flat_rss(tmp_path: Path, kind: str) -> None:
    """A ~1 MB zip inflating to 1 GiB is refused from the central directory (ratio); when its header lies
    about the size, while streaming (zipfile stops at the declared size and the CRC fails). A legitimate
    128 MiB member is streamed to disk in chunks. In all three the process's peak RSS during the call
    grows by a few MiB, not by the inflated size (measured: VmHWM reset through /proc/self/clear_refs)."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to measure the peak RSS of one call")
    code = BOMB_CHILD.format(repo=str(REPO), tests=str(REPO / "tests"), kind=kind, base=str(tmp_path / "up"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    if kind == "legit-128MiB":
        assert int(lines["ACCEPTED"]) == 128 << 20 and int(lines["LEFT"]) == 1
    else:
        assert "ACCEPTED" not in lines and "\n" not in lines["REFUSED"] and int(lines["LEFT"]) == 0
        assert int(lines["ZIPBYTES"]) < 1.1 * MiB
        assert ("1011x" in lines["REFUSED"] and "zip bomb" in lines["REFUSED"]) if kind == "declared-1GiB" else (
            "CRC" in lines["REFUSED"])
    assert int(lines["CONTROL_KB"]) > 60 * 1024, lines  # the meter works: it sees a 64 MiB buffer
    assert int(lines["RSS_KB"]) < 32 * 1024, lines  # the inflated 128 MiB / 1 GiB never sat in memory
    print(f"{kind}: {lines.get('REFUSED', 'accepted')} | zip {int(lines['ZIPBYTES']) / MiB:.2f} MiB, "
          f"{float(lines['SECONDS']):.3f}s, peak RSS +{int(lines['RSS_KB']) / 1024:.1f} MiB")


# --- the central directory --------------------------------------------------------------------------

def test_too_many_entries(area: UploadArea) -> None:
    many = raw_zip([{"name": f"a/f{i}.json", "data": b"{}"} for i in range(1001)])
    with pytest.raises(UploadRefusedError, match="1001 entries, at most 1000"):
        save_upload([("many.zip", many)], area)


def test_declared_total_over_the_limit(tmp_path: Path) -> None:
    small = UploadArea(tmp_path / "up", limits=UploadLimits(max_unpacked=3 * MiB))
    data = os.urandom(2 * MiB)  # incompressible: ratio 1, but two of them are 4 MiB
    zipped = raw_zip([{"name": f"a/w{i}.safetensors", "data": data} for i in range(2)])
    with pytest.raises(UploadRefusedError, match=r"unpacks to 4\.0 MiB, more than the 3\.0 MiB"):
        save_upload([("big.zip", zipped)], small)
    assert _left(small) == []


@pytest.mark.parametrize(("entry", "needle"), [
    ({"name": "a/adapter_config.json", "data": b"{}", "flags": 1}, "is encrypted"),
    ({"name": "a/adapter_config.json", "data": b"{}", "method": 99}, "compression method 99"),
    ({"name": "a/adapter_config.json", "data": b"{}", "method": 12}, "compression method 12"),  # bzip2
    ({"name": "../adapter_config.json", "data": b"{}"}, "'..' paths are refused"),
    ({"name": "a/../../x.json", "data": b"{}"}, "'..' paths are refused"),
    ({"name": "/etc/adapter_config.json", "data": b"{}"}, "absolute paths"),
    ({"name": "C:\\x\\adapter_config.json", "data": b"{}"}, "absolute paths"),
    ({"name": "", "data": b"{}"}, "empty name"),
    ({"name": "./", "data": b""}, "empty name"),
    ({"name": "a/link.json", "data": b"/etc/passwd", "mode": 0o120777}, "symbolic link"),
    ({"name": "a/" + "n" * 300, "data": b"{}"}, "name too long"),
], ids=["encrypted", "method99", "bzip2", "dotdot", "dotdot-inner", "absolute", "drive", "empty", "dot", "symlink", "long"])
def test_bad_entries_refused_in_one_line(area: UploadArea, tmp_path: Path, entry: dict, needle: str) -> None:
    zipped = raw_zip([{"name": "a/adapter_model.safetensors", "data": b"x"}, entry])
    with pytest.raises(UploadRefusedError, match=needle) as info:
        save_upload([("bad.zip", zipped)], area)
    assert "\n" not in str(info.value) and "'bad.zip'" in str(info.value)
    assert _left(area) == [] and not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("names", [["a/x", "a/x/y"], ["a/x/y", "a/x"], ["a/x", "a/x"], ["a/x/", "a/x"]],
                         ids=["file-then-child", "child-then-file", "duplicate", "dir-then-file"])
def test_file_and_folder_clash(area: UploadArea, names: list[str]) -> None:
    zipped = raw_zip([{"name": n, "data": b"" if n.endswith("/") else b"{}"} for n in names])
    with pytest.raises(UploadRefusedError, match="clashes|both a file and a folder"):
        save_upload([("clash.zip", zipped)], area)


def test_truncated_and_garbage_archives(area: UploadArea) -> None:
    good = raw_zip([{"name": "a/adapter_config.json", "data": b"{}"}])
    for blob in (b"PK\x03\x04 nonsense", good[: len(good) // 2], b"", b"\0" * 100):
        with pytest.raises(UploadRefusedError, match="not a readable zip"):
            save_upload([("broken.zip", blob)], area)
    bad_data = raw_zip([{"name": "a/adapter_model.safetensors", "data": b"\xff" * 64, "method": 8, "usize": 10}])
    with pytest.raises(UploadRefusedError, match="not a readable zip"):
        save_upload([("corrupt.zip", bad_data)], area)  # invalid deflate stream: zlib.error, caught
    assert _left(area) == []


# --- a real adapter goes through ----------------------------------------------------------------------

def _zip_dir(src: Path, prefix: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(prefix + "/", b"")  # a directory entry before its files is fine
        for p in sorted(src.iterdir()):
            zf.write(p, f"{prefix}/{p.name}")
    return buf.getvalue()


def test_sample_adapter_zip_loads_like_the_folder(area: UploadArea) -> None:
    zipped = _zip_dir(SAMPLE, "math_add")
    path = save_upload([("math.zip", zipped)], area)
    assert area.path in path.parents and path.name == "math_add"
    assert load_adapter(path).sha256 == load_adapter(SAMPLE).sha256
    assert save_upload([("math.zip", zipped)], area) == path  # a rerun reuses it


def test_quota_shared_by_all_sessions(tmp_path: Path) -> None:
    limits = UploadLimits(quota=3 * MiB)
    first, second = (UploadArea(tmp_path / "up", limits=limits) for _ in range(2))
    blob = os.urandom(2 * MiB)
    save_upload([("one.safetensors", blob)], first)
    with pytest.raises(UploadRefusedError, match="upload space has"):
        save_upload([("two.safetensors", os.urandom(2 * MiB))], second)
    first.close()  # the first session ends: its space comes back
    assert save_upload([("two.safetensors", blob)], second).stat().st_size == 2 * MiB


# --- areas live and die with the session ----------------------------------------------------------------

def test_area_removed_when_session_state_drops_it(tmp_path: Path) -> None:
    state: dict = {}
    from app.components.uploads import session_area

    area = session_area(state)  # default base; use a private one below for the real check
    area.close()
    state["adapters_upload_area"] = UploadArea(tmp_path / "up")
    path = state["adapters_upload_area"].path
    save_upload([("w.safetensors", b"x")], session_area(state))
    assert path.is_dir()
    state.clear()  # Streamlit clears the session state when the session ends
    gc.collect()
    assert not path.exists()


def test_sweep_removes_only_our_expired_areas(tmp_path: Path) -> None:
    base = tmp_path / "up"
    old, fresh = UploadArea(base), UploadArea(base)
    foreign = base / "s-" + "0" * 32 if False else base / ("s-" + "0" * 32)
    foreign.mkdir()  # our name pattern but no marker: not ours, kept
    other = base / "keep-me"
    other.mkdir()
    past = time.time() - 7200
    os.utime(old.path / MARKER, (past, past))
    assert sweep(base, ttl_s=3600) == 1
    assert not old.path.exists() and fresh.path.exists() and foreign.exists() and other.exists()
    fresh.close()


def test_loose_files_upload_and_names(area: UploadArea) -> None:
    cfg = json.dumps({"peft_type": "LORA"}).encode()
    path = save_upload([("x/../../adapter_config.json", cfg), ("x/adapter_model.safetensors", b"w")], area)
    assert area.path in path.parents
    with pytest.raises(UploadRefusedError, match="same name"):
        save_upload([("a/w.bin", b"1"), ("b/w.bin", b"2")], area)
    with pytest.raises(UploadRefusedError, match="refused"):
        save_upload([("a/..", b"1"), ("b", b"2")], area)
    with pytest.raises(UploadRefusedError, match="NUL"):
        save_upload([("w\0.safetensors", b"1")], area)


def test_upload_folder_that_is_a_link_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "up").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UploadRefusedError, match="is a link or not owned"):
        UploadArea(tmp_path / "up")
    assert list(elsewhere.iterdir()) == []


def test_sweep_keeps_areas_of_live_sessions_and_removes_the_rest(tmp_path: Path) -> None:
    base = tmp_path / "up"
    live, gone = UploadArea(base, session_id="live-session"), UploadArea(base, session_id="gone-session")
    past = time.time() - 7200
    for area in (live, gone):
        os.utime(area.path / MARKER, (past, past))
    asked: list[str] = []
    alive = lambda sid: asked.append(sid) or sid == "live-session"  # noqa: E731
    assert sweep(base, ttl_s=3600, alive=alive) == 1
    assert sorted(asked) == ["gone-session", "live-session"]
    assert live.path.exists() and not gone.path.exists()
    assert time.time() - (live.path / MARKER).stat().st_mtime < 60  # seen now: its TTL starts again
    live.close()

"""Hostile options and paths for `scan`: every one is a single line (exit 2) within seconds, nothing is
created, and folders the scan cannot read are reported rather than skipped. Network cases use loopback only:
a closed port, a listener that never answers, one that answers garbage."""
from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from analysis.cli import main
from analysis.errors import AtlasError
from analysis.population.scheduler import parse_scheduler, probe
from analysis.population.walk import find_adapters

SAMPLE = Path(__file__).resolve().parents[3] / "sample_adapters" / "math_add"


def _one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[-1].startswith("adapter-atlas"), err
    return err[-1]


@pytest.fixture
def listener(request: pytest.FixtureRequest) -> Iterator[int]:
    """A loopback server on a free port that accepts and then sends `request.param` (None: nothing, ever)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)
            if request.param is not None:
                conn.sendall(request.param)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("address, expect", [
    ("garbage!!", "expected a scheduler address"),
    ("udp://127.0.0.1:8786", "unsupported scheme 'udp'"),
    ("tcp://127.0.0.1:99999", "port 99999"),
])
def test_malformed_scheduler_is_one_line(address: str, expect: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_line(capsys, ["scan", str(SAMPLE), "--out", str(tmp_path / "idx"), "--scheduler", address])
    assert expect in line
    assert not (tmp_path / "idx").exists()


def test_closed_port_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_line(capsys, ["scan", str(SAMPLE), "--out", str(tmp_path / "idx"),
                              "--scheduler", f"tcp://127.0.0.1:{_closed_port()}"])
    assert "cannot connect" in line and not (tmp_path / "idx").exists()


@pytest.mark.parametrize("listener, expect", [
    (None, "sent nothing a dask scheduler sends within 1 s"),
    (b"\xff" * 64 + b"HTTP/1.1 200 OK\r\n\r\n", "not as a dask scheduler"),
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not as a dask scheduler"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00abc", "sent nothing a dask scheduler sends"),  # a frame cut short
], indirect=["listener"])
def test_silent_or_garbage_scheduler_is_one_line_quickly(listener: int, expect: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTER_ATLAS_SCHEDULER_TIMEOUT_S", "1")
    t0 = time.monotonic()
    line = _one_line(capsys, ["scan", str(SAMPLE), "--out", str(tmp_path / "idx"),
                              "--scheduler", f"tcp://127.0.0.1:{listener}"])
    assert expect in line, line
    assert time.monotonic() - t0 < 15  # dask's own Client waited forever here
    assert not (tmp_path / "idx").exists()


def test_probe_accepts_a_real_scheduler() -> None:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster):
        address = parse_scheduler(cluster.scheduler_address)
        probe(address, timeout=5)  # no error: a dask scheduler speaks first with a small handshake
        assert address.scheme == "tcp" and address.host == "127.0.0.1"


def test_bad_out_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    for out, expect in [(file, "not a directory"), (file / "idx", "which is a file"),
                        (Path("/proc/atlas-idx"), "kernel filesystem")]:
        assert expect in _one_line(capsys, ["scan", str(SAMPLE), "--out", str(out), "--scheduler", "synchronous"])
    assert file.read_text() == "x"


def test_fifo_root_is_refused_not_total_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    line = _one_line(capsys, ["scan", str(fifo), "--out", str(tmp_path / "idx"), "--scheduler", "synchronous"])
    assert "not a folder or a regular file" in line and not (tmp_path / "idx").exists()


def _unreadable(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """`folder` cannot be listed: chmod 000 where that binds, else (root) os.scandir refuses it as the kernel would."""
    real = os.scandir

    def scandir(path: object = ".") -> object:
        if Path(os.fspath(path)).resolve() == folder.resolve():
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_unreadable_root_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "locked"
    root.mkdir()
    _unreadable(monkeypatch, root)
    line = _one_line(capsys, ["scan", str(root), "--out", str(tmp_path / "idx"), "--scheduler", "synchronous"])
    assert "cannot list this folder (Permission denied)" in line


def test_unreadable_folder_and_fifo_inside_a_root_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    (root / "locked").mkdir(parents=True)
    os.mkfifo(root / "stuck.safetensors")  # reading it would block the scan forever
    _unreadable(monkeypatch, root / "locked")
    unlisted: list[tuple[str, str]] = []
    assert find_adapters([root], unlisted) == []
    assert sorted(unlisted) == [(str(root / "locked"), "cannot list this folder (Permission denied)"),
                                (str(root / "stuck.safetensors"), "not a regular file (a FIFO, socket or device)")]
    assert main(["scan", str(root), "--out", str(tmp_path / "idx"), "--scheduler", "synchronous"]) == 0
    out = capsys.readouterr().out
    assert "not scanned: " + str(root / "locked") in out and "stuck.safetensors" in out


def test_parse_scheduler_forms() -> None:
    assert str(parse_scheduler("head:8786")) == "tcp://head:8786"
    assert str(parse_scheduler("tls://[::1]:8786")) == "tls://[::1]:8786"
    with pytest.raises(AtlasError):
        parse_scheduler("tcp://host")

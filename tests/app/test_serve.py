"""`adapter-atlas serve`: the streamlit command line and the environment handed to the app."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from analysis.cli import build_parser
from analysis.commands import serve
from analysis.errors import AtlasError


def test_defaults_are_local_and_headless() -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.adapters) == ("127.0.0.1", 8501, [])
    cmd = serve.streamlit_command(host=args.host, port=args.port)
    assert cmd[:4] == [sys.executable, "-m", "streamlit", "run"] and cmd[4].endswith("app/streamlit_app.py")
    assert cmd[cmd.index("--server.headless") + 1] == "true"
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"


def test_port_host_paths_and_roots(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    args = build_parser().parse_args(["serve", "--port", "9123", "--host", "0.0.0.0", str(a), "--root", str(tmp_path)])
    assert serve.streamlit_command(host=args.host, port=args.port)[-3] == "9123"
    env = serve.serve_env([Path(p) for p in args.adapters], [Path(p) for p in args.root])
    assert env["ADAPTER_ATLAS_ADAPTERS"] == str(a.resolve())
    assert env["ADAPTER_ATLAS_ROOTS"].split(os.pathsep) == [str(tmp_path.resolve())]


def test_missing_adapter_path_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(AtlasError, match="adapter path not found: .*nope"):
        serve.serve_env([tmp_path / "nope"], [])

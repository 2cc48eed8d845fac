"""`adapter-atlas serve`: start the Streamlit app headless on the sample adapters (or the paths given).

The app lives in `app/`; this command only builds the `streamlit run` command line and execs it. It runs from
`app/` so that `app/.streamlit/config.toml` applies, and passes explicit adapter paths and allowed
server roots through environment variables the app reads (`ADAPTER_ATLAS_ADAPTERS`,
`ADAPTER_ATLAS_ROOTS`), because Streamlit owns the script's command line.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from analysis.commands import options as opt
from analysis.errors import AtlasError

log = logging.getLogger(__name__)

APP_DIR = Path(__file__).resolve().parents[2] / "app"


def streamlit_command(*, host: str, port: int) -> list[str]:
    # Visitors never see tracebacks (server paths, code): the app shows its own one-line error boxes.
    # Also in app/.streamlit/config.toml; repeated here so a stray config elsewhere cannot turn it back on.
    return [sys.executable, "-m", "streamlit", "run", str(APP_DIR / "streamlit_app.py"),
            "--client.showErrorDetails", "none", "--server.headless", "true", "--server.address", host, "--server.port", str(port),
            "--browser.gatherUsageStats", "false"]


def serve_env(adapters: list[Path], roots: list[Path]) -> dict[str, str]:
    env = dict(os.environ)
    if adapters:
        missing = [str(p) for p in adapters if not p.exists()]
        if missing:
            raise AtlasError(f"serve: adapter path not found: {', '.join(missing)}")
        env["ADAPTER_ATLAS_ADAPTERS"] = os.pathsep.join(str(p.resolve()) for p in adapters)
    if roots:
        bad = [str(p) for p in roots if not p.is_dir()]
        if bad:
            raise AtlasError(f"serve: --root must be an existing folder: {', '.join(bad)}")
        env["ADAPTER_ATLAS_ROOTS"] = os.pathsep.join(str(p.resolve()) for p in roots)
    return env


def run_serve(args: argparse.Namespace) -> int:
    if not (APP_DIR / "streamlit_app.py").is_file():
        raise AtlasError(f"serve: the app is missing at {APP_DIR / 'streamlit_app.py'}")
    env = serve_env([Path(p) for p in args.adapters], [Path(p) for p in args.root])
    cmd = streamlit_command(host=args.host, port=args.port)
    print(f"Adapter Atlas on http://{args.host}:{args.port}  (Ctrl+C stops it)", file=sys.stderr)
    log.debug("running %s", " ".join(cmd))
    if os.name == "posix":
        # Become the Streamlit server (same pid), so a signal to `adapter-atlas serve` reaches it
        # and no orphan server is left behind when a supervisor or a test stops us.
        os.chdir(APP_DIR)
        sys.stderr.flush()
        os.execve(cmd[0], cmd, env)
    return subprocess.call(cmd, cwd=APP_DIR, env=env)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="start the web app (Streamlit) on the sample adapters",
                              description="Start the Adapter Atlas web app, headless, on 127.0.0.1 unless told otherwise.")
    p.add_argument("adapters", nargs="*", metavar="ADAPTER",
                   help="adapter directories or files to open (default: the sample adapters)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=opt.PORT, default=8501, help="port (default 8501)")
    p.add_argument("--root", action="append", default=[], metavar="DIR",
                   help="folder users may open from the browser (repeatable; default: ADAPTER_ATLAS_ROOTS "
                        "or the bundled adapter folders)")
    p.set_defaults(func=run_serve)

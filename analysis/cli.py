"""The `adapter-atlas` command: parses arguments and calls the library, nothing more.

Each command group lives in `analysis/commands/<name>.py` and exposes `register(subparsers)`,
which adds its parser and sets `func` to a function taking the parsed namespace and returning an
exit code. User errors (`AtlasError`) become one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

from analysis._version import __version__
from analysis.errors import AtlasError

COMMAND_MODULES = ("inspect", "overlap", "cluster", "evaluate", "merge", "review", "serve", "scan", "neighbors", "families", "compact", "plan",
                   "consolidate")


def _requested_command(argv: list[str]) -> str | None:
    """The command named on the line, so only its module is imported (torch costs seconds)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMAND_MODULES else None
    return None


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (`adapter-atlas COMMAND: error: ...`), exit 2; `--help` unchanged."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="adapter-atlas",
        description="Inspect, compare, cluster, merge and review LoRA/PEFT adapters of one base model.",
    )
    parser.add_argument("--version", action="version", version=f"adapter-atlas {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                               parser_class=OneLineErrorParser)
    for name in (only,) if only else COMMAND_MODULES:
        importlib.import_module(f"analysis.commands.{name}").register(sub)
    return parser



def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_requested_command(argv))
    args = parser.parse_args(argv)  # argparse itself exits 2 on bad usage
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except AtlasError as exc:
        print(f"adapter-atlas: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("adapter-atlas: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

"""What every numeric command-line option accepts, declared once and checked by argparse.

Why one declaration: options used to be checked one by one in each command, or not at all, so `--k 0`,
`--lr nan` or `--threads 100000` reached the library (a scikit-learn traceback, training on NaN, a SIGSEGV
in torch's thread pool). A `Number` is an argparse `type=`: it parses the text, refuses NaN and infinities,
and checks the declared range, so a bad value is one line (`adapter-atlas plan: error: argument --threads:
...`, exit 2) before any file is read. Bounds that depend on the machine (threads, workers) are functions
of the core count, evaluated when the option is parsed. Bounds that depend on the data (an export rank
against a module's width) are checked by the library once the data is loaded.

`tests/test_cli_options.py` walks every subcommand's parser and refuses a bare `type=int` / `type=float`,
so a new option cannot skip this rule.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from typing import Callable

Bound = float | Callable[[], float] | None

# a few threads per core still helps I/O-bound work; far beyond that torch and dask only thrash (or crash)
THREADS_PER_CORE = 4


def cores() -> int:
    """Cores this process may use (the affinity mask where the OS has one, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def max_threads() -> int:
    return cores() * THREADS_PER_CORE


@dataclass(frozen=True)
class Number:
    """An int or float option: finite, within [low, high] (an end excluded where `open_low`/`open_high`)."""

    kind: type  # int | float
    low: Bound = None
    high: Bound = None
    open_low: bool = False
    open_high: bool = False
    why: str = ""  # appended to a range refusal: what the bound stands for

    @property
    def __name__(self) -> str:  # argparse names the type in some messages
        return self.kind.__name__

    def bounds(self) -> tuple[float | None, float | None]:
        return tuple(b() if callable(b) else b for b in (self.low, self.high))  # type: ignore[return-value]

    def describe(self) -> str:
        """`a whole number from 1 to 8` / `a finite number above 0 and at most 10`."""
        low, high = self.bounds()
        noun = "a whole number" if self.kind is int else "a finite number"
        parts = []
        if low is not None:
            parts.append(f"above {_show(low)}" if self.open_low else f"at least {_show(low)}")
        if high is not None:
            parts.append(f"below {_show(high)}" if self.open_high else f"at most {_show(high)}")
        if self.kind is int and low is not None and high is not None and not (self.open_low or self.open_high):
            return f"{noun} from {_show(low)} to {_show(high)}"
        return noun + (" " + " and ".join(parts) if parts else "")

    def __call__(self, text: str) -> int | float:
        value = self.parse(text)
        low, high = self.bounds()
        too_low = low is not None and (value <= low if self.open_low else value < low)
        too_high = high is not None and (value >= high if self.open_high else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(
                f"{_show(value)} is out of range: expected {self.describe()}" + (f" ({self.why})" if self.why else ""))
        return value

    def parse(self, text: str) -> int | float:
        shown = str(text)[:40]
        try:
            if self.kind is int:
                return int(str(text).strip(), 10)
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"invalid {self.kind.__name__} value {shown!r}: expected "
                                             f"{self.describe()}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{shown!r} is not a finite number: expected {self.describe()}")
        return value


def _show(x: float) -> str:
    if isinstance(x, int) or float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:g}"


def count(high: Bound = 10**6, *, low: int = 1, why: str = "") -> Number:
    """A whole number of things, at least `low` (1 unless said)."""
    return Number(int, low, high, why=why)


def fraction(*, open_low: bool = False, open_high: bool = False, high: float = 1.0, why: str = "") -> Number:
    """A finite number in [0, high] (ends excluded on request)."""
    return Number(float, 0.0, high, open_low=open_low, open_high=open_high, why=why)


# shared declarations: the same option means the same range in every command
THREADS = count(max_threads, why=f"{THREADS_PER_CORE} x the {cores()} cores of this machine")
WORKERS = count(max_threads, why=f"{THREADS_PER_CORE} x the {cores()} cores of this machine")
SEED = count(2**32 - 1, low=0)
EVAL_LIMIT = count(10**7)
BATCH = count(4096)
LEARNING_RATE = Number(float, 0.0, 10.0, open_low=True)
EXPORT_RANK = count(None)  # the library refuses a rank wider than every module, naming its width
PORT = count(65535)


def numeric_actions(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.Action]]:
    """(command path, action) for every option of `parser` and its subcommands that parses a number."""
    found: list[tuple[str, argparse.Action]] = []
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk of its actions
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for name, sub in action.choices.items():
                found += [(f"{name} {path}".strip(), a) for path, a in numeric_actions(sub)]
        elif action.type in (int, float) or isinstance(action.type, Number):
            found.append(("", action))
    return found

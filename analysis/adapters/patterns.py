"""PEFT's `rank_pattern` / `alpha_pattern` matching, in time bounded by the input, never by the pattern.

PEFT (peft/utils/other.py `get_pattern_key`, 0.21) picks the first key of the dict, in order, for which
`re.match(rf"(.*\\.)?({key})$", module_key)` succeeds, i.e. the pattern matches a dotted suffix of
the module's path. Those patterns come from the adapter's own config, and Python's backtracking engine
holds the GIL while it runs: a 1 KB config with `(a+)+b` froze the whole server, and no thread timeout
can interrupt it. So patterns are never given to Python's `re` matcher here:

- *literal* patterns (letters, digits, `_`, `-` and `.`; what PEFT writes almost always) are matched
  by plain string comparison against the key's dotted suffixes, with `.` as PEFT's regex wildcard;
- every other pattern is compiled with RE2 (google-re2), whose matching time is linear in the key
  length whatever the pattern; constructs RE2 cannot run in linear time (backreferences, lookaround)
  are refused with one line. Python's `re.compile` still checks each pattern is one PEFT could use.
- the regex work a config may cause is bounded (`REGEX_WORK_BUDGET` characters scanned), so sheer
  volume (many patterns times many long names) ends in a clear refusal, not a long stall.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Generic, Mapping, TypeVar

import re2

from analysis.adapters.safe_text import short_repr as _short
from analysis.errors import AdapterFormatError, ResourceLimitError

T = TypeVar("T")

LITERAL = re.compile(r"^[A-Za-z0-9_\-.]+$")
MAX_PATTERNS = 10_000
MAX_PATTERN_CHARS = 1_000
#: characters of module names RE2 may scan for one table (each evaluation also counts a fixed 100).
REGEX_WORK_BUDGET = 20_000_000
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.max_mem = 32 << 20


def dotted_suffixes(key: str) -> dict[int, str]:
    """{length: suffix} of `key` and of every part after a '.' (each length occurs once)."""
    out = {len(key): key}
    for i, ch in enumerate(key):
        if ch == ".":
            out[len(key) - i - 1] = key[i + 1:]
    return out


def _literal_match(pattern: str, suffixes: dict[int, str]) -> bool:
    s = suffixes.get(len(pattern))
    return s is not None and all(p == c or p == "." for p, c in zip(pattern, s))


class PatternTable(Generic[T]):
    """One validated `rank_pattern` or `alpha_pattern`: `lookup(module_key, default)` per PEFT's rule."""

    def __init__(self, patterns: Mapping[str, T], *, field: str = "pattern", source: Path | str = "config") -> None:
        if len(patterns) > MAX_PATTERNS:
            raise AdapterFormatError(f"{source}: {field} has {len(patterns)} entries (at most {MAX_PATTERNS})")
        self.field, self.source = field, source
        self._entries: list[tuple[str, T, re2._Regexp | None]] = []
        for pattern, value in patterns.items():
            self._entries.append((pattern, value, self._compile(pattern)))
        self._work = 0

    def _compile(self, pattern: object) -> re2._Regexp | None:
        where = f"{self.source}: {self.field} key {_short(pattern)}"
        if not isinstance(pattern, str) or not pattern:
            raise AdapterFormatError(f"{where}: must be a non-empty string")
        if len(pattern) > MAX_PATTERN_CHARS:
            raise AdapterFormatError(f"{where}: {len(pattern)} characters (at most {MAX_PATTERN_CHARS})")
        if LITERAL.match(pattern):
            return None
        full = rf"(.*\.)?({pattern})$"
        try:
            re.compile(full)
        except (re.error, OverflowError, RecursionError, ValueError) as exc:
            raise AdapterFormatError(f"{where}: not a valid regular expression ({_short(str(exc), 120)})") from None
        try:
            return re2.compile(full, _RE2_OPTIONS)
        except re2.error as exc:
            why = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
            raise AdapterFormatError(f"{where}: cannot be matched in linear time ({_short(why, 120)}); use plain "
                                     "module names or regexes without backreferences/lookaround") from None

    def lookup(self, module_key: str, default: T) -> T:
        """Value of the first pattern (dict order) matching a dotted suffix of `module_key`, else `default`."""
        suffixes: dict[int, str] | None = None
        for pattern, value, compiled in self._entries:
            if compiled is None:
                suffixes = suffixes if suffixes is not None else dotted_suffixes(module_key)
                if _literal_match(pattern, suffixes):
                    return value
                continue
            self._work += len(module_key) + 100
            if self._work > REGEX_WORK_BUDGET:
                raise ResourceLimitError(f"{self.source}: {self.field} needs more than {REGEX_WORK_BUDGET} "
                                         "characters of regex matching over this adapter's module names; "
                                         "use fewer regex patterns")
            if compiled.match(module_key):
                return value
        return default

    def __len__(self) -> int:
        return len(self._entries)


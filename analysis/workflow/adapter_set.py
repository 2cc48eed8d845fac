"""`AdapterSet`: the inputs of one analysis or merge, in input order, with everything the faces share.

One place decides what an adapter is called on screen and in files (unique display names: the
shortest path suffix that tells equal directory names apart, `run1/adapter` vs `run2/adapter`),
which hash identifies it (`Adapter.sha256`, the one recipes record), and how its modules line up
(the layer/module-type index in model order). The adapters inside carry their display name, so
every table built from them has one row per input even when two folders share a name.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

from analysis.adapters.model import Adapter, adapter_list
from analysis.errors import AdapterFormatError, IncompatibleAdaptersError


def _leaf(p: Path) -> Path:
    """The path a name is built from: a PEFT weights file is named by its directory."""
    return p.parent if p.is_file() and p.name.startswith("adapter_model.") else p


def display_names(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Directory name (file stem for a file) of each path; where two collide, add parent folders until
    they differ (the shortest distinguishing suffix); the same path given twice gets `#2`, `#3`."""
    given = [_leaf(Path(p).resolve()) for p in paths]
    resolved = list(dict.fromkeys(given))  # the same path twice is told apart by number, not by parents

    def name(p: Path, depth: int) -> str:
        parents = [q.name for q in p.parents][:depth][::-1]
        return "/".join([*(x for x in parents if x), p.stem if p.is_file() else p.name])

    depth = [0] * len(resolved)
    names = [name(p, 0) for p in resolved]
    for _ in range(max((len(p.parts) for p in resolved), default=0) + 1):
        clashes = {n for n in names if names.count(n) > 1}
        if not clashes:
            break
        depth = [d + 1 if n in clashes else d for n, d in zip(names, depth)]
        names = [name(p, d) for p, d in zip(resolved, depth)]
    by_path = dict(zip(resolved, names))
    return _numbered([by_path[p] for p in given])


def _numbered(names: Sequence[str]) -> list[str]:
    """Names still equal (the same path twice) get `#2`, `#3` in input order."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


@dataclass(frozen=True)
class AdapterSet:
    """Adapters in input order (index i is input i everywhere), each renamed to its display name.

    `allow_different_bases`: the user accepts inputs trained on different base models (a merge refuses them
    otherwise; recorded in the recipe as `force`)."""

    adapters: tuple[Adapter, ...]
    allow_different_bases: bool = False

    @classmethod
    def of(cls, inputs: "AdapterSet | Sequence[Adapter]") -> "AdapterSet":
        """The library's one input type, read as every job reads it (`analysis.adapters.adapter_list`): an
        `AdapterSet` as it is, or a list of loaded Adapters, kept as they are when their names are unique
        (else renamed to their display names, `from_adapters`)."""
        if isinstance(inputs, AdapterSet):
            return inputs
        items = adapter_list(inputs)
        if len({a.name for a in items}) == len(items):
            return cls(tuple(items))
        return cls.from_adapters(items)

    @classmethod
    def from_paths(cls, paths: Sequence[str | os.PathLike[str]], *, loader=None,  # noqa: ANN001
                   allow_different_bases: bool = False) -> "AdapterSet":
        """Load every path (`loader(path, name=)`, default `load_adapter`); a missing path is one error line."""
        if loader is None:
            from analysis.adapters import load_adapter as loader
        for p in paths:
            if not Path(p).exists():
                raise AdapterFormatError(f"{p}: no such file or directory")
        names = display_names(paths)
        return cls(tuple(loader(Path(p), name=n) for p, n in zip(paths, names)), allow_different_bases)

    @classmethod
    def from_adapters(cls, adapters: Sequence[Adapter], *, allow_different_bases: bool = False) -> "AdapterSet":
        """Loaded adapters (e.g. shared read-only by the app's cache), renamed by copy, never in place."""
        names = display_names([a.path for a in adapters])
        return cls(tuple(a if a.name == n else dataclasses.replace(a, name=n, _sha256=a.sha256)
                         for a, n in zip(adapters, names)), allow_different_bases)

    def __len__(self) -> int:
        return len(self.adapters)

    def __getitem__(self, i: int) -> Adapter:
        return self.adapters[i]

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.adapters]

    @property
    def sha256s(self) -> list[str]:
        """The one content hash per input (`Adapter.sha256`, as in recipes)."""
        return [a.sha256 for a in self.adapters]

    @cached_property
    def modules(self) -> list[str]:
        """Every module any input has, in model order."""
        return self.model_order(set().union(*(a.modules for a in self.adapters)) if self.adapters else set())

    @cached_property
    def shared(self) -> list[str]:
        """Modules every input has, in model order."""
        if not self.adapters:
            return []
        common = set(self.adapters[0].modules)
        for a in self.adapters[1:]:
            common &= set(a.modules)
        return self.model_order(common)

    @cached_property
    def index(self) -> dict[str, tuple[int | str, str]]:
        """(layer, module type) of every module, in model order."""
        from analysis.overlap import parse_module_name

        return {m: parse_module_name(m) for m in self.modules}

    @property
    def layers(self) -> list[int | str]:
        from analysis.overlap import layer_sort_key

        return sorted({lt[0] for lt in self.index.values()}, key=layer_sort_key)

    @property
    def module_types(self) -> list[str]:
        return sorted({lt[1] for lt in self.index.values()})

    @staticmethod
    def model_order(modules: Sequence[str] | set[str]) -> list[str]:
        """Module names as the model runs them (layer 2 before layer 10)."""
        from analysis.overlap import layer_sort_key, parse_module_name

        def key(name: str) -> tuple:
            layer, kind = parse_module_name(name)
            return layer_sort_key(layer), kind, name

        return sorted(modules, key=key)

    def require_shared(self) -> list[str]:
        """The shared modules, or one error line when the inputs share none (nothing to merge or compare)."""
        if not self.shared:
            raise IncompatibleAdaptersError(
                f"adapters {', '.join(self.names)} share no module: there is nothing to merge or compare")
        return self.shared


def most_overlapping(similarity: "Sequence[Sequence[float]]", k: int = 3) -> list[int]:
    """Indices (in set order) of a small starting selection: the most similar pair, then, while fewer than
    `k`, the adapter with the highest mean similarity to those already chosen. A merge is most worth
    previewing where adapters collide."""
    import numpy as np

    m = np.asarray(similarity, dtype=float)  # (N, N)
    n = m.shape[0]
    if n <= 2:
        return list(range(n))
    off = np.where(np.eye(n, dtype=bool), -np.inf, np.nan_to_num(m, nan=-np.inf))
    i, j = np.unravel_index(int(np.argmax(off)), off.shape)
    chosen = [int(i), int(j)]
    while len(chosen) < min(k, n):
        rest = [c for c in range(n) if c not in chosen]
        chosen.append(max(rest, key=lambda c: float(np.mean([off[c, x] for x in chosen]))))
    return sorted(chosen)

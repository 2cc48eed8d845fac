"""Which modules the inputs do not all have, and the stated rule for them (`--missing-modules`).

Adapters of one base often cover different modules (one trained `to_out.0`, another did not). Each face
says how many modules are not shared, names them, and applies one of three rules:

- `zero` (the merge default): a module an input lacks counts as a zero update from that input, so the
  merged module is built from the inputs that have it (a linear mean of A and B over three inputs is
  (A + B) / 3 there; TIES casts no sign vote for the absent input). Every module any input has is exported.
- `shared`: only the modules every input has are merged and exported; the others are left out of the
  export (the base model is unchanged there), and each input's share of energy left out is reported.
  Overlap always compares on the shared modules (a pair has no overlap where one side is absent).
- `refuse`: stop with one line naming the modules that are not shared.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from analysis.adapters.model import Adapter
from analysis.errors import IncompatibleAdaptersError

MISSING_MODULES = ("zero", "shared", "refuse")
MISSING_HELP = {
    "zero": "a module an input lacks counts as a zero update from it (merged from the inputs that have it)",
    "shared": "only modules every input has are merged and exported; the others are left out",
    "refuse": "stop when the inputs do not all have the same modules",
}
LISTED = 3  # modules named in one-line messages


@dataclass(frozen=True)
class Coverage:
    """The inputs' modules: all of them, the shared ones, and for each other module the inputs lacking it."""

    policy: str
    names: tuple[str, ...]
    modules: tuple[str, ...]
    shared: tuple[str, ...]
    missing: dict[str, tuple[int, ...]]  # module -> indices of the inputs that lack it
    left_out_energy: tuple[float, ...] = ()  # `shared`: each input's share of ||dW||^2 in the modules left out

    @property
    def not_shared(self) -> list[str]:
        return sorted(self.missing)

    def line(self, action: str | None = None) -> str:
        """One sentence for a summary: how many modules are not shared, which, and what was done with them."""
        if not self.missing:
            return f"modules: all {len(self.modules)} modules are shared by every input"
        listing = ", ".join(self.not_shared[:LISTED]) + (f" and {len(self.missing) - LISTED} more"
                                                         if len(self.missing) > LISTED else "")
        lacking = sorted({self.names[i] for idx in self.missing.values() for i in idx})
        what = action or {"zero": "treated as zero for the inputs that lack them",
                          "shared": "left out of the merge and the export",
                          "refuse": "refused"}[self.policy]
        return (f"modules: {len(self.missing)} of {len(self.modules)} not shared by every input ({listing}; "
                f"lacking in {', '.join(lacking)}): {what}")

    def summary(self) -> dict[str, Any]:
        """JSON for preview.json / --json: the rule, counts, and every module that is not shared."""
        out: dict[str, Any] = {"policy": self.policy, "rule": MISSING_HELP[self.policy], "total": len(self.modules),
                               "shared": len(self.shared),
                               "not_shared": [{"module": m, "lacking": [self.names[i] for i in self.missing[m]]}
                                              for m in self.not_shared]}
        if self.left_out_energy:
            out["left_out_energy"] = {n: e for n, e in zip(self.names, self.left_out_energy)}
        return out


def module_coverage(adapters: Sequence[Adapter], policy: str = "zero") -> Coverage:
    """The coverage of `adapters` under `policy`; `refuse` raises one line naming the modules not shared."""
    if policy not in MISSING_MODULES:
        raise IncompatibleAdaptersError(f"missing-modules rule '{policy}' is not one of {', '.join(MISSING_MODULES)}")
    names = tuple(a.name for a in adapters)
    every = sorted(set().union(*(a.modules for a in adapters))) if adapters else []
    missing = {m: tuple(i for i, a in enumerate(adapters) if m not in a.modules) for m in every}
    missing = {m: idx for m, idx in missing.items() if idx}
    shared = tuple(m for m in every if m not in missing)
    energy: tuple[float, ...] = ()
    if policy == "shared" and missing:
        energy = tuple(_share(a, set(missing)) for a in adapters)
    cov = Coverage(policy, names, tuple(every), shared, missing, energy)
    if policy == "refuse" and missing:
        raise IncompatibleAdaptersError(cov.line().replace(": refused", ": refused (--missing-modules refuse)")
                                        + "; choose another --missing-modules rule to go on")
    return cov


def _share(adapter: Adapter, left_out: set[str]) -> float:
    """Share of the adapter's ||dW||_F^2 that lies in the modules `left_out`."""
    norms = {m: d.frobenius_norm() ** 2 for m, d in adapter.modules.items()}
    total = sum(norms.values())
    return sum(v for m, v in norms.items() if m in left_out) / total if total > 0 else 0.0


def restrict(adapters: Sequence[Adapter], coverage: Coverage) -> tuple[Adapter, ...]:
    """The adapters with only the shared modules (copies; each keeps its content hash) for the `shared` rule."""
    keep = set(coverage.shared)
    return tuple(a if set(a.modules) <= keep else
                 dataclasses.replace(a, modules={m: d for m, d in a.modules.items() if m in keep}, _sha256=a.sha256)
                 for a in adapters)

"""What a format parser hands back to `load_adapter` before it becomes an `Adapter`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.adapters.model import Delta, ExtraTensor
from analysis.adapters.safetensors_io import TensorSource
from analysis.errors import AdapterFormatError


@dataclass
class Parsed:
    """Modules, extras and warnings of one weights file, plus what the format knows about its origin."""

    format: str
    modules: dict[str, Delta] = field(default_factory=dict)
    extras: dict[str, ExtraTensor] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    base_model: str | None = None

    #: canonical module name -> the tensor key it was read from (to name both keys of a duplicate)
    origins: dict[str, str] = field(default_factory=dict)

    def put_module(self, path: Path, name: str, key: str, delta: Delta) -> None:
        """Add a module, refusing a second one under the same canonical name (naming both tensors)."""
        if name in self.modules:
            raise AdapterFormatError(f"{path}: tensors '{self.origins[name]}' and '{key}' both hold module "
                                     f"'{name}': the module is stored twice")
        self.modules[name] = delta
        self.origins[name] = key

    def add_extra(self, src: TensorSource, key: str, kind: str) -> None:
        self.extras[key] = ExtraTensor(key=key, kind=kind, shape=tuple(src.shape(key)), dtype=src.dtype(key))

"""What a format parser hands back to `load_adapter` before it becomes an `Adapter`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from analysis.adapters.model import Delta, ExtraTensor
from analysis.adapters.safetensors_io import TensorSource


@dataclass
class Parsed:
    """Modules, extras and warnings of one weights file, plus what the format knows about its origin."""

    format: str
    modules: dict[str, Delta] = field(default_factory=dict)
    extras: dict[str, ExtraTensor] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    base_model: str | None = None

    def add_extra(self, src: TensorSource, key: str, kind: str) -> None:
        self.extras[key] = ExtraTensor(key=key, kind=kind, shape=tuple(src.shape(key)), dtype=src.dtype(key))

"""Reading every adapter format into one factored model."""
from analysis.adapters.model import Adapter, DenseDelta, Delta, ExtraTensor, LowRankDelta

__all__ = ["Adapter", "DenseDelta", "Delta", "ExtraTensor", "LowRankDelta", "load_adapter"]


def load_adapter(path, *, name=None):  # noqa: ANN001 - replaced by the real loader below
    from analysis.adapters.load import load_adapter as _load

    return _load(path, name=name)

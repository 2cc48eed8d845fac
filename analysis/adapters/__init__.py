"""Reading every adapter format into one factored model."""
from analysis.adapters.describe import describe_adapter
from analysis.adapters.load import detect_format, load_adapter
from analysis.adapters.model import Adapter, Delta, DenseDelta, ExtraTensor, LowRankDelta

__all__ = ["Adapter", "DenseDelta", "Delta", "ExtraTensor", "LowRankDelta", "load_adapter", "detect_format",
           "describe_adapter"]

"""Reading every adapter format into one factored model."""
from analysis.adapters.describe import describe_adapter
from analysis.adapters.limits import check_dense_budget
from analysis.adapters.load import detect_format, load_adapter
from analysis.adapters.model import Adapter, Delta, DenseDelta, ExtraTensor, LowRankDelta, adapter_list
from analysis.adapters.safe_text import markdown_text, plain_text

__all__ = ["Adapter", "DenseDelta", "Delta", "ExtraTensor", "LowRankDelta", "load_adapter", "detect_format",
           "describe_adapter", "check_dense_budget", "plain_text", "markdown_text", "adapter_list"]

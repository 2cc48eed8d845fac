"""Consolidation: N task adapters into one by short mixed-task fine-tuning, with or without core isolation."""
from analysis.consolidate.train import STRATEGIES, ConsolidateConfig, Consolidated, consolidate

__all__ = ["STRATEGIES", "ConsolidateConfig", "Consolidated", "consolidate"]

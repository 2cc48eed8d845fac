"""Consolidation: N task adapters into one by short mixed-task fine-tuning, with or without core isolation."""
from analysis.consolidate.arms import ARMS, STRATEGIES
from analysis.consolidate.train import ConsolidateConfig, Consolidated, consolidate

__all__ = ["ARMS", "STRATEGIES", "ConsolidateConfig", "Consolidated", "consolidate"]

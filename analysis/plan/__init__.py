"""The merge planner: partition adapters into the fewest merge groups that keep every task."""
from analysis.plan.planner import Plan, Planner, Trial

__all__ = ["Plan", "Planner", "Trial"]

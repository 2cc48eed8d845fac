"""Merge methods: one registry, one module per method, all working per module on dW.

Importing this package registers every method; `merge_adapters` runs one by name.
"""
from analysis.merge import isolation, knots, linear, orthogonal, slerp, sparsify, svd, tsv  # noqa: F401 - register
from analysis.merge.api import check_compatible, merge_adapters
from analysis.merge.registry import METHODS, MergeMethod, MergeResult, Param, describe_methods, get_method

__all__ = ["METHODS", "MergeMethod", "MergeResult", "Param", "check_compatible", "describe_methods",
           "get_method", "merge_adapters"]

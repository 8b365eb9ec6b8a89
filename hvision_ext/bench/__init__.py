"""Kernel benchmarks: ``python -m hvision_ext.bench`` (``--help`` for the options).

A case is registered per operator with ``@bench_case`` (see ``registry``); each operator's cases
live in a module here named after it, imported below so that they register.
"""

from . import (  # noqa: F401  (importing registers their cases)
    hopfield_retrieval,  # noqa: F401
    merge_tokens,
    motion_saliency,
    selective_scan,  # noqa: F401  (importing it registers its cases)
    sparse_attention,  # noqa: F401
)
from .registry import BenchCase, CaseSpec, all_cases, bench_case, select_cases
from .timing import Timing, copy_bandwidth, time_impl, time_impls

__all__ = [
    "BenchCase",
    "CaseSpec",
    "Timing",
    "all_cases",
    "bench_case",
    "copy_bandwidth",
    "select_cases",
    "time_impl",
    "time_impls",
]

"""The fused operators. Each is a ``torch.ops.hvision`` custom op behind a Python function that
takes the documented arguments; see ``hvision_ext.reference`` for the exact semantics."""

from .hopfield_retrieval import hopfield_retrieval
from .merge_tokens import merge_tokens, unmerge_tokens
from .motion_saliency import motion_saliency
from .selective_scan import selective_scan
from .sparse_attention import local_global_attention, sparse_attention, strided_attention

__all__ = [
    "hopfield_retrieval",
    "local_global_attention",
    "merge_tokens",
    "motion_saliency",
    "selective_scan",
    "sparse_attention",
    "strided_attention",
    "unmerge_tokens",
]

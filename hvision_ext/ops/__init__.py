"""The fused operators. Each is a ``torch.ops.hvision`` custom op behind a Python function that
takes the documented arguments; see ``hvision_ext.reference`` for the exact semantics."""

from .merge_tokens import merge_tokens, unmerge_tokens
from .motion_saliency import motion_saliency
from .selective_scan import selective_scan

__all__ = ["merge_tokens", "motion_saliency", "selective_scan", "unmerge_tokens"]

"""Pure-PyTorch references of every operator: the same signatures as ``hvision_ext.ops``,
written for clarity. They define the semantics and are what the kernels are tested against."""

from .merge_tokens import merge_tokens, unmerge_tokens
from .motion_saliency import motion_saliency
from .selective_scan import selective_scan

__all__ = ["merge_tokens", "motion_saliency", "selective_scan", "unmerge_tokens"]

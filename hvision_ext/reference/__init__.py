"""Pure-PyTorch references of every operator: the same signatures as ``hvision_ext.ops``,
written for clarity. They define the semantics and are what the kernels are tested against."""

from .hopfield_retrieval import hopfield_retrieval
from .selective_scan import selective_scan

__all__ = ["hopfield_retrieval", "selective_scan"]

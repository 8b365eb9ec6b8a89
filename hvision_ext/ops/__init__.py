"""The fused operators. Each is a ``torch.ops.hvision`` custom op behind a Python function that
takes the documented arguments; see ``hvision_ext.reference`` for the exact semantics."""

from .hopfield_retrieval import hopfield_retrieval
from .selective_scan import selective_scan

__all__ = ["hopfield_retrieval", "selective_scan"]

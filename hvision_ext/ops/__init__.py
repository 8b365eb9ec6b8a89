"""The fused operators. Each is a ``torch.ops.hvision`` custom op behind a Python function that
takes the documented arguments; see ``hvision_ext.reference`` for the exact semantics."""

from .selective_scan import selective_scan

__all__ = ["selective_scan"]

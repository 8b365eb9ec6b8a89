"""hvision-ext: fused CPU and CUDA kernels for efficient vision and video models.

``hvision_ext.ops`` holds the operators (each a ``torch.library`` custom op with CPU and CUDA
kernels, autograd and a fake kernel for ``torch.compile``); ``hvision_ext.reference`` holds
pure-PyTorch versions with the same signatures that define their semantics.
"""

from ._library import load_library
from ._switch import reference_enabled, use_reference

load_library()

from . import ops, reference  # noqa: E402  (ops need the library loaded)
from .ops import (  # noqa: E402
    hopfield_retrieval,
    local_global_attention,
    merge_tokens,
    motion_saliency,
    selective_scan,
    sparse_attention,
    strided_attention,
    unmerge_tokens,
)

__version__ = "0.1.0"
__all__ = [
    "hopfield_retrieval",
    "local_global_attention",
    "merge_tokens",
    "motion_saliency",
    "ops",
    "reference",
    "reference_enabled",
    "selective_scan",
    "sparse_attention",
    "strided_attention",
    "unmerge_tokens",
    "use_reference",
]

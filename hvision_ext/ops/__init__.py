"""The fused operators. Each is a ``torch.ops.hvision`` custom op behind a Python function with
the signature of its reference in ``hvision_ext.reference``, which defines its semantics.
Importing this package loads the compiled library."""

from .._library import load_library

load_library()

# The ops bind to the library's operators when imported; they are exported under the names of
# the references (__all__), which ruff cannot read off a name.
from .. import reference  # noqa: E402
from .hopfield_retrieval import hopfield_retrieval  # noqa: E402, F401
from .merge_tokens import merge_tokens, unmerge_tokens  # noqa: E402, F401
from .motion_saliency import motion_saliency  # noqa: E402, F401
from .selective_scan import selective_scan  # noqa: E402, F401
from .sparse_attention import (  # noqa: E402, F401
    local_global_attention,
    sparse_attention,
    strided_attention,
)

__all__ = reference.__all__

"""hvision-ext: fused CPU and CUDA kernels for efficient vision and video models.

``hvision_ext.ops`` holds the operators (each a ``torch.library`` custom op with CPU and CUDA
kernels, autograd and a fake kernel for ``torch.compile``); ``hvision_ext.reference`` holds
pure-PyTorch versions with the same signatures that define their semantics. The compiled library
is loaded with ``hvision_ext.ops`` (or ``cpu_isa()``, ``cpu_gemm()``), on first use: the
references import without it.
"""

import importlib

from . import reference
from ._library import cpu_gemm, cpu_isa
from ._switch import reference_enabled, use_reference

__version__ = "0.1.0"
__all__ = [
    "cpu_gemm",
    "cpu_isa",
    "ops",
    "reference",
    "reference_enabled",
    "use_reference",
    *reference.__all__,
]


def __getattr__(name: str):
    """``hvision_ext.ops`` and the operators, imported (with the library) when first asked for."""
    if name == "ops":
        return importlib.import_module(".ops", __name__)
    if name in reference.__all__:
        return getattr(importlib.import_module(".ops", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Loads the compiled ``hvision`` operator library and checks it matches the running torch."""

import torch

_REBUILD = "pip install --no-build-isolation -e .  (from the hvision-ext checkout)"


def load_library() -> None:
    try:
        from . import _C  # noqa: F401  (importing registers the operators)
        from ._build_info import TORCH_VERSION
    except ImportError as err:
        raise ImportError(
            f"hvision_ext: the compiled operator library could not be loaded ({err}). "
            f"Build it against the installed torch {torch.__version__} with: {_REBUILD}"
        ) from err
    if TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"hvision_ext: the compiled operator library was built against torch {TORCH_VERSION} "
            f"but torch {torch.__version__} is installed. Rebuild it with: {_REBUILD}"
        )


def built_with_cuda() -> bool:
    """Whether the CUDA kernels were compiled into the library."""
    from ._build_info import WITH_CUDA

    return WITH_CUDA

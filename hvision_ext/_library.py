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


def cpu_isa() -> str:
    """The instruction set the CPU kernels run: ``"avx512"``, ``"avx2"`` or ``"baseline"``.

    The widest this CPU supports, or a lower one named by the environment variable
    ``HVISION_CPU_ISA`` when the library loads (an unknown name, or one the CPU lacks, fails the
    import with the allowed values).
    """
    load_library()
    from . import _C

    return _C.CPU_ISA


def native_cpu_isa() -> str:
    """The widest instruction set this CPU supports, whatever ``HVISION_CPU_ISA`` asks for."""
    load_library()
    from . import _C

    return _C.CPU_ISA_NATIVE


def cpu_gemm() -> str:
    """The path of the CPU kernels' tile products: ``"brgemm"`` (oneDNN's micro-kernel, through
    ATen) where they run AVX-512, else ``"blas"`` (the BLAS torch links)."""
    load_library()
    from . import _C

    return _C.cpu_gemm()


def set_cpu_gemm(path: str) -> None:
    """Switches the path of the CPU kernels' tile products (``"brgemm"`` or ``"blas"``) for the
    whole process; for timing both."""
    load_library()
    from . import _C

    _C.set_cpu_gemm(path)

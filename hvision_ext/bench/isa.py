"""Running the bench as on a CPU with a narrower instruction set.

``HVISION_CPU_ISA`` holds back hvision's own kernels only. The libraries the other
implementations run on (ATen's vectorised kernels, oneDNN, MKL, OpenCV) each read their own
switch, once, when they start. ``python -m hvision_ext.bench --isa avx2`` sets all of them to the
same instruction set and restarts the bench in that environment, so that every implementation is
compared on one instruction set. A run with only ``HVISION_CPU_ISA`` set compares hvision on that
instruction set with the others on theirs, and its header says so.
"""

import os
import sys

from .. import _library

_OPENCV_AVX512 = "AVX512F,AVX512BW,AVX512CD,AVX512DQ,AVX512VL,AVX512-SKX,AVX512-COMMON"

# Per instruction set, the variables that hold the other libraries to it. SSE4.1/4.2 is as low as
# oneDNN and MKL go; OpenCV always keeps its SSE3 baseline.
LIBRARY_LIMITS: dict[str, dict[str, str]] = {
    "avx512": {},
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "OPENCV_CPU_DISABLE": _OPENCV_AVX512,
    },
    "baseline": {
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "OPENCV_CPU_DISABLE": f"SSSE3,SSE4.1,SSE4.2,POPCNT,FP16,AVX,AVX2,FMA3,{_OPENCV_AVX512}",
    },
}
LIMIT_VARIABLES = sorted({name for limits in LIBRARY_LIMITS.values() for name in limits})


def isa_variable() -> str:
    from .. import _C

    return _C.CPU_ISA_VARIABLE


def environment_for(isa: str) -> dict[str, str]:
    """The variables that hold hvision and every other library to ``isa``."""
    if isa not in LIBRARY_LIMITS:
        raise ValueError(f"--isa: expected one of {', '.join(LIBRARY_LIMITS)}, got {isa!r}")
    return {isa_variable(): isa, **LIBRARY_LIMITS[isa]}


def restart_under(isa: str, argv: list[str]) -> None:
    """Restarts the bench with ``argv`` in the environment of ``isa``, unless it already runs in it
    (then returns)."""
    wanted = environment_for(isa)
    unwanted = [name for name in LIMIT_VARIABLES if name not in wanted and name in os.environ]
    if all(os.environ.get(name) == value for name, value in wanted.items()) and not unwanted:
        return
    environment = {k: v for k, v in os.environ.items() if k not in unwanted} | wanted
    command = [sys.executable, "-m", "hvision_ext.bench", *argv]
    print(
        f"hvision_ext.bench: restarting as on an {isa} CPU: {wanted}", file=sys.stderr, flush=True
    )
    os.execve(sys.executable, command, environment)


def limits_in_effect() -> dict[str, str]:
    """The other libraries' instruction-set variables set in this process."""
    return {name: os.environ[name] for name in LIMIT_VARIABLES if name in os.environ}


def describe() -> dict[str, object]:
    """What this process runs: hvision's instruction set and GEMM path, ATen's capability and the
    other libraries' limits."""
    import torch

    return {
        "hvision_cpu_isa": _library.cpu_isa(),
        "cpu_isa_native": _library.native_cpu_isa(),
        "hvision_cpu_gemm": _library.cpu_gemm(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": "mkl" if torch.backends.mkl.is_available() else "other",
        "library_limits": limits_in_effect(),
    }

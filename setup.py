"""Builds hvision_ext and its compiled operator library `hvision_ext._C`.

CPU kernels are always built; CUDA kernels whenever nvcc is found (no GPU is needed to compile
them). Environment switches:

  HVISION_CPU_ONLY=1           build the CPU kernels only (fast edit-compile-test loop)
  HVISION_CUDA_ARCH="8.0;9.0"  CUDA architectures to compile for (default: 8.0;9.0)
  MAX_JOBS=N                   parallel compile jobs (ninja; default: all cores)
"""

import glob
import importlib.util
import logging
import os
import shutil
from pathlib import Path

import torch
from setuptools import find_packages, setup


def default_cuda_home() -> None:
    """Points CUDA_HOME at the toolkit when it is unset: torch would otherwise derive it from the
    first nvcc on PATH, which may be a wrapper script outside the toolkit (/usr/local/bin)."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = [Path(nvcc).resolve().parent.parent] if nvcc else []
    candidates.append(Path("/usr/local/cuda"))
    for home in candidates:
        if (home / "bin" / "nvcc").is_file() and (home / "include" / "cuda_runtime.h").is_file():
            os.environ["CUDA_HOME"] = str(home)
            return


default_cuda_home()
# Building CUDA kernels on a machine with no GPU is intended: keep torch's note about it quiet.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import cpp_extension  # noqa: E402  (reads CUDA_HOME at import)

ROOT = Path(__file__).parent.resolve()
CSRC = ROOT / "csrc"
DEFAULT_CUDA_ARCH = "8.0;9.0"
# at::parallel_for is inlined into our sources: without OpenMP enabled here it runs serially.
LINK_FLAGS = ["-fopenmp"]


def want_cuda() -> bool:
    if os.environ.get("HVISION_CPU_ONLY", "0") not in ("", "0"):
        return False
    return cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None


def cuda_library_includes() -> list[str]:
    """Headers ATen's CUDA headers need (cusparse.h, cublas_v2.h) that a bare toolkit may lack:
    the pip-installed nvidia packages carry them."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    found = []
    for location in spec.submodule_search_locations:
        for header in glob.glob(os.path.join(location, "*", "include", "cusparse.h")):
            found.append(os.path.dirname(header))
    return sorted(set(found))


def extension():
    sources = sorted(str(p.relative_to(ROOT)) for p in CSRC.rglob("*.cpp"))
    # Kept in step with CMakeLists.txt. -fopenmp: see LINK_FLAGS; it also enables `omp simd`.
    # -fno-trapping-math (as torch builds with): a loop whose body selects between arithmetic
    # results (|a - b|, exp unless masked) is only vectorised without AVX-512's masked
    # instructions when GCC may compute both sides; it changes no result. -fno-tree-pre: GCC's
    # PRE otherwise turns the clamps of the vectorised exp into branches, which leaves the AVX2
    # and baseline kernels scalar. -Wno-psabi: helpers that pass GCC vectors are always inlined, so
    # the ABI change GCC warns of for them never applies.
    cxx_flags = [
        "-O3",
        "-fopenmp",
        "-fno-math-errno",
        "-fno-trapping-math",
        "-fno-tree-pre",
        "-Wno-psabi",
    ]
    if not want_cuda():
        return cpp_extension.CppExtension(
            "hvision_ext._C",
            sources,
            include_dirs=[str(CSRC)],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=LINK_FLAGS,
        )
    os.environ.setdefault(
        "TORCH_CUDA_ARCH_LIST", os.environ.get("HVISION_CUDA_ARCH", DEFAULT_CUDA_ARCH)
    )
    sources += sorted(str(p.relative_to(ROOT)) for p in CSRC.rglob("*.cu"))
    nvcc_flags = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
    return cpp_extension.CUDAExtension(
        "hvision_ext._C",
        sources,
        include_dirs=[str(CSRC), *cuda_library_includes()],
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=LINK_FLAGS,
    )


def write_build_info(with_cuda: bool) -> None:
    """Records what the library was compiled against, so importing it can tell a stale build."""
    (ROOT / "hvision_ext" / "_build_info.py").write_text(
        "# Written by setup.py at build time.\n"
        f"TORCH_VERSION = {torch.__version__!r}\n"
        f"WITH_CUDA = {with_cuda!r}\n"
    )


write_build_info(want_cuda())

setup(
    packages=find_packages(include=["hvision_ext*", "python_models*", "train*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)

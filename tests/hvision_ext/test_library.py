"""Loading the compiled library: it registers every operator, a stale build is refused, and the
CPU kernels' instruction set and GEMM path can be chosen."""

import os
import subprocess
import sys

import pytest
import torch

import hvision_ext
import hvision_ext.ops  # noqa: F401  (loads the library)
from hvision_ext import _C, _build_info, _library

OPERATORS = [
    "selective_scan_fwd",
    "selective_scan_bwd",
    "sparse_attention_fwd",
    "sparse_attention_bwd",
    "hopfield_retrieval_fwd",
    "hopfield_retrieval_bwd",
    "motion_saliency",
    "merge_tokens_fwd",
    "merge_tokens_bwd",
    "unmerge_tokens_fwd",
    "unmerge_tokens_bwd",
]


@pytest.mark.parametrize("name", OPERATORS)
def test_operators_are_registered(name):
    assert hasattr(torch.ops.hvision, name)
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"hvision::{name}", "CPU")


@pytest.mark.parametrize("name", OPERATORS)
def test_cuda_kernels_are_registered_when_built_with_cuda(name):
    if not _library.built_with_cuda():
        pytest.skip("built without CUDA kernels (HVISION_CPU_ONLY or no nvcc)")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"hvision::{name}", "CUDA")


def test_build_matches_running_torch():
    assert _build_info.TORCH_VERSION == torch.__version__
    assert isinstance(_library.built_with_cuda(), bool)


def test_library_built_for_another_torch_is_refused(monkeypatch):
    monkeypatch.setattr(_build_info, "TORCH_VERSION", "0.0.1")
    with pytest.raises(
        ImportError, match=r"built against torch 0\.0\.1 .* pip install --no-build-isolation -e \."
    ):
        _library.load_library()


def test_missing_library_says_what_to_run(monkeypatch):
    monkeypatch.delattr(hvision_ext, "_C")
    monkeypatch.setitem(sys.modules, "hvision_ext._C", None)  # makes the import fail
    with pytest.raises(
        ImportError, match="could not be loaded .* pip install --no-build-isolation -e"
    ):
        _library.load_library()


def test_the_reference_imports_without_the_library():
    # A fresh interpreter: here the library is loaded already.
    code = (
        "import sys, hvision_ext.reference, hvision_ext; "
        "assert 'hvision_ext._C' not in sys.modules, 'the library was loaded'; "
        "assert 'hvision_ext.ops' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def run_with_isa(isa: str, code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter whose kernels are asked to run ``isa``."""
    environment = os.environ | {"HVISION_CPU_ISA": isa}
    return subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True
    )


def test_cpu_isa_is_one_the_cpu_supports():
    isas = _C.CPU_ISAS
    assert hvision_ext.cpu_isa() in isas and _library.native_cpu_isa() in isas
    assert isas.index(hvision_ext.cpu_isa()) <= isas.index(_library.native_cpu_isa())


def test_cpu_isa_can_be_forced_to_baseline():
    code = (
        "import torch, hvision_ext; from hvision_ext import reference; "
        "print(hvision_ext.cpu_isa(), hvision_ext.cpu_gemm()); "
        "x = torch.randn(2, 3, 4, 5); "
        "torch.testing.assert_close(hvision_ext.ops.hopfield_retrieval(x, x, n_steps=2), "
        "reference.hopfield_retrieval(x, x, n_steps=2))"
    )
    done = run_with_isa("baseline", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["baseline", "blas"]


def test_unknown_cpu_isa_fails_the_import_naming_the_allowed_values():
    done = run_with_isa("avx3", "import hvision_ext.ops")
    assert done.returncode != 0
    assert "HVISION_CPU_ISA=avx3" in done.stderr and "baseline|avx2|avx512" in done.stderr


def test_cpu_gemm_paths_agree():
    query, stored = torch.randn(2, 2, 33, 16), torch.randn(2, 2, 300, 16)
    previous = hvision_ext.cpu_gemm()
    results = {}
    try:
        for path in ("brgemm", "blas"):
            _library.set_cpu_gemm(path)
            assert hvision_ext.cpu_gemm() == path
            results[path] = hvision_ext.ops.hopfield_retrieval(query, stored, n_steps=2)
    finally:
        _library.set_cpu_gemm(previous)
    torch.testing.assert_close(results["brgemm"], results["blas"])


def test_unknown_cpu_gemm_path_is_refused():
    with pytest.raises(ValueError, match="expected path 'brgemm' or 'blas', got 'mkl'"):
        _library.set_cpu_gemm("mkl")


def test_blas_path_uses_torchs_blas_after_decord_loads_nvblas():
    # decord loads every NVIDIA pip library into the global symbol scope, NVBLAS among them
    # where torch's CUDA wheels bring it; its sgemm_ must not be the one the kernels call.
    pytest.importorskip("decord")
    code = (
        "import torch, hvision_ext, decord; from hvision_ext import _library, reference; "
        "_library.set_cpu_gemm('blas'); "
        "x = torch.randn(2, 3, 40, 8); "
        "torch.testing.assert_close(hvision_ext.ops.local_global_attention(x, x, x, 4, 1), "
        "reference.local_global_attention(x, x, x, 4, 1)); "
        "torch.testing.assert_close(hvision_ext.ops.hopfield_retrieval(x.double(), x.double()), "
        "reference.hopfield_retrieval(x.double(), x.double()))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

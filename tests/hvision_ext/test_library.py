"""Loading the compiled library: it registers every operator, and a stale build is refused."""

import subprocess
import sys

import pytest
import torch

import hvision_ext
import hvision_ext.ops  # noqa: F401  (loads the library)
from hvision_ext import _build_info, _library

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

"""Loading the compiled library: it registers every operator, and a stale build is refused."""

import sys

import pytest
import torch

import hvision_ext
from hvision_ext import _build_info, _library


def test_operators_are_registered():
    for name in ("selective_scan_fwd", "selective_scan_bwd"):
        assert hasattr(torch.ops.hvision, name)


def test_build_matches_running_torch():
    assert _build_info.TORCH_VERSION == torch.__version__
    assert isinstance(_library.built_with_cuda(), bool)


def test_library_built_for_another_torch_is_refused(monkeypatch):
    monkeypatch.setattr(_build_info, "TORCH_VERSION", "0.0.1")
    with pytest.raises(ImportError, match=r"built against torch 0\.0\.1 .* pip install --no-build-isolation -e \."):
        _library.load_library()


def test_missing_library_says_what_to_run(monkeypatch):
    monkeypatch.delattr(hvision_ext, "_C")
    monkeypatch.setitem(sys.modules, "hvision_ext._C", None)  # makes the import fail
    with pytest.raises(ImportError, match="could not be loaded .* pip install --no-build-isolation -e"):
        _library.load_library()

"""Bench cases for ``hopfield_retrieval``: a memory read of ViT tokens (197 queries of a 224²
image at patch 16) from 1024 stored patterns per head, against the reference (matmul–softmax–
matmul per step, as ml-jku/hopfield-layers iterates) and, for one step, against
``scaled_dot_product_attention`` with scale=beta (one step is attention). On the CPU, hvision also
runs on the tile-GEMM path it does not take by default (``hvision_ext.cpu_gemm()``), as
"hvision gemm=<path>", and, with a backward pass, with its probabilities recomputed rather than
kept (``max_saved_bytes=0``), as "hvision recomputed"."""

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import reference
from .._library import cpu_gemm, set_cpu_gemm
from ..ops import hopfield_retrieval
from .registry import BenchCase, Impl, Mode, bench_case

Retrieval = Callable[..., Tensor]

VIT_MEMORY = {"batch": 8, "heads": 4, "queries": 197, "patterns": 1024, "dim": 64}


def make_inputs(
    device: torch.device,
    dtype: torch.dtype,
    *,
    batch: int,
    heads: int,
    queries: int,
    patterns: int,
    dim: int,
    shared: bool,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Standard normal queries, stored patterns and values (values of width d)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    pattern_shape = (heads, patterns, dim) if shared else (batch, heads, patterns, dim)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, device=device).to(dtype)

    return {
        "query": randn(batch, heads, queries, dim),
        "stored": randn(*pattern_shape),
        "values": randn(*pattern_shape),
    }


def sdpa_retrieval(
    query: Tensor, stored: Tensor, values: Tensor, *, beta: float, n_steps: int
) -> Tensor:
    """One Hopfield step as ``scaled_dot_product_attention`` (shared patterns broadcast)."""
    assert n_steps == 1, "SDPA computes one step"
    batch = query.shape[0]
    return F.scaled_dot_product_attention(
        query,
        stored.expand(batch, *stored.shape[-3:]),
        values.expand(batch, *values.shape[-3:]),
        scale=beta,
    )


def retrieval_call(
    retrieval: Retrieval, inputs: dict[str, Tensor], n_steps: int, mode: Mode, cotangent: Tensor
) -> Impl:
    """One call at beta = 1/sqrt(d); for fwd+bwd, also the backward of ``(out * cotangent).sum()``
    to every input (``torch.autograd.grad``, so nothing accumulates between calls)."""
    beta = inputs["query"].shape[-1] ** -0.5

    def forward() -> Tensor:
        return retrieval(**inputs, beta=beta, n_steps=n_steps)

    if mode == "fwd":
        return forward
    leaves = list(inputs.values())

    def forward_backward() -> Sequence[Tensor]:
        return torch.autograd.grad(forward(), leaves, cotangent)

    return forward_backward


def on_gemm_path(path: str, impl: Impl) -> Impl:
    """``impl`` with the CPU kernels' tile products on ``path`` (forward and backward)."""

    def run() -> object:
        previous = cpu_gemm()
        set_cpu_gemm(path)
        try:
            return impl()
        finally:
            set_cpu_gemm(previous)

    return run


def retrieval_case(
    device: torch.device, dtype: torch.dtype, mode: Mode, n_steps: int, shared: bool
) -> BenchCase:
    inputs = make_inputs(device, dtype, shared=shared, **VIT_MEMORY)
    for tensor in inputs.values():
        tensor.requires_grad_(mode == "fwd+bwd")
    gen = torch.Generator(device=device).manual_seed(1)
    cotangent = torch.randn(inputs["query"].shape, generator=gen, device=device).to(dtype)
    impls: dict[str, Retrieval] = {
        "hvision": hopfield_retrieval,
        "reference": reference.hopfield_retrieval,
    }
    if n_steps == 1:
        impls["sdpa"] = sdpa_retrieval
    calls = {
        name: retrieval_call(fn, inputs, n_steps, mode, cotangent) for name, fn in impls.items()
    }
    if device.type == "cpu":
        other_path = "blas" if cpu_gemm() == "brgemm" else "brgemm"
        calls[f"hvision gemm={other_path}"] = on_gemm_path(other_path, calls["hvision"])
        if mode == "fwd+bwd":
            recomputing = functools.partial(hopfield_retrieval, max_saved_bytes=0)
            calls["hvision recomputed"] = retrieval_call(
                recomputing, inputs, n_steps, mode, cotangent
            )
    return BenchCase(
        shape="batch {batch}, heads {heads}, Q {queries}, M {patterns}, d {dim}".format(
            **VIT_MEMORY
        )
        + f", n_steps {n_steps}",
        impls=calls,
        mode=mode,
        notes=(
            "stored/values shared across the batch (heads, M, d)"
            if shared
            else "stored/values per batch"
        )
        + ", beta 1/sqrt(d)",
    )


def register_retrieval_case(name: str, mode: Mode, n_steps: int, shared: bool) -> None:
    def build(device: torch.device, dtype: torch.dtype) -> BenchCase:
        return retrieval_case(device, dtype, mode, n_steps=n_steps, shared=shared)

    bench_case(op="hopfield_retrieval", name=name)(build)


register_retrieval_case("vit-memory-1step", "fwd+bwd", n_steps=1, shared=False)
register_retrieval_case("vit-memory-1step-fwd", "fwd", n_steps=1, shared=False)
register_retrieval_case("vit-memory-3step", "fwd+bwd", n_steps=3, shared=False)
register_retrieval_case("vit-memory-3step-fwd", "fwd", n_steps=3, shared=False)
register_retrieval_case("vit-memory-3step-shared", "fwd+bwd", n_steps=3, shared=True)

"""Bench cases for ``sparse_attention``: local-global (Longformer/BigBird) and strided (Sparse
Transformer) patterns, against dense ``scaled_dot_product_attention`` with the pattern as a
boolean mask and against compiled FlexAttention with the same pattern as a block mask; and a
length sweep showing that hvision's peak memory grows linearly in L."""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import sparse_attention
from ..reference.sparse_attention import sparse_attention_mask
from .registry import BenchCase, Impl, Mode, bench_case

Attention = Callable[[Tensor, Tensor, Tensor], Tensor]

LOCAL_GLOBAL = dict(window=128, num_global=4)
STRIDED = dict(window=63, stride=64)  # strided_attention(stride=64): band |i - j| < 64 plus stride
CPU_SIZES = dict(batch=1, heads=4, length=4096, head_dim=64)
GPU_SIZES = dict(batch=4, heads=8, length=16384, head_dim=64)
GPU_LOCAL_GLOBAL = dict(window=256, num_global=16)


def make_qkv(
    device: torch.device, dtype: torch.dtype, batch: int, heads: int, length: int, head_dim: int
) -> list[Tensor]:
    gen = torch.Generator(device=device).manual_seed(0)
    return [
        torch.randn(batch, heads, length, head_dim, generator=gen, device=device).to(dtype)
        for _ in range(3)
    ]


def hvision_attention(pattern: dict) -> Attention:
    return lambda q, k, v: sparse_attention(q, k, v, **pattern)


def masked_sdpa(pattern: dict, length: int, device: torch.device) -> Attention:
    """Dense SDPA with the pattern's (L, L) boolean mask, built once outside the timed calls."""
    mask = sparse_attention_mask(length, device=device, **pattern)
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def flex_attention(pattern: dict, length: int, device: torch.device) -> Attention | None:
    """Compiled FlexAttention with the pattern as a block mask (blocks of 128), or None when
    this torch has no FlexAttention. Compilation happens in the first (warm-up) call."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask
        from torch.nn.attention.flex_attention import flex_attention as flex
    except ImportError:
        return None
    window, stride = pattern.get("window"), pattern.get("stride")
    num_global, causal = pattern.get("num_global", 0), pattern.get("causal", False)

    def mask_mod(b, h, q_idx, kv_idx):
        allowed = (q_idx < num_global) | (kv_idx < num_global)
        if window is not None:
            allowed = allowed | ((q_idx - kv_idx).abs() <= window)
        if stride is not None:
            allowed = allowed | ((q_idx - kv_idx) % stride == 0)
        if causal:
            allowed = allowed & (kv_idx <= q_idx)
        return allowed

    block_mask = create_block_mask(mask_mod, None, None, length, length, device=device)
    compiled = torch.compile(flex)
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)


def attention_call(
    attention: Attention, qkv: Sequence[Tensor], mode: Mode, cotangent: Tensor
) -> Impl:
    """One call; for fwd+bwd also the gradients of (out * cotangent).sum() to q, k, v."""
    if mode == "fwd":
        detached = [t.detach() for t in qkv]
        return lambda: attention(*detached)

    def forward_backward() -> Sequence[Tensor]:
        return torch.autograd.grad(attention(*qkv), qkv, cotangent)

    return forward_backward


def attention_case(
    device: torch.device,
    dtype: torch.dtype,
    mode: Mode,
    sizes: dict,
    pattern: dict,
    *,
    sdpa: bool = True,
    flex: bool = True,
    notes: str = "",
) -> BenchCase:
    qkv = make_qkv(device, dtype, **sizes)
    for tensor in qkv:
        tensor.requires_grad_(mode == "fwd+bwd")
    cotangent = torch.randn(
        qkv[0].shape, generator=torch.Generator(device=device).manual_seed(1), device=device
    ).to(dtype)
    length = sizes["length"]
    attentions: dict[str, Attention] = {"hvision": hvision_attention(pattern)}
    if sdpa:
        attentions["sdpa-masked"] = masked_sdpa(pattern, length, device)
    # FlexAttention on the CPU is inference-only: its backward is not implemented there.
    flex_fn = (
        flex_attention(pattern, length, device)
        if flex and (device.type == "cuda" or mode == "fwd")
        else None
    )
    if flex_fn is not None:
        attentions["flex-compiled"] = flex_fn
    shape = "batch {batch}, heads {heads}, L {length}, head_dim {head_dim}".format(**sizes)
    terms = ", ".join(f"{name} {value}" for name, value in pattern.items())
    return BenchCase(
        shape=f"{shape}; {terms}",
        impls={name: attention_call(fn, qkv, mode, cotangent) for name, fn in attentions.items()},
        mode=mode,
        notes=notes
        or "sdpa-masked: dense SDPA with the (L, L) bool mask; flex-compiled: FlexAttention block mask",
    )


def register_pattern_cases(name: str, pattern: dict) -> None:
    for mode, suffix in (("fwd", "-fwd"), ("fwd+bwd", "")):

        def build(device: torch.device, dtype: torch.dtype, mode: Mode = mode) -> BenchCase:
            return attention_case(device, dtype, mode, CPU_SIZES, pattern)

        bench_case(op="sparse_attention", name=f"{name}{suffix}", devices=("cpu", "cuda"))(build)


register_pattern_cases("local-global", LOCAL_GLOBAL)
register_pattern_cases("strided", STRIDED)


def register_memory_case(length: int, sdpa: bool) -> None:
    def build(device: torch.device, dtype: torch.dtype) -> BenchCase:
        sizes = {**CPU_SIZES, "length": length}
        return attention_case(
            device,
            dtype,
            "fwd+bwd",
            sizes,
            LOCAL_GLOBAL,
            sdpa=sdpa,
            flex=False,
            notes="peak memory against L (linear for hvision, quadratic for dense SDPA)",
        )

    bench_case(op="sparse_attention", name=f"local-global-L{length}", devices=("cpu", "cuda"))(
        build
    )


# Dense SDPA's fp32 (L, L) scores and their gradients take 4 GiB per head-batch at L 16384.
register_memory_case(8192, sdpa=True)
register_memory_case(16384, sdpa=False)


@bench_case(op="sparse_attention", name="local-global-gpu", devices=("cuda",))
def local_global_gpu(device: torch.device, dtype: torch.dtype) -> BenchCase:
    return attention_case(device, dtype, "fwd+bwd", GPU_SIZES, GPU_LOCAL_GLOBAL, sdpa=False)

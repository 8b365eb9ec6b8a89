"""Bench cases for ``merge_tokens``: one ToMe merge of a video ViT-S layer (a class token and 8
frames x 196 patches, keys as the metric, half the tokens merged away), against the reference and
a ToMe-style PyTorch bipartite matching of the same shapes."""

import math

import torch
from torch import Tensor

from .. import reference
from ..ops import merge_tokens
from .registry import BenchCase, Impl, Mode, bench_case

VIDEO_VIT = {"batch": 8, "tokens": 1 + 8 * 196, "channels": 384, "r": 784}


def tome_merge(
    x: Tensor, metric: Tensor, r: int, class_token: bool = True
) -> tuple[Tensor, Tensor]:
    """Token merging the way ToMe's ``bipartite_soft_matching`` + ``merge_wavg`` do it in plain
    PyTorch: normalise, the full A x B score matrix, max/argmax, argsort, then gather and
    scatter_reduce (the merged tokens go to the end, not in place). The matching runs without
    grad, as in ToMe; the weighted merge is differentiated by autograd. Returns (merged, size).

    As in ToMe, A and B are the tokens at even and odd positions of the whole sequence and a class
    token (token 0, in A) is kept by a -inf score; ``merge_tokens`` alternates the tokens after
    the protected ones instead, so the two split the tokens alike only without a class token."""
    with torch.no_grad():
        unit = metric / metric.norm(dim=-1, keepdim=True)
        a, b = unit[:, ::2], unit[:, 1::2]
        scores = a @ b.transpose(-1, -2)
        if class_token:
            scores[:, 0, :] = -math.inf
        best, best_index = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True)[..., None]
        kept, merged_away = order[:, r:], order[:, :r]
        destination = best_index[..., None].gather(dim=1, index=merged_away)

    def merge(values: Tensor) -> Tensor:
        src, dst = values[:, ::2], values[:, 1::2]
        batch, count, channels = src.shape
        unmerged = src.gather(dim=1, index=kept.expand(batch, count - r, channels))
        moved = src.gather(dim=1, index=merged_away.expand(batch, r, channels))
        dst = dst.scatter_reduce(1, destination.expand(batch, r, channels), moved, reduce="sum")
        return torch.cat([unmerged, dst], dim=1)

    size = torch.ones_like(x[..., :1])
    summed = merge(x * size)
    size = merge(size)
    return summed / size, size


def hvision_merge(x: Tensor, metric: Tensor, r: int) -> Tensor:
    return merge_tokens(x, metric, r)[0]


def reference_merge(x: Tensor, metric: Tensor, r: int) -> Tensor:
    return reference.merge_tokens(x, metric, r)[0]


def ours_tome(x: Tensor, metric: Tensor, r: int) -> Tensor:
    return tome_merge(x, metric, r)[0]


def merge_call(merge, x: Tensor, metric: Tensor, r: int, mode: Mode, cotangent: Tensor) -> Impl:
    if mode == "fwd":
        return lambda: merge(x, metric, r)
    return lambda: torch.autograd.grad(merge(x, metric, r), x, cotangent)


def merge_case(
    device: torch.device, dtype: torch.dtype, mode: Mode, sizes: dict[str, int]
) -> BenchCase:
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (sizes["batch"], sizes["tokens"], sizes["channels"])
    x = torch.randn(shape, generator=gen, device=device).to(dtype).requires_grad_(mode == "fwd+bwd")
    keys = torch.randn(shape, generator=gen, device=device).to(dtype)
    rows = sizes["tokens"] - sizes["r"]
    cotangent = torch.randn(
        sizes["batch"], rows, sizes["channels"], generator=gen, device=device
    ).to(dtype)
    merges = {"hvision": hvision_merge, "reference": reference_merge, "tome-pytorch": ours_tome}
    return BenchCase(
        shape="batch {batch}, N {tokens}, C {channels}, metric C {channels}, r {r}".format(**sizes),
        impls={
            name: merge_call(fn, x, keys, sizes["r"], mode, cotangent)
            for name, fn in merges.items()
        },
        mode=mode,
        notes="1 protected class token; fwd+bwd = gradient of x",
    )


@bench_case(op="merge_tokens", name="video-vit-s", devices=("cpu", "cuda"))
def video_vit(device: torch.device, dtype: torch.dtype) -> BenchCase:
    return merge_case(device, dtype, "fwd+bwd", VIDEO_VIT)


@bench_case(op="merge_tokens", name="video-vit-s-fwd", devices=("cpu", "cuda"))
def video_vit_fwd(device: torch.device, dtype: torch.dtype) -> BenchCase:
    return merge_case(device, dtype, "fwd", VIDEO_VIT)

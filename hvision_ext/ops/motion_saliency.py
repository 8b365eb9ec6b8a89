"""``motion_saliency``: per-patch motion and saliency scores of video frames in one pass."""

import torch

from .. import reference
from .._dtype import accumulation_dtype
from .._switch import switchable
from ._meta import FLOATING, Checks, Output, register_meta, validate

_check = Checks("motion_saliency")
_op = torch.ops.hvision.motion_saliency.default


@switchable(reference.motion_saliency)
def motion_saliency(frames, patch_size, alpha):
    """Motion–saliency score of every patch of every frame.

    Args:
        frames: (batch, T, C, H, W) videos, uint8 or float (fp32/fp16/bf16/float64), C = 1 or 3.
        patch_size: side of the square patches; H and W must be divisible by it.
        alpha: weight of motion against saliency, in [0, 1].

    Returns (batch, T, P) scores, P = (H / patch_size)(W / patch_size), in float32 (float64 for
    float64 frames): alpha · motion + (1 − alpha) · saliency, each divided by its maximum over the
    frame's patches (+1e-6). Motion is the patch's mean |f_t − f_{t−1}| (frame 0 takes frame 1's,
    0 when T = 1); saliency the patch's mean Sobel magnitude of the luma, with reflect-101
    borders. See ``hvision_ext.reference.motion_saliency``.

    Not differentiable: the scores never require grad, whatever ``frames`` does.
    """
    args = (frames.detach(), patch_size, alpha)
    validate(_meta, *args)
    return _op(*args)


@register_meta("motion_saliency")
def _meta(frames, patch_size, alpha):
    _check.dim("frames", frames, (5,), "(batch, T, C, H, W)")
    _check.dtype("frames", frames, (torch.uint8, *FLOATING))
    batch, time, channels, height, width = frames.shape
    _check.range(
        channels in (1, 3), "frames with C = 1 (grey) or 3 (RGB) channels", f"C = {channels}"
    )
    _check.range(patch_size >= 1, "patch_size >= 1", patch_size)
    _check.range(
        height % patch_size == 0 and width % patch_size == 0,
        f"H and W divisible by patch_size = {patch_size}",
        f"H = {height}, W = {width}",
    )
    _check.range(0.0 <= alpha <= 1.0, "alpha in [0, 1]", alpha)
    patches = (height // patch_size) * (width // patch_size)
    return Output(frames, (batch, time, patches), accumulation_dtype(frames.dtype))

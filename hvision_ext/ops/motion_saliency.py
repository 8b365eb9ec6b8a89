"""``motion_saliency``: per-patch motion and saliency scores of video frames in one pass."""

import torch
from torch import Tensor

from .. import reference
from .._switch import switchable

_op = torch.ops.hvision.motion_saliency.default


@switchable(reference.motion_saliency)
def motion_saliency(frames: Tensor, patch_size: int, alpha: float = 0.5) -> Tensor:
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
    return _op(frames.detach(), patch_size, alpha)


@torch.library.register_fake("hvision::motion_saliency")
def _fake(frames, patch_size, alpha):
    if frames.dim() != 5:
        raise ValueError(
            f"motion_saliency: expected frames of shape (batch, T, C, H, W), got {tuple(frames.shape)}"
        )
    batch, time, _, height, width = frames.shape
    if patch_size < 1 or height % patch_size or width % patch_size:
        raise ValueError(
            f"motion_saliency: expected H and W divisible by patch_size = {patch_size}, got H = {height}, W = {width}"
        )
    dtype = torch.float64 if frames.dtype == torch.float64 else torch.float32
    patches = (height // patch_size) * (width // patch_size)
    return frames.new_empty((batch, time, patches), dtype=dtype)

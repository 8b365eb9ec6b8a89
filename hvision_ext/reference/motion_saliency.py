"""Reference motion–saliency scores of video patches, with whole-tensor PyTorch ops."""

import torch
from torch import Tensor

from .._dtype import accumulation_dtype

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
EPSILON = 1e-6


def reflect101_pad(image: Tensor) -> Tensor:
    """Pads the last two axes by one pixel with OpenCV's default border, reflect-101
    (``gfedcb|abcdefgh|gfedcba``); a line of one pixel reflects onto itself."""

    def indices(n: int) -> Tensor:
        reflected = [1 if n > 1 else 0, *range(n), n - 2 if n > 1 else 0]
        return torch.tensor(reflected, device=image.device)

    rows = image.index_select(-2, indices(image.shape[-2]))
    return rows.index_select(-1, indices(image.shape[-1]))


def sobel_magnitude(image: Tensor) -> Tensor:
    """sqrt(gx² + gy²) of (..., H, W) images with the 3x3 Sobel kernels and reflect-101 borders,
    as the separable sums gx = [1 2 1]ᵀ[-1 0 1] and gy = [-1 0 1]ᵀ[1 2 1] (exact zeros on flat
    regions, unlike a convolution routine that may reorder the sums)."""
    padded = reflect101_pad(image)
    up, mid, down = padded[..., :-2, :], padded[..., 1:-1, :], padded[..., 2:, :]
    smooth = up + 2 * mid + down  # vertical [1 2 1]
    diff = down - up  # vertical [-1 0 1]
    gx = smooth[..., 2:] - smooth[..., :-2]
    gy = diff[..., :-2] + 2 * diff[..., 1:-1] + diff[..., 2:]
    return (gx * gx + gy * gy).sqrt()


def patch_means(maps: Tensor, patch_size: int) -> Tensor:
    """(..., H, W) -> (..., P): the mean of each patch_size x patch_size patch, row-major."""
    *lead, height, width = maps.shape
    patches = maps.reshape(*lead, height // patch_size, patch_size, width // patch_size, patch_size)
    return patches.mean(dim=(-3, -1)).flatten(-2)


def normalise(scores: Tensor) -> Tensor:
    """Divides each frame's patch scores by their maximum (+1e-6)."""
    return scores / (scores.amax(dim=-1, keepdim=True) + EPSILON)


def motion_saliency(frames: Tensor, patch_size: int, alpha: float = 0.5) -> Tensor:
    """Per-patch motion–saliency scores of videos ``frames`` (batch, T, C, H, W), uint8 or float,
    C = 1 or 3, H and W divisible by ``patch_size``. Returns (batch, T, P) with
    P = (H / patch_size)(W / patch_size), in float32 (float64 for float64 frames).

    motion[t, p]: the mean over the patch's pixels and channels of |f_t - f_{t-1}|; t = 0 takes
    t = 1's value, and it is 0 when T = 1. saliency[t, p]: the mean over the patch of the Sobel
    magnitude of the frame's luma (0.299 R + 0.587 G + 0.114 B; the channel itself when C = 1).
    Both are computed in float and divided by their maximum over the frame's patches (+1e-6);
    score = alpha · motion + (1 - alpha) · saliency. Not differentiable.
    """
    acc = accumulation_dtype(frames.dtype)
    frames = frames.detach().to(acc)
    if frames.shape[1] > 1:
        difference = (frames[:, 1:] - frames[:, :-1]).abs()
        difference = torch.cat([difference[:, :1], difference], dim=1)
    else:
        difference = torch.zeros_like(frames)
    motion = patch_means(difference.mean(dim=2), patch_size)

    if frames.shape[2] == 3:
        weights = frames.new_tensor(LUMA_WEIGHTS)[:, None, None]
        luma = (frames * weights).sum(dim=2)
    else:
        luma = frames[:, :, 0]
    saliency = patch_means(sobel_magnitude(luma), patch_size)
    return alpha * normalise(motion) + (1 - alpha) * normalise(saliency)

"""Clip augmentations written on batched tensors and run on the training device: uint8 clips
(..., T, C, H, W) in, normalised float clips out. Each clip draws its own random resized crop,
flip and colour jitter, applied identically to all of its frames (motion stays intact)."""

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor

LUMA = (0.299, 0.587, 0.114)


def _uniform(n: int, low: float, high: float, device: torch.device) -> Tensor:
    return low + (high - low) * torch.rand(n, device=device)


def random_resized_crop(
    clips: Tensor,
    size: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    flip: bool,
) -> Tensor:
    """Float clips (N, T, C, H, W): per clip a box of ``scale`` × the area and aspect ``ratio``
    (w/h) at a random place, resized to ``size`` (bilinear), mirrored half the time if ``flip``."""
    n, frames, channels, height, width = clips.shape
    device = clips.device
    area = _uniform(n, *scale, device)
    aspect = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), device))
    half_w = torch.sqrt(area * aspect * height / width).clamp(max=1.0)  # box half-size, in [-1, 1]
    half_h = torch.sqrt(area / aspect * width / height).clamp(max=1.0)
    centre_x = (torch.rand(n, device=device) * 2 - 1) * (1 - half_w)
    centre_y = (torch.rand(n, device=device) * 2 - 1) * (1 - half_h)
    mirror = torch.where(torch.rand(n, device=device) < 0.5, -1.0, 1.0) if flip else 1.0
    zero = torch.zeros_like(area)
    theta = torch.stack(
        [
            torch.stack([half_w * mirror, zero, centre_x], -1),
            torch.stack([zero, half_h, centre_y], -1),
        ],
        1,
    )
    grid = F.affine_grid(theta, [n, frames * channels, *size], align_corners=False)
    stacked = clips.reshape(n, frames * channels, height, width)
    out = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(n, frames, channels, *size)


def colour_jitter(clips: Tensor, brightness: float, contrast: float, saturation: float) -> Tensor:
    """Float clips (N, T, 3, H, W) in [0, 1]: one brightness, contrast and saturation factor per
    clip, each drawn from [1 - s, 1 + s]; contrast pivots on the clip's mean grey."""
    n, device = clips.shape[0], clips.device

    def factor(strength: float) -> Tensor:
        return _uniform(n, 1 - strength, 1 + strength, device).view(n, 1, 1, 1, 1)

    def grey(x: Tensor) -> Tensor:
        weights = torch.tensor(LUMA, device=device).view(1, 1, 3, 1, 1)
        return (x * weights).sum(2, keepdim=True)

    if brightness > 0:
        clips = clips * factor(brightness)
    if contrast > 0:
        mean = grey(clips).mean(dim=(1, 2, 3, 4), keepdim=True)
        clips = mean + (clips - mean) * factor(contrast)
    if saturation > 0:
        clips = torch.lerp(grey(clips), clips, factor(saturation))
    return clips.clamp(0, 1)


@dataclasses.dataclass
class ClipTransform:
    """uint8 clips (..., T, C, H, W) → augmented (when training) and normalised float clips of
    side ``size`` (default: the input's). ``flip`` is off by default: on data whose labels name a
    direction (left/right, clockwise) a mirror changes the label."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int] | None = None
    crop_scale: tuple[float, float] = (1.0, 1.0)  # area fraction of the random crop (1, 1: off)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = False
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    def __post_init__(self) -> None:
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    def __call__(self, clips: Tensor, train: bool) -> Tensor:
        if clips.dim() < 4:
            raise ValueError(f"clips must be (..., T, C, H, W), got shape {tuple(clips.shape)}")
        leading, (frames, channels, height, width) = clips.shape[:-4], clips.shape[-4:]
        size = self.size or (height, width)
        x = clips.reshape(-1, frames, channels, height, width).float().div_(255)
        cropping = self.crop_scale != (1.0, 1.0)
        if train and (cropping or self.flip):
            ratio = self.crop_ratio if cropping else (1.0, 1.0)  # no crop: the whole frame
            x = random_resized_crop(x, size, self.crop_scale, ratio, self.flip)
        elif size != (height, width):
            resized = F.interpolate(x.flatten(0, 1), size=size, mode="bilinear", antialias=True)
            x = resized.view(-1, frames, channels, *size)
        if train:
            x = colour_jitter(x, self.brightness, self.contrast, self.saturation)
        mean = torch.tensor(self.mean, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(-1, 1, 1)
        return ((x - mean) / std).view(*leading, frames, channels, *size)

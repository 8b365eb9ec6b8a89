"""Augmentations and normalisation written on batched tensors, applied on the training device
after the batch is loaded (uint8 (batch, C, H, W) in, float out): random crop with padding,
horizontal flip, dihedral transforms and colour jitter (the Vision HRM's augmentation),
RandAugment-style ops, mixup and cutmix. Each sample draws its own parameters."""

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop(images: Tensor, padding: int) -> Tensor:
    """Zero-pads by ``padding`` and crops back to the original size at a random offset."""
    if padding <= 0:
        return images
    batch, _, height, width = images.shape
    padded = F.pad(images, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (batch, 1, 1), device=images.device)
    left = torch.randint(0, 2 * padding + 1, (batch, 1, 1), device=images.device)
    rows = top + torch.arange(height, device=images.device)[None, :, None]
    cols = left + torch.arange(width, device=images.device)[None, None, :]
    index = torch.arange(batch, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2)


def random_flip(images: Tensor) -> Tensor:
    flip = torch.rand(images.shape[0], 1, 1, 1, device=images.device) < 0.5
    return torch.where(flip, images.flip(-1), images)


def random_dihedral(images: Tensor) -> Tensor:
    """One of the square's eight symmetries per sample: a rotation by a multiple of 90°, flipped
    horizontally or not."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"dihedral: expected square images, got {tuple(images.shape[-2:])}")
    choice = torch.randint(0, 8, (images.shape[0],), device=images.device)
    out = images
    for index in range(1, 8):
        transformed = images.rot90(index % 4, dims=(-2, -1))
        if index >= 4:
            transformed = transformed.flip(-1)
        out = torch.where(_per_sample(choice == index), transformed, out)
    return out


def color_jitter(images: Tensor, strength: float) -> Tensor:
    """Brightness, contrast and saturation each scaled by a factor drawn per sample from
    [1 - strength, 1 + strength], on images in [0, 1]."""
    batch = images.shape[0]

    def factor() -> Tensor:
        draw = torch.rand(batch, device=images.device) * 2 - 1
        return _per_sample(1 + strength * draw)

    images = images * factor()
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = mean + (images - mean) * factor()
    grey = images.mean(dim=1, keepdim=True)
    return (grey + (images - grey) * factor()).clamp(0, 1)


def _affine(images: Tensor, matrices: Tensor) -> Tensor:
    grid = F.affine_grid(matrices, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _signed(strength: Tensor) -> Tensor:
    return strength * torch.where(torch.rand_like(strength) < 0.5, -1.0, 1.0)


def _rotate(images: Tensor, s: Tensor) -> Tensor:
    angle = _signed(s) * math.radians(30)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    return _affine(
        images,
        torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1),
    )


def _shear(images: Tensor, s: Tensor) -> Tensor:
    one, zero = torch.ones_like(s), torch.zeros_like(s)
    return _affine(
        images,
        torch.stack(
            [torch.stack([one, _signed(s) * 0.3, zero], -1), torch.stack([zero, one, zero], -1)], 1
        ),
    )


def _translate(images: Tensor, s: Tensor) -> Tensor:
    one, zero = torch.ones_like(s), torch.zeros_like(s)
    tx, ty = _signed(s) * 0.3, _signed(s.clone()) * 0.3
    return _affine(
        images, torch.stack([torch.stack([one, zero, tx], -1), torch.stack([zero, one, ty], -1)], 1)
    )


def _per_sample(s: Tensor) -> Tensor:
    return s[:, None, None, None]


def _brightness(images: Tensor, s: Tensor) -> Tensor:
    return images * (1 + _per_sample(_signed(s) * 0.9))


def _contrast(images: Tensor, s: Tensor) -> Tensor:
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return mean + (images - mean) * (1 + _per_sample(_signed(s) * 0.9))


def _solarize(images: Tensor, s: Tensor) -> Tensor:
    threshold = 1 - _per_sample(s)
    return torch.where(images >= threshold, 1 - images, images)


def _posterize(images: Tensor, s: Tensor) -> Tensor:
    levels = 2 ** (8 - _per_sample((s * 4).round()))
    return torch.floor(images * (levels - 1) + 0.5) / (levels - 1)


def _autocontrast(images: Tensor, s: Tensor) -> Tensor:
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    return (images - low) / (high - low).clamp_min(1e-3)


RAND_AUGMENT_OPS = {
    "rotate": _rotate,
    "shear": _shear,
    "translate": _translate,
    "brightness": _brightness,
    "contrast": _contrast,
    "solarize": _solarize,
    "posterize": _posterize,
    "autocontrast": _autocontrast,
}


def rand_augment(images: Tensor, num_ops: int, magnitude: float) -> Tensor:
    """RandAugment on images in [0, 1]: ``num_ops`` rounds, each applying one op chosen per
    sample (or none) at strength ``magnitude`` / 10 with ±jitter."""
    ops = list(RAND_AUGMENT_OPS.values())
    batch = images.shape[0]
    for _ in range(num_ops):
        choice = torch.randint(
            0, len(ops) + 1, (batch,), device=images.device
        )  # len(ops): identity
        strength = (magnitude / 10 * (0.5 + torch.rand(batch, device=images.device))).clamp(0, 1)
        out = images
        for index, op in enumerate(ops):
            chosen = choice == index
            if chosen.any():
                out = torch.where(_per_sample(chosen), op(images, strength).clamp(0, 1), out)
        images = out
    return images


@dataclasses.dataclass
class BatchTransform:
    """uint8 images → augmented (when training) float images, normalised by the channel
    statistics unless ``normalize`` is off (then in [0, 1])."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    flip: bool = False
    rand_augment_ops: int = 0
    rand_augment_magnitude: float = 9.0
    dihedral: bool = False
    color_jitter: float = 0.0
    normalize: bool = True

    def __call__(self, images: Tensor, train: bool) -> Tensor:
        x = images.float().div_(255)
        if train:
            x = random_crop(x, self.crop_padding)
            if self.flip:
                x = random_flip(x)
            if self.dihedral:
                x = random_dihedral(x)
            if self.color_jitter > 0:
                x = color_jitter(x, self.color_jitter)
            if self.rand_augment_ops > 0:
                x = rand_augment(x, self.rand_augment_ops, self.rand_augment_magnitude)
        mean, std = self._statistics(x.device)
        return (x - mean) / std

    def denormalize(self, x: Tensor) -> Tensor:
        """Transformed images back to [0, 1]."""
        mean, std = self._statistics(x.device)
        return (x * std + mean).clamp(0, 1)

    def _statistics(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if not self.normalize:
            return torch.zeros((), device=device), torch.ones((), device=device)
        mean = torch.tensor(self.mean, device=device)[:, None, None]
        std = torch.tensor(self.std, device=device)[:, None, None]
        return mean, std


def mix_batch(
    images: Tensor, targets: Tensor, mixup_alpha: float, cutmix_alpha: float
) -> tuple[Tensor, Tensor]:
    """Mixup or cutmix (one of the enabled ones, at random) with the batch reversed as partner.

    ``targets`` are (batch, classes) probabilities; returns the mixed images and targets.
    """
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or torch.rand(()).item() < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = torch.distributions.Beta(alpha, alpha).sample().item()
    partner_images, partner_targets = images.flip(0), targets.flip(0)
    if use_cutmix:
        height, width = images.shape[-2:]
        cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
        cy, cx = torch.randint(0, height, ()).item(), torch.randint(0, width, ()).item()
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        images = images.clone()
        images[..., top:bottom, left:right] = partner_images[..., top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (height * width)  # the area actually kept
    else:
        images = lam * images + (1 - lam) * partner_images
    return images, lam * targets + (1 - lam) * partner_targets

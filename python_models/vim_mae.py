"""Masked-autoencoder pre-training of a Vision Mamba encoder.

A random subset of the patches is hidden; the encoder sees only the visible ones (kept in their
sequence order, which a scan depends on), a light transformer decoder fills in mask tokens and
predicts the pixels of every patch, and the loss is taken on the hidden patches. The encoder is a
``VisionMamba`` (Mamba or hybrid blocks, with or without a class token): its weights load into a
classifier of the same configuration.
"""

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .contract import NoWeightDecayMixin
from .layers import AttentionBlock
from .vision_mamba import VisionMamba


class MAEOutput(NamedTuple):
    loss: Tensor  # mean squared error over the masked patches (a scalar)
    pred: Tensor  # (batch, num_patches, patch_size² · C): predicted pixels of every patch
    mask: Tensor  # (batch, num_patches): 1 where the patch was hidden, 0 where visible


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(batch, C, H, W) → (batch, num_patches, patch_size² · C), patches row-major, pixels in
    (row, column, channel) order."""
    batch, channels, height, width = images.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    x = images.reshape(batch, channels, grid_h, patch_size, grid_w, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(batch, grid_h * grid_w, patch_size**2 * channels)


def unpatchify(patches: Tensor, patch_size: int, channels: int = 3) -> Tensor:
    """The inverse of ``patchify`` for square images."""
    batch, num_patches, _ = patches.shape
    grid = int(round(num_patches**0.5))
    x = patches.reshape(batch, grid, grid, patch_size, patch_size, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(
        batch, channels, grid * patch_size, grid * patch_size
    )


def random_masking(
    batch: int, length: int, mask_ratio: float, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Draws, per sample, which patches stay visible.

    Returns ``keep`` (batch, n_keep): the visible patch indices in increasing order; ``mask``
    (batch, length): 1 for hidden patches; ``restore`` (batch, length): the permutation that puts
    the sequence [visible patches, hidden patches] (each in increasing order) back in order.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"random_masking: mask_ratio must lie in [0, 1), got {mask_ratio}")
    n_keep = max(1, round(length * (1.0 - mask_ratio)))
    shuffle = torch.rand(batch, length, device=device).argsort(dim=1)
    keep = shuffle[:, :n_keep].sort(dim=1).values
    hidden = shuffle[:, n_keep:].sort(dim=1).values
    restore = torch.cat([keep, hidden], dim=1).argsort(dim=1)
    mask = torch.ones(batch, length, device=device)
    mask.scatter_(1, keep, 0.0)
    return keep, mask, restore


class VisionMambaMAE(NoWeightDecayMixin, nn.Module):
    """MAE with a Vision Mamba encoder and a transformer decoder.

    Args:
        encoder: the ``VisionMamba`` to pre-train; its classification head (if any) is unused.
            Its class token, if it has one (``use_cls_token``), is decoded with the patches;
            MAE needs none (``use_cls_token=False``).
        mask_ratio: fraction of the patches hidden from the encoder.
        decoder_dim: width of the decoder.
        decoder_depth: number of decoder transformer blocks.
        decoder_heads: attention heads of the decoder.
        norm_pix_loss: predict each patch's pixels normalised by the patch's own mean and
            variance (MAE's per-patch normalised targets).
    """

    no_weight_decay_params = ("mask_token", "decoder_pos_embed")

    def __init__(
        self,
        encoder: VisionMamba,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 8,
        norm_pix_loss: bool = False,
    ):
        super().__init__()
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.patch_size = encoder.patch_embed.patch_size
        self.in_chans = encoder.patch_embed.proj.in_channels
        num_patches = encoder.patch_embed.num_patches
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, encoder.num_class_tokens + num_patches, decoder_dim)
        )
        self.decoder_blocks = nn.ModuleList(
            AttentionBlock(decoder_dim, decoder_heads) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * self.in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos_embed, std=0.02)

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The encoder's weights without its head: load them into a ``VisionMamba`` of the same
        configuration with ``load_state_dict(..., strict=False)`` (only the head is missing)."""
        return {k: v for k, v in self.encoder.state_dict().items() if not k.startswith("head.")}

    def encode_visible(
        self, images: Tensor, mask_ratio: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Encodes the visible patches. Returns (class tokens (batch, num_class_tokens, dim):
        the encoder's class token or nothing, visible tokens (batch, n_keep, dim), mask,
        restore) — see ``random_masking``."""
        tokens = self.encoder.embed(images)
        batch, length, dim = tokens.shape
        keep, mask, restore = random_masking(batch, length, mask_ratio, images.device)
        visible = tokens.gather(1, keep[..., None].expand(-1, -1, dim))
        encoded, cls_index = self.encoder.encode(visible)
        if cls_index is None:
            return encoded[:, :0], encoded, mask, restore
        patches = torch.cat([encoded[:, :cls_index], encoded[:, cls_index + 1 :]], dim=1)
        return encoded[:, cls_index : cls_index + 1], patches, mask, restore

    def decode(self, class_tokens: Tensor, visible: Tensor, restore: Tensor) -> Tensor:
        """Pixel predictions for every patch, (batch, num_patches, patch_size² · C); the class
        tokens lead the decoder's sequence and are dropped from its output."""
        x = self.decoder_embed(visible)
        batch, n_keep, width = x.shape
        hidden = self.mask_token.to(x.dtype).expand(batch, restore.shape[1] - n_keep, -1)
        x = torch.cat([x, hidden], dim=1).gather(1, restore[..., None].expand(-1, -1, width))
        x = torch.cat([self.decoder_embed(class_tokens), x], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, class_tokens.shape[1] :]

    def patch_statistics(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Pixels per patch (batch, num_patches, patch_size² · C), and each patch's mean and
        standard deviation (batch, num_patches, 1) as ``norm_pix_loss`` normalises with them."""
        patches = patchify(images, self.patch_size)
        mean = patches.mean(dim=-1, keepdim=True)
        std = (patches.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        return patches, mean, std

    def targets(self, images: Tensor) -> Tensor:
        """What ``pred`` is trained to match: the patches' pixels, normalised per patch with
        ``norm_pix_loss``."""
        if not self.norm_pix_loss:
            return patchify(images, self.patch_size)
        patches, mean, std = self.patch_statistics(images)
        return (patches - mean) / std

    def predict(self, images: Tensor, mask_ratio: float | None) -> tuple[Tensor, Tensor]:
        """Masks, encodes, decodes: (pred, mask) as in ``MAEOutput``."""
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        class_tokens, visible, mask, restore = self.encode_visible(images, ratio)
        return self.decode(class_tokens, visible, restore), mask

    def forward(self, images: Tensor, mask_ratio: float | None = None) -> MAEOutput:
        """Masks, encodes, decodes; ``mask_ratio`` overrides the configured ratio for this call."""
        pred, mask = self.predict(images, mask_ratio)
        per_patch = (pred.float() - self.targets(images).float()).pow(2).mean(dim=-1)
        loss = (per_patch * mask).sum() / mask.sum().clamp_min(1.0)
        return MAEOutput(loss, pred, mask)

    @torch.no_grad()
    def reconstruct(self, images: Tensor, mask_ratio: float | None = None) -> tuple[Tensor, Tensor]:
        """Reconstructed images and the mask, both in image layout, for pictures and metrics.

        Returns ``reconstruction`` (batch, C, H, W): the predicted pixels of every patch, in the
        input's pixel space (with ``norm_pix_loss`` each predicted patch is mapped back with the
        mean and standard deviation of the input's patch); and ``mask`` (batch, 1, H, W): 1 on
        the pixels of hidden patches, 0 on visible ones. ``images * (1 - mask)`` is the masked
        input, ``images * (1 - mask) + reconstruction * mask`` the input with its hidden patches
        filled in. Runs without gradients, in the module's current train/eval mode."""
        pred, patch_mask = self.predict(images, mask_ratio)
        if self.norm_pix_loss:
            _, mean, std = self.patch_statistics(images)
            pred = pred * std + mean
        pixel_mask = patch_mask[..., None].expand(-1, -1, self.patch_size**2)
        return (
            unpatchify(pred, self.patch_size, self.in_chans),
            unpatchify(pixel_mask, self.patch_size, channels=1),
        )

"""A Vision Transformer laid out like timm's ``VisionTransformer``: patch embedding, class token,
learned positions, pre-norm blocks in an ``nn.Sequential``, final LayerNorm and a linear head on
the class token. Parameter names are timm's, so timm's state dicts load unchanged, and the
presets carry timm's names.

``pretrained=True`` fetches timm's weights through timm (an optional extra); ``pretrained=PATH``
loads a local state dict (.pth or .safetensors) with timm's names, the positions resized to the
model's grid.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .contract import ClassifierMixin, linear_head
from .layers import AttentionBlock, PatchEmbed, init_vit_weights
from .registry import register_model

NORM_EPS = 1e-6  # timm's ViT LayerNorm
Pretrained = bool | str | Path


class VisionTransformer(ClassifierMixin, nn.Module):
    """ViT classifier (timm's layout and parameter names).

    Args:
        img_size: side of the square input images.
        patch_size: side of the square patches (img_size must be a multiple).
        in_chans: image channels.
        num_classes: classes of the linear head on the class token; 0 leaves the head out
            (``forward`` then returns the class token's features).
        embed_dim: token width.
        depth: transformer blocks.
        num_heads: attention heads of every block.
        mlp_ratio: MLP hidden width as a multiple of embed_dim.
        drop_rate: dropout on the embedded tokens, in the blocks and before the head.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth, rising linearly to this value over the blocks.
    """

    num_prefix_tokens = 1  # the class token
    no_weight_decay_params = ("cls_token", "pos_embed")

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.num_prefix_tokens + self.patch_embed.num_patches, embed_dim)
        )
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(
            *(
                AttentionBlock(
                    embed_dim,
                    num_heads,
                    mlp_ratio,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=rate,
                    norm_eps=NORM_EPS,
                )
                for rate in rates
            )
        )
        self.norm = nn.LayerNorm(embed_dim, eps=NORM_EPS)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = linear_head(embed_dim, num_classes)
        init_vit_weights(self, self.pos_embed, self.cls_token)

    def embed(self, images: Tensor) -> Tensor:
        """Patch tokens with the class token in front and the positions added:
        (batch, 1 + num_patches, embed_dim)."""
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def forward_features(self, images: Tensor) -> Tensor:
        """Every token after the blocks and the final norm: (batch, 1 + num_patches, embed_dim)."""
        return self.norm(self.blocks(self.embed(images)))

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """The class token's features (``pre_logits=True``) or the head's logits."""
        x = self.head_drop(features[:, 0])
        return x if pre_logits else self.head(x)


# -- weights ---------------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from a .safetensors file or a torch file (.pth/.pt/.bin; a checkpoint that
    wraps it under "model" or "state_dict" is unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained: no weights file at {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise ImportError(
                f"pretrained: reading {path} needs safetensors (pip install safetensors)"
            ) from error
        return load_file(str(path))
    weights = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(weights, dict) and isinstance(weights.get(key), dict):
            weights = weights[key]
    return weights


def resize_pos_embed(pos_embed: Tensor, num_patches: int, num_prefix: int = 1) -> Tensor:
    """(1, prefix + g², dim) positions → (1, prefix + num_patches, dim): the grid part resampled
    bicubically (with antialiasing, as timm does) to the new square grid."""
    grid = pos_embed[:, num_prefix:]
    old_side, new_side = round(grid.shape[1] ** 0.5), round(num_patches**0.5)
    if old_side == new_side:
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_side, old_side, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(
        grid, size=(new_side, new_side), mode="bicubic", antialias=True, align_corners=False
    )
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_side * new_side, dim).to(pos_embed.dtype)
    return torch.cat([pos_embed[:, :num_prefix], grid], dim=1)


def load_timm_weights(model: VisionTransformer, weights: dict[str, Tensor]) -> list[str]:
    """Loads a state dict with timm's names into ``model``: positions resized to its grid, a
    head of another number of classes left as initialised. Returns the keys left as they were
    (the head's, or none); any other mismatch is an error."""
    weights = dict(weights)
    if "pos_embed" in weights:
        weights["pos_embed"] = resize_pos_embed(
            weights["pos_embed"], model.patch_embed.num_patches, model.num_prefix_tokens
        )
    own = model.state_dict()
    for key in ("head.weight", "head.bias"):
        if key in weights and (key not in own or own[key].shape != weights[key].shape):
            del weights[key]
    mismatched = [
        f"{key} {tuple(value.shape)} (model {tuple(own[key].shape)})"
        for key, value in weights.items()
        if key in own and own[key].shape != value.shape
    ]
    if mismatched:
        raise ValueError(f"pretrained: weights of other shapes than the model's: {mismatched}")
    result = model.load_state_dict(weights, strict=False)
    not_head = [key for key in result.missing_keys if not key.startswith("head.")]
    if not_head or result.unexpected_keys:
        raise ValueError(
            f"pretrained: the weights do not fit the model (missing {not_head}, unexpected "
            f"{result.unexpected_keys}); give a ViT state dict with timm's names"
        )
    return result.missing_keys


def timm_weights(timm_name: str, num_classes: int) -> dict[str, Tensor]:
    """timm's pretrained state dict for ``timm_name`` (fetched by timm, or from its cache)."""
    try:
        import timm
    except ImportError as error:
        raise ImportError(
            f"pretrained=True loads {timm_name}'s weights through timm, which is not installed "
            "(pip install 'hvision-ext[timm]'); or pass pretrained='path/to/weights.pth' "
            "(or .safetensors) with timm's parameter names"
        ) from error
    try:
        source = timm.create_model(timm_name, pretrained=True, num_classes=num_classes)
    except Exception as error:  # timm raises many kinds when the weights cannot be had
        raise RuntimeError(
            f"pretrained=True: timm could not provide {timm_name}'s weights "
            f"({type(error).__name__}: {error}); this machine may be offline: pass "
            "pretrained='path/to/weights.pth' (or .safetensors) with timm's parameter names"
        ) from error
    return source.state_dict()


def load_pretrained(
    model: VisionTransformer, pretrained: Pretrained, timm_name: str | None
) -> VisionTransformer:
    """Applies a preset's ``pretrained`` argument: False does nothing, True loads timm's
    weights for ``timm_name``, a path loads that file."""
    if pretrained is False or pretrained is None:
        return model
    if pretrained is True:
        if timm_name is None:
            raise ValueError(
                "pretrained=True: timm has no weights for this preset; pass "
                "pretrained='path/to/weights.pth' (or .safetensors) with timm's parameter names"
            )
        weights = timm_weights(timm_name, model.num_classes)
    elif isinstance(pretrained, (str, Path)):
        weights = read_state_dict(pretrained)
    else:
        raise TypeError(
            "pretrained: expected True (timm's weights) or a path to a .pth/.safetensors state "
            f"dict, got {pretrained!r}"
        )
    load_timm_weights(model, weights)
    return model


# -- presets ---------------------------------------------------------------------------------


def _preset(
    timm_name: str | None, pretrained: Pretrained, defaults: dict, overrides: dict
) -> VisionTransformer:
    return load_pretrained(VisionTransformer(**{**defaults, **overrides}), pretrained, timm_name)


@register_model
def vit_tiny_patch16_224(pretrained: Pretrained = False, **overrides) -> VisionTransformer:
    """ViT-Ti/16 (timm's): 224², width 192, depth 12, 3 heads; 1000 classes."""
    defaults = dict(embed_dim=192, depth=12, num_heads=3)
    return _preset("vit_tiny_patch16_224", pretrained, defaults, overrides)


@register_model
def vit_small_patch16_224(pretrained: Pretrained = False, **overrides) -> VisionTransformer:
    """ViT-S/16 (timm's): 224², width 384, depth 12, 6 heads; 1000 classes."""
    defaults = dict(embed_dim=384, depth=12, num_heads=6)
    return _preset("vit_small_patch16_224", pretrained, defaults, overrides)


@register_model
def vit_base_patch16_224(pretrained: Pretrained = False, **overrides) -> VisionTransformer:
    """ViT-B/16 (timm's): 224², width 768, depth 12, 12 heads; 1000 classes."""
    defaults = dict(embed_dim=768, depth=12, num_heads=12)
    return _preset("vit_base_patch16_224", pretrained, defaults, overrides)


CIFAR = dict(img_size=32, patch_size=4, num_classes=10)


@register_model
def vit_tiny_patch4_32(pretrained: Pretrained = False, **overrides) -> VisionTransformer:
    """ViT-Ti for 32² images (CIFAR): patch 4 (8 × 8 tokens), width 192, depth 12, 3 heads."""
    defaults = dict(CIFAR, embed_dim=192, depth=12, num_heads=3)
    return _preset(None, pretrained, defaults, overrides)


@register_model
def vit_small_patch4_32(pretrained: Pretrained = False, **overrides) -> VisionTransformer:
    """ViT-S for 32² images (CIFAR): patch 4, width 384, depth 12, 6 heads."""
    defaults = dict(CIFAR, embed_dim=384, depth=12, num_heads=6)
    return _preset(None, pretrained, defaults, overrides)


@register_model
def vit_micro_patch4_32(pretrained: Pretrained = False, **overrides) -> VisionTransformer:
    """A ViT small enough to pretrain on the CPU in minutes (the built-in few-shot job's
    backbone): 32², patch 4, width 96, depth 4, 3 heads, MLP ratio 2."""
    defaults = dict(CIFAR, embed_dim=96, depth=4, num_heads=3, mlp_ratio=2.0)
    return _preset(None, pretrained, defaults, overrides)

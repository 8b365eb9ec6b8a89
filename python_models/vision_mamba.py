"""Vision Mamba (Vim): patch tokens with a class token in the middle of the sequence (or none),
learned positional embeddings, a stack of bidirectional Mamba blocks (or hybrid blocks that mix
each Mamba mixer with attention by learned weights; attention blocks at chosen depths), RMSNorm
and a linear head on the class token or the mean token."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .contract import ClassifierMixin, linear_head
from .layers import AttentionBlock, PatchEmbed, RMSNorm, init_vit_weights
from .mamba import HybridBlock, MambaBlock
from .registry import register_model

BLOCK_TYPES = ("mamba", "hybrid")


def build_block(
    block_type: str, dim: int, num_heads: int, drop_path: float, mamba_args: dict
) -> nn.Module:
    """One residual block of ``block_type``: "mamba", "hybrid" or "attention"."""
    if block_type == "attention":
        return AttentionBlock(dim, num_heads, drop_path=drop_path)
    if block_type == "hybrid":
        return HybridBlock(dim, num_heads, drop_path=drop_path, **mamba_args)
    return MambaBlock(dim, drop_path=drop_path, **mamba_args)


class VisionMamba(ClassifierMixin, nn.Module):
    """Vision Mamba classifier.

    Args:
        img_size: side of the square input images.
        patch_size: side of the square patches (img_size must be a multiple).
        in_chans: image channels.
        num_classes: classes of the linear head; 0 leaves the head out (``forward`` then returns
            the pooled features).
        embed_dim: token width.
        depth: number of blocks.
        d_state: SSM state size N.
        expand: inner width of the Mamba mixer = expand · embed_dim.
        d_conv: kernel size of the depthwise conv before each scan.
        dt_rank: rank of the dt projection (default ceil(embed_dim / 16)).
        block_type: "mamba" (Vim's blocks) or "hybrid" (``HybridBlock``: the Mamba mixer and
            multi-head attention on the same input, mixed by learned per-block weights).
        attn_layers: indices of the blocks that are plain attention blocks instead.
        num_heads: heads of the attention in hybrid and attention blocks.
        drop_rate: dropout on the embedded tokens and before the head.
        drop_path_rate: stochastic depth, rising linearly to this value over the blocks.
        use_cls_token: put a learned class token in the middle of the sequence (Vim); without
            it the blocks see the patch tokens only.
        pool: features for the head: "cls" (the middle class token, as Vim) or "mean" (the mean
            of all tokens, which learns faster from scratch on small data sets); by default
            "cls" with a class token and "mean" without one.
    """

    no_weight_decay_params = ("cls_token", "pos_embed")

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 192,
        depth: int = 24,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: int | None = None,
        block_type: str = "mamba",
        attn_layers: Sequence[int] = (),
        num_heads: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        use_cls_token: bool = True,
        pool: str | None = None,
    ):
        super().__init__()
        pool = pool or ("cls" if use_cls_token else "mean")
        if pool not in ("cls", "mean"):
            raise ValueError(f"VisionMamba: pool must be 'cls' or 'mean', got {pool!r}")
        if pool == "cls" and not use_cls_token:
            raise ValueError("VisionMamba: pool='cls' needs use_cls_token=True, got False")
        if block_type not in BLOCK_TYPES:
            raise ValueError(
                f"VisionMamba: block_type must be one of {BLOCK_TYPES}, got {block_type!r}"
            )
        bad_layers = [i for i in attn_layers if not 0 <= i < depth]
        if bad_layers:
            raise ValueError(f"VisionMamba: attn_layers must lie in [0, {depth}), got {bad_layers}")
        self.num_classes = num_classes
        self.pool = pool
        self.embed_dim = self.num_features = embed_dim
        self.block_type = block_type
        self.attn_layers = tuple(sorted(attn_layers))
        self.num_class_tokens = int(use_cls_token)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_cls_token else None
        # The class token's position comes first in pos_embed, the patches' follow.
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.num_class_tokens + num_patches, embed_dim)
        )
        self.pos_drop = nn.Dropout(drop_rate)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        mamba_args = dict(d_state=d_state, expand=expand, d_conv=d_conv, dt_rank=dt_rank)
        self.blocks = nn.ModuleList(
            build_block(
                "attention" if i in self.attn_layers else block_type,
                embed_dim,
                num_heads,
                rate,
                mamba_args,
            )
            for i, rate in enumerate(rates)
        )
        self.norm = RMSNorm(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = linear_head(embed_dim, num_classes)
        embeddings = [e for e in (self.pos_embed, self.cls_token) if e is not None]
        # The dt projections keep Mamba's own initialisation (see SSMDirection).
        init_vit_weights(self, *embeddings, keep=("dt_proj",))

    def embed(self, images: Tensor) -> Tensor:
        """Patch tokens plus their positional embeddings: (batch, num_patches, embed_dim)."""
        return self.patch_embed(images) + self.pos_embed[:, self.num_class_tokens :]

    def class_token_index(self, length: int) -> int | None:
        """Where the class token sits in a sequence of ``length`` tokens (patches and the class
        token): in the middle of the patches; None without one."""
        return (length - self.num_class_tokens) // 2 if self.cls_token is not None else None

    def encode(self, tokens: Tensor) -> tuple[Tensor, int | None]:
        """Runs the blocks on embedded patch tokens (all of them, or a subset in sequence order)
        with the class token, if any, inserted in the middle. Returns the normalised sequence
        (batch, L + num_class_tokens, embed_dim) and the class token's index (None without
        one)."""
        cls_index = self.class_token_index(tokens.shape[1] + self.num_class_tokens)
        x = tokens
        if cls_index is not None:
            cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
            x = torch.cat([tokens[:, :cls_index], cls, tokens[:, cls_index:]], dim=1)
        x = self.pos_drop(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), cls_index

    def forward_features(self, images: Tensor) -> Tensor:
        """The normalised sequence after the blocks, (batch, num_class_tokens + num_patches,
        embed_dim), the class token (if any) in the middle."""
        return self.encode(self.embed(images))[0]

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """The pooled features after dropout (``pre_logits=True``: the class token's, or the
        mean token's) or the head's logits."""
        if self.pool == "cls":
            pooled = features[:, self.class_token_index(features.shape[1])]
        else:
            pooled = features.mean(dim=1)
        x = self.head_drop(pooled)
        return x if pre_logits else self.head(x)


def _preset(defaults: dict, overrides: dict) -> VisionMamba:
    return VisionMamba(**{**defaults, **overrides})


_IMAGENET = dict(img_size=224, patch_size=16, depth=24, d_state=16, expand=2)
_CIFAR = dict(img_size=32, patch_size=4, num_classes=10, d_state=16, expand=2)


@register_model
def vim_tiny(**overrides) -> VisionMamba:
    """Vim-Ti: 224², patch 16, dim 192, depth 24."""
    return _preset({**_IMAGENET, "embed_dim": 192, "num_heads": 3}, overrides)


@register_model
def vim_small(**overrides) -> VisionMamba:
    """Vim-S: 224², patch 16, dim 384, depth 24."""
    return _preset({**_IMAGENET, "embed_dim": 384, "num_heads": 6}, overrides)


@register_model
def vim_base(**overrides) -> VisionMamba:
    """Vim-B: 224², patch 16, dim 768, depth 24."""
    return _preset({**_IMAGENET, "embed_dim": 768, "num_heads": 12}, overrides)


@register_model
def vim_tiny_cifar(**overrides) -> VisionMamba:
    """Vim-Ti for 32² images: patch 4 (64 tokens), dim 192, depth 12."""
    return _preset({**_CIFAR, "embed_dim": 192, "depth": 12, "num_heads": 3}, overrides)


@register_model
def vim_small_cifar(**overrides) -> VisionMamba:
    """Vim-S for 32² images: patch 4 (64 tokens), dim 384, depth 12."""
    return _preset({**_CIFAR, "embed_dim": 384, "depth": 12, "num_heads": 6}, overrides)


@register_model(aliases=("vim_shapes",))
def vim_micro_shapes(**overrides) -> VisionMamba:
    """The built-in classification job's model: vim_tiny_cifar narrowed to width 64, depth 4,
    d_state 8, with mean pooling (0.15 M parameters; trains in minutes on two CPU cores)."""
    return _preset(
        {**_CIFAR, "embed_dim": 64, "depth": 4, "d_state": 8, "num_heads": 2, "pool": "mean"},
        overrides,
    )


# The hybrid presets: the table of widths, depths and heads of the Vision Mamba + MAE design,
# on 32² images in 4 × 4 patches (64 tokens) like the CIFAR presets above. They pool the mean
# token, which learns faster from scratch on small data sets than the class token.
_HYBRID = {**_CIFAR, "block_type": "hybrid", "pool": "mean"}


@register_model
def vim_hybrid_tiny(**overrides) -> VisionMamba:
    """Hybrid Vim for 32² images: patch 4, dim 96, depth 6, 2 heads (0.72 M parameters)."""
    return _preset({**_HYBRID, "embed_dim": 96, "depth": 6, "num_heads": 2}, overrides)


@register_model
def vim_hybrid_small(**overrides) -> VisionMamba:
    """Hybrid Vim for 32² images: patch 4, dim 384, depth 12, 6 heads."""
    return _preset({**_HYBRID, "embed_dim": 384, "depth": 12, "num_heads": 6}, overrides)


@register_model
def vim_hybrid_base(**overrides) -> VisionMamba:
    """Hybrid Vim for 32² images: patch 4, dim 768, depth 12, 12 heads."""
    return _preset({**_HYBRID, "embed_dim": 768, "depth": 12, "num_heads": 12}, overrides)


@register_model
def vim_hybrid_large(**overrides) -> VisionMamba:
    """Hybrid Vim for 32² images: patch 4, dim 1024, depth 24, 16 heads."""
    return _preset({**_HYBRID, "embed_dim": 1024, "depth": 24, "num_heads": 16}, overrides)

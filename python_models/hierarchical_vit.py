"""A hierarchical ViT in the manner of PiT: a strided-conv patch stem (overlapping, as PiT's, or
non-overlapping patches), stages of pre-norm
transformer blocks, and between stages a pooling layer that halves the token grid and widens
the channels; LayerNorm and a linear head on the mean of the final tokens. The first (largest)
stage may attend locally through ``local_global_attention``."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .contract import ClassifierMixin, linear_head
from .layers import AttentionBlock, init_vit_weights
from .registry import register_model


class ConvStem(nn.Module):
    """Strided-conv patch stem with LayerNorm: (batch, C, H, W) → (batch, (H/p)·(W/p), dim),
    tokens in row-major order, for a stride p = ``patch_size``.

    ``overlapping=True`` is PiT's stem: the kernel reaches p // 2 pixels past the patch on every
    side (kernel p + 2·(p // 2), as PiT's 16/8), padded to keep the grid. ``overlapping=False``
    cuts non-overlapping p × p patches (kernel p, no padding), as a ViT patch embedding."""

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        overlapping: bool = True,
    ):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(
                f"ConvStem: img_size must be divisible by patch_size, got {img_size} and {patch_size}"
            )
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        margin = patch_size // 2 if overlapping else 0
        self.proj = nn.Conv2d(
            in_chans,
            embed_dim,
            kernel_size=patch_size + 2 * margin,
            stride=patch_size,
            padding=margin,
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"ConvStem: expected images of {self.img_size}x{self.img_size}, got {tuple(images.shape[-2:])}"
            )
        return self.norm(self.proj(images).flatten(2).transpose(1, 2))


class GridPooling(nn.Module):
    """PiT's pooling between stages: a depthwise 3×3 stride-2 conv on the token grid (side s →
    ceil(s / 2)) and a pointwise projection from ``in_dim`` to ``out_dim`` channels."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_dim, in_dim, kernel_size=3, stride=2, padding=1, groups=in_dim
        )
        self.pointwise = nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(self, tokens: Tensor, grid_size: int) -> tuple[Tensor, int]:
        """tokens: (batch, grid_size², in_dim) → (batch, new_side², out_dim) and new_side."""
        batch, _, dim = tokens.shape
        grid = tokens.transpose(1, 2).reshape(batch, dim, grid_size, grid_size)
        pooled = self.pointwise(self.depthwise(grid))
        return pooled.flatten(2).transpose(1, 2), pooled.shape[-1]


STEMS = ("overlapping", "patch")


class HierarchicalViT(ClassifierMixin, nn.Module):
    """Hierarchical (pooling) vision transformer.

    Args:
        img_size: side of the square input images.
        patch_size: stride of the patch stem (img_size must be a multiple).
        in_chans: image channels.
        num_classes: classes of the linear head; 0 leaves the head out (``forward`` then returns
            the pooled features).
        embed_dims: token width of each stage.
        depths: blocks of each stage.
        num_heads: attention heads of each stage.
        mlp_ratio: MLP hidden width as a multiple of the stage's width.
        drop_rate: dropout on the embedded tokens, in the blocks and before the head.
        drop_path_rate: stochastic depth, rising linearly to this value over all blocks.
        local_window: if set, the first stage attends through ``local_global_attention``: each
            token to the tokens within ``local_window`` places of it in row-major order (one grid
            row is grid_size places) and to the global tokens; later stages stay dense.
        global_tokens: learned tokens put before the first stage's patch tokens when
            ``local_window`` is set; they attend to, and are attended by, every token, and are
            dropped at the first pooling.
        stem: "overlapping" (PiT's stem: each patch's kernel reaches half a patch past it) or
            "patch" (non-overlapping patch_size × patch_size patches); both normalise the tokens
            with LayerNorm and give the same token grid.
    """

    no_weight_decay_params = ("pos_embed", "global_tokens")

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 2,
        in_chans: int = 3,
        num_classes: int = 100,
        embed_dims: Sequence[int] = (64, 128, 256),
        depths: Sequence[int] = (2, 6, 4),
        num_heads: Sequence[int] = (2, 4, 8),
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        local_window: int | None = None,
        global_tokens: int = 0,
        stem: str = "overlapping",
    ):
        super().__init__()
        if not len(embed_dims) == len(depths) == len(num_heads) >= 1:
            raise ValueError(
                "HierarchicalViT: embed_dims, depths and num_heads need one entry per stage, got "
                f"{len(embed_dims)}, {len(depths)} and {len(num_heads)}"
            )
        if stem not in STEMS:
            raise ValueError(f"HierarchicalViT: stem must be one of {STEMS}, got {stem!r}")
        if global_tokens and local_window is None:
            raise ValueError(
                f"HierarchicalViT: global_tokens needs local_window, got global_tokens={global_tokens}"
            )
        self.num_classes = num_classes
        self.embed_dims = tuple(embed_dims)
        self.num_features = embed_dims[-1]
        self.patch_embed = ConvStem(
            img_size, patch_size, in_chans, embed_dims[0], overlapping=stem == "overlapping"
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.grid_size**2, embed_dims[0]))
        self.global_tokens = nn.Parameter(torch.zeros(1, global_tokens, embed_dims[0]))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        for stage, (dim, depth, heads) in enumerate(zip(embed_dims, depths, num_heads)):
            local = dict(window=local_window, num_global=global_tokens) if stage == 0 else {}
            stage_rates, rates = rates[:depth], rates[depth:]
            self.stages.append(
                nn.Sequential(
                    *(
                        AttentionBlock(
                            dim, heads, mlp_ratio, drop=drop_rate, drop_path=rate, **local
                        )
                        for rate in stage_rates
                    )
                )
            )
        self.pools = nn.ModuleList(
            GridPooling(a, b) for a, b in zip(embed_dims[:-1], embed_dims[1:])
        )
        self.norm = nn.LayerNorm(embed_dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = linear_head(embed_dims[-1], num_classes)
        init_vit_weights(self, self.pos_embed, self.global_tokens)

    def forward_features(self, images: Tensor) -> Tensor:
        """The final stage's normalised tokens: (batch, tokens, embed_dims[-1])."""
        x = self.pos_drop(self.patch_embed(images) + self.pos_embed)
        num_global = self.global_tokens.shape[1]
        if num_global:
            x = torch.cat([self.global_tokens.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.stages[0](x)[:, num_global:]
        grid_size = self.patch_embed.grid_size
        for pool, stage in zip(self.pools, self.stages[1:]):
            x, grid_size = pool(x, grid_size)
            x = stage(x)
        return self.norm(x)

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """The mean token after dropout (``pre_logits=True``) or the head's logits."""
        x = self.head_drop(features.mean(dim=1))
        return x if pre_logits else self.head(x)


@register_model(aliases=("hvit_cifar100",))
def hvit_tiny_cifar100(**overrides) -> HierarchicalViT:
    """PiT-Ti-like for 32² images: stem patch 2 (16 × 16 tokens), stages of width 64/128/256,
    depth 2/6/4, heads 2/4/8 on grids of 16², 8², 4²; 100 classes."""
    return HierarchicalViT(**overrides)

"""Layers shared by the models: patch embedding, RMSNorm, DropPath, MLPs (GELU and SwiGLU),
multi-head attention (dense, or local-global through the fused kernel) and pre-/post-norm
transformer blocks."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hvision_ext.ops import local_global_attention


class PatchEmbed(nn.Module):
    """Splits (batch, C, H, W) images into non-overlapping patches and projects each to a token:
    (batch, num_patches, embed_dim), patches in row-major order."""

    def __init__(
        self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768
    ):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(
                f"PatchEmbed: img_size must be divisible by patch_size, got {img_size} and {patch_size}"
            )
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"PatchEmbed: expected images of {self.img_size}x{self.img_size}, got {tuple(images.shape[-2:])}"
            )
        return self.proj(images).flatten(2).transpose(1, 2)


def init_vit_weights(model: nn.Module, *embeddings: Tensor, keep: tuple[str, ...] = ()) -> None:
    """ViT's initialisation: truncated normal (std 0.02) for the learned ``embeddings`` (class
    tokens, positions) and for every linear weight, zero linear biases. Linear layers whose
    names end with one of ``keep`` keep their own initialisation."""
    for embedding in embeddings:
        nn.init.trunc_normal_(embedding, std=0.02)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not name.endswith(keep):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last axis with a learned scale (no mean removal,
    no bias), computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight).to(x.dtype)


class DropPath(nn.Module):
    """Stochastic depth: while training, zeroes a sample's residual branch with probability
    ``drop_prob`` and scales the survivors by 1 / (1 - drop_prob)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """Linear → GELU → dropout → linear → dropout."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class SwiGLU(nn.Module):
    """Gated MLP of LLaMA and HRM: linear → SiLU(gate) · value → linear, no biases. The hidden
    width is 2/3 · mlp_ratio · dim rounded up to a multiple of 16, so its parameter count
    matches a GELU MLP of the same ratio."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.hidden_dim = swiglu_hidden_dim(dim, mlp_ratio)
        self.gate_value = nn.Linear(dim, 2 * self.hidden_dim, bias=False)
        self.out = nn.Linear(self.hidden_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.gate_value(x).chunk(2, dim=-1)
        return self.out(F.silu(gate) * value)


def swiglu_hidden_dim(dim: int, mlp_ratio: float) -> int:
    return 16 * math.ceil(2 * mlp_ratio * dim / 3 / 16)


class Attention(nn.Module):
    """Multi-head self-attention: dense through ``scaled_dot_product_attention``, or, with
    ``window`` set, ``local_global_attention`` (the band |i − j| ≤ window plus the first
    ``num_global`` tokens attending and attended everywhere) through the fused kernel."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        bias: bool = True,
        window: int | None = None,
        num_global: int = 0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"Attention: dim must be divisible by num_heads, got {dim} and {num_heads}"
            )
        if window is None and num_global:
            raise ValueError(
                f"Attention: num_global needs a window (local-global attention), got num_global={num_global}"
            )
        if window is not None and attn_drop:
            raise ValueError(
                f"Attention: attention dropout needs dense attention (window=None), got window={window}"
            )
        self.num_heads = num_heads
        self.window = window
        self.num_global = num_global
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.window is None:
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop if self.training else 0.0
            )
        else:
            out = local_global_attention(q, k, v, self.window, self.num_global)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, length, dim)))

    def extra_repr(self) -> str:
        pattern = (
            "dense"
            if self.window is None
            else f"window={self.window}, num_global={self.num_global}"
        )
        return f"num_heads={self.num_heads}, {pattern}"


class AttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)); ``window`` and
    ``num_global`` make the attention local-global (see ``Attention``). Its parameter names are
    timm's ``Block``'s (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``,
    ``mlp.fc2``); ``norm_eps`` 1e-6 is timm's ViT LayerNorm."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        window: int | None = None,
        num_global: int = 0,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim,
            num_heads,
            attn_drop=attn_drop,
            proj_drop=drop,
            window=window,
            num_global=num_global,
        )
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path)

    def attention_residual(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.attn(self.norm1(x)))

    def mlp_residual(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp_residual(self.attention_residual(x))


class PostNormBlock(nn.Module):
    """Post-norm transformer block of HRM: x = norm(x + attn(x)), then x = norm(x + swiglu(x)),
    with RMSNorm and bias-free projections; its output is always normalised, which keeps a
    recurrent state bounded however many times the block is applied."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.attn = Attention(dim, num_heads, bias=False)
        self.norm1 = RMSNorm(dim)
        self.mlp = SwiGLU(dim, mlp_ratio)
        self.norm2 = RMSNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))

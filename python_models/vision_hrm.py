"""The Hierarchical Reasoning Model (HRM) applied to images.

Two recurrent transformer modules share the token grid: a fast low-level module L and a slow
high-level module H. With x the embedded image, z_L is updated every step from (z_L, z_H + x)
and z_H every ``l_cycles`` steps from (z_H, z_L), for ``h_cycles · l_cycles`` steps. Training
uses HRM's one-step gradient: every update but the last L and H updates runs without a graph,
so training memory does not grow with the number of steps. With ``segments > 1`` the cycles
run several times, the state carried (detached) from one segment to the next, and training
returns every segment's logits for deep supervision.
"""

import torch
from torch import Tensor, nn

from .contract import ClassifierMixin, linear_head
from .layers import PatchEmbed, PostNormBlock, RMSNorm, init_vit_weights
from .registry import register_model


class ReasoningModule(nn.Module):
    """A stack of post-norm blocks updating a state: the injection is added to the state before
    the first block."""

    def __init__(self, dim: int, num_heads: int, depth: int, mlp_ratio: float):
        super().__init__()
        self.blocks = nn.Sequential(
            *(PostNormBlock(dim, num_heads, mlp_ratio) for _ in range(depth))
        )

    def forward(self, state: Tensor, injection: Tensor) -> Tensor:
        return self.blocks(state + injection)


class VisionHRM(ClassifierMixin, nn.Module):
    """HRM classifier over image patches.

    ``forward_features`` returns the high-level state's tokens after the last segment, (batch,
    1 + num_patches, hidden_dim); while training with several segments, those of every segment,
    (segments, batch, 1 + num_patches, hidden_dim). ``forward_head`` reads the class token of
    either, so ``forward`` gives (batch, num_classes) logits, or (segments, batch, num_classes)
    for deep supervision.

    Args:
        img_size: side of the square input images.
        patch_size: side of the square patches (img_size must be a multiple).
        in_chans: image channels.
        num_classes: classes of the linear head on the class token; 0 leaves the head out
            (``forward`` then returns the class token's features).
        hidden_dim: width of both modules' tokens.
        num_heads: attention heads of every block.
        h_layers: blocks of the high-level module (HRM's H_layers).
        l_layers: blocks of the low-level module (L_layers).
        h_cycles: high-level updates per segment (H_cycles).
        l_cycles: low-level updates per high-level update (L_cycles).
        mlp_ratio: SwiGLU width relative to a GELU MLP of this ratio.
        segments: passes of all the cycles, the state carried between them; while training,
            ``forward`` returns the logits of each (deep supervision), otherwise the last's.
        one_step_gradient: HRM's approximation (True); False backpropagates through every step,
            whose memory grows with the steps (a baseline for comparison).
    """

    no_weight_decay_params = ("cls_token", "pos_embed")

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 10,
        hidden_dim: int = 512,
        num_heads: int = 8,
        h_layers: int = 4,
        l_layers: int = 4,
        h_cycles: int = 2,
        l_cycles: int = 2,
        mlp_ratio: float = 4.0,
        segments: int = 1,
        one_step_gradient: bool = True,
    ):
        super().__init__()
        for name, value in dict(
            h_layers=h_layers,
            l_layers=l_layers,
            h_cycles=h_cycles,
            l_cycles=l_cycles,
            segments=segments,
        ).items():
            if value < 1:
                raise ValueError(f"VisionHRM: expected {name} >= 1, got {value}")
        self.num_classes = num_classes
        self.hidden_dim = self.num_features = hidden_dim
        self.h_cycles = h_cycles
        self.l_cycles = l_cycles
        self.segments = segments
        self.one_step_gradient = one_step_gradient
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, hidden_dim)
        self.embed_norm = RMSNorm(hidden_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, hidden_dim))
        self.h_module = ReasoningModule(hidden_dim, num_heads, h_layers, mlp_ratio)
        self.l_module = ReasoningModule(hidden_dim, num_heads, l_layers, mlp_ratio)
        # Fixed random initial states, as HRM: not learned, saved with the weights.
        self.register_buffer(
            "z_h_init", nn.init.trunc_normal_(torch.empty(hidden_dim), std=1.0, a=-2.0, b=2.0)
        )
        self.register_buffer(
            "z_l_init", nn.init.trunc_normal_(torch.empty(hidden_dim), std=1.0, a=-2.0, b=2.0)
        )
        self.head = linear_head(hidden_dim, num_classes)
        init_vit_weights(self, self.pos_embed, self.cls_token)

    def embed(self, images: Tensor) -> Tensor:
        """The injected input: class token and patch tokens with positions, RMS-normalised so
        that it is on the states' scale. (batch, 1 + num_patches, hidden_dim)."""
        tokens = self.patch_embed(images)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return self.embed_norm(torch.cat([cls, tokens], dim=1) + self.pos_embed)

    def initial_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.z_h_init.expand_as(x), self.z_l_init.expand_as(x)

    def segment(self, z_h: Tensor, z_l: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """h_cycles · l_cycles steps from (z_h, z_l); returns the new (z_h, z_l)."""
        steps = self.h_cycles * self.l_cycles
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.one_step_gradient):
            for step in range(steps - 1):
                z_l = self.l_module(z_l, z_h + x)
                if (step + 1) % self.l_cycles == 0:
                    z_h = self.h_module(z_h, z_l)
        z_l = self.l_module(z_l, z_h + x)
        return self.h_module(z_h, z_l), z_l

    def forward_features(self, images: Tensor) -> Tensor:
        """The high-level state z_H after the last segment, (batch, 1 + num_patches,
        hidden_dim); while training with several segments (deep supervision), after every
        segment, (segments, batch, 1 + num_patches, hidden_dim)."""
        x = self.embed(images)
        z_h, z_l = self.initial_state(x)
        states = []
        for _ in range(self.segments):
            z_h, z_l = self.segment(z_h.detach(), z_l.detach(), x)
            states.append(z_h)
        return torch.stack(states) if self.training and self.segments > 1 else z_h

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """The class token's state (``pre_logits=True``) or the head's logits, for the tokens of
        one segment or of every segment (a leading segments axis is kept)."""
        x = features[..., 0, :]
        return x if pre_logits else self.head(x)


_CIFAR = dict(
    img_size=32,
    patch_size=4,
    hidden_dim=512,
    num_heads=8,
    h_layers=4,
    l_layers=4,
    h_cycles=2,
    l_cycles=2,
)


@register_model(aliases=("hrm_vision_cifar10",))
def hrm_base_cifar10(**overrides) -> VisionHRM:
    """HRM's defaults on 32² images: patch 4 (64 tokens + class token), hidden 512, 8 heads,
    4 + 4 layers, 2 × 2 cycles; 10 classes."""
    return VisionHRM(**{**_CIFAR, "num_classes": 10, **overrides})


@register_model(aliases=("hrm_vision_cifar100",))
def hrm_base_cifar100(**overrides) -> VisionHRM:
    """As ``hrm_base_cifar10`` with 100 classes."""
    return VisionHRM(**{**_CIFAR, "num_classes": 100, **overrides})

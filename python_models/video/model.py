"""HierarchicalVLM: a video transformer whose token mixer is one of dense attention and seven
efficient types, with motion-saliency token merging between blocks.

Clips (batch, T, C, H, W) → tubelet embedding (``tubelet_size`` frames × ``patch_size``² pixels
per token) → separable learned positions (time + space, resized to other clip shapes) → a class
token in front → blocks (pre-norm mixer + FFN) with optional token merging within each frame
before chosen blocks (a per-clip budget spread over the frames by their motion, or a per-frame
one) → LayerNorm → a linear head on the class token (or the mean patch token).
"""

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from hvision_ext.ops import unmerge_tokens

from ..adapters.lora import adapter_weights_in_force
from ..contract import ClassifierMixin, linear_head
from ..layers import DropPath, Mlp, init_vit_weights
from ..vit import NORM_EPS
from .merging import (
    carry_importance,
    colour_saliency,
    frame_motion,
    motion_importance,
    reduce_runs,
    removal_per_clip,
    removal_per_frame,
    run_maximum_one,
    saliency_scale_at,
)
from .mixers import MIXERS, PerformerAttention, QKVMixer, TokenLayout, build_mixer
from .settings import ImportanceSettings, MergeSettings, MixerSettings, as_settings, check_choice

GLOBAL_POOLS = ("token", "avg")
NUM_PREFIX_TOKENS = 1  # the class token


class TokenGrid(nn.Module):
    """What every stem shares: tokens of ``tubelet_size`` frames × ``patch_size``² pixels."""

    def __init__(self, patch_size: int, tubelet_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size

    def grid(self, clip_shape: Sequence[int]) -> tuple[int, int, int]:
        """(frames, rows, columns) of tokens for clips of shape (..., T, C, H, W)."""
        frames, _, height, width = clip_shape[-4:]
        if frames % self.tubelet_size or height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"{type(self).__name__}: clips of {frames} frames of {height}x{width} do not split "
                f"into tubelets of {self.tubelet_size} frames x {self.patch_size}² pixels"
            )
        return frames // self.tubelet_size, height // self.patch_size, width // self.patch_size


class TubeletEmbed(TokenGrid):
    """(batch, T, C, H, W) → (batch, T / tubelet · (H / patch) · (W / patch), dim), frame-major,
    each frame's patches row-major: a linear projection of each tubelet."""

    def __init__(self, patch_size: int, tubelet_size: int, in_chans: int, embed_dim: int):
        super().__init__(patch_size, tubelet_size)
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, clips: Tensor) -> Tensor:
        return self.proj(clips.transpose(1, 2)).flatten(2).transpose(1, 2)


def power_of_two_log2(name: str, value: int, low: int) -> int:
    """log2(value), for a power of two >= low; ``name`` says whose argument in the error."""
    if value < low or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= {low}, got {value}")
    return value.bit_length() - 1


def conv_bn_relu(dims: int, channels: int, out: int, stride) -> list[nn.Module]:
    """A 3×3 (×3) convolution without bias, BatchNorm and ReLU, in 2 or 3 dimensions."""
    conv, norm = {2: (nn.Conv2d, nn.BatchNorm2d), 3: (nn.Conv3d, nn.BatchNorm3d)}[dims]
    return [conv(channels, out, 3, stride=stride, padding=1, bias=False), norm(out), nn.ReLU(True)]


class MotionConvStem(TokenGrid):
    """A 3D-convolutional stem for small data, giving each token a receptive field that spans an
    object's motion: each frame with its difference to the previous one (TSN's RGB difference,
    zero for the first) → one stage per halving of the side down to ``patch_size`` — a strided
    3×3×3 convolution (the last log2(tubelet) stages also halve time), from the third stage on a
    second one at that resolution, each with BatchNorm and ReLU — widths ``width``, ``width``,
    then doubling, the last ``embed_dim``. No linear projection follows: on the built-in video
    set one after the ReLU features slowed the start of training severalfold. Same grid and
    output as ``TubeletEmbed``."""

    def __init__(
        self, patch_size: int, tubelet_size: int, in_chans: int, embed_dim: int, width: int = 32
    ):
        super().__init__(patch_size, tubelet_size)
        stages = power_of_two_log2("MotionConvStem: patch_size", patch_size, 2)
        time_halvings = power_of_two_log2("MotionConvStem: tubelet_size", tubelet_size, 1)
        if time_halvings > stages:
            raise ValueError(
                f"MotionConvStem: tubelet_size {tubelet_size} needs patch_size >= {tubelet_size}"
            )
        layers, channels = [], 2 * in_chans
        for stage in range(stages):
            out = embed_dim if stage == stages - 1 else min(embed_dim, width << max(0, stage - 1))
            time_stride = 2 if stage >= stages - time_halvings else 1
            layers += conv_bn_relu(3, channels, out, (time_stride, 2, 2))
            if stage >= 2:
                layers += conv_bn_relu(3, out, out, 1)
            channels = out
        self.stages = nn.Sequential(*layers)

    def forward(self, clips: Tensor) -> Tensor:
        difference = torch.cat([torch.zeros_like(clips[:, :1]), clips.diff(dim=1)], dim=1)
        x = torch.cat([clips, difference], dim=2).transpose(1, 2)
        return self.stages(x).flatten(2).transpose(1, 2)


STEMS = {"tubelet": TubeletEmbed, "motion_conv": MotionConvStem}


class VideoBlock(nn.Module):
    """Pre-norm residual block: x + mixer(norm1(x)), then x + ffn(norm2(x)). ``ffn`` replaces the
    default GELU MLP (``mlp.fc1``, ``mlp.fc2``) with any (batch, L, dim) → same module."""

    def __init__(
        self,
        dim: int,
        mixer: nn.Module,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        ffn: nn.Module | None = None,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.attn = mixer
        self.norm2 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.mlp = ffn if ffn is not None else Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, layout: TokenLayout) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), layout))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class HierarchicalVLM(ClassifierMixin, nn.Module):
    """Video classifier with a selectable token mixer and token merging.

    Args:
        num_frames: frames per clip the positions are learned for (others are interpolated).
        img_size: frame side the positions are learned for.
        patch_size: patch side; tubelet_size: frames per token; stem: ``tubelet`` (a linear
            projection of each tubelet) or ``motion_conv`` (``MotionConvStem``).
        in_chans: channels; num_classes: classes (0: no head, ``forward`` gives features).
        embed_dim, depth, num_heads, mlp_ratio: the transformer's shape.
        mixer: the blocks' token mixer (``MixerSettings``; default: dense attention). Each
            settings argument also takes a mapping of its fields, or None for the defaults.
        merging: token merging (``MergeSettings``; default: none); its ``at`` must lie in
            [0, depth).
        importance: the motion-saliency importance of ``motion`` merging
            (``ImportanceSettings``). With ``saliency_ramp_steps`` the model counts its own
            training forwards (``merge_steps``, a buffer only then, saved with the weights, so
            a resumed run goes on where it was).
        global_pool: ``token`` (class token) or ``avg`` (mean of the patch tokens) for the head;
            None: ``avg`` for ``cross_memory`` (tokens read only the memory, so the class token
            never sees the clip), ``token`` otherwise.
        final_norm: LayerNorm over the tokens after the blocks (off: they go to the pooling as
            the blocks leave them).
        drop_rate, drop_path_rate: dropout and stochastic depth (rising over the blocks).
        pixel_mean, pixel_std: normalisation of uint8 clips (float clips are taken as given).

    The presets also take each settings field as a flat keyword (``settings.FLAT_KEYS``:
    ``attention``, ``attention_args``, ``merge_ratio``, ``merge_at``, …).
    """

    num_prefix_tokens = NUM_PREFIX_TOKENS
    # The factorised positions train with weight decay: without it the built-in video job scored
    # 92.9 % against 95.0 % (same seed, one run each).
    no_weight_decay_params = ("cls_token",)

    def __init__(
        self,
        num_frames: int = 16,
        img_size: int = 64,
        patch_size: int = 8,
        tubelet_size: int = 1,
        stem: str = "tubelet",
        in_chans: int = 3,
        num_classes: int = 12,
        embed_dim: int = 96,
        depth: int = 4,
        num_heads: int = 3,
        mlp_ratio: float = 2.0,
        mixer: MixerSettings | Mapping[str, Any] | None = None,
        merging: MergeSettings | Mapping[str, Any] | None = None,
        importance: ImportanceSettings | Mapping[str, Any] | None = None,
        global_pool: str | None = None,
        final_norm: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        pixel_mean: Sequence[float] = (0.5, 0.5, 0.5),
        pixel_std: Sequence[float] = (0.25, 0.25, 0.25),
    ):
        super().__init__()
        self.mixer: MixerSettings = as_settings("mixer", mixer)
        self.merging: MergeSettings = as_settings("merging", merging)
        self.importance: ImportanceSettings = as_settings("importance", importance)
        check_choice("stem", stem, list(STEMS))
        global_pool = global_pool or ("avg" if self.mixer.type == "cross_memory" else "token")
        check_choice("global_pool", global_pool, GLOBAL_POOLS)
        if not all(0 <= index < depth for index in self.merging.at):
            raise ValueError(
                f"token_merging.merge_at must hold distinct block indices in [0, {depth}), got "
                f"{list(self.merging.at)}"
            )
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        if self.importance.saliency_ramp_steps:
            self.register_buffer("merge_steps", torch.zeros((), dtype=torch.long))
        self.global_pool = global_pool
        self.clip_shape = (num_frames, in_chans, img_size, img_size)  # what positions fit
        self.grad_checkpointing = False

        self.patch_embed = STEMS[stem](patch_size, tubelet_size, in_chans, embed_dim)
        frames, rows, cols = self.patch_embed.grid((num_frames, in_chans, img_size, img_size))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed_time = nn.Parameter(torch.zeros(1, frames, 1, embed_dim))
        self.pos_embed_space = nn.Parameter(torch.zeros(1, 1, rows * cols, embed_dim))
        self.pos_grid = (rows, cols)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            VideoBlock(
                embed_dim,
                build_mixer(self.mixer.type, embed_dim, num_heads, **self.mixer.args),
                mlp_ratio,
                drop=drop_rate,
                drop_path=rate,
            )
            for rate in rates
        )
        self._check_class_attention()
        self.norm = nn.LayerNorm(embed_dim, eps=NORM_EPS) if final_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = linear_head(embed_dim, num_classes)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        # The head keeps PyTorch's initialisation: with ViT's (std 0.02) a classifier of this
        # size sat at chance for several epochs on the built-in video set.
        init_vit_weights(
            self, self.cls_token, self.pos_embed_time, self.pos_embed_space, keep=("head",)
        )

    def _check_class_attention(self) -> None:
        if self.merging.class_attention_weight > 0 and not isinstance(
            self.blocks[0].attn, QKVMixer
        ):
            with_qkv = sorted(name for name, cls in MIXERS.items() if issubclass(cls, QKVMixer))
            raise ValueError(
                f"token_merging.class_attention_weight needs attention.type in {with_qkv} "
                f"(a qkv projection), got {self.mixer.type!r}"
            )

    # -- settings ----------------------------------------------------------------------------

    def set_merge_ratio(self, ratio: float) -> None:
        """Fraction of each frame's patch tokens to remove (0 turns merging off)."""
        self.merging = dataclasses.replace(self.merging, ratio=ratio)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in the backward instead of keeping them."""
        self.grad_checkpointing = enabled

    def feature_layout(self, clip_shape: Sequence[int]) -> TokenLayout:
        """How ``forward_features`` lays out the tokens of clips of this shape when the runs
        are equal (no merging, the per-frame budget, or unmerged): the class token, then
        ``frames`` runs of equally many tokens (``per_frame(length)``). ``forward_tokens`` gives
        the layout of any forward, unequal runs included."""
        return TokenLayout(NUM_PREFIX_TOKENS, self.patch_embed.grid(clip_shape)[0])

    # -- forward -----------------------------------------------------------------------------

    def prepare(self, clips: Tensor) -> Tensor:
        """uint8 clips → normalised float; float clips as given."""
        if clips.dim() != 5:
            raise ValueError(
                f"HierarchicalVLM: expected clips (batch, T, C, H, W), got shape {tuple(clips.shape)}"
            )
        if clips.dtype == torch.uint8:
            return (clips.float() / 255 - self.pixel_mean) / self.pixel_std
        return clips

    def positions(self, frames: int, rows: int, cols: int) -> Tensor:
        """(1, frames · rows · cols, dim): time + space embeddings, interpolated to the grid."""
        time = self.pos_embed_time
        if frames != time.shape[1]:
            time = F.interpolate(
                time.squeeze(2).transpose(1, 2), size=frames, mode="linear", align_corners=False
            ).transpose(1, 2)[:, :, None]
        space = self.pos_embed_space
        if (rows, cols) != self.pos_grid:
            grid = space.view(1, *self.pos_grid, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
            space = grid.flatten(2).transpose(1, 2)[:, None]
        return (time + space).flatten(1, 2)

    def saliency_scale(self) -> float:
        """The weight of the saliency terms now (progressive merging; 1 without it)."""
        ramp_steps = self.importance.saliency_ramp_steps
        return saliency_scale_at(int(self.merge_steps), ramp_steps) if ramp_steps else 1.0

    def token_importance(self, clips: Tensor) -> Tensor | None:
        """Per-token importance (batch, tokens) of the input frames, averaged over each
        tubelet's frames: motion, edge saliency (``motion_alpha``) and colour saliency
        (``colour_weight``), the saliency terms scaled by ``saliency_scale``; None unless
        motion-guided merging will run."""
        if self.merging.mode != "motion" or self.merging.ratio == 0:
            return None
        settings = self.importance
        patch_size, saliency = self.patch_embed.patch_size, self.saliency_scale()
        alpha = 1.0 - saliency * (1.0 - settings.motion_alpha)
        scores = motion_importance(clips.detach(), patch_size, alpha, settings.motion_source)
        if settings.colour_weight > 0:
            colour = colour_saliency(clips, patch_size)
            scores = scores + saliency * settings.colour_weight * colour
        tubelet = self.patch_embed.tubelet_size
        return scores.unflatten(1, (-1, tubelet)).mean(2).flatten(1)

    def forward_features(self, clips: Tensor, unmerge: bool = False) -> Tensor:
        """Every token after the blocks and the final norm: (batch, 1 + patches, dim), the class
        token first, then each frame's tokens (``forward_tokens`` gives their layout). With
        token merging, the merged tokens, or every patch again with ``unmerge=True`` (each
        patch receives the token it was merged into)."""
        return self.forward_tokens(clips, unmerge)[0]

    def forward_tokens(self, clips: Tensor, unmerge: bool = False) -> tuple[Tensor, TokenLayout]:
        """``forward_features`` and the ``TokenLayout`` of its tokens."""
        clips = self.prepare(clips)
        frames, rows, cols = self.patch_embed.grid(clips.shape)
        if self.training:
            self._advance_step()
        importance = self.token_importance(clips)
        clip_budget = self.merging.ratio > 0 and self.merging.budget == "clip"
        motion = frame_motion(clips, self.patch_embed.tubelet_size) if clip_budget else None
        patches = self.patch_embed(clips) + self.positions(frames, rows, cols)
        size = patches.new_ones(patches.shape[:2], dtype=torch.float32)
        counts = torch.full((len(patches), frames), rows * cols, device=patches.device)
        x = self.pos_drop(torch.cat([self.cls_token.expand(len(patches), -1, -1), patches], 1))
        layout = TokenLayout(NUM_PREFIX_TOKENS, frames)
        assigns = []
        for index, block in enumerate(self.blocks):
            if index in self.merging.at and self.merging.ratio > 0:
                x, size, importance, counts, assign = self._reduce(
                    x, size, importance, counts, motion, block
                )
                assigns.append(assign)
                layout = TokenLayout(
                    NUM_PREFIX_TOKENS,
                    frames,
                    self._with_prefix(size) if self.merging.proportional_attention else None,
                    None if motion is None else counts,
                )
            if self.grad_checkpointing and self.training:
                x = checkpoint(
                    block, x, layout, use_reentrant=False, context_fn=self._recompute_contexts
                )
            else:
                x = block(x, layout)
        x = self.norm(x)
        if unmerge and assigns:
            patches = x[:, NUM_PREFIX_TOKENS:]
            for assign in reversed(assigns):
                patches = unmerge_tokens(patches, assign)
            x = torch.cat([x[:, :NUM_PREFIX_TOKENS], patches], 1)
            layout = TokenLayout(NUM_PREFIX_TOKENS, frames)
        return x, layout

    def _recompute_contexts(self):
        """For a checkpointed block: nothing around its forward; around its recomputation in
        the backward, the per-sample LoRA weights in force at its forward (per-domain
        adapters), which have been unset by then."""
        return contextlib.nullcontext(), adapter_weights_in_force(self)

    def _advance_step(self) -> None:
        """Counts a training forward for the schedules that follow them."""
        for module in self.modules():
            if isinstance(module, PerformerAttention):
                module.advance_step()
        if self.importance.saliency_ramp_steps:
            self.merge_steps += 1

    def _reduce(
        self,
        x: Tensor,
        size: Tensor,
        importance: Tensor | None,
        counts: Tensor,
        motion: Tensor | None,
        block: VideoBlock,
    ):
        """Merges (or drops) tokens of each frame's run of ``counts`` before ``block``, as many
        per frame as the budget says (the clip's, spread by ``motion``, or the frame's);
        ``importance`` is the motion importance carried from earlier merges."""
        prefix, patches = x[:, :NUM_PREFIX_TOKENS], x[:, NUM_PREFIX_TOKENS:]
        merging = self.merging
        if motion is None:
            remove = removal_per_frame(counts, merging.ratio, len(merging.at))
        else:
            remove = removal_per_clip(counts, motion, merging.ratio, len(merging.at))
        scores = importance
        if merging.class_attention_weight > 0 and merging.mode != "random":
            with torch.no_grad():
                attention = block.attn.class_attention(block.norm1(x))[:, NUM_PREFIX_TOKENS:]
            frame = TokenLayout(NUM_PREFIX_TOKENS, counts.shape[1], counts=counts).frame_index(
                len(x), x.shape[1], x.device
            )
            attention = merging.class_attention_weight * run_maximum_one(
                attention, frame, counts.shape[1]
            )
            scores = attention if importance is None else importance + attention
        patches, size, assign, counts = reduce_runs(
            patches, size, scores, counts, remove, merging.mode, merging.importance_weight
        )
        # Only the motion importance goes on (a later merge adds its own block's attention).
        if importance is not None:
            importance = carry_importance(importance, assign, patches.shape[1])
        return torch.cat([prefix, patches], 1), size, importance, counts, assign

    @staticmethod
    def _with_prefix(size: Tensor) -> Tensor:
        """Token sizes (batch, patches) with the class token's (1) in front."""
        return torch.cat([size.new_ones(len(size), NUM_PREFIX_TOKENS), size], 1)

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """The pooled features (``pre_logits=True``) or the head's logits."""
        if self.global_pool == "avg":
            pooled = features[:, NUM_PREFIX_TOKENS:].mean(1)
        else:
            pooled = features[:, 0]
        pooled = self.head_drop(pooled)
        return pooled if pre_logits else self.head(pooled)

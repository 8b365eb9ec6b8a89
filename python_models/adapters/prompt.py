"""Visual prompt tuning's prompts (VPT, Jia et al. 2022) on any ViT-style stack of blocks, each
mapping (batch, L, dim) → (batch, L, dim): learned prompt tokens put between the leading
(class) tokens and the rest. Shallow prompts are one set, inserted before the first block; deep
prompts are one set per block, each replacing the previous block's prompt outputs before its
block.

    prompts = init_prompts(len(vit.blocks), 10, dim, patch_fan_in=3 * 16 * 16)  # deep
    tokens = run_prompted(vit.embed(images), vit.blocks, prompts, num_prefix_tokens=1)
"""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def init_prompts(num_sets: int, num_prompts: int, dim: int, patch_fan_in: int) -> nn.Parameter:
    """(num_sets, num_prompts, dim) prompts, initialised Xavier-uniform over a patch's fan-in as
    VPT's: uniform in ±√(6 / (patch_fan_in + dim)). ``patch_fan_in``: the patch embedding's
    inputs per token (channels · patch side²)."""
    for name, value in dict(num_sets=num_sets, num_prompts=num_prompts).items():
        if value < 1:
            raise ValueError(f"{name}: expected >= 1, got {value}")
    bound = math.sqrt(6.0 / (patch_fan_in + dim))
    return nn.Parameter(torch.empty(num_sets, num_prompts, dim).uniform_(-bound, bound))


def insert_prompts(
    tokens: Tensor, prompts: Tensor, num_prefix_tokens: int, replace: bool = False
) -> Tensor:
    """``tokens`` (batch, prefix + rest, dim) with ``prompts`` (P, dim) after the prefix:
    (batch, prefix + P + rest, dim); with ``replace``, the P tokens after the prefix are
    prompts already and give way to the new ones."""
    prefix = tokens[:, :num_prefix_tokens]
    rest = tokens[:, num_prefix_tokens + (len(prompts) if replace else 0) :]
    return torch.cat([prefix, prompts.expand(len(tokens), -1, -1), rest], dim=1)


def run_prompted(
    tokens: Tensor, blocks: Sequence[nn.Module], prompts: Tensor, num_prefix_tokens: int = 1
) -> Tensor:
    """Runs ``blocks`` on ``tokens`` (batch, prefix + rest, dim) with ``prompts`` (sets, P,
    dim): set 0 inserted before the first block, set i replacing the prompt outputs before
    block i (1 set: shallow; one per block: deep). Returns (batch, prefix + P + rest, dim)."""
    if prompts.dim() != 3 or prompts.shape[-1] != tokens.shape[-1]:
        raise ValueError(
            f"prompts: expected (sets, num_prompts, {tokens.shape[-1]}), got {tuple(prompts.shape)}"
        )
    if not 1 <= len(prompts) <= len(blocks):
        raise ValueError(
            f"prompts: expected 1 (shallow) to {len(blocks)} (deep) sets for {len(blocks)} "
            f"blocks, got {len(prompts)}"
        )
    x = insert_prompts(tokens, prompts[0], num_prefix_tokens)
    for index, block in enumerate(blocks):
        if 0 < index < len(prompts):
            x = insert_prompts(x, prompts[index], num_prefix_tokens, replace=True)
        x = block(x)
    return x

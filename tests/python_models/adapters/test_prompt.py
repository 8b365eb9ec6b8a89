import math

import pytest
import torch
from torch import nn

from python_models.adapters import init_prompts, insert_prompts, run_prompted


class Record(nn.Module):
    """A block that keeps its input and adds a constant (so each block's effect shows)."""

    def __init__(self, offset: float):
        super().__init__()
        self.offset = offset
        self.seen = None

    def forward(self, x):
        self.seen = x
        return x + self.offset


def test_init_is_xavier_uniform_over_a_patch():
    torch.manual_seed(0)
    prompts = init_prompts(2, 50, 8, patch_fan_in=3 * 4 * 4)
    bound = math.sqrt(6 / (48 + 8))
    assert prompts.shape == (2, 50, 8) and prompts.requires_grad
    assert prompts.abs().max() <= bound and prompts.abs().max() > 0.9 * bound
    with pytest.raises(ValueError, match="num_prompts: expected >= 1, got 0"):
        init_prompts(1, 0, 8, 48)


def test_insert_puts_prompts_after_the_prefix_or_replaces_them():
    tokens = torch.arange(2 * 4 * 1.0).view(2, 4, 1)
    prompts = torch.full((2, 1), -1.0)
    inserted = insert_prompts(tokens, prompts, num_prefix_tokens=1)
    assert inserted[0, :, 0].tolist() == [0, -1, -1, 1, 2, 3]
    replaced = insert_prompts(inserted, prompts * 2, num_prefix_tokens=1, replace=True)
    assert replaced[1, :, 0].tolist() == [4, -2, -2, 5, 6, 7]


def test_shallow_prompts_enter_once_deep_prompts_before_every_block():
    tokens = torch.zeros(1, 3, 1)
    blocks = [Record(1.0), Record(10.0), Record(100.0)]
    shallow = torch.full((1, 2, 1), 5.0)
    out = run_prompted(tokens, blocks, shallow)
    assert out[0, :, 0].tolist() == [111, 116, 116, 111, 111]
    deep = torch.tensor([5.0, 20.0, 30.0]).view(3, 1, 1).expand(3, 2, 1)
    out = run_prompted(tokens, blocks, deep)
    assert blocks[1].seen[0, :, 0].tolist() == [1, 20, 20, 1, 1]  # block 0's prompt outputs gone
    assert out[0, :, 0].tolist() == [111, 130, 130, 111, 111]


def test_bad_prompts_are_named():
    blocks = [nn.Identity(), nn.Identity()]
    with pytest.raises(ValueError, match=r"expected 1 \(shallow\) to 2 \(deep\) sets"):
        run_prompted(torch.zeros(1, 3, 4), blocks, torch.zeros(3, 2, 4))
    with pytest.raises(
        ValueError, match=r"prompts: expected \(sets, num_prompts, 4\), got \(1, 2, 5\)"
    ):
        run_prompted(torch.zeros(1, 3, 4), blocks, torch.zeros(1, 2, 5))

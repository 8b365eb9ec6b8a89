"""The bidirectional Mamba mixer of Vision Mamba, its pre-norm residual block, and a hybrid block
that mixes the mixer with multi-head attention by learned weights.

Each direction has its own depthwise conv, x/dt projections and SSM parameters; both share the
in-projection (x and the gate z) and the out-projection. The backward direction scans with
``reverse=True`` on the tokens in place: no flipped copies of the sequence are made.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hvision_ext.ops import selective_scan

from .layers import Attention, DropPath, RMSNorm


def channel_major(weight: Tensor, x: Tensor) -> Tensor:
    """weight (out, in) @ x (batch, in, L) → (batch, out, L): projections that keep every scan
    input channel-major without copies. A batched product of the expanded weight, because
    ``torch.matmul`` copies a transposed operand to contiguous memory when gradients are on."""
    return torch.bmm(weight.expand(x.shape[0], -1, -1), x)


class DirectionalConv1d(nn.Conv1d):
    """Depthwise conv over the sequence that sees only the current and earlier tokens in the
    scan's direction: causal (left padding) forwards, anti-causal (right padding) in reverse,
    so the reverse direction needs no flipped copy of the sequence."""

    def __init__(self, channels: int, kernel_size: int, reverse: bool = False):
        super().__init__(channels, channels, kernel_size, groups=channels)
        self.direction_padding = (0, kernel_size - 1) if reverse else (kernel_size - 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        """x: (batch, channels, L) → (batch, channels, L)."""
        return super().forward(F.pad(x, self.direction_padding))


class SSMDirection(nn.Module):
    """One scan direction: conv → SiLU → x-projection to (dt, B, C) → dt-projection → scan."""

    no_weight_decay_params = ("A_log", "D")  # the SSM's decay rates and skip, as Mamba's

    def __init__(
        self,
        d_inner: int,
        d_state: int,
        dt_rank: int,
        d_conv: int,
        reverse: bool,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
    ):
        super().__init__()
        self.reverse = reverse
        self.dt_rank = dt_rank
        self.d_state = d_state
        self.conv = DirectionalConv1d(d_inner, d_conv, reverse)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        # S4D-real initialisation: A = -(1, 2, …, N) for every channel, stored as log(-A).
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(d_inner))
        self._init_dt(dt_min, dt_max)

    def _init_dt(self, dt_min: float, dt_max: float) -> None:
        """Mamba's initialisation: softplus(dt bias) log-uniform in [dt_min, dt_max]."""
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        dt = torch.exp(
            torch.rand(self.dt_proj.out_features) * (math.log(dt_max) - math.log(dt_min))
            + math.log(dt_min)
        )
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        """x, z: (batch, d_inner, L) → (batch, d_inner, L)."""
        x = F.silu(self.conv(x))
        dt, B, C = channel_major(self.x_proj.weight, x).split(
            [self.dt_rank, self.d_state, self.d_state], dim=1
        )
        delta = channel_major(self.dt_proj.weight, dt)
        return selective_scan(
            x,
            delta,
            -torch.exp(self.A_log.float()),
            B,
            C,
            D=self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            reverse=self.reverse,
        )


class BiMamba(nn.Module):
    """Vision Mamba's bidirectional mixer: in-projection to x and gate z, a forward and a reverse
    SSM direction each gated by silu(z), their mean, out-projection. (batch, L, dim) → same."""

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: int | None = None,
    ):
        super().__init__()
        self.d_inner = expand * dim
        dt_rank = dt_rank or math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=False)
        self.forward_ssm = SSMDirection(self.d_inner, d_state, dt_rank, d_conv, reverse=False)
        self.backward_ssm = SSMDirection(self.d_inner, d_state, dt_rank, d_conv, reverse=True)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False)

    def forward(self, hidden: Tensor) -> Tensor:
        tokens = hidden.transpose(1, 2)  # (batch, dim, L)
        x, z = (channel_major(weight, tokens) for weight in self.in_proj.weight.chunk(2))
        y = (self.forward_ssm(x, z) + self.backward_ssm(x, z)) / 2
        return self.out_proj(y.transpose(1, 2))


class MambaBlock(nn.Module):
    """Pre-norm residual block: x + drop_path(BiMamba(RMSNorm(x)))."""

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: int | None = None,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.mixer = BiMamba(dim, d_state=d_state, expand=expand, d_conv=d_conv, dt_rank=dt_rank)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop_path(self.mixer(self.norm(x)))


class HybridBlock(MambaBlock):
    """A learned combination of SSM and attention: the BiMamba mixer and multi-head
    self-attention (``scaled_dot_product_attention``) read the same pre-norm input, and their
    outputs are mixed by two per-block weights before the residual (no MLP, as ``MambaBlock``)::

        n = RMSNorm(x);  (w_ssm, w_attn) = softmax(mix_logits)
        x + drop_path(w_ssm · BiMamba(n) + w_attn · Attention(n))

    ``mix_logits`` start at zero, an equal mix (0.5, 0.5). The softmax keeps both weights
    positive and summing to one, so the branch keeps the scale of a single mixer whichever way
    training tilts it."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        d_state: int = 16,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: int | None = None,
        drop_path: float = 0.0,
    ):
        super().__init__(
            dim, d_state=d_state, expand=expand, d_conv=d_conv, dt_rank=dt_rank, drop_path=drop_path
        )
        self.attn = Attention(dim, num_heads)
        self.mix_logits = nn.Parameter(torch.zeros(2))

    def mix_weights(self) -> Tensor:
        """(w_ssm, w_attn): the current weights of the two branches, summing to one."""
        return self.mix_logits.softmax(dim=0)

    def forward(self, x: Tensor) -> Tensor:
        normed = self.norm(x)
        w_ssm, w_attn = self.mix_weights().to(normed.dtype)
        return x + self.drop_path(w_ssm * self.mixer(normed) + w_attn * self.attn(normed))

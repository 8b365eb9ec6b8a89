"""Reference selective scan (Mamba's S6 recurrence), one time step at a time."""

import torch
import torch.nn.functional as F
from torch import Tensor

from .._dtype import accumulation_dtype


def expand_projection(proj: Tensor, dim: int) -> Tensor:
    """B or C as (batch or 1, dim, L or 1, N): fixed (dim, N), variable (batch, N, L) and grouped
    (batch, G, N, L), channel d using group d // (dim // G)."""
    if proj.dim() == 2:
        return proj[None, :, None, :]
    grouped = proj.unsqueeze(1) if proj.dim() == 3 else proj
    per_channel = grouped.repeat_interleave(dim // grouped.shape[1], dim=1)
    return per_channel.transpose(-1, -2)


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: Tensor | None = None,
    reverse: bool = False,
):
    """Selective scan over the last axis of u (batch, dim, L).

    δ = softplus(delta + delta_bias) (softplus only if ``delta_softplus``);
    h_t = exp(δ_t A) ⊙ h_{t-1} + δ_t B_t u_t with h_{-1} = initial_state (zeros if None);
    y_t = C_t · h_t;  out = (y + D u) · silu(z).
    ``reverse`` runs t = L-1 … 0. Returns out (dtype of u), and the last state (batch, dim, N)
    in float32 (float64 for float64 inputs) if ``return_last_state``.
    """
    acc = accumulation_dtype(u.dtype)
    batch, dim, length = u.shape
    u_acc = u.to(acc)
    delta = delta.to(acc)
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)

    decay = torch.exp(delta.unsqueeze(-1) * A[:, None, :])  # (batch, dim, L, N)
    drive = (delta * u_acc).unsqueeze(-1) * expand_projection(B, dim).to(acc)
    readout = expand_projection(C, dim).to(acc).expand(batch, dim, length, -1)

    state = (
        u_acc.new_zeros(batch, dim, A.shape[1]) if initial_state is None else initial_state.to(acc)
    )
    steps = list(zip(decay.unbind(2), drive.unbind(2), readout.unbind(2)))
    ys = [None] * length
    for t in reversed(range(length)) if reverse else range(length):
        step_decay, step_drive, step_readout = steps[t]
        state = step_decay * state + step_drive
        ys[t] = (state * step_readout).sum(-1)
    y = torch.stack(ys, dim=-1) if length else u_acc.new_zeros(batch, dim, 0)

    out = y if D is None else y + D[:, None] * u_acc
    if z is not None:
        out = out * F.silu(z.to(acc))
    out = out.to(u.dtype)
    return (out, state) if return_last_state else out

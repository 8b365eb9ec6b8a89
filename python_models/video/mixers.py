"""The token mixers of the video blocks: dense attention and seven efficient alternatives.

Every mixer maps tokens (batch, L, dim) to (batch, L, dim) and takes a ``TokenLayout`` that says
how the sequence is laid out: ``prefix`` class/global tokens, then ``frames`` runs of patch
tokens (frame-major), equally long or, after a per-clip merge budget, of each clip's own
lengths. The mixers that read the frames (strided, local-global, hierarchical) honour unequal
runs; those that ignore the layout accept it all the same, so a block can hold any of them.
Projections are plain ``nn.Linear`` layers with stable names (``qkv``, ``proj``, ``q``) for
adapters that wrap them by name.
"""

import dataclasses
import inspect
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hvision_ext.ops import hopfield_retrieval, local_global_attention, sparse_attention

from ..mamba import BiMamba


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """``prefix`` class/global tokens, then ``frames`` runs of patch tokens, frame-major.

    ``counts`` (batch, frames) int64: each clip's tokens per frame, after a per-clip merge budget
    left frames unequal (every clip has the same total, so a batch stays one tensor; None: all
    runs equal, ``(L − prefix) / frames`` tokens each). ``size`` (batch, L): how many input
    tokens each token stands for after merging (None: one each), for proportional attention."""

    prefix: int
    frames: int
    size: Tensor | None = None
    counts: Tensor | None = None

    @property
    def equal_runs(self) -> bool:
        return self.counts is None

    def per_frame(self, length: int) -> int:
        """Tokens per frame of a sequence of ``length`` tokens with equal runs."""
        if self.counts is not None:
            raise ValueError("TokenLayout: runs of unequal length have no single per_frame count")
        patches = length - self.prefix
        if patches <= 0 or patches % self.frames:
            raise ValueError(
                f"TokenLayout: {length} tokens are not {self.prefix} prefix tokens plus "
                f"{self.frames} equal frames"
            )
        return patches // self.frames

    def runs(self, batch: int, length: int, device: torch.device | None = None) -> Tensor:
        """(batch, frames) int64: the patch tokens of each frame of each clip."""
        if self.counts is not None:
            if (
                self.counts.shape != (batch, self.frames)
                or self.counts[0].sum() != length - self.prefix
            ):
                raise ValueError(
                    f"TokenLayout: counts of shape {tuple(self.counts.shape)} summing to "
                    f"{int(self.counts[0].sum())} do not describe {batch} clips of {length} "
                    f"tokens with {self.prefix} prefix tokens and {self.frames} frames"
                )
            return self.counts
        per_frame = self.per_frame(length)
        return torch.full((batch, self.frames), per_frame, dtype=torch.long, device=device)

    def longest_run(self, length: int) -> int:
        """The most patch tokens any frame holds."""
        return self.per_frame(length) if self.counts is None else int(self.counts.max())

    def frame_index(self, batch: int, length: int, device: torch.device | None = None) -> Tensor:
        """(batch, L − prefix) int64: the frame of every patch token."""
        ends = self.runs(batch, length, device).cumsum(-1)
        positions = torch.arange(length - self.prefix, device=ends.device).expand(batch, -1)
        return torch.searchsorted(ends, positions.contiguous(), right=True)


def pack_runs(patches: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Patch tokens (batch, N, ...) in runs of ``counts`` (batch, frames) → (batch, frames,
    longest run, ...) with each run left-aligned, and the mask of real (not padding) slots
    (batch, frames, longest run). Zeros fill the padding."""
    longest = int(counts.max())
    slots = torch.arange(longest, device=counts.device)
    valid = slots < counts[..., None]
    starts = counts.cumsum(-1) - counts
    index = (starts[..., None] + slots).clamp_max(patches.shape[1] - 1)
    rows = torch.arange(len(patches), device=counts.device)[:, None, None]
    padding = ~valid.view(*valid.shape, *[1] * (patches.dim() - 2))
    return patches[rows, index].masked_fill(padding, 0), valid


def unpack_runs(packed: Tensor, valid: Tensor) -> Tensor:
    """The inverse of ``pack_runs``: (batch, frames, longest run, ...) → (batch, N, ...)."""
    return packed[valid].view(len(packed), -1, *packed.shape[3:])


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(batch, L, dim) → (batch, heads, L, dim // heads)."""
    batch, length, dim = x.shape
    return x.view(batch, length, num_heads, dim // num_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(batch, heads, L, head_dim) → (batch, L, heads · head_dim)."""
    return x.transpose(1, 2).flatten(2)


class QKVMixer(nn.Module):
    """Multi-head self-attention scaffolding: ``qkv`` projection, a pattern (``attend``) on
    (batch, heads, L, head_dim) queries, keys and values, ``proj`` projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"{type(self).__name__}: dim must be divisible by num_heads, got {dim} and {num_heads}"
            )
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, layout: TokenLayout) -> Tensor:
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        return self.proj(merge_heads(self.attend(q, k, v, layout)))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout) -> Tensor:
        raise NotImplementedError

    def class_attention(self, x: Tensor) -> Tensor:
        """(batch, L): the softmax attention of the first token's query over every token's key,
        averaged over the heads (what a dense layer's class token reads; the efficient mixers
        use the same projections but mix differently). Projects only that query and the keys."""
        dim = x.shape[-1]
        weight, bias = self.qkv.weight, self.qkv.bias
        query = F.linear(x[:, :1], weight[:dim], None if bias is None else bias[:dim])
        keys = F.linear(x, weight[dim : 2 * dim], None if bias is None else bias[dim : 2 * dim])
        q, k = split_heads(query, self.num_heads), split_heads(keys, self.num_heads)
        scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5  # (batch, heads, 1, L)
        return scores.softmax(-1).mean(1)[:, 0]


class FullAttention(QKVMixer):
    """Dense softmax attention (``scaled_dot_product_attention``): the O(L²) baseline. With
    token sizes in the layout it is ToMe's proportional attention: a key that stands for s
    tokens weighs as s copies of itself (log s added to its scores)."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout) -> Tensor:
        bias = None if layout.size is None else layout.size.log()[:, None, None, :].to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


class StridedAttention(QKVMixer):
    """Factorised space-time attention: each token sees its spatial neighbours and the same
    place in every frame; the prefix tokens attend and are attended globally. With equal runs
    of P patches it is the fused sparse kernel (the band |i − j| < P and every token P apart).
    Unequal runs (a per-clip merge budget) have no single stride: there each token sees its own
    frame and the token of the same rank in every other frame (``space_time_attention``)."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout) -> Tensor:
        if layout.equal_runs:
            stride = layout.per_frame(q.shape[-2])
            return sparse_attention(
                q, k, v, window=stride - 1, stride=stride, num_global=layout.prefix
            )
        return space_time_attention(q, k, v, layout)


def space_time_attention(q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout) -> Tensor:
    """Softmax attention (batch, heads, L, head_dim) where the prefix tokens see every token and
    a patch token sees the prefix, its own frame's tokens and the tokens of its rank in the
    other frames: one softmax over those three groups of keys, each scored on the frames packed
    (``pack_runs``), so no (L, L) scores are formed."""
    prefix = layout.prefix
    counts = layout.runs(q.shape[0], q.shape[-2], q.device)
    # (batch, heads, frames, longest run, head_dim), padding zeros; valid (batch, frames, run).
    (qf, kf, vf), valid = pack_heads([q, k, v], counts, prefix)
    kp, vp = k[:, :, None, :prefix], v[:, :, None, :prefix]
    qf = qf * q.shape[-1] ** -0.5
    frames = counts.shape[1]
    own_frame = (qf @ kf.transpose(-1, -2)).masked_fill(~valid[:, None, :, None, :], -math.inf)
    # Same rank, other frames: (…, frames, run, frames); its own frame is in ``own_frame``.
    other_frames = (qf.transpose(2, 3) @ kf.permute(0, 1, 3, 4, 2)).transpose(2, 3)
    same_frame = torch.eye(frames, dtype=torch.bool, device=q.device)[:, None, :]
    key_padding = ~valid.transpose(1, 2)[:, None, None]  # (batch, 1, 1, run, frames)
    other_frames = other_frames.masked_fill(same_frame | key_padding, -math.inf)
    weights = torch.cat([own_frame, other_frames, qf @ kp.transpose(-1, -2)], -1).softmax(-1)
    run = own_frame.shape[-1]
    own, other, to_prefix = weights.split([run, frames, prefix], -1)
    mixed = own @ vf + (other.transpose(2, 3) @ vf.transpose(2, 3)).transpose(2, 3)
    mixed = mixed + to_prefix @ vp
    patches = unpack_runs(mixed.permute(0, 2, 3, 1, 4), valid)  # (batch, N, heads, head_dim)
    prefix_out = F.scaled_dot_product_attention(q[:, :, :prefix], k, v)
    return torch.cat([prefix_out, patches.transpose(1, 2)], 2)


def pack_heads(tensors: list[Tensor], counts: Tensor, prefix: int) -> tuple[list[Tensor], Tensor]:
    """The patch tokens of (batch, heads, L, head_dim) tensors packed by frame (``pack_runs``)
    as (batch, heads, frames, longest run, head_dim), and the mask of real slots."""
    packed = []
    for tensor in tensors:
        runs, valid = pack_runs(tensor[:, :, prefix:].transpose(1, 2), counts)
        packed.append(runs.permute(0, 3, 1, 2, 4))
    return packed, valid


class LocalGlobalAttention(QKVMixer):
    """A sliding window of ``window`` tokens each side (default: the longest frame's patches,
    so that every token sees its whole frame however unequal the runs) plus the prefix tokens
    as global tokens (Longformer/BigBird), through the fused kernel."""

    def __init__(self, dim: int, num_heads: int, window: int | None = None, qkv_bias: bool = True):
        super().__init__(dim, num_heads, qkv_bias)
        if window is not None and window < 1:
            raise ValueError(f"LocalGlobalAttention: window must be >= 1 or None, got {window}")
        self.window = window

    def attend(self, q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout) -> Tensor:
        window = self.window or layout.longest_run(q.shape[-2])
        return local_global_attention(q, k, v, window, layout.prefix)


class CrossMemoryAttention(nn.Module):
    """Tokens read a learned memory bank of ``memory_slots`` key/value slots per head: queries
    from the tokens, ``n_steps`` Hopfield updates against the keys, then the values — one
    ``hopfield_retrieval`` call with the bank shared across the batch (no expanded copy)."""

    def __init__(self, dim: int, num_heads: int, memory_slots: int = 64, n_steps: int = 1):
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"CrossMemoryAttention: dim must be divisible by num_heads, got {dim} and {num_heads}"
            )
        if memory_slots < 1 or n_steps < 1:
            raise ValueError(
                f"CrossMemoryAttention: memory_slots and n_steps must be >= 1, got "
                f"{memory_slots} and {n_steps}"
            )
        self.num_heads = num_heads
        self.n_steps = n_steps
        head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.memory_keys = nn.Parameter(torch.randn(num_heads, memory_slots, head_dim) * 0.02)
        self.memory_values = nn.Parameter(torch.randn(num_heads, memory_slots, head_dim) * 0.02)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, layout: TokenLayout) -> Tensor:
        q = split_heads(self.q(x), self.num_heads)
        out = hopfield_retrieval(
            q, self.memory_keys.to(q.dtype), self.memory_values.to(q.dtype), n_steps=self.n_steps
        )
        return self.proj(merge_heads(out))


def kernel_attention(q_features: Tensor, k_features: Tensor, v: Tensor, causal: bool) -> Tensor:
    """Linear-time attention with non-negative feature maps φ(q), φ(k) (batch, heads, L, m):
    out_i = φ(q_i) Σ_j φ(k_j) v_jᵀ / φ(q_i) Σ_j φ(k_j), over j ≤ i when ``causal``."""
    q_features, k_features, v = q_features.float(), k_features.float(), v.float()
    if causal:
        context = torch.einsum("bhlm,bhld->bhlmd", k_features, v).cumsum(dim=2)
        numerator = torch.einsum("bhlm,bhlmd->bhld", q_features, context)
        normaliser = (q_features * k_features.cumsum(dim=2)).sum(-1, keepdim=True)
    else:
        # The normaliser as one more value column of ones: each feature map then enters one
        # product, and the backward has no (L, m) outer products or gradient sums to add up.
        ones = v.new_ones(*v.shape[:-1], 1)
        mixed = q_features @ (k_features.transpose(-1, -2) @ torch.cat([v, ones], -1))
        numerator, normaliser = mixed[..., :-1], mixed[..., -1:]
    return numerator / normaliser.clamp_min(1e-6)


class LinearAttention(QKVMixer):
    """Kernelised linear attention (Katharopoulos et al.) with the elu(x) + 1 feature map."""

    def __init__(self, dim: int, num_heads: int, causal: bool = False, qkv_bias: bool = True):
        super().__init__(dim, num_heads, qkv_bias)
        self.causal = causal

    def attend(self, q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout) -> Tensor:
        out = kernel_attention(F.elu(q) + 1, F.elu(k) + 1, v, self.causal)
        return out.to(v.dtype)


def orthogonal_gaussian(num_features: int, dim: int) -> Tensor:
    """(num_features, dim) random projection: blocks of orthonormal rows (QR of Gaussians), each
    row rescaled to the norm of a Gaussian vector, so rows are exactly orthogonal within a block
    and marginally N(0, I) (FAVOR+'s orthogonal random features)."""
    blocks = [torch.linalg.qr(torch.randn(dim, dim))[0].T for _ in range(-(-num_features // dim))]
    norms = torch.randn(num_features, dim).norm(dim=1, keepdim=True)
    return torch.cat(blocks)[:num_features] * norms


FEATURE_FLOOR = 1e-6  # added to every positive feature, so that no normaliser is 0


class PositiveRandomFeatures(torch.autograd.Function):
    """φ(x) = (exp(x Wᵀ − ‖x‖²/2 − c) + ε) / √m for x (..., L, d) and a fixed projection W (m, d),
    c the maximum of the exponent over ``dims`` (a constant in the gradient). Saves only x and
    φ, which the attention keeps anyway: autograd through the plain formula also keeps the
    exponent and the exponential, two more (L, m) tensors per call."""

    @staticmethod
    def forward(ctx, x: Tensor, projection: Tensor, dims: tuple[int, ...]) -> Tensor:
        # One matrix product over every row (a broadcast matmul would run one per head), then
        # in place: a fresh (L, m) buffer per step costs about as much as the arithmetic.
        rows = x.reshape(-1, x.shape[-1]) @ projection.T
        logits = rows.view(*x.shape[:-1], -1)
        logits -= x.pow(2).sum(-1, keepdim=True) / 2
        logits -= logits.amax(dim=dims, keepdim=True)
        features = logits.exp_().add_(FEATURE_FLOOR).div_(math.sqrt(projection.shape[0]))
        ctx.save_for_backward(x, projection, features)
        return features

    @staticmethod
    def backward(ctx, grad_features: Tensor):
        x, projection, features = ctx.saved_tensors
        # dφ/d(exponent) = φ − ε/√m, the exponential part of φ.
        grad_logits = (features - FEATURE_FLOOR / math.sqrt(projection.shape[0])).mul_(
            grad_features
        )
        grad_x = grad_logits @ projection - x * grad_logits.sum(-1, keepdim=True)
        return grad_x, None, None


class PerformerAttention(QKVMixer):
    """FAVOR+ (Performer): softmax attention approximated with positive orthogonal random
    features, φ(x) = exp(wᵀx − ‖x‖²/2) / √m. ``nb_features`` m defaults to d·ln d (d the head
    width). The projection is redrawn every ``redraw_interval`` training steps
    (``advance_step``, called by the model once per training forward; 0 never redraws) and is
    a buffer: saved with the weights and fixed in eval."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        nb_features: int | None = None,
        redraw_interval: int = 1000,
        causal: bool = False,
        qkv_bias: bool = True,
    ):
        super().__init__(dim, num_heads, qkv_bias)
        self.nb_features = nb_features or max(1, int(self.head_dim * math.log(self.head_dim)))
        if self.nb_features < 1 or redraw_interval < 0:
            raise ValueError(
                f"PerformerAttention: nb_features must be >= 1 and redraw_interval >= 0, got "
                f"{nb_features} and {redraw_interval}"
            )
        self.redraw_interval = redraw_interval
        self.causal = causal
        self.register_buffer("projection", orthogonal_gaussian(self.nb_features, self.head_dim))
        self.register_buffer("steps_since_redraw", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def redraw_projection(self) -> None:
        self.projection.copy_(orthogonal_gaussian(self.nb_features, self.head_dim))
        self.steps_since_redraw.zero_()

    def advance_step(self) -> None:
        """Counts a training step, redrawing the features when the interval is reached."""
        if self.redraw_interval and self.steps_since_redraw.item() >= self.redraw_interval:
            self.redraw_projection()
        self.steps_since_redraw += 1

    def features(self, x: Tensor, is_query: bool) -> Tensor:
        """Positive random features of queries or keys (batch, heads, L, m). A maximum is taken
        out of the exponent for stability: per row for queries (it cancels in the row's
        normalisation), over the whole sequence for keys (a common factor)."""
        x = x.float() * self.head_dim**-0.25
        dims = (-1,) if is_query else (-2, -1)
        return PositiveRandomFeatures.apply(x, self.projection, dims)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout) -> Tensor:
        out = kernel_attention(self.features(q, True), self.features(k, False), v, self.causal)
        return out.to(v.dtype)

    def extra_repr(self) -> str:
        return f"nb_features={self.nb_features}, redraw_interval={self.redraw_interval}, causal={self.causal}"


class MambaMixer(BiMamba):
    """The bidirectional Mamba mixer (``selective_scan`` forwards and in reverse) over the
    whole token sequence, class token first."""

    def forward(self, x: Tensor, layout: TokenLayout) -> Tensor:
        return super().forward(x)


class HierarchicalAttention(nn.Module):
    """Two levels: dense attention within each frame (``spatial``), then dense attention across
    frames (``temporal``) over the prefix tokens and one summary per frame (the mean of its
    attended patches); each frame's summary output is added back to its patches. Unequal runs
    are padded to the longest for the spatial level, the padding a key of size 0 (no weight)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.spatial = FullAttention(dim, num_heads, qkv_bias)
        self.temporal = FullAttention(dim, num_heads, qkv_bias)

    def forward(self, x: Tensor, layout: TokenLayout) -> Tensor:
        counts = layout.runs(x.shape[0], x.shape[1], x.device)
        prefix, patches = x[:, : layout.prefix], x[:, layout.prefix :]
        packed, valid = pack_runs(patches, counts)
        rows = packed.flatten(0, 1)
        padding = None if layout.equal_runs else valid.flatten(0, 1).to(x.dtype)
        local = self.spatial(rows, TokenLayout(0, 1, padding)).view_as(packed)
        summaries = (local * valid[..., None]).sum(2) / counts[..., None]
        mixed = self.temporal(
            torch.cat([prefix, summaries], 1), TokenLayout(layout.prefix, layout.frames)
        )
        patches = unpack_runs(local + mixed[:, layout.prefix :, None], valid)
        return torch.cat([mixed[:, : layout.prefix], patches], dim=1)


MIXERS: dict[str, type[nn.Module]] = {
    "full": FullAttention,
    "strided": StridedAttention,
    "local_global": LocalGlobalAttention,
    "cross_memory": CrossMemoryAttention,
    "performer": PerformerAttention,
    "linear": LinearAttention,
    "mamba": MambaMixer,
    "hierarchical": HierarchicalAttention,
}


def mixer_options(kind: str) -> list[str]:
    """The options (constructor arguments besides the width and heads) of mixer ``kind``."""
    parameters = inspect.signature(MIXERS[kind].__init__).parameters
    return [name for name in parameters if name not in ("self", "dim", "num_heads")]


def build_mixer(kind: str, dim: int, num_heads: int, **options) -> nn.Module:
    """The mixer named ``kind`` (a key of ``MIXERS``) with its own ``options``."""
    if kind not in MIXERS:
        raise ValueError(f"attention.type must be one of {sorted(MIXERS)}, got {kind!r}")
    unknown = sorted(set(options) - set(mixer_options(kind)))
    if unknown:
        raise ValueError(
            f"attention options {unknown} do not apply to {kind!r}; its options: {mixer_options(kind)}"
        )
    if kind == "mamba":
        return MambaMixer(dim, **options)
    return MIXERS[kind](dim, num_heads, **options)

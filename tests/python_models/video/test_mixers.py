"""Each token mixer against a dense reference: masked SDPA for the sparse and memory mixers, the
explicit quadratic form for linear attention, softmax attention for FAVOR+ with many features."""

import pytest
import torch
import torch.nn.functional as F

from hvision_ext.reference.sparse_attention import sparse_attention_mask
from python_models.video import (
    MIXERS,
    CrossMemoryAttention,
    FullAttention,
    HierarchicalAttention,
    LinearAttention,
    LocalGlobalAttention,
    PerformerAttention,
    StridedAttention,
    TokenLayout,
    build_mixer,
)
from python_models.video.mixers import (
    FEATURE_FLOOR,
    PositiveRandomFeatures,
    kernel_attention,
    merge_heads,
    space_time_attention,
    split_heads,
)

DIM, HEADS = 32, 2
LAYOUT = TokenLayout(prefix=1, frames=3)  # 1 + 3 × 6 tokens
LENGTH = 1 + 3 * 6


def tokens(length: int = LENGTH, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, length, DIM, generator=torch.Generator().manual_seed(0))


def qkv_of(mixer, x):
    return [split_heads(t, HEADS) for t in mixer.qkv(x).chunk(3, dim=-1)]


def masked_reference(mixer, x, mask):
    q, k, v = qkv_of(mixer, x)
    return mixer.proj(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))


@pytest.mark.parametrize(
    ("mixer_type", "mask"),
    [
        (StridedAttention, sparse_attention_mask(LENGTH, window=5, stride=6, num_global=1)),
        (LocalGlobalAttention, sparse_attention_mask(LENGTH, window=6, num_global=1)),
        (FullAttention, None),
    ],
)
def test_sparse_mixers_match_masked_sdpa(mixer_type, mask):
    torch.manual_seed(0)
    mixer, x = mixer_type(DIM, HEADS), tokens()
    torch.testing.assert_close(mixer(x, LAYOUT), masked_reference(mixer, x, mask))


def test_cross_memory_matches_sdpa_over_the_bank():
    torch.manual_seed(0)
    mixer, x = CrossMemoryAttention(DIM, HEADS, memory_slots=5), tokens()
    q = split_heads(mixer.q(x), HEADS)
    keys, values = (t.expand(2, -1, -1, -1) for t in (mixer.memory_keys, mixer.memory_values))
    expected = mixer.proj(merge_heads(F.scaled_dot_product_attention(q, keys, values)))
    torch.testing.assert_close(mixer(x, LAYOUT), expected)


def test_cross_memory_steps_iterate_the_hopfield_update():
    torch.manual_seed(0)
    mixer, x = CrossMemoryAttention(DIM, HEADS, memory_slots=5, n_steps=3), tokens()
    state = split_heads(mixer.q(x), HEADS)
    scale = (DIM // HEADS) ** -0.5
    for _ in range(2):
        state = torch.softmax(scale * state @ mixer.memory_keys.transpose(-1, -2), -1)
        state = state @ mixer.memory_keys
    attention = torch.softmax(scale * state @ mixer.memory_keys.transpose(-1, -2), -1)
    expected = mixer.proj(merge_heads(attention @ mixer.memory_values))
    torch.testing.assert_close(mixer(x, LAYOUT), expected, rtol=1e-4, atol=1e-5)


def test_class_attention_is_the_first_row_of_the_dense_attention_weights():
    torch.manual_seed(0)
    mixer, x = FullAttention(DIM, HEADS), tokens()
    q, k, _ = qkv_of(mixer, x)
    weights = (q @ k.transpose(-2, -1) * (DIM // HEADS) ** -0.5).softmax(-1)
    torch.testing.assert_close(mixer.class_attention(x), weights[:, :, 0].mean(1))


@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_matches_its_quadratic_form(causal):
    torch.manual_seed(0)
    mixer, x = LinearAttention(DIM, HEADS, causal=causal), tokens()
    q, k, v = qkv_of(mixer, x)
    weights = (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-1, -2)
    if causal:
        weights = weights.tril()
    expected = mixer.proj(merge_heads(weights @ v / weights.sum(-1, keepdim=True)))
    torch.testing.assert_close(mixer(x, LAYOUT), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_performer_with_many_features_approximates_softmax_attention(causal):
    torch.manual_seed(0)
    mixer = PerformerAttention(DIM, HEADS, nb_features=8192, causal=causal)
    x = tokens() * 0.5
    q, k, v = qkv_of(mixer, x)
    exact = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    approx = mixer.attend(q, k, v, LAYOUT)
    error = (approx - exact).abs().mean() / exact.abs().mean()
    assert error < 0.05, f"relative error {error:.3f}"


@pytest.mark.parametrize("dims", [(-1,), (-2, -1)])
def test_positive_features_match_the_plain_formula_and_its_gradient(dims):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    projection = torch.randn(5, 8, generator=gen, dtype=torch.float64)

    def plain(x):
        logits = x @ projection.T - x.pow(2).sum(-1, keepdim=True) / 2
        logits = logits - logits.detach().amax(dim=dims, keepdim=True)
        return (logits.exp() + FEATURE_FLOOR) / 5**0.5

    features = PositiveRandomFeatures.apply(x, projection, dims)
    torch.testing.assert_close(features, plain(x))
    cotangent = torch.randn(features.shape, generator=gen, dtype=torch.float64)
    (expected,) = torch.autograd.grad(plain(x), x, cotangent)
    (got,) = torch.autograd.grad(features, x, cotangent)
    # The same gradient as autograd through the formula with its stabiliser held constant (a
    # numerical gradcheck would also differentiate the maximum).
    torch.testing.assert_close(got, expected)


def test_performer_redraws_on_its_interval_only():
    torch.manual_seed(0)
    mixer = PerformerAttention(DIM, HEADS, redraw_interval=2)
    first = mixer.projection.clone()
    mixer.advance_step()
    mixer.advance_step()
    assert torch.equal(mixer.projection, first)
    mixer.advance_step()
    assert not torch.equal(mixer.projection, first)


def test_orthogonal_features_are_orthogonal_within_a_block():
    mixer = PerformerAttention(DIM, HEADS, nb_features=16)
    directions = F.normalize(mixer.projection, dim=1)
    torch.testing.assert_close(directions @ directions.T, torch.eye(16), atol=1e-5, rtol=0)


def test_hierarchical_matches_its_two_level_dense_form():
    torch.manual_seed(0)
    mixer, x = HierarchicalAttention(DIM, HEADS), tokens()
    frames, per_frame = LAYOUT.frames, 6
    within_frames = torch.block_diag(*[torch.ones(per_frame, per_frame, dtype=torch.bool)] * 3)
    local = masked_reference(mixer.spatial, x[:, 1:], within_frames).view(2, frames, per_frame, DIM)
    summaries = torch.cat([x[:, :1], local.mean(2)], 1)
    mixed = masked_reference(mixer.temporal, summaries, None)
    expected = torch.cat([mixed[:, :1], (local + mixed[:, 1:, None]).flatten(1, 2)], 1)
    torch.testing.assert_close(mixer(x, LAYOUT), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(MIXERS))
def test_every_mixer_keeps_the_shape_and_passes_gradients(kind):
    torch.manual_seed(0)
    mixer = build_mixer(kind, DIM, HEADS)
    x = tokens().requires_grad_()
    out = mixer(x, LAYOUT)
    assert out.shape == x.shape
    out.square().mean().backward()
    missing = [n for n, p in mixer.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing and x.grad.abs().sum() > 0


def test_bad_mixer_settings_name_the_key_and_the_allowed_values():
    with pytest.raises(ValueError, match=r"attention.type must be one of \['cross_memory'"):
        build_mixer("sparse", DIM, HEADS)
    with pytest.raises(ValueError, match=r"\['window'\] do not apply to 'performer'.*nb_features"):
        build_mixer("performer", DIM, HEADS, window=3)
    with pytest.raises(ValueError, match="TokenLayout: 11 tokens"):
        StridedAttention(DIM, HEADS)(tokens(11), LAYOUT)


def test_proportional_attention_counts_a_merged_token_as_its_size():
    """Attention over [a, b, b] equals attention over [a, b] with b of size 2."""
    torch.manual_seed(0)
    mixer, x = FullAttention(DIM, HEADS), tokens(2, batch=1)
    repeated = mixer(torch.cat([x, x[:, 1:]], 1), TokenLayout(1, 1))[:, :2]
    sized = mixer(x, TokenLayout(1, 1, torch.tensor([[1.0, 2.0]])))
    torch.testing.assert_close(sized, repeated)


def random_tensors(*shapes, seed: int = 0, dtype=torch.float64) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype) for shape in shapes]


def assert_same_values_and_gradients(got, expected, inputs, cotangent):
    torch.testing.assert_close(got, expected)
    for mine, reference in zip(
        torch.autograd.grad(got, inputs, cotangent),
        torch.autograd.grad(expected, inputs, cotangent),
    ):
        torch.testing.assert_close(mine, reference)


def test_space_time_attention_and_its_gradient_match_the_masked_dense_form():
    counts = torch.tensor([[2, 5, 3], [4, 4, 2]])
    layout = TokenLayout(1, 3, counts=counts)
    q, k, v, cotangent = random_tensors(*[(2, 2, 11, 4)] * 4)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    frame = layout.frame_index(2, 11)
    rank = torch.arange(10) - (counts.cumsum(-1) - counts).gather(1, frame)
    allowed = torch.ones(2, 11, 11, dtype=torch.bool)
    same_frame = frame[:, :, None] == frame[:, None]
    allowed[:, 1:, 1:] = same_frame | (rank[:, :, None] == rank[:, None])
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
    assert_same_values_and_gradients(
        space_time_attention(q, k, v, layout), expected, inputs, cotangent
    )


def test_kernel_attention_and_its_gradient_match_the_quadratic_form():
    # float32: the features are taken in float32 whatever their dtype.
    shapes = [(2, 2, 9, 5), (2, 2, 9, 5), (2, 2, 9, 4), (2, 2, 9, 4)]
    q_features, k_features, v, cotangent = random_tensors(*shapes, dtype=torch.float32)
    q_features, k_features = q_features.exp(), k_features.exp()
    inputs = [t.requires_grad_() for t in (q_features, k_features, v)]
    weights = q_features @ k_features.transpose(-1, -2)
    expected = weights @ v / weights.sum(-1, keepdim=True)
    got = kernel_attention(q_features, k_features, v, causal=False)
    assert_same_values_and_gradients(got, expected, inputs, cotangent)

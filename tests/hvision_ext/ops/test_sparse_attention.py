"""sparse_attention: parity with the masked-SDPA reference, gradients, op registration, compile,
bad input."""

import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hvision_ext import ops, reference
from hvision_ext.reference.sparse_attention import sparse_attention_mask
from tests.helpers import DEVICES, assert_close, seeded

# (window, stride, num_global) of each pattern family, and the edge cases of each term.
PATTERNS = [
    dict(),  # dense
    dict(window=3),
    dict(stride=5),
    dict(num_global=2),
    dict(window=2, num_global=3),  # local-global
    dict(window=4, stride=5),  # strided_attention(stride=5)
    dict(window=2, stride=7, num_global=3),  # every term, overlapping
    dict(window=0),  # the diagonal alone
    dict(stride=1),  # dense
    dict(num_global=1000),  # every row global: dense
    dict(window=1000),  # a band wider than L: dense
    dict(stride=1000, num_global=1),  # the diagonal and one global token
    dict(window=sys.maxsize),  # int64's largest: dense, with no overflow in the band's ends
    dict(stride=sys.maxsize),  # the diagonal alone, likewise
]


def make_qkv(batch=2, heads=3, length=37, head_dim=16, dtype=torch.float64, device="cpu", seed=0):
    gen = seeded(seed)
    return [
        torch.randn(batch, heads, length, head_dim, generator=gen, dtype=torch.float64)
        .to(device=device, dtype=dtype)
        .requires_grad_()
        for _ in range(3)
    ]


def float64_copy(tensors):
    return [t.detach().double().cpu().requires_grad_() for t in tensors]


def check_against_reference(qkv, pattern, dtype, grad_scale=1.0):
    """Output and dq, dk, dv match the float64 reference."""
    ours = ops.sparse_attention(*qkv, **pattern)
    truth_qkv = float64_copy(qkv)
    truth = reference.sparse_attention(*truth_qkv, **pattern)
    assert ours.dtype == qkv[0].dtype and ours.shape == qkv[0].shape
    assert_close(ours, truth, dtype, what="output")
    cotangent = torch.randn(truth.shape, generator=seeded(1), dtype=torch.float64)
    ours_grads = torch.autograd.grad(ours, qkv, cotangent.to(ours))
    truth_grads = torch.autograd.grad(truth, truth_qkv, cotangent)
    for name, a, b in zip("qkv", ours_grads, truth_grads):
        assert a.dtype == dtype and a.shape == truth.shape
        assert_close(a, b, dtype, scale=grad_scale, what=f"grad of {name}")


# --- parity -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
@pytest.mark.parametrize("length", [1, 3, 37, 130])
def test_patterns_match_reference_float64(device, causal, pattern, length):
    qkv = make_qkv(length=length, device=device, seed=length)
    check_against_reference(qkv, {**pattern, "causal": causal}, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "pattern",
    [
        dict(window=128, num_global=4),
        dict(window=63, stride=64),
        dict(window=5, stride=100, num_global=2),
    ],
    ids=str,
)
@pytest.mark.parametrize("length", [127, 1000])
def test_long_sequences_float32(device, causal, pattern, length):
    """Within 1e-4 of the reference (relative to the largest value) in float32."""
    qkv = make_qkv(batch=1, heads=2, length=length, head_dim=64, dtype=torch.float32, device=device)
    pattern = {**pattern, "causal": causal}
    ours = ops.sparse_attention(*qkv, **pattern)
    truth = reference.sparse_attention(*float64_copy(qkv), **pattern)
    assert (ours.double().cpu() - truth).abs().max() <= 1e-4 * truth.abs().max()
    check_against_reference(qkv, pattern, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("head_dim", [1, 32, 40, 64, 72, 128])
def test_head_dims(device, head_dim):
    qkv = make_qkv(
        batch=1, heads=2, length=150, head_dim=head_dim, dtype=torch.float32, device=device
    )
    check_against_reference(qkv, dict(window=9, stride=16, num_global=3), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [8, 72, 128])
def test_low_precision_head_dims(device, dtype, head_dim):
    """fp16/bf16 at head_dims that pad to the tensor-core fragment and at the largest one."""
    qkv = make_qkv(batch=1, heads=2, length=200, head_dim=head_dim, dtype=dtype, device=device)
    check_against_reference(
        qkv, dict(window=7, stride=40, num_global=3, causal=True), dtype, grad_scale=2.0
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_dtypes(device, dtype, causal):
    qkv = make_qkv(batch=1, heads=2, length=300, head_dim=64, dtype=dtype, device=device)
    # Low-precision gradients are rounded to the input dtype.
    check_against_reference(
        qkv,
        dict(window=16, stride=32, num_global=2, causal=causal),
        dtype,
        grad_scale=1.0 if dtype == torch.float32 else 2.0,
    )


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 2),
    heads=st.integers(1, 2),
    length=st.integers(1, 200),
    head_dim=st.integers(1, 24),
    window=st.none() | st.integers(0, 40),
    stride=st.none() | st.integers(1, 50),
    num_global=st.integers(0, 8),
    causal=st.booleans(),
    scale=st.none() | st.floats(0.05, 2.0),
    seed=st.integers(0, 2**16),
)
def test_random_patterns_match_reference(
    batch, heads, length, head_dim, window, stride, num_global, causal, scale, seed
):
    qkv = make_qkv(batch=batch, heads=heads, length=length, head_dim=head_dim, seed=seed)
    pattern = dict(window=window, stride=stride, num_global=num_global, causal=causal, scale=scale)
    check_against_reference(qkv, pattern, torch.float64)


# --- semantics ----------------------------------------------------------------------------


def test_mask_definition():
    """The reference's mask, spelled out on a small case: each term and a key allowed twice."""
    mask = sparse_attention_mask(6, window=1, stride=3, num_global=1)
    expected = torch.tensor(
        [
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 0, 1, 0],
            [1, 1, 1, 1, 0, 1],
            [1, 0, 1, 1, 1, 0],
            [1, 1, 0, 1, 1, 1],
            [1, 0, 1, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


def test_wrappers_are_their_patterns():
    q, k, v = make_qkv(dtype=torch.float32, length=90)
    torch.testing.assert_close(
        ops.strided_attention(q, k, v, 8, causal=True),
        ops.sparse_attention(q, k, v, window=7, stride=8, causal=True),
    )
    torch.testing.assert_close(
        ops.local_global_attention(q, k, v, 5, 2),
        ops.sparse_attention(q, k, v, window=5, num_global=2),
    )
    torch.testing.assert_close(
        ops.strided_attention(q, k, v, 8), reference.strided_attention(q, k, v, 8)
    )
    torch.testing.assert_close(
        ops.local_global_attention(q, k, v, 5, 2), reference.local_global_attention(q, k, v, 5, 2)
    )


def test_window_zero_is_identity_on_values():
    """Each query sees only its own key: the output is v."""
    q, k, v = make_qkv(dtype=torch.float32)
    torch.testing.assert_close(ops.sparse_attention(q, k, v, window=0), v.detach())


def test_non_contiguous_inputs():
    q, k, v = (t.detach() for t in make_qkv(dtype=torch.float32, length=70))
    strided = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    assert not strided[0].is_contiguous()
    pattern = dict(window=3, stride=10, num_global=2)
    torch.testing.assert_close(
        ops.sparse_attention(*strided, **pattern), ops.sparse_attention(q, k, v, **pattern)
    )
    # An expanded (stride-0) batch and a sliced head_dim.
    wide = torch.randn(1, 3, 70, 32)
    sliced = [wide[..., :16].expand(2, 3, 70, 16)] * 3
    torch.testing.assert_close(
        ops.sparse_attention(*sliced, **pattern),
        reference.sparse_attention(*sliced, **pattern),
        rtol=1e-4,
        atol=1e-5,
    )


def test_empty_sizes():
    for shape in [dict(length=0), dict(batch=0), dict(heads=0)]:
        qkv = make_qkv(dtype=torch.float32, **shape)
        out = ops.sparse_attention(*qkv, window=2, num_global=1)
        assert out.shape == qkv[0].shape
        out.sum().backward()
        assert all(t.grad.shape == t.shape for t in qkv)


def test_cpu_results_are_deterministic_whatever_the_thread_count():
    qkv = make_qkv(batch=2, heads=4, length=400, head_dim=32, dtype=torch.float32)
    pattern = dict(window=20, stride=50, num_global=3)
    out = ops.sparse_attention(*qkv, **pattern)
    first = [out, *torch.autograd.grad(out, qkv, torch.ones_like(out))]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = ops.sparse_attention(*qkv, **pattern)
        second = [out, *torch.autograd.grad(out, qkv, torch.ones_like(out))]
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_backward_is_deterministic_when_asked(deterministic_algorithms, dtype):
    qkv = make_qkv(batch=2, heads=4, length=700, head_dim=64, dtype=dtype, device="cuda")
    out = ops.sparse_attention(*qkv, window=32, stride=64, num_global=4)
    first = torch.autograd.grad(out, qkv, torch.ones_like(out), retain_graph=True)
    second = torch.autograd.grad(out, qkv, torch.ones_like(out))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# --- autograd, registration, compile --------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "pattern",
    [
        dict(window=2, num_global=1),
        dict(window=1, stride=3, causal=True),
        dict(stride=2, num_global=2, causal=True),
        dict(),
    ],
    ids=str,
)
def test_gradcheck(device, pattern):
    qkv = make_qkv(batch=1, heads=2, length=9, head_dim=3, device=device)
    assert torch.autograd.gradcheck(lambda *t: ops.sparse_attention(*t, **pattern), tuple(qkv))


PATTERN_ARGS = (3, 5, 2, True, None)  # window, stride, num_global, causal, scale


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pattern_args", [PATTERN_ARGS, (None, None, 0, False, 0.5)])
def test_opcheck(device, dtype, pattern_args):
    qkv = make_qkv(length=40, dtype=dtype, device=device)
    torch.library.opcheck(torch.ops.hvision.sparse_attention_fwd.default, (*qkv, *pattern_args))
    detached = [t.detach() for t in qkv]
    out, lse = torch.ops.hvision.sparse_attention_fwd(*detached, *pattern_args)
    bwd_args = (torch.randn_like(out), *detached, out, lse, *pattern_args)
    torch.library.opcheck(torch.ops.hvision.sparse_attention_bwd.default, bwd_args)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    qkv = make_qkv(dtype=torch.float32, device=device)

    def step(q, k, v):
        out = ops.sparse_attention(q, k, v, window=3, stride=8, num_global=1, causal=True)
        return (out * 2).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    eager_loss, compiled_loss = step(*qkv), compiled(*qkv)
    torch.testing.assert_close(compiled_loss, eager_loss)
    for a, b in zip(torch.autograd.grad(compiled_loss, qkv), torch.autograd.grad(eager_loss, qkv)):
        torch.testing.assert_close(a, b)


def test_torch_compile_inductor():
    q, k, v = (t.detach() for t in make_qkv(dtype=torch.float32))

    def block(q, k, v):
        return torch.nn.functional.gelu(ops.local_global_attention(q.sin(), k, v, 4, 2))

    compiled = torch.compile(block, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), block(q, k, v))


# --- bad input ----------------------------------------------------------------------------


def bad_call(**changes):
    q, k, v = (t.detach() for t in make_qkv(dtype=torch.float32))
    kwargs = dict(q=q, k=k, v=v, window=2, stride=None, num_global=0)
    kwargs.update(changes)
    return kwargs


BAD_INPUTS = [
    (
        dict(q=torch.randn(2, 3, 37)),
        ValueError,
        r"expected q of shape \(batch, heads, L, head_dim\), got \(2, 3, 37\)",
    ),
    (
        dict(k=torch.randn(2, 3, 36, 16)),
        ValueError,
        r"expected k of shape \(batch, heads, L, head_dim\) = \(2, 3, 37, 16\), got \(2, 3, 36, 16\)",
    ),
    (
        dict(v=torch.randn(2, 3, 37, 8)),
        ValueError,
        r"expected v of shape .* = \(2, 3, 37, 16\), got \(2, 3, 37, 8\)",
    ),
    (
        dict(
            q=torch.randn(2, 3, 37, 129), k=torch.randn(2, 3, 37, 129), v=torch.randn(2, 3, 37, 129)
        ),
        ValueError,
        r"head_dim \(q.shape\[3\]\) in \[1, 128\], got 129",
    ),
    (dict(window=-1), ValueError, "expected window >= 0 or None, got -1"),
    (dict(stride=0), ValueError, "expected stride >= 1 or None, got 0"),
    (dict(num_global=-2), ValueError, "expected num_global >= 0, got -2"),
    (dict(q=torch.randint(0, 3, (2, 3, 37, 16))), TypeError, "expected q of dtype"),
    (
        dict(k=torch.randn(2, 3, 37, 16, dtype=torch.float64)),
        TypeError,
        "expected k of dtype Float, got Double",
    ),
    (
        dict(v=torch.randn(2, 3, 37, 16, device="meta")),
        ValueError,
        r"expected v on the same device as q \(cpu\), got meta",
    ),
]


@pytest.mark.parametrize("changes, error, message", BAD_INPUTS)
def test_bad_input_is_named(changes, error, message):
    with pytest.raises(error, match=message):
        ops.sparse_attention(**bad_call(**changes))


def test_bad_pattern_is_named_by_the_op_too():
    q, k, v = (t.detach() for t in make_qkv(dtype=torch.float32))
    with pytest.raises(ValueError, match="expected stride >= 1 or None, got 0"):
        torch.ops.hvision.sparse_attention_fwd(q, k, v, None, 0, 0, False, None)
    with pytest.raises(ValueError, match="strided_attention: expected stride >= 1, got 0"):
        ops.strided_attention(q, k, v, 0)


def test_backward_rejects_bad_saved_tensors():
    q, k, v = (t.detach() for t in make_qkv(dtype=torch.float32))
    out, lse = torch.ops.hvision.sparse_attention_fwd(q, k, v, 2, None, 0, False, None)
    with pytest.raises(
        ValueError, match=r"expected lse of shape \(batch, heads, L\) = \(2, 3, 37\)"
    ):
        torch.ops.hvision.sparse_attention_bwd(
            out, q, k, v, out, lse[..., :5], 2, None, 0, False, None
        )
    with pytest.raises(TypeError, match="expected dout of dtype Float, got Double"):
        torch.ops.hvision.sparse_attention_bwd(
            out.double(), q, k, v, out, lse, 2, None, 0, False, None
        )


@pytest.mark.cuda
def test_mixed_cpu_cuda_devices_are_rejected():
    with pytest.raises(ValueError, match="expected k on the same device as q"):
        ops.sparse_attention(**bad_call(k=torch.randn(2, 3, 37, 16, device="cuda")))

"""merge_tokens / unmerge_tokens: parity with the reference (identical assign), exact ties,
chained merges, gradients, op registration, compile, bad input."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hvision_ext
from hvision_ext import ops, reference
from tests.helpers import DEVICES, assert_close, seeded


def make_inputs(
    batch=2,
    tokens=21,
    channels=6,
    metric_channels=5,
    *,
    importance=False,
    size=False,
    dtype=torch.float32,
    device="cpu",
    seed=0,
):
    """(x, metric, extras): x requires grad; importance and sizes (positive) when asked."""
    gen = seeded(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(
            device=device, dtype=dtype
        )

    x = randn(batch, tokens, channels).requires_grad_()
    metric = randn(batch, tokens, metric_channels)
    extras = {}
    if importance:
        extras["importance"] = randn(batch, tokens).abs() * 0.2
    if size:
        extras["size"] = (
            (1 + 3 * torch.rand(batch, tokens, generator=gen, dtype=torch.float64))
            .round()
            .to(device=device, dtype=dtype)
        )
    return x, metric, extras


def check_against_reference(x, metric, r, dtype=None, **kwargs):
    """Identical assign, values and the gradient of x within the dtype's tolerance."""
    dtype = dtype or x.dtype
    ours = ops.merge_tokens(x, metric, r, **kwargs)
    x_ref = x.detach().clone().requires_grad_()
    expected = reference.merge_tokens(x_ref, metric, r, **kwargs)
    assert torch.equal(ours[2], expected[2]), "assign differs from the reference"
    assert ours[0].dtype == x.dtype and ours[1].dtype == expected[1].dtype
    assert_close(ours[0], expected[0], dtype, what="merged")
    assert_close(ours[1], expected[1], dtype, what="merged_size")
    cotangent = torch.randn(ours[0].shape, generator=seeded(1), dtype=torch.float64).to(ours[0])
    (ours_grad,) = torch.autograd.grad(ours[0], x, cotangent)
    (expected_grad,) = torch.autograd.grad(expected[0], x_ref, cotangent)
    assert_close(ours_grad, expected_grad, dtype, what="grad of x")
    return ours


# --- parity -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("protect", [0, 1, 2])
@pytest.mark.parametrize("tokens", [20, 21])
@pytest.mark.parametrize("r_kind", ["zero", "one", "max"])
@pytest.mark.parametrize("importance, size", list(itertools.product([False, True], [False, True])))
def test_matches_reference(device, protect, tokens, r_kind, importance, size):
    x, metric, extras = make_inputs(
        tokens=tokens, importance=importance, size=size, device=device, seed=tokens + protect
    )
    r = {"zero": 0, "one": 1, "max": (tokens - protect) // 2}[r_kind]
    merged, merged_size, assign = check_against_reference(
        x, metric, r, protect=protect, importance_weight=0.7, **extras
    )
    assert merged.shape == (2, tokens - r, 6) and assign.shape == (2, tokens)
    expected_mass = (
        extras["size"].sum(-1) if size else torch.full((2,), float(tokens), device=device)
    )
    torch.testing.assert_close(merged_size.sum(-1), expected_mass.to(merged_size.dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(device, dtype):
    x, metric, extras = make_inputs(
        tokens=37,
        channels=16,
        metric_channels=12,
        importance=True,
        size=True,
        dtype=dtype,
        device=device,
    )
    check_against_reference(x, metric, 15, **extras)


@pytest.mark.parametrize("device", DEVICES)
def test_many_tokens_cross_every_tile(device):
    """Na > 64 A rows per task and Nb > 512 B columns per BLAS call (CPU), > 64 (CUDA)."""
    x, metric, _ = make_inputs(batch=2, tokens=1101, channels=8, metric_channels=24, device=device)
    check_against_reference(x, metric, 400)


@pytest.mark.parametrize("device", DEVICES)
def test_metric_in_another_dtype(device):
    x, metric, _ = make_inputs(tokens=30, dtype=torch.bfloat16, device=device)
    check_against_reference(x, metric.float(), 10, dtype=torch.bfloat16)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    tokens=st.integers(0, 70),
    channels=st.integers(1, 9),
    metric_channels=st.integers(1, 9),
    protect=st.integers(0, 3),
    r_fraction=st.floats(0, 1),
    importance=st.booleans(),
    size=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_match_reference(
    batch, tokens, channels, metric_channels, protect, r_fraction, importance, size, seed
):
    protect = min(protect, tokens)
    r = int(r_fraction * ((tokens - protect) // 2))
    x, metric, extras = make_inputs(
        batch,
        tokens,
        channels,
        metric_channels,
        importance=importance,
        size=size,
        dtype=torch.float64,
        seed=seed,
    )
    check_against_reference(x, metric, r, protect=protect, **extras)


# --- ties and semantics --------------------------------------------------------------------------


def exact_metric(pattern, channels=16):
    """Metric rows whose cosine similarities are exact in any summation order: row i has
    pattern[i] ∈ {1, 4, 16} leading ones (norms 1, 2, 4)."""
    metric = torch.zeros(1, len(pattern), channels)
    for i, ones in enumerate(pattern):
        metric[0, i, :ones] = 1
    return metric


@pytest.mark.parametrize("device", DEVICES)
def test_ties_go_to_the_lower_index(device):
    """Identical tokens: every A token's best B is the first B, every score ties, so the first r
    A tokens merge; into B token 0 (token protect + 1)."""
    tokens, protect, r = 11, 1, 3
    x = torch.randn(1, tokens, 4, device=device)
    metric = exact_metric([4] * tokens).to(device)
    merged, merged_size, assign = ops.merge_tokens(x, metric, r, protect=protect)
    expected = reference.merge_tokens(x, metric, r, protect=protect)
    assert torch.equal(assign, expected[2])
    # A = tokens 1, 3, 5, 7, 9; B = 2, 4, 6, 8, 10. Tokens 1, 3, 5 go into token 2 (row 1).
    assert assign.tolist() == [[0, 1, 1, 1, 2, 1, 3, 4, 5, 6, 7]]
    torch.testing.assert_close(merged[0, 1], x[0, [1, 2, 3, 5]].mean(0))
    assert merged_size[0].tolist() == [1, 4, 1, 1, 1, 1, 1, 1]


@pytest.mark.parametrize("device", DEVICES)
def test_tied_best_b_goes_to_the_lower_index(device):
    """Two B tokens equal to an A token: it merges into the first of them."""
    metric = exact_metric([1, 16, 4, 4, 16, 16, 1, 1]).to(device)  # A: 1, 4, 16, 1; B: 16, 4, 16, 1
    x = torch.randn(1, 8, 3, device=device)
    _, _, assign = ops.merge_tokens(x, metric, 4, protect=0)
    assert torch.equal(assign, reference.merge_tokens(x, metric, 4, protect=0)[2])
    # A token 4 (16 ones) matches B tokens 1 and 5 equally: the first, token 1.
    assert assign[0, 4] == assign[0, 1]


@pytest.mark.parametrize("device", DEVICES)
def test_importance_protects_tokens_from_merging(device):
    tokens = 9
    metric = exact_metric([4] * tokens).to(device)
    x = torch.randn(1, tokens, 2, device=device)
    importance = torch.zeros(1, tokens, device=device)
    importance[0, [0, 2]] = 5.0  # the first two A tokens (protect = 0)
    _, _, assign = ops.merge_tokens(x, metric, 2, importance=importance, protect=0)
    assert torch.equal(
        assign, reference.merge_tokens(x, metric, 2, importance=importance, protect=0)[2]
    )
    merged_away = [i for i in range(tokens) if (assign[0] == assign[0, i]).sum() > 1 and i % 2 == 0]
    assert merged_away == [4, 6]


@pytest.mark.parametrize("device", DEVICES)
def test_survivors_keep_their_order_and_values(device):
    x, metric, _ = make_inputs(tokens=40, device=device)
    x = x.detach()
    merged, merged_size, assign = ops.merge_tokens(x, metric, 12)
    for b in range(2):
        rows = assign[b]
        assert torch.all(rows[1:] >= 0) and rows.max() == 27
        alone = [i for i in range(40) if (rows == rows[i]).sum() == 1]
        assert torch.all(rows[alone].diff() > 0)  # surviving tokens in their original order
        torch.testing.assert_close(merged[b, rows[alone]], x[b, alone])
        assert rows[0] == 0  # the protected class token stays first


@pytest.mark.parametrize("device", DEVICES)
def test_merge_twice_then_unmerge_twice(device):
    x, metric, _ = make_inputs(tokens=33, device=device, size=False)
    first, first_size, first_assign = ops.merge_tokens(x, metric, 10)
    second, second_size, second_assign = ops.merge_tokens(
        first, first * 0.5 + 1, 8, size=first_size
    )
    assert second.shape == (2, 15, 6)
    torch.testing.assert_close(
        second_size.sum(-1), torch.full((2,), 33.0, device=device)
    )  # sizes accumulate
    restored = ops.unmerge_tokens(ops.unmerge_tokens(second, second_assign), first_assign)
    assert restored.shape == x.shape
    expected = reference.unmerge_tokens(
        reference.unmerge_tokens(second, second_assign), first_assign
    )
    torch.testing.assert_close(restored, expected)
    # The mass-weighted mean of every sequence survives both merges.
    torch.testing.assert_close(
        (second * second_size[..., None]).sum(1), x.sum(1), rtol=1e-5, atol=1e-4
    )
    restored.square().sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_non_contiguous_inputs():
    x, metric, extras = make_inputs(tokens=25, importance=True, size=True)
    x = x.detach()
    strided = {name: t.transpose(0, 1).contiguous().transpose(0, 1) for name, t in extras.items()}
    x_strided = x.transpose(1, 2).contiguous().transpose(1, 2)
    metric_strided = metric.transpose(0, 1).contiguous().transpose(0, 1)
    assert not x_strided.is_contiguous() and not metric_strided.is_contiguous()
    for a, b in zip(
        ops.merge_tokens(x_strided, metric_strided, 9, **strided),
        ops.merge_tokens(x, metric, 9, **extras),
    ):
        torch.testing.assert_close(a, b)
    y = ops.merge_tokens(x, metric, 9)[0]
    assign = ops.merge_tokens(x, metric, 9)[2]
    torch.testing.assert_close(
        ops.unmerge_tokens(
            y.transpose(1, 2).contiguous().transpose(1, 2), assign.t().contiguous().t()
        ),
        ops.unmerge_tokens(y, assign),
    )


def test_nan_metric_gives_a_valid_matching():
    x, metric, _ = make_inputs(tokens=15)
    metric[0, 3] = float("nan")
    merged, _, assign = ops.merge_tokens(x.detach(), metric, 5)
    assert torch.equal(assign, reference.merge_tokens(x.detach(), metric, 5)[2])
    assert assign.min() >= 0 and assign.max() < 10 and merged.isfinite().all()


def test_cpu_is_deterministic_whatever_the_thread_count():
    x, metric, extras = make_inputs(batch=3, tokens=301, channels=32, metric_channels=32, size=True)
    first = ops.merge_tokens(x, metric, 120, **extras)
    (first_grad,) = torch.autograd.grad(ops.unmerge_tokens(first[0], first[2]).sum(), x)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        second = ops.merge_tokens(x, metric, 120, **extras)
        (second_grad,) = torch.autograd.grad(ops.unmerge_tokens(second[0], second[2]).sum(), x)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(first + (first_grad,), second + (second_grad,)):
        assert torch.equal(a, b)


@pytest.mark.cuda
def test_cuda_is_deterministic():
    x, metric, extras = make_inputs(
        batch=3, tokens=301, channels=32, metric_channels=32, size=True, device="cuda"
    )
    runs = []
    for _ in range(2):
        merged, merged_size, assign = ops.merge_tokens(x, metric, 120, **extras)
        (grad,) = torch.autograd.grad(ops.unmerge_tokens(merged, assign).sum(), x)
        runs.append((merged, merged_size, assign, grad))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


# --- autograd, registration, compile --------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [False, True])
def test_gradcheck_merge_and_unmerge(device, size):
    x, metric, extras = make_inputs(
        batch=2,
        tokens=9,
        channels=3,
        importance=True,
        size=size,
        dtype=torch.float64,
        device=device,
    )
    assert torch.autograd.gradcheck(lambda x: ops.merge_tokens(x, metric, 3, **extras)[0], (x,))
    _, _, assign = ops.merge_tokens(x, metric, 3, **extras)
    y = torch.randn(2, 6, 3, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y: ops.unmerge_tokens(y, assign), (y,))


def test_only_x_gets_a_gradient():
    x, metric, extras = make_inputs(tokens=12, importance=True, size=True)
    metric.requires_grad_()
    extras = {name: t.requires_grad_() for name, t in extras.items()}
    merged, merged_size, assign = ops.merge_tokens(x, metric, 4, **extras)
    assert not merged_size.requires_grad and not assign.requires_grad
    grads = torch.autograd.grad(merged.sum(), [x, metric, *extras.values()], allow_unused=True)
    assert grads[0] is not None and all(g is None for g in grads[1:])


def merge_args(x, metric, r=5, extras=None, protect=1, weight=1.0):
    extras = extras or {}
    return (x, metric, r, extras.get("importance"), extras.get("size"), protect, weight)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(device, dtype):
    x, metric, extras = make_inputs(
        tokens=17, importance=True, size=True, dtype=dtype, device=device
    )
    torch.library.opcheck(
        torch.ops.hvision.merge_tokens_fwd.default, merge_args(x, metric, 5, extras)
    )
    torch.library.opcheck(
        torch.ops.hvision.merge_tokens_fwd.default, merge_args(x, metric, 0, protect=0)
    )
    merged, merged_size, assign = torch.ops.hvision.merge_tokens_fwd(
        *merge_args(x.detach(), metric, 5, extras)
    )
    dmerged = torch.randn_like(merged)
    torch.library.opcheck(
        torch.ops.hvision.merge_tokens_bwd.default, (dmerged, assign, extras["size"], merged_size)
    )
    torch.library.opcheck(
        torch.ops.hvision.unmerge_tokens_fwd.default, (merged.detach().requires_grad_(), assign)
    )
    torch.library.opcheck(
        torch.ops.hvision.unmerge_tokens_bwd.default, (x.detach(), assign, merged.shape[1])
    )


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    x, metric, extras = make_inputs(tokens=19, importance=True, size=True, device=device)

    def block(x):
        merged, merged_size, assign = ops.merge_tokens(x, metric, 6, **extras)
        return (ops.unmerge_tokens(merged.tanh(), assign) * 2).sum() + merged_size.sum()

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    eager = block(x)
    result = compiled(x)
    torch.testing.assert_close(result, eager)
    torch.testing.assert_close(torch.autograd.grad(result, x)[0], torch.autograd.grad(eager, x)[0])


def test_torch_compile_inductor():
    x, metric, _ = make_inputs(tokens=19)
    x = x.detach()

    def block(x):
        merged, _, assign = ops.merge_tokens(x, metric, 6)
        return torch.nn.functional.gelu(ops.unmerge_tokens(merged, assign))

    torch.testing.assert_close(torch.compile(block, fullgraph=True)(x), block(x))


# --- bad input ----------------------------------------------------------------------------


def bad_merge(**changes):
    x, metric, _ = make_inputs(tokens=10)
    kwargs = dict(x=x.detach(), metric=metric, r=3)
    kwargs.update(changes)
    return kwargs


BAD_MERGES = [
    (dict(r=5), ValueError, r"expected r in \[0, \(N - protect\) // 2\] = \[0, 4\], got 5"),
    (dict(r=-1), ValueError, r"expected r in \[0, \(N - protect\) // 2\] = \[0, 4\], got -1"),
    (dict(protect=11), ValueError, r"expected protect in \[0, N\] = \[0, 10\], got 11"),
    (dict(x=torch.randn(2, 10)), ValueError, r"expected x of shape \(batch, N, C\), got \(2, 10\)"),
    (dict(x=torch.randint(0, 3, (2, 10, 6))), TypeError, "expected x of dtype"),
    (
        dict(metric=torch.randn(2, 11, 5)),
        ValueError,
        r"expected metric of shape \(batch, N, Cm\) with \(batch, N\) = \(2, 10\) as x, got \(2, 11, 5\)",
    ),
    (dict(metric=torch.randint(0, 3, (2, 10, 5))), TypeError, "expected metric of dtype"),
    (
        dict(importance=torch.randn(2, 9)),
        ValueError,
        r"expected importance of shape \(batch, N\) = \(2, 10\), got \(2, 9\)",
    ),
    (
        dict(size=torch.ones(2, 10, dtype=torch.float64)),
        TypeError,
        "expected size of dtype Float, got Double",
    ),
    (
        dict(importance=torch.randn(2, 10, device="meta")),
        ValueError,
        "expected importance on the same device as x",
    ),
]


@pytest.mark.parametrize("changes, error, message", BAD_MERGES)
def test_bad_merge_input_is_named(changes, error, message):
    kwargs = bad_merge(**changes)
    r = kwargs.pop("r")
    with pytest.raises(error, match=message):
        ops.merge_tokens(kwargs.pop("x"), kwargs.pop("metric"), r, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_unmerge_rejects_assign_out_of_range(device):
    y = torch.randn(2, 4, 3, device=device)
    for bad_value in (4, -1, 2**40):
        assign = torch.zeros(2, 7, dtype=torch.long, device=device)
        assign[1, 5] = bad_value
        with pytest.raises(
            ValueError, match=r"expected assign values in \[0, rows\) = \[0, 4\), got values in"
        ):
            ops.unmerge_tokens(y, assign)
        with pytest.raises(ValueError, match=r"expected assign values in \[0, rows\) = \[0, 4\)"):
            torch.ops.hvision.unmerge_tokens_bwd(torch.randn(2, 7, 3, device=device), assign, 4)
        if device == "cpu":  # on CUDA merge's backward trusts the assign its forward made
            with pytest.raises(
                ValueError, match=r"expected assign values in \[0, rows\) = \[0, 4\)"
            ):
                torch.ops.hvision.merge_tokens_bwd(y, assign, None, torch.ones(2, 4, device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("merge", [ops.merge_tokens, reference.merge_tokens])
@pytest.mark.parametrize("bad_size", [0.0, -1.0, float("nan")])
def test_non_positive_size_is_rejected(device, merge, bad_size):
    x, metric, _ = make_inputs(tokens=10, device=device)
    size = torch.ones(2, 10, device=device)
    size[1, 4] = bad_size
    with pytest.raises(ValueError, match="merge_tokens: expected size > 0 everywhere, got a small"):
        merge(x, metric, 3, size=size)


def test_unmerge_rejects_bad_assign_dtype_and_shape():
    y = torch.randn(2, 4, 3)
    with pytest.raises(TypeError, match="expected assign of dtype Long, got Int"):
        ops.unmerge_tokens(y, torch.zeros(2, 7, dtype=torch.int32))
    with pytest.raises(
        ValueError, match=r"expected assign of shape \(batch, N\) = \(2, 7\), got \(3, 7\)"
    ):
        ops.unmerge_tokens(y, torch.zeros(3, 7, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected assign of shape \(batch, N\), got \(14,\)"):
        ops.unmerge_tokens(y, torch.zeros(14, dtype=torch.long))


def test_merge_backward_rejects_bad_merged_size():
    y = torch.randn(2, 4, 3)
    assign = torch.zeros(2, 7, dtype=torch.long)
    with pytest.raises(
        ValueError, match=r"expected merged_size of shape \(batch, N - r\) = \(2, 4\)"
    ):
        torch.ops.hvision.merge_tokens_bwd(y, assign, None, torch.ones(2, 5))


def test_reference_switch_routes_both_operators():
    x, metric, extras = make_inputs(tokens=15, importance=True, size=True)
    with hvision_ext.use_reference():
        switched = ops.merge_tokens(x, metric, 5, **extras)
        unmerged = ops.unmerge_tokens(switched[0], switched[2])
    expected = reference.merge_tokens(x, metric, 5, **extras)
    for got, want in zip(switched, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(
        unmerged, reference.unmerge_tokens(expected[0], expected[2]), rtol=0, atol=0
    )

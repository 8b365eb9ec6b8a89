"""hopfield_retrieval: parity with the reference, gradients, op registration, compile, retrieval
quality, bad input."""

import importlib
import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import hvision_ext
from hvision_ext import ops, reference
from tests.helpers import DEVICES, assert_close, assert_compiled_matches_eager, grads, seeded

DEFAULT_MAX_SAVED_BYTES = (
    inspect.signature(ops.hopfield_retrieval).parameters["max_saved_bytes"].default
)


def make_inputs(
    *,
    batch=2,
    heads=3,
    queries=5,
    patterns=37,
    dim=16,
    value_dim=None,
    shared=False,
    beta=None,
    n_steps=1,
    max_saved_bytes=None,
    dtype=torch.float64,
    device="cpu",
    seed=0,
):
    """Keyword arguments of one hopfield_retrieval call; tensors require grad. value_dim None
    means no values (the patterns are the values); max_saved_bytes None, the default."""
    gen = seeded(seed)

    def tensor(*shape):
        return (
            torch.randn(*shape, generator=gen, dtype=torch.float64)
            .to(device=device, dtype=dtype)
            .requires_grad_()
        )

    pattern_shape = (heads, patterns) if shared else (batch, heads, patterns)
    return dict(
        query=tensor(batch, heads, queries, dim),
        stored=tensor(*pattern_shape, dim),
        values=tensor(*pattern_shape, value_dim) if value_dim is not None else None,
        beta=beta,
        n_steps=n_steps,
        max_saved_bytes=DEFAULT_MAX_SAVED_BYTES if max_saved_bytes is None else max_saved_bytes,
    )


# The two ways of the CPU backward pass to the probabilities: recomputed from the saved states and
# log-sum-exps, or kept by the forward pass (the CUDA kernels always recompute).
SAVED_PROBABILITIES = pytest.mark.parametrize(
    "max_saved_bytes", [0, 2**40], ids=["recomputed", "kept"]
)


def tensor_inputs(kwargs):
    return {name: value for name, value in kwargs.items() if isinstance(value, torch.Tensor)}


def float64_copy(kwargs):
    """The same call in float64 on the CPU: the ground truth for every device and dtype."""
    return {
        name: value.detach().double().cpu().requires_grad_()
        if isinstance(value, torch.Tensor)
        else value
        for name, value in kwargs.items()
    }


def check_against_reference(kwargs, dtype, grad_scale=1.0):
    """The output and the gradients of every tensor input match the float64 reference."""
    ours = ops.hopfield_retrieval(**kwargs)
    truth_kwargs = float64_copy(kwargs)
    truth = reference.hopfield_retrieval(**truth_kwargs)
    assert ours.dtype == kwargs["query"].dtype and ours.shape == truth.shape
    assert_close(ours, truth, dtype, what="output")

    cotangent = torch.randn(truth.shape, generator=seeded(1), dtype=torch.float64)
    inputs = tensor_inputs(kwargs)
    ours_grads = grads([ours], list(inputs.values()), [cotangent.to(ours.device)])
    truth_grads = grads([truth], list(tensor_inputs(truth_kwargs).values()), [cotangent])
    for name, a, b in zip(inputs, ours_grads, truth_grads):
        assert a.shape == inputs[name].shape and a.dtype == inputs[name].dtype, name
        assert_close(a, b, dtype, scale=grad_scale, what=f"grad of {name}")


# --- parity -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_steps", [1, 2, 3, 5])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("value_dim", [None, 9])
@pytest.mark.parametrize("beta", [None, 0.7])
@SAVED_PROBABILITIES
def test_matches_reference_float64(device, n_steps, shared, value_dim, beta, max_saved_bytes):
    kwargs = make_inputs(
        n_steps=n_steps,
        shared=shared,
        value_dim=value_dim,
        beta=beta,
        max_saved_bytes=max_saved_bytes,
        device=device,
        seed=n_steps,
    )
    check_against_reference(kwargs, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("patterns", [1, 2, 127, 128, 129, 1000, 5000])
@pytest.mark.parametrize("queries", [1, 67, 300])  # 300: two CPU query tiles
@SAVED_PROBABILITIES
def test_pattern_counts_float32(device, patterns, queries, max_saved_bytes):
    kwargs = make_inputs(
        batch=1,
        heads=2,
        queries=queries,
        patterns=patterns,
        dim=32,
        n_steps=3,
        max_saved_bytes=max_saved_bytes,
        shared=True,
        dtype=torch.float32,
        device=device,
    )
    check_against_reference(kwargs, torch.float32)


def test_pattern_set_too_large_to_transpose_whole():
    """Above 2^22 values per set the CPU kernel transposes the keys a tile at a time."""
    kwargs = make_inputs(
        batch=1,
        heads=2,
        queries=3,
        patterns=17000,
        dim=256,
        value_dim=8,
        n_steps=2,
        dtype=torch.float32,
    )
    assert kwargs["stored"][0].numel() > 2**22
    check_against_reference(kwargs, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dim, value_dim", [(1, None), (1, 3), (33, 17), (64, None), (100, 256), (256, None), (256, 5)]
)
def test_feature_sizes(device, dim, value_dim):
    kwargs = make_inputs(
        batch=2,
        heads=1,
        queries=70,
        patterns=200,
        dim=dim,
        value_dim=value_dim,
        n_steps=2,
        dtype=torch.float32,
        device=device,
    )
    check_against_reference(kwargs, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n_steps", [1, 3])
@pytest.mark.parametrize("shared", [False, True])
@SAVED_PROBABILITIES
def test_dtypes(device, dtype, n_steps, shared, max_saved_bytes):
    kwargs = make_inputs(
        queries=65,
        patterns=300,
        dim=64,
        value_dim=48,
        shared=shared,
        n_steps=n_steps,
        max_saved_bytes=max_saved_bytes,
        dtype=dtype,
        device=device,
    )
    # Gradients summed over many rows and rounded to fp16/bf16 get a looser bound.
    check_against_reference(kwargs, dtype, grad_scale=1.0 if dtype == torch.float32 else 4.0)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    heads=st.integers(1, 3),
    queries=st.integers(1, 80),
    patterns=st.integers(1, 300),
    dim=st.integers(1, 40),
    value_dim=st.one_of(st.none(), st.integers(1, 40)),
    shared=st.booleans(),
    beta=st.one_of(st.none(), st.floats(0.05, 2.0)),
    n_steps=st.integers(1, 4),
    max_saved_bytes=st.sampled_from([0, 2**40]),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_match_reference(
    batch, heads, queries, patterns, dim, value_dim, shared, beta, n_steps, max_saved_bytes, seed
):
    kwargs = make_inputs(
        batch=batch,
        heads=heads,
        queries=queries,
        patterns=patterns,
        dim=dim,
        value_dim=value_dim,
        shared=shared,
        beta=beta,
        n_steps=n_steps,
        max_saved_bytes=max_saved_bytes,
        seed=seed,
    )
    check_against_reference(kwargs, torch.float64)


# --- semantics ----------------------------------------------------------------------------


def test_one_step_is_attention_with_scale_beta():
    kwargs = make_inputs(queries=30, patterns=50, value_dim=12, beta=0.3, dtype=torch.float32)
    query, stored, values = (kwargs[n].detach() for n in ("query", "stored", "values"))
    expected = F.scaled_dot_product_attention(query, stored, values, scale=0.3)
    torch.testing.assert_close(ops.hopfield_retrieval(query, stored, values, beta=0.3), expected)


def test_steps_compose():
    """n steps equal n - 1 steps (retrieving the patterns themselves) followed by one step."""
    kwargs = {
        n: v.detach() if isinstance(v, torch.Tensor) else v
        for n, v in make_inputs(value_dim=7).items()
    }
    state = ops.hopfield_retrieval(kwargs["query"], kwargs["stored"], beta=0.5, n_steps=2)
    stepwise = ops.hopfield_retrieval(state, kwargs["stored"], kwargs["values"], beta=0.5)
    whole = ops.hopfield_retrieval(
        kwargs["query"], kwargs["stored"], kwargs["values"], beta=0.5, n_steps=3
    )
    torch.testing.assert_close(whole, stepwise)


@pytest.mark.parametrize("device", DEVICES)
def test_noisy_stored_pattern_is_retrieved_in_one_step(device):
    """Ramsauer et al. (Theorem 4): a stored pattern x_i is retrieved in one update when it is
    separated from the others by Δ_i = x_iᵀx_i - max_j x_iᵀx_j ≥ 2/(βN) + log(2(N-1)NβR²)/β, for
    N patterns of norm ≤ R. Unit-norm random patterns in d = 64 miss that (Δ ≈ 0.6 against a bound
    of ≈ 2.1 at β = 8, N = 1000): their overlaps are ~N(0, 1/64). Scaled to norm ≈ sqrt(d) = 8
    (standard normal entries, the paper's random-pattern setting), x_iᵀx_i ≈ 64 while the largest
    overlap with 999 others is ≈ 3.3·8 ≈ 27 (with 20% noise on the query, ≈ 30), so Δ ≈ 34 far
    exceeds the bound of ≈ 2.6: one step returns x_i up to exp(-β·34) of the others."""
    gen = seeded(7)
    heads, patterns, dim, picked = 2, 1000, 64, 16
    stored = torch.randn(heads, patterns, dim, generator=gen)
    index = torch.randint(0, patterns, (1, heads, picked), generator=gen)
    targets = torch.stack([stored[h, index[0, h]] for h in range(heads)])[
        None
    ]  # (1, heads, picked, d)
    noise = torch.randn(targets.shape, generator=gen)
    noise = noise * (0.2 * targets.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True))
    query = targets + noise
    assert (F.cosine_similarity(query, targets, dim=-1) < 0.99).all()
    retrieved = ops.hopfield_retrieval(query.to(device), stored.to(device), beta=8.0).cpu()
    assert (F.cosine_similarity(retrieved, targets, dim=-1) > 0.99).all()
    # Not merely close: the nearest stored pattern of each retrieved state is the right one.
    nearest = torch.einsum(
        "bhqd,hmd->bhqm", F.normalize(retrieved, dim=-1), F.normalize(stored, dim=-1)
    ).argmax(-1)
    assert torch.equal(nearest, index)


def test_shared_patterns_equal_expanded_patterns():
    kwargs = {
        n: v.detach() if isinstance(v, torch.Tensor) else v
        for n, v in make_inputs(shared=True, value_dim=6, n_steps=3, dtype=torch.float32).items()
    }
    expanded = {
        **kwargs,
        "stored": kwargs["stored"].expand(2, -1, -1, -1),
        "values": kwargs["values"].expand(2, -1, -1, -1),
    }
    torch.testing.assert_close(ops.hopfield_retrieval(**kwargs), ops.hopfield_retrieval(**expanded))


def test_reference_switch_runs_the_reference():
    import hvision_ext

    kwargs = {
        n: v.detach() if isinstance(v, torch.Tensor) else v
        for n, v in make_inputs(value_dim=6, n_steps=3, dtype=torch.float32).items()
    }
    with hvision_ext.use_reference():
        switched = ops.hopfield_retrieval(**kwargs)
    assert torch.equal(switched, reference.hopfield_retrieval(**kwargs))


def test_non_contiguous_inputs():
    kwargs = {
        n: v.detach() if isinstance(v, torch.Tensor) else v
        for n, v in make_inputs(value_dim=6, n_steps=2, dtype=torch.float32).items()
    }
    strided = {
        **kwargs,
        "query": kwargs["query"].transpose(1, 2).contiguous().transpose(1, 2),
        "stored": kwargs["stored"].transpose(0, 1).contiguous().transpose(0, 1),
        "values": kwargs["values"].transpose(-1, -2).contiguous().transpose(-1, -2),
    }
    assert not any(strided[n].is_contiguous() for n in ("query", "stored", "values"))
    torch.testing.assert_close(ops.hopfield_retrieval(**strided), ops.hopfield_retrieval(**kwargs))


@pytest.mark.parametrize("sizes", [dict(batch=0), dict(queries=0), dict(batch=0, shared=True)])
def test_empty_sizes(sizes):
    kwargs = make_inputs(value_dim=4, n_steps=2, **sizes)
    check_against_reference(kwargs, torch.float64)


def test_nan_in_a_query_stays_in_its_row():
    kwargs = {
        n: v.detach() if isinstance(v, torch.Tensor) else v
        for n, v in make_inputs(n_steps=2, dtype=torch.float32).items()
    }
    kwargs["query"][0, 1, 2, 3] = float("nan")
    ours, truth = ops.hopfield_retrieval(**kwargs), reference.hopfield_retrieval(**kwargs)
    assert torch.equal(ours.isnan(), truth.isnan()) and ours.isnan().any()
    torch.testing.assert_close(ours.nan_to_num(), truth.nan_to_num())


def test_a_direct_forward_call_can_be_differentiated():
    kwargs = make_inputs(n_steps=3, queries=4)
    out, states, lse, probabilities = torch.ops.hvision.hopfield_retrieval_fwd(
        *forward_op_args(kwargs)
    )
    assert states.shape == (2, 2, 3, 4, 16) and lse.shape == (3, 2, 3, 4)
    assert probabilities.shape == (3, 2, 3, 4, 37)
    names = [n for n, v in kwargs.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    direct = torch.autograd.grad(out.sum(), [kwargs[n] for n in names])
    wrapped = torch.autograd.grad(
        ops.hopfield_retrieval(**kwargs).sum(), [kwargs[n] for n in names]
    )
    for name, got, expected in zip(names, direct, wrapped):
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=name)


@SAVED_PROBABILITIES
def test_cpu_backward_is_deterministic_whatever_the_thread_count(max_saved_bytes):
    for shared in (False, True):
        kwargs = make_inputs(
            batch=5,
            heads=2,
            queries=150,
            patterns=300,
            dim=32,
            value_dim=16,
            shared=shared,
            n_steps=3,
            max_saved_bytes=max_saved_bytes,
            dtype=torch.float32,
        )
        inputs = list(tensor_inputs(kwargs).values())
        out = ops.hopfield_retrieval(**kwargs)
        cot = torch.randn(out.shape, generator=seeded(3))
        first = torch.autograd.grad(out, inputs, cot, retain_graph=True)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            second = torch.autograd.grad(out, inputs, cot)
            single_thread_out = ops.hopfield_retrieval(**kwargs)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(out, single_thread_out)
        for a, b in zip(first, second):
            assert torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("shared", [False, True])
def test_cuda_backward_is_deterministic_when_asked(deterministic_algorithms, shared):
    kwargs = make_inputs(
        batch=4,
        queries=200,
        patterns=500,
        dim=64,
        value_dim=32,
        shared=shared,
        n_steps=3,
        dtype=torch.float32,
        device="cuda",
    )
    inputs = list(tensor_inputs(kwargs).values())
    out = ops.hopfield_retrieval(**kwargs)
    cot = torch.ones_like(out)
    first = torch.autograd.grad(out, inputs, cot, retain_graph=True)
    second = torch.autograd.grad(out, inputs, cot)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# --- autograd, registration, compile --------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("value_dim, n_steps", [(None, 1), (3, 1), (None, 3), (3, 2)])
@SAVED_PROBABILITIES
def test_gradcheck(device, shared, value_dim, n_steps, max_saved_bytes):
    kwargs = make_inputs(
        batch=2,
        heads=2,
        queries=3,
        patterns=5,
        dim=4,
        value_dim=value_dim,
        shared=shared,
        n_steps=n_steps,
        max_saved_bytes=max_saved_bytes,
        beta=0.9,
        device=device,
    )
    names = list(tensor_inputs(kwargs))

    def fn(*tensors):
        return ops.hopfield_retrieval(**{**kwargs, **dict(zip(names, tensors))})

    assert torch.autograd.gradcheck(fn, tuple(kwargs[n] for n in names))


def forward_op_args(kwargs):
    beta = (
        kwargs["beta"] if kwargs["beta"] is not None else 1.0 / math.sqrt(kwargs["query"].shape[-1])
    )
    return (
        kwargs["query"],
        kwargs["stored"],
        kwargs["values"],
        beta,
        kwargs["n_steps"],
        kwargs["max_saved_bytes"],
    )


def backward_op_args(forward_args, outputs):
    """The backward call of a forward call's args and outputs (out, states, lse, probabilities),
    with dout all ones."""
    out = outputs[0]
    return (torch.ones_like(out), *forward_args[:3], *outputs, *forward_args[3:5])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shared, value_dim, n_steps", [(False, None, 1), (True, 5, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@SAVED_PROBABILITIES
def test_opcheck(device, shared, value_dim, n_steps, dtype, max_saved_bytes):
    kwargs = make_inputs(
        shared=shared,
        value_dim=value_dim,
        n_steps=n_steps,
        max_saved_bytes=max_saved_bytes,
        dtype=dtype,
        device=device,
    )
    torch.library.opcheck(torch.ops.hvision.hopfield_retrieval_fwd.default, forward_op_args(kwargs))
    detached = {n: v.detach() if isinstance(v, torch.Tensor) else v for n, v in kwargs.items()}
    args = forward_op_args(detached)
    outputs = torch.ops.hvision.hopfield_retrieval_fwd(*args)
    torch.library.opcheck(
        torch.ops.hvision.hopfield_retrieval_bwd.default, backward_op_args(args, outputs)
    )


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    kwargs = make_inputs(shared=True, value_dim=8, n_steps=3, dtype=torch.float32, device=device)
    names = list(tensor_inputs(kwargs))

    def step(*tensors):
        out = ops.hopfield_retrieval(**{**kwargs, **dict(zip(names, tensors))})
        return (out * 2).square().sum()

    assert_compiled_matches_eager(step, [kwargs[n] for n in names])


@pytest.mark.parametrize(
    "budget_change, kept", [(0, True), (-1, False)], ids=["fits", "one-byte-short"]
)
def test_probabilities_are_kept_when_they_fit(budget_change, kept):
    kwargs = make_inputs(batch=2, heads=3, queries=5, patterns=37, n_steps=3)
    needed = 3 * 2 * 3 * 5 * 37 * 8  # float64
    args = forward_op_args({**kwargs, "max_saved_bytes": needed + budget_change})
    out, states, lse, probabilities = torch.ops.hvision.hopfield_retrieval_fwd(*args)
    assert probabilities.shape == ((3, 2, 3, 5, 37) if kept else (0,))
    if not kept:
        return
    # P_s = softmax(β ξ_{s-1} Xᵀ), from the saved states.
    steps = torch.cat([kwargs["query"][None], states]).detach()
    scores = args[3] * steps @ kwargs["stored"].detach().transpose(-1, -2)
    torch.testing.assert_close(probabilities, scores.softmax(-1))


@pytest.mark.parametrize("grad_enabled", [False, True])
def test_the_entry_point_keeps_probabilities_only_for_a_gradient(monkeypatch, grad_enabled):
    entry_module = importlib.import_module("hvision_ext.ops.hopfield_retrieval")
    forward, budgets = entry_module._fwd, []

    def recording_forward(*args):
        budgets.append(args[-1])
        return forward(*args)

    monkeypatch.setattr(entry_module, "_fwd", recording_forward)
    with torch.set_grad_enabled(grad_enabled):
        ops.hopfield_retrieval(**make_inputs(max_saved_bytes=12345))
    assert budgets == [12345 if grad_enabled else 0]


def test_torch_compile_inductor():
    kwargs = {
        n: v.detach() if isinstance(v, torch.Tensor) else v
        for n, v in make_inputs(value_dim=8, n_steps=2, dtype=torch.float32).items()
    }

    def block(query):
        return F.gelu(ops.hopfield_retrieval(query, kwargs["stored"], kwargs["values"], n_steps=2))

    compiled = torch.compile(block, fullgraph=True)
    torch.testing.assert_close(compiled(kwargs["query"]), block(kwargs["query"]))


# --- bad input ----------------------------------------------------------------------------


def bad(**changes):
    kwargs = {
        n: v.detach() if isinstance(v, torch.Tensor) else v
        for n, v in make_inputs(dim=8, patterns=5, dtype=torch.float32).items()
    }
    kwargs.update(changes)
    return kwargs


BAD_INPUTS = [
    (
        dict(query=torch.randn(2, 3, 5)),
        ValueError,
        r"expected query of shape \(batch, heads, Q, d\), got \(2, 3, 5\)",
    ),
    (dict(query=torch.randint(0, 3, (2, 3, 5, 8))), TypeError, "expected query of dtype"),
    (
        dict(stored=torch.randn(5, 8)),
        ValueError,
        r"expected stored of shape \(batch, heads, M, d\) or \(heads, M, d\), got \(5, 8\)",
    ),
    (
        dict(stored=torch.randn(2, 3, 5, 7)),
        ValueError,
        r"expected stored of shape \(batch, heads, M, d\) = \(2, 3, 5, 8\), got \(2, 3, 5, 7\)",
    ),
    (
        dict(stored=torch.randn(1, 3, 5, 8)),
        ValueError,
        r"expected stored of shape \(batch, heads, M, d\) = \(2, 3, 5, 8\), got \(1, 3, 5, 8\)",
    ),
    (
        dict(stored=torch.randn(2, 5, 8)),
        ValueError,
        r"expected stored of shape \(heads, M, d\) shared across the batch = \(3, 5, 8\), got \(2, 5, 8\)",
    ),
    (
        dict(stored=torch.randn(2, 3, 5, 8, dtype=torch.float64)),
        TypeError,
        "expected stored of dtype Float, got Double",
    ),
    (dict(stored=torch.randn(2, 3, 0, 8)), ValueError, "expected at least one stored pattern"),
    (
        dict(values=torch.randn(2, 3, 4, 6)),
        ValueError,
        r"expected values of shape \(batch, heads, M, d\) = \(2, 3, 5, 6\), got \(2, 3, 4, 6\)",
    ),
    (
        dict(values=torch.randn(3, 5, 6)),
        ValueError,
        r"expected values with as many dimensions as stored \(4\), got shape \(3, 5, 6\)",
    ),
    (
        dict(values=torch.randn(2, 3, 5, 6, dtype=torch.float16)),
        TypeError,
        "expected values of dtype Float, got Half",
    ),
    (
        dict(values=torch.randn(2, 3, 5, 257)),
        ValueError,
        r"value size dv \(values.shape\[-1\]\) in \[1, 256\], got 257",
    ),
    (
        dict(query=torch.randn(2, 3, 5, 257), stored=torch.randn(2, 3, 5, 257)),
        ValueError,
        r"pattern size d \(query.shape\[-1\]\) in \[1, 256\], got 257",
    ),
    (
        dict(query=torch.randn(2, 3, 5, 0), stored=torch.randn(2, 3, 5, 0)),
        ValueError,
        r"pattern size d .* got 0",
    ),
    (dict(n_steps=0), ValueError, r"expected n_steps in \[1, 1024\], got 0"),
    (dict(n_steps=2**62), ValueError, r"expected n_steps in \[1, 1024\], got 4611686018427387904"),
    (dict(n_steps=2.0), TypeError, "expected n_steps to be an int, got float"),
    (dict(beta=0.0), ValueError, "expected beta > 0 and finite, got 0.0"),
    (dict(beta=-1.0), ValueError, "expected beta > 0 and finite, got -1.0"),
    (dict(beta=float("inf")), ValueError, "expected beta > 0 and finite, got inf"),
    (dict(beta=float("nan")), ValueError, "expected beta > 0 and finite, got nan"),
    (dict(beta=torch.tensor(1.0)), TypeError, "expected beta to be a float or None, got Tensor"),
    (dict(max_saved_bytes=-1), ValueError, "expected max_saved_bytes >= 0, got -1"),
    (dict(max_saved_bytes=1.0), TypeError, "expected max_saved_bytes to be an int, got float"),
]


@pytest.mark.parametrize("changes, error, message", BAD_INPUTS)
def test_bad_input_is_named(changes, error, message):
    with pytest.raises(error, match=message):
        ops.hopfield_retrieval(**bad(**changes))


@pytest.mark.parametrize(
    "beta, n_steps, max_saved_bytes, message",
    [
        (0.0, 1, 0, "expected beta > 0 and finite"),
        (1.0, 0, 0, r"expected n_steps in \[1, 1024\], got 0"),
        (1.0, 1025, 0, r"expected n_steps in \[1, 1024\], got 1025"),
        (1.0, 1, -1, "expected max_saved_bytes >= 0, got -1"),
    ],
)
def test_the_kernels_check_their_arguments_themselves(beta, n_steps, max_saved_bytes, message):
    kwargs = bad()
    with pytest.raises(ValueError, match=message):
        torch.ops.hvision.hopfield_retrieval_fwd(
            kwargs["query"], kwargs["stored"], None, beta, n_steps, max_saved_bytes
        )


def test_meta_tensors_get_shapes_and_errors_from_the_fake_kernel():
    out = ops.hopfield_retrieval(
        torch.empty(2, 3, 5, 8, device="meta"),
        torch.empty(3, 7, 8, device="meta"),
        torch.empty(3, 7, 6, device="meta"),
        n_steps=2,
    )
    assert out.shape == (2, 3, 5, 6) and out.device.type == "meta"
    with pytest.raises(
        ValueError, match=r"expected query of shape \(batch, heads, Q, d\), got \(2, 3, 5\)"
    ):
        ops.hopfield_retrieval(
            torch.empty(2, 3, 5, device="meta"), torch.empty(3, 7, 5, device="meta")
        )


def test_mixed_devices_are_rejected():
    with pytest.raises(ValueError, match="expected stored on the same device as query"):
        ops.hopfield_retrieval(**bad(stored=torch.randn(2, 3, 5, 8, device="meta")))


@pytest.mark.cuda
def test_mixed_cpu_cuda_devices_are_rejected():
    with pytest.raises(ValueError, match="expected values on the same device as query"):
        ops.hopfield_retrieval(**bad(values=torch.randn(2, 3, 5, 6, device="cuda")))


def test_backward_rejects_missing_saved_tensors():
    args = forward_op_args(bad(n_steps=2))
    outputs = torch.ops.hvision.hopfield_retrieval_fwd(*args)
    out, states, lse, probabilities = outputs
    assert probabilities.shape == (2, 2, 3, 5, 5)

    def backward(**changes):
        names = ("dout", "out", "states", "lse", "probabilities")
        saved = {**dict(zip(names, (torch.ones_like(out), *outputs))), **changes}
        torch.ops.hvision.hopfield_retrieval_bwd(
            saved["dout"], *args[:3], *(saved[n] for n in names[1:]), *args[3:5]
        )

    cases = [
        (dict(states=states[:0]), r"expected states of shape \(n_steps - 1, batch, heads, Q, d\)"),
        (dict(lse=lse[:1]), r"expected lse of shape \(n_steps, batch, heads, Q\)"),
        (dict(dout=out[..., :3]), "expected dout of shape"),
        (
            dict(probabilities=probabilities[:1]),
            r"expected probabilities of shape \(n_steps, batch, heads, Q, M\) or \(0,\)",
        ),
    ]
    for changes, message in cases:
        with pytest.raises(ValueError, match=message):
            backward(**changes)


# --- bench ----------------------------------------------------------------------------------


def test_bench_cases_compute_the_same_retrieval():
    from hvision_ext.bench import select_cases

    specs = {spec.name: spec for spec in select_cases("cpu", ops=["hopfield_retrieval"])}
    assert {
        "vit-memory-1step",
        "vit-memory-1step-fwd",
        "vit-memory-3step",
        "vit-memory-3step-fwd",
        "vit-memory-3step-shared",
    } <= set(specs)
    case = specs["vit-memory-1step-fwd"].build(torch.device("cpu"), torch.float32)
    outputs = {name: impl() for name, impl in case.impls.items()}
    other_path = "blas" if hvision_ext.cpu_gemm() == "brgemm" else "brgemm"
    others = ("reference", "sdpa", f"hvision gemm={other_path}")
    assert set(outputs) == {"hvision", *others}
    for name in others:
        torch.testing.assert_close(outputs["hvision"], outputs[name], rtol=1e-4, atol=1e-5)

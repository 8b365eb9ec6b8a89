"""selective_scan: parity with the reference, gradients, op registration, compile, bad input."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hvision_ext import ops, reference
from hvision_ext.ops.selective_scan import SCAN_CHUNK
from tests.helpers import DEVICES, assert_close, assert_compiled_matches_eager, grads, seeded

KINDS = ("fixed", "variable", "grouped")
FEATURES = (
    "D",
    "z",
    "delta_bias",
    "delta_softplus",
    "initial_state",
    "reverse",
    "return_last_state",
)
ALL = FEATURES


def make_inputs(
    *,
    batch=2,
    dim=4,
    length=70,
    state=3,
    B_kind="variable",
    C_kind="variable",
    groups=2,
    features=ALL,
    dtype=torch.float64,
    device="cpu",
    seed=0,
):
    """Keyword arguments of one selective_scan call: float tensors require grad. length 70
    crosses a checkpoint chunk (64 steps) so the backward pass recomputes two chunks."""
    gen = seeded(seed)
    acc = torch.float64 if dtype == torch.float64 else torch.float32

    def tensor(*shape, like_u=False, low=None, high=None):
        values = torch.randn(*shape, generator=gen, dtype=torch.float64)
        if low is not None:
            values = low + (high - low) * torch.rand(*shape, generator=gen, dtype=torch.float64)
        return values.to(device=device, dtype=dtype if like_u else acc).requires_grad_()

    def projection(kind):
        if kind == "fixed":
            return tensor(dim, state)
        if kind == "variable":
            return tensor(batch, state, length, like_u=True)
        return tensor(batch, groups, state, length, like_u=True)

    kwargs = dict(
        u=tensor(batch, dim, length, like_u=True),
        delta=tensor(batch, dim, length, like_u=True, low=0.0, high=0.5),
        A=tensor(dim, state, low=-1.5, high=-0.1),
        B=projection(B_kind),
        C=projection(C_kind),
        D=tensor(dim) if "D" in features else None,
        z=tensor(batch, dim, length, like_u=True) if "z" in features else None,
        delta_bias=tensor(dim, low=0.0, high=0.5) if "delta_bias" in features else None,
        delta_softplus="delta_softplus" in features,
        return_last_state="return_last_state" in features,
        initial_state=tensor(batch, dim, state) if "initial_state" in features else None,
        reverse="reverse" in features,
    )
    return kwargs


def tensor_inputs(kwargs):
    return {name: value for name, value in kwargs.items() if isinstance(value, torch.Tensor)}


def as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


def float64_copy(kwargs):
    """The same call in float64 on the CPU: the ground truth for every device and dtype."""
    return {
        name: value.detach().double().cpu().requires_grad_()
        if isinstance(value, torch.Tensor)
        else value
        for name, value in kwargs.items()
    }


def check_against_reference(kwargs, dtype, grad_scale=1.0):
    """Outputs and the gradients of every tensor input match the float64 reference."""
    ours = as_tuple(ops.selective_scan(**kwargs))
    truth_kwargs = float64_copy(kwargs)
    truth = as_tuple(reference.selective_scan(**truth_kwargs))
    for i, (a, b) in enumerate(zip(ours, truth)):
        assert a.dtype == (kwargs["u"].dtype if i == 0 else kwargs["A"].dtype)
        assert_close(a, b, dtype, what=f"output {i}")

    gen = seeded(1)
    cotangents = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in truth]
    inputs = tensor_inputs(kwargs)
    ours_grads = grads(ours, list(inputs.values()), [c.to(ours[0].device) for c in cotangents])
    truth_grads = grads(truth, list(tensor_inputs(truth_kwargs).values()), cotangents)
    for name, a, b in zip(inputs, ours_grads, truth_grads):
        assert a.shape == inputs[name].shape and a.dtype == inputs[name].dtype, name
        assert_close(a, b, dtype, scale=grad_scale, what=f"grad of {name}")


# --- parity -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B_kind, C_kind", list(itertools.product(KINDS, KINDS)))
@pytest.mark.parametrize("feature_mask", range(2 ** len(FEATURES)))
def test_every_combination_matches_reference_float64(device, B_kind, C_kind, feature_mask):
    features = [f for i, f in enumerate(FEATURES) if feature_mask >> i & 1]
    kwargs = make_inputs(
        B_kind=B_kind, C_kind=C_kind, features=features, seed=feature_mask, device=device
    )
    check_against_reference(kwargs, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("length", [1, 7, 64, 128, 1000, 2048, 2049])
def test_lengths_float32(device, length):
    kwargs = make_inputs(length=length, state=16, dim=8, dtype=torch.float32, device=device)
    check_against_reference(kwargs, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B_kind", KINDS)
def test_dtypes(device, dtype, B_kind):
    kwargs = make_inputs(
        dim=8, length=300, state=16, B_kind=B_kind, C_kind=B_kind, dtype=dtype, device=device
    )
    # Low-precision gradients of u, delta, z are rounded to the input dtype.
    check_against_reference(kwargs, dtype, grad_scale=1.0 if dtype == torch.float32 else 2.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_float32_variable_projections_with_low_precision_inputs(device, dtype):
    """mamba_ssm lets a variable B/C be float32 while u is fp16/bf16; their grads stay float32."""
    kwargs = make_inputs(dim=8, length=150, state=16, dtype=dtype, device=device)
    for name in ("B", "C"):
        kwargs[name] = kwargs[name].detach().float().requires_grad_()
    check_against_reference(kwargs, dtype, grad_scale=2.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("state", [1, 5, 8, 16, 17, 33, 64, 256])
def test_state_sizes(device, state):
    kwargs = make_inputs(dim=4, length=100, state=state, dtype=torch.float32, device=device)
    check_against_reference(kwargs, torch.float32)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    groups=st.sampled_from([1, 2, 3]),
    channels_per_group=st.integers(1, 3),
    length=st.integers(1, 150),
    state=st.integers(1, 20),
    B_kind=st.sampled_from(KINDS),
    C_kind=st.sampled_from(KINDS),
    features=st.sets(st.sampled_from(FEATURES)),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_match_reference(
    batch, groups, channels_per_group, length, state, B_kind, C_kind, features, seed
):
    kwargs = make_inputs(
        batch=batch,
        dim=groups * channels_per_group,
        groups=groups,
        length=length,
        state=state,
        B_kind=B_kind,
        C_kind=C_kind,
        features=features,
        seed=seed,
    )
    check_against_reference(kwargs, torch.float64)


# With N <= 8 the CPU kernels scan blocks of 16 channels together, one channel per vector lane,
# with a build of their own for every N.
# 38 channels in 2 groups of 19: a full block and a remainder of 3 in each group.
LANE_DIM = 38


@pytest.mark.parametrize("state", range(1, 9))
@pytest.mark.parametrize(
    "B_kind, C_kind", [("variable", "variable"), ("fixed", "grouped"), ("grouped", "fixed")]
)
@pytest.mark.parametrize("features", [ALL, ("delta_softplus",), ("z", "reverse", "initial_state")])
def test_channel_lanes_match_reference(state, B_kind, C_kind, features):
    kwargs = make_inputs(
        dim=LANE_DIM, state=state, B_kind=B_kind, C_kind=C_kind, features=features, seed=state
    )
    check_against_reference(kwargs, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("state", [3, 6, 8])
def test_channel_lanes_dtypes(dtype, state):
    kwargs = make_inputs(dim=LANE_DIM, length=150, state=state, dtype=dtype)
    check_against_reference(kwargs, dtype, grad_scale=1.0 if dtype == torch.float32 else 2.0)


# --- semantics ----------------------------------------------------------------------------


def test_reverse_equals_flipped_scan():
    kwargs = make_inputs(
        dtype=torch.float32, features=("D", "z", "delta_softplus", "return_last_state")
    )
    flipped = {
        name: value.flip(-1) if name in ("u", "delta", "z", "B", "C") else value
        for name, value in kwargs.items()
    }
    out, last = ops.selective_scan(**{**kwargs, "reverse": True})
    out_flipped, last_flipped = ops.selective_scan(**flipped)
    torch.testing.assert_close(out, out_flipped.flip(-1))
    torch.testing.assert_close(last, last_flipped)


def test_chained_scans_through_state_equal_one_scan():
    """Splitting L in two and passing last_state as initial_state gives the same output."""
    kwargs = make_inputs(
        dtype=torch.float32, length=100, features=("D", "delta_softplus", "return_last_state")
    )
    whole, whole_last = ops.selective_scan(**kwargs)
    cut = 37
    split = lambda part: {  # noqa: E731
        name: value[..., part] if name in ("u", "delta", "B", "C") else value
        for name, value in kwargs.items()
    }
    first, state = ops.selective_scan(**split(slice(None, cut)))
    second, last = ops.selective_scan(**{**split(slice(cut, None)), "initial_state": state})
    torch.testing.assert_close(torch.cat([first, second], -1), whole)
    torch.testing.assert_close(last, whole_last)


def test_gradient_through_last_state_alone():
    kwargs = make_inputs(features=("D", "initial_state", "return_last_state"))
    inputs = tensor_inputs(kwargs)
    _, last = ops.selective_scan(**kwargs)
    truth_kwargs = float64_copy(kwargs)
    _, truth_last = reference.selective_scan(**truth_kwargs)
    ours = torch.autograd.grad(
        last.sum(), list(inputs.values()), allow_unused=True, materialize_grads=True
    )
    truth = torch.autograd.grad(
        truth_last.sum(),
        list(tensor_inputs(truth_kwargs).values()),
        allow_unused=True,
        materialize_grads=True,
    )
    for name, a, b in zip(inputs, ours, truth):
        assert_close(a, b, torch.float64, what=f"grad of {name}")


@pytest.mark.parametrize("name", ["u", "delta", "z"])
def test_nan_input_propagates_like_the_reference(name):
    kwargs = make_inputs(dtype=torch.float32, features=("D", "z", "delta_softplus"))
    kwargs = {n: v.detach() if isinstance(v, torch.Tensor) else v for n, v in kwargs.items()}
    kwargs[name][0, 1, 30] = float("nan")
    ours, truth = ops.selective_scan(**kwargs), reference.selective_scan(**kwargs)
    assert torch.equal(ours.isnan(), truth.isnan()) and ours.isnan().any()
    torch.testing.assert_close(ours.nan_to_num(), truth.nan_to_num(), rtol=6e-4, atol=2e-3)


def test_non_contiguous_inputs():
    kwargs = make_inputs(dtype=torch.float32, B_kind="fixed")
    strided = dict(kwargs)
    for name in ("u", "delta", "z"):
        strided[name] = kwargs[name].detach().transpose(0, 1).contiguous().transpose(0, 1)
    strided["A"] = kwargs["A"].detach().t().contiguous().t()
    assert not strided["u"].is_contiguous() and not strided["A"].is_contiguous()
    for a, b in zip(
        as_tuple(ops.selective_scan(**strided)), as_tuple(ops.selective_scan(**kwargs))
    ):
        torch.testing.assert_close(a, b)


def test_empty_and_degenerate_sizes():
    for shape in [dict(length=0), dict(batch=0), dict(dim=1, groups=1), dict(state=1)]:
        kwargs = make_inputs(dtype=torch.float32, **shape)
        check_against_reference(kwargs, torch.float32)


def test_a_direct_forward_call_can_be_differentiated():
    kwargs = make_inputs(dtype=torch.float32, length=130, state=5)
    out, _, saved = torch.ops.hvision.selective_scan_fwd(*forward_op_args(kwargs))
    assert saved.shape == (2, 4, -(-130 // SCAN_CHUNK), 5)
    names = [n for n, v in kwargs.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    direct = torch.autograd.grad(out.sum(), [kwargs[n] for n in names])
    wrapped_out = ops.selective_scan(**{**kwargs, "return_last_state": False})
    wrapped = torch.autograd.grad(wrapped_out.sum(), [kwargs[n] for n in names])
    for name, got, expected in zip(names, direct, wrapped):
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_b_and_c_are_copied_once_in_the_forward_pass_and_never_in_the_backward(dtype):
    kwargs = make_inputs(dtype=dtype, B_kind="variable", C_kind="grouped")
    out = ops.selective_scan(**{**kwargs, "return_last_state": False})
    with torch.profiler.profile() as prof:
        out.backward(torch.ones_like(out))
    copies = [e for e in prof.events() if e.name in ("aten::copy_", "aten::clone")]
    in_scan_backward = [e for e in copies if within(e, "hvision::selective_scan_bwd")]
    assert in_scan_backward == []
    for name in ("B", "C"):  # the gradients reach the inputs through views of the kernels' rows
        assert kwargs[name].grad.shape == kwargs[name].shape


def within(event, name):
    parent = event.cpu_parent
    while parent is not None and parent.name != name:
        parent = parent.cpu_parent
    return parent is not None


@pytest.mark.parametrize("state", [16, 8, 4])
def test_cpu_backward_is_deterministic_whatever_the_thread_count(state):
    kwargs = make_inputs(dtype=torch.float32, dim=LANE_DIM, length=200, state=state)
    inputs = list(tensor_inputs(kwargs).values())
    out = as_tuple(ops.selective_scan(**kwargs))
    cot = [torch.ones_like(o) for o in out]
    first = torch.autograd.grad(out, inputs, cot, retain_graph=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        second = torch.autograd.grad(out, inputs, cot)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("B_kind", ["variable", "grouped"])
def test_cuda_backward_is_deterministic_when_asked(deterministic_algorithms, B_kind):
    kwargs = make_inputs(
        dtype=torch.float32,
        dim=64,
        length=300,
        state=16,
        B_kind=B_kind,
        C_kind=B_kind,
        device="cuda",
    )
    inputs = list(tensor_inputs(kwargs).values())
    out = as_tuple(ops.selective_scan(**kwargs))
    cot = [torch.ones_like(o) for o in out]
    first = torch.autograd.grad(out, inputs, cot, retain_graph=True)
    second = torch.autograd.grad(out, inputs, cot)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


# --- autograd, registration, compile --------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "B_kind, C_kind", [("fixed", "fixed"), ("variable", "grouped"), ("grouped", "variable")]
)
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck(device, B_kind, C_kind, reverse):
    kwargs = make_inputs(length=5, dim=4, state=3, B_kind=B_kind, C_kind=C_kind, device=device)
    kwargs["reverse"] = reverse
    names = list(tensor_inputs(kwargs))

    def fn(*tensors):
        return ops.selective_scan(**{**kwargs, **dict(zip(names, tensors))})

    assert torch.autograd.gradcheck(fn, tuple(kwargs[n] for n in names))


def test_gradcheck_across_chunks():
    kwargs = make_inputs(length=SCAN_CHUNK + 6, dim=2, state=2, batch=1, groups=1)
    names = list(tensor_inputs(kwargs))

    def fn(*tensors):
        return ops.selective_scan(**{**kwargs, **dict(zip(names, tensors))})

    assert torch.autograd.gradcheck(fn, tuple(kwargs[n] for n in names), fast_mode=True)


@pytest.mark.parametrize("B_kind, C_kind", [("variable", "fixed"), ("fixed", "variable")])
def test_gradcheck_channel_lanes(B_kind, C_kind):
    """17 channels: a full block of 16 lanes and a remainder of one."""
    kwargs = make_inputs(length=6, dim=17, state=2, batch=1, B_kind=B_kind, C_kind=C_kind)
    names = list(tensor_inputs(kwargs))

    def fn(*tensors):
        return ops.selective_scan(**{**kwargs, **dict(zip(names, tensors))})

    assert torch.autograd.gradcheck(fn, tuple(kwargs[n] for n in names), fast_mode=True)


def forward_op_args(kwargs):
    return (
        kwargs["u"],
        kwargs["delta"],
        kwargs["A"],
        kwargs["B"],
        kwargs["C"],
        kwargs["D"],
        kwargs["z"],
        kwargs["delta_bias"],
        kwargs["delta_softplus"],
        kwargs["initial_state"],
        kwargs["reverse"],
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("features", [ALL, ()])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(device, features, dtype):
    kwargs = make_inputs(length=70, features=features, dtype=dtype, device=device)
    torch.library.opcheck(torch.ops.hvision.selective_scan_fwd.default, forward_op_args(kwargs))
    detached = {n: v.detach() if isinstance(v, torch.Tensor) else v for n, v in kwargs.items()}
    out, _, checkpoints = torch.ops.hvision.selective_scan_fwd(*forward_op_args(detached))
    dout = torch.randn_like(out)
    dlast = torch.randn(
        out.shape[0], out.shape[1], kwargs["A"].shape[1], device=device, dtype=kwargs["A"].dtype
    )
    bwd_args = (dout, dlast, *forward_op_args(detached), checkpoints)
    torch.library.opcheck(torch.ops.hvision.selective_scan_bwd.default, bwd_args)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    kwargs = make_inputs(dtype=torch.float32, device=device)
    names = list(tensor_inputs(kwargs))

    def step(*tensors):
        out, last = ops.selective_scan(**{**kwargs, **dict(zip(names, tensors))})
        return (out * 2).sum() + last.square().sum()

    assert_compiled_matches_eager(step, [kwargs[n] for n in names])


def test_torch_compile_inductor():
    kwargs = make_inputs(dtype=torch.float32, features=("D", "z", "delta_softplus"))

    def block(u, delta, z):
        return torch.nn.functional.gelu(
            ops.selective_scan(**{**kwargs, "u": u, "delta": delta, "z": z})
        )

    compiled = torch.compile(block, fullgraph=True)
    args = (kwargs["u"].detach(), kwargs["delta"].detach(), kwargs["z"].detach())
    torch.testing.assert_close(compiled(*args), block(*args))


# --- bad input ----------------------------------------------------------------------------


def bad(**changes):
    kwargs = make_inputs(dtype=torch.float32)
    kwargs = {n: v.detach() if isinstance(v, torch.Tensor) else v for n, v in kwargs.items()}
    kwargs.update(changes)
    return kwargs


BAD_INPUTS = [
    (dict(u=torch.randn(2, 4)), ValueError, r"expected u of shape \(batch, dim, L\), got \(2, 4\)"),
    (dict(u=torch.randint(0, 3, (2, 4, 70))), TypeError, "expected u of dtype"),
    (
        dict(delta=torch.rand(2, 4, 69)),
        ValueError,
        r"expected delta of shape \(batch, dim, L\) = \(2, 4, 70\), got \(2, 4, 69\)",
    ),
    (
        dict(delta=torch.rand(2, 4, 70, dtype=torch.float64)),
        TypeError,
        "expected delta of dtype Float, got Double",
    ),
    (
        dict(A=-torch.rand(3, 3)),
        ValueError,
        r"expected A of shape \(dim, N\) with dim = 4, got \(3, 3\)",
    ),
    (
        dict(A=-torch.rand(4, 257), B=torch.randn(4, 257), C=torch.randn(4, 257)),
        ValueError,
        r"state size N .* \[1, 256\], got 257",
    ),
    (
        dict(A=-torch.rand(4, 3, dtype=torch.float64)),
        TypeError,
        "expected A of dtype Float, got Double",
    ),
    (
        dict(B=torch.randn(2, 3, 3, 70)),
        ValueError,
        "number of groups G of B to divide dim = 4, got G = 3",
    ),
    (
        dict(B=torch.randn(2, 4, 70)),
        ValueError,
        r"expected B of shape \(batch, N, L\) = \(2, 3, 70\), got \(2, 4, 70\)",
    ),
    (
        dict(C=torch.randn(4, 3, 70)),
        ValueError,
        r"expected C of shape \(batch, N, L\) = \(2, 3, 70\), got \(4, 3, 70\)",
    ),
    (
        dict(C=torch.randn(5)),
        ValueError,
        r"expected C of shape \(dim, N\), \(batch, N, L\) or \(batch, G, N, L\)",
    ),
    (
        dict(B=torch.randn(2, 3, 70, dtype=torch.float64)),
        TypeError,
        "expected B of dtype Float, got Double",
    ),
    (dict(D=torch.randn(5)), ValueError, r"expected D of shape \(dim,\) = \(4,\), got \(5,\)"),
    (dict(D=torch.randn(4, dtype=torch.float16)), TypeError, "expected D of dtype Float, got Half"),
    (dict(z=torch.randn(2, 4, 71)), ValueError, "expected z of shape"),
    (dict(delta_bias=torch.randn(4, 1)), ValueError, "expected delta_bias of shape"),
    (
        dict(initial_state=torch.randn(2, 4, 4)),
        ValueError,
        r"expected initial_state of shape \(batch, dim, N\) = \(2, 4, 3\)",
    ),
]


@pytest.mark.parametrize("changes, error, message", BAD_INPUTS)
def test_bad_input_is_named(changes, error, message):
    with pytest.raises(error, match=message):
        ops.selective_scan(**bad(**changes))


def test_mixed_devices_are_rejected():
    with pytest.raises(ValueError, match="expected A on the same device as u"):
        ops.selective_scan(**bad(A=-torch.rand(4, 3, device="meta")))


@pytest.mark.cuda
def test_mixed_cpu_cuda_devices_are_rejected():
    with pytest.raises(
        ValueError, match="expected u on the same device|expected .* on the same device as u"
    ):
        ops.selective_scan(**bad(A=-torch.rand(4, 3, device="cuda")))


def test_backward_rejects_bad_checkpoints():
    kwargs = bad()
    out, _, checkpoints = torch.ops.hvision.selective_scan_fwd(*forward_op_args(kwargs))
    args = (torch.ones_like(out), None, *forward_op_args(kwargs))
    with pytest.raises(ValueError, match="expected checkpoints of shape"):
        torch.ops.hvision.selective_scan_bwd(*args, checkpoints[:, :, :1])
    with pytest.raises(ValueError, match="expected dout of shape"):
        torch.ops.hvision.selective_scan_bwd(
            torch.ones(2, 4, 3), None, *forward_op_args(kwargs), checkpoints
        )

"""Every operator under torch.compile(dynamic=True): the meta functions (the fake kernels) run
on symbolic shapes, so one compiled graph serves two sets of sizes and matches eager mode,
gradients included."""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from hvision_ext import ops
from tests.helpers import seeded


def scan_case(gen, length):
    batch, dim, state = 2, 4, 3
    u, delta, z = (torch.randn(batch, dim, length, generator=gen) for _ in range(3))
    A = -torch.rand(dim, state, generator=gen)
    B, C = (torch.randn(batch, state, length, generator=gen) for _ in range(2))
    tensors = (u, delta, A, B, C, z)

    def fn(u, delta, A, B, C, z):
        return ops.selective_scan(u, delta, A, B, C, z=z, delta_softplus=True, reverse=True)

    return fn, tensors, ()


def attention_case(gen, length):
    q, k, v = (torch.randn(1, 2, length, 8, generator=gen) for _ in range(3))

    def fn(q, k, v):
        return ops.sparse_attention(q, k, v, window=2, stride=4, num_global=1)

    return fn, (q, k, v), ()


def hopfield_case(gen, queries):
    query = torch.randn(2, 2, queries, 8, generator=gen)
    stored = torch.randn(2, queries + 4, 8, generator=gen)

    def fn(query, stored):
        return ops.hopfield_retrieval(query, stored, n_steps=2)

    return fn, (query, stored), ()


def merge_case(gen, tokens):
    x = torch.randn(2, tokens, 5, generator=gen)
    metric = torch.randn(2, tokens, 3, generator=gen)

    def fn(x, metric, r):
        merged, _, assign = ops.merge_tokens(x, metric, r)
        return ops.unmerge_tokens(merged * 2, assign)

    return fn, (x, metric), (tokens // 3,)


def saliency_case(gen, side):
    frames = torch.rand(1, 3, 3, side, side, generator=gen)

    def fn(frames, patch_size):
        return ops.motion_saliency(frames, patch_size)

    return fn, (frames,), (4,)


def weighted_grads(out, inputs, weights):
    return torch.autograd.grad(
        (out * weights).sum(), inputs, allow_unused=True, materialize_grads=True
    )


def check_compiled_matches_eager(compiled, fn, tensors, constants, gen):
    differentiable = [t.requires_grad_() for t in tensors if t.is_floating_point()]
    got, expected = compiled(*tensors, *constants), fn(*tensors, *constants)
    torch.testing.assert_close(got, expected)
    if got.requires_grad:
        weights = torch.randn(got.shape, generator=gen)
        torch.testing.assert_close(
            weighted_grads(got, differentiable, weights),
            weighted_grads(expected, differentiable, weights),
        )


@pytest.mark.parametrize(
    "case, sizes",
    [
        (scan_case, (70, 150)),
        (attention_case, (19, 33)),
        (hopfield_case, (5, 9)),
        (merge_case, (11, 20)),
        (saliency_case, (8, 16)),
    ],
)
def test_one_graph_serves_two_sizes(case, sizes):
    counter = CompileCounterWithBackend("aot_eager")
    gen = seeded(0)
    compiles = []
    for size in sizes:
        fn, tensors, constants = case(gen, size)
        compiled = torch.compile(fn, backend=counter, dynamic=True, fullgraph=True)
        check_compiled_matches_eager(compiled, fn, tensors, constants, gen)
        compiles.append(counter.frame_count)
    assert compiles[0] > 0 and compiles[1] == compiles[0]  # the second size reused the graph

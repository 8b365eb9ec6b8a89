"""Helpers shared by the operator tests: devices, dtype tolerances, comparisons."""

from collections.abc import Callable, Sequence

import pytest
import torch

# Every device a kernel is tested on; CUDA cases carry the `cuda` mark (skipped without a GPU).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

# (rtol, atol) of a kernel against the float64 reference, by input dtype: mamba_ssm's own
# tolerances for its selective scan, which our kernels meet or beat.
TOLERANCES = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (6e-4, 2e-3),
    torch.float16: (3e-3, 5e-3),
    torch.bfloat16: (3e-2, 5e-2),
}


def assert_close(actual, expected, dtype: torch.dtype, scale: float = 1.0, what: str = "") -> None:
    """Compares in float64 with the tolerance of `dtype` (multiplied by `scale`)."""
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual.double().cpu(),
        expected.double().cpu(),
        rtol=rtol * scale,
        atol=atol * scale,
        msg=lambda m: f"{what}: {m}",
    )


def grads(
    outputs: Sequence[torch.Tensor],
    inputs: Sequence[torch.Tensor],
    cotangents: Sequence[torch.Tensor],
):
    """Gradients of sum(output * cotangent) with respect to the inputs."""
    loss = sum((out.double() * cot.double()).sum() for out, cot in zip(outputs, cotangents))
    return torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)


def assert_compiled_matches_eager(
    loss_fn: Callable[..., torch.Tensor], tensors: Sequence[torch.Tensor]
) -> None:
    """loss_fn compiled with fullgraph=True (aot_eager, so the fake kernels and autograd
    registrations are traced) gives the eager loss and the eager gradients of `tensors`."""
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    eager_loss = loss_fn(*tensors)
    compiled_loss = compiled(*tensors)
    torch.testing.assert_close(compiled_loss, eager_loss)
    eager_grads = torch.autograd.grad(eager_loss, tensors)
    for compiled_grad, eager_grad in zip(torch.autograd.grad(compiled_loss, tensors), eager_grads):
        torch.testing.assert_close(compiled_grad, eager_grad)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)

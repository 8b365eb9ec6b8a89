"""The operators' contracts on the Python side. Each operator has one meta function: written with
``torch._check*`` so that it also runs on symbolic shapes, it checks every argument (shape,
dtype, device, range) and describes the outputs. ``register_meta`` makes it the operator's fake
kernel; the operator's Python entry point calls it as its only validator. The C++ kernels repeat
the checks that keep their memory accesses in bounds, in the same wording.

Failures raise ValueError (shape, device, range) or TypeError (dtype), worded as the C++ checks
word them: the operator, the argument, what was expected, what was given."""

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

FLOATING = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class Output(NamedTuple):
    """An output of an operator: its shape, its dtype (that of `like` when None), on `like`'s
    device."""

    like: Tensor
    shape: Sequence[int | torch.SymInt]
    dtype: torch.dtype | None = None

    def empty(self) -> Tensor:
        return self.like.new_empty(tuple(self.shape), dtype=self.dtype or self.like.dtype)

    def check(self, op: str, name: str, t: Tensor, like_name: str, meaning: str) -> None:
        """t (a saved output, or its gradient) must be what this describes."""
        check_same_device(op, like_name, self.like, **{name: t})
        check_dtype(op, name, t, (self.dtype or self.like.dtype,))
        check_shape(op, name, t, self.shape, meaning)


def register_meta(op: str) -> Callable[[Callable], Callable]:
    """Registers the decorated meta function as the fake kernel of ``hvision::<op>`` (allocating
    the Output(s) it returns) and returns it unchanged for the entry point to validate with."""

    def decorate(meta: Callable) -> Callable:
        @functools.wraps(meta)
        def fake(*args, **kwargs):
            outputs = meta(*args, **kwargs)
            if isinstance(outputs, Output):
                return outputs.empty()
            return tuple(output.empty() for output in outputs)

        torch.library.register_fake(f"hvision::{op}")(fake)
        return meta

    return decorate


def validate(meta: Callable, *args, **kwargs) -> None:
    """Runs an operator's meta function on the arguments of an eager call. While torch.compile
    traces the call it is left out: the fake kernel runs the same function on the traced values."""
    if not torch.compiler.is_compiling():
        meta(*args, **kwargs)


def shape_string(shape: Sequence[int | torch.SymInt]) -> str:
    return str(tuple(shape))


def dtype_name(dtype: torch.dtype) -> str:
    """The name C++ gives the dtype (Float, Half, BFloat16, Long, ...)."""
    return torch.empty((), dtype=dtype, device="meta").type().rsplit(".", 1)[-1][: -len("Tensor")]


def check_dim(op: str, name: str, t: Tensor, dims: Sequence[int], meaning: str) -> None:
    torch._check_value(
        t.dim() in dims,
        lambda: f"{op}: expected {name} of shape {meaning}, got {shape_string(t.shape)}",
    )


def check_shape(op: str, name: str, t: Tensor, expected: Sequence, meaning: str) -> None:
    torch._check_value(
        t.dim() == len(expected) and all(a == e for a, e in zip(t.shape, expected)),
        lambda: (
            f"{op}: expected {name} of shape {meaning} = {shape_string(expected)}, "
            f"got {shape_string(t.shape)}"
        ),
    )


def check_dtype(op: str, name: str, t: Tensor, allowed: Sequence[torch.dtype]) -> None:
    def message() -> str:
        expected = " or ".join(dtype_name(d) for d in dict.fromkeys(allowed))
        return f"{op}: expected {name} of dtype {expected}, got {dtype_name(t.dtype)}"

    torch._check_type(t.dtype in allowed, message)


def check_same_device(op: str, reference_name: str, reference: Tensor, **tensors: Tensor | None):
    for name, tensor in tensors.items():
        if tensor is not None:
            _check_device(op, name, tensor, reference_name, reference)


def _check_device(op: str, name: str, t: Tensor, reference_name: str, reference: Tensor) -> None:
    torch._check_value(
        t.device == reference.device,
        lambda: (
            f"{op}: expected {name} on the same device as {reference_name} "
            f"({reference.device}), got {t.device}"
        ),
    )


def check_like(op: str, name: str, t: Tensor, like: Tensor, like_name: str, meaning: str) -> None:
    """t must be on like's device, of its dtype and shape."""
    Output(like, like.shape).check(op, name, t, like_name, meaning)


def check_range(op: str, condition, what: str, got) -> None:
    """ValueError "op: expected <what>, got <got>" unless condition."""
    torch._check_value(condition, lambda: f"{op}: expected {what}, got {got}")

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
    device; contiguous, or `transposed`: stored as the contiguous transpose of its last two
    axes."""

    like: Tensor
    shape: Sequence[int | torch.SymInt]
    dtype: torch.dtype | None = None
    transposed: bool = False

    def empty(self) -> Tensor:
        dtype = self.dtype or self.like.dtype
        if not self.transposed:
            return self.like.new_empty(tuple(self.shape), dtype=dtype)
        *lead, rows, columns = self.shape
        return self.like.new_empty((*lead, columns, rows), dtype=dtype).transpose(-1, -2)


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


def _check_value(condition, message: Callable[[], str]) -> None:
    # A plain True (every passing check of an eager call) skips torch._check's machinery.
    if condition is not True:
        torch._check_value(condition, message)


def _check_type(condition, message: Callable[[], str]) -> None:
    if condition is not True:
        torch._check_type(condition, message)


class Checks:
    """The argument checks of one operator, each raising in the C++ checks' wording: "<op>:
    expected <what>, got <actual>"."""

    def __init__(self, op: str):
        self.op = op

    def range(self, condition, what: str, got) -> None:
        """ValueError unless condition."""
        _check_value(condition, lambda: f"{self.op}: expected {what}, got {got}")

    def type(self, condition, what: str, got) -> None:
        """TypeError unless condition."""
        _check_type(condition, lambda: f"{self.op}: expected {what}, got {got}")

    def size(self, what: str, size, limit: int) -> None:
        """A size in [1, limit] (a kernel's limit)."""
        self.range(1 <= size <= limit, f"{what} in [1, {limit}]", size)

    def dim(self, name: str, t: Tensor, dims: Sequence[int], meaning: str) -> None:
        self.range(t.dim() in dims, f"{name} of shape {meaning}", shape_string(t.shape))

    def shape(self, name: str, t: Tensor, expected: Sequence, meaning: str) -> None:
        _check_value(
            t.dim() == len(expected) and all(a == e for a, e in zip(t.shape, expected)),
            lambda: (
                f"{self.op}: expected {name} of shape {meaning} = {shape_string(expected)}, "
                f"got {shape_string(t.shape)}"
            ),
        )

    def dtype(self, name: str, t: Tensor, allowed: Sequence[torch.dtype]) -> None:
        def message() -> str:
            expected = " or ".join(dtype_name(d) for d in dict.fromkeys(allowed))
            return f"{self.op}: expected {name} of dtype {expected}, got {dtype_name(t.dtype)}"

        _check_type(t.dtype in allowed, message)

    def same_device(self, reference_name: str, reference: Tensor, **tensors: Tensor | None):
        for name, tensor in tensors.items():
            if tensor is not None:
                self._device(name, tensor, reference_name, reference)

    def _device(self, name: str, t: Tensor, reference_name: str, reference: Tensor) -> None:
        _check_value(
            t.device == reference.device,
            lambda: (
                f"{self.op}: expected {name} on the same device as {reference_name} "
                f"({reference.device}), got {t.device}"
            ),
        )

    def like(self, name: str, t: Tensor, like: Tensor, like_name: str, meaning: str) -> None:
        """t must be on like's device, of its dtype and shape."""
        self.output(name, t, Output(like, like.shape), like_name, meaning)

    def output(self, name: str, t: Tensor, spec: "Output", like_name: str, meaning: str) -> None:
        """t (a saved output, or its gradient) must be what spec describes."""
        self.same_device(like_name, spec.like, **{name: t})
        self.dtype(name, t, (spec.dtype or spec.like.dtype,))
        self.shape(name, t, spec.shape, meaning)

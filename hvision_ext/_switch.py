"""The reference switch: route every operator through its pure-PyTorch reference, so that a whole
model can be checked and timed against the reference path without changing its code."""

import functools
from collections.abc import Callable
from typing import TypeVar

_Op = TypeVar("_Op", bound=Callable)

_reference_enabled = False


def reference_enabled() -> bool:
    """Whether ``hvision_ext.ops`` currently run their references instead of the kernels."""
    return _reference_enabled


class use_reference:
    """Runs every ``hvision_ext.ops`` operator through ``hvision_ext.reference`` when enabled.

    Called, it switches for the rest of the program: ``hvision_ext.use_reference(True)``.
    As a context manager it switches for the block and restores the previous setting on exit::

        with hvision_ext.use_reference():
            expected = model(images)
    """

    def __init__(self, enabled: bool = True):
        global _reference_enabled
        self._previous = _reference_enabled
        _reference_enabled = bool(enabled)

    def __enter__(self) -> "use_reference":
        return self

    def __exit__(self, *exc_info) -> None:
        global _reference_enabled
        _reference_enabled = self._previous


def switchable(reference: Callable) -> Callable[[_Op], _Op]:
    """Decorates an operator's Python entry point so that it calls `reference` (same signature)
    while the reference switch is on."""

    def decorate(kernel_entry: _Op) -> _Op:
        @functools.wraps(kernel_entry)
        def entry(*args, **kwargs):
            if _reference_enabled:
                return reference(*args, **kwargs)
            return kernel_entry(*args, **kwargs)

        return entry  # type: ignore[return-value]

    return decorate

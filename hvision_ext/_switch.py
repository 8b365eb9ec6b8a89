"""The reference switch: route every operator through its pure-PyTorch reference, so that a whole
model can be checked and timed against the reference path without changing its code."""

import functools
import inspect
from collections.abc import Callable

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


def switchable(reference: Callable) -> Callable[[Callable], Callable]:
    """Makes an operator's Python entry point from its reference: the result has the reference's
    signature (stated there once), calls `reference` while the reference switch is on, and else
    calls the decorated kernel entry with every argument bound by name, defaults applied."""
    signature = inspect.signature(reference)

    def decorate(kernel_entry: Callable) -> Callable:
        @functools.wraps(kernel_entry)
        def entry(*args, **kwargs):
            if _reference_enabled:
                return reference(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return kernel_entry(**bound.arguments)

        entry.__signature__ = signature
        return entry

    return decorate

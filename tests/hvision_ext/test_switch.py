"""The reference switch routes operators through hvision_ext.reference."""

import inspect
from unittest import mock

import pytest
import torch

import hvision_ext
from hvision_ext import reference


def scan_inputs():
    gen = torch.Generator().manual_seed(0)
    u, delta = (torch.randn(1, 4, 9, generator=gen) for _ in range(2))
    A = -torch.rand(4, 3, generator=gen)
    B, C = (torch.randn(1, 3, 9, generator=gen) for _ in range(2))
    return u, delta, A, B, C


def test_off_by_default_and_kernel_runs():
    assert not hvision_ext.reference_enabled()
    with mock.patch.object(reference, "selective_scan", wraps=reference.selective_scan) as spy:
        hvision_ext.selective_scan(*scan_inputs())
    spy.assert_not_called()


def test_context_manager_routes_to_reference_and_restores():
    inputs = scan_inputs()
    kernel_out = hvision_ext.selective_scan(*inputs, delta_softplus=True)
    with hvision_ext.use_reference():
        assert hvision_ext.reference_enabled()
        reference_out = hvision_ext.ops.selective_scan(*inputs, delta_softplus=True)
    assert not hvision_ext.reference_enabled()
    torch.testing.assert_close(kernel_out, reference_out, rtol=6e-4, atol=2e-3)


def test_reference_path_is_the_reference_function():
    inputs = scan_inputs()
    with hvision_ext.use_reference():
        switched = hvision_ext.selective_scan(*inputs, return_last_state=True)
    direct = reference.selective_scan(*inputs, return_last_state=True)
    for got, expected in zip(switched, direct):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_called_switch_stays_until_switched_back():
    try:
        hvision_ext.use_reference(True)
        assert hvision_ext.reference_enabled()
    finally:
        hvision_ext.use_reference(False)
    assert not hvision_ext.reference_enabled()


def test_nested_blocks_restore_the_outer_setting():
    with hvision_ext.use_reference():
        with hvision_ext.use_reference(False):
            assert not hvision_ext.reference_enabled()
        assert hvision_ext.reference_enabled()
    assert not hvision_ext.reference_enabled()


@pytest.mark.parametrize("name", reference.__all__)
def test_every_operator_takes_its_references_arguments(name):
    # The switch calls the reference with the arguments the operator was given.
    operator, defined_by = getattr(hvision_ext.ops, name), getattr(reference, name)
    assert inspect.signature(operator) == inspect.signature(defined_by)

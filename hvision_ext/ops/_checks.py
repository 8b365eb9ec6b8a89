"""Argument checks for the Python side of the operators (fake kernels run them too, so bad input
is caught at trace time under torch.compile and when a meta tensor steers dispatch)."""

from torch import Tensor


def check_same_device(
    op: str, reference_name: str, reference: Tensor, **tensors: Tensor | None
) -> None:
    """Raises ValueError, in the C++ kernels' wording, for a tensor not on reference's device."""
    for name, tensor in tensors.items():
        if tensor is not None and tensor.device != reference.device:
            raise ValueError(
                f"{op}: expected {name} on the same device as {reference_name} "
                f"({reference.device}), got {tensor.device}"
            )

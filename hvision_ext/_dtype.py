"""The dtype every operator and reference accumulates in."""

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs (gradcheck), float32 for every other dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32

"""Input checks shared by the public API. Every failure names the argument and the fix."""
from __future__ import annotations

import numbers
from typing import Optional

import numpy as np
import torch

__all__ = []


def as_tensor(value, name: str, *, dtype: Optional[torch.dtype] = None, device=None) -> torch.Tensor:
    """Convert arrays/lists to a tensor, keeping tensors' device unless ``device`` is given."""
    if isinstance(value, torch.Tensor):
        t = value
    elif isinstance(value, (np.ndarray, list, tuple, numbers.Number)):
        t = torch.as_tensor(np.asarray(value))
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor or a numpy array, got {type(value).__name__}"
        )
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    if device is not None and t.device != torch.device(device):
        t = t.to(device)
    return t


def check_finite(t: torch.Tensor, name: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"{name} contains {n_bad} NaN or inf value(s); remove or impute them before fitting or predicting"
        )


def check_inputs(x, name: str = "x") -> torch.Tensor:
    x = as_tensor(x, name)
    if x.dim() == 0:
        raise ValueError(f"{name} must have a leading batch dimension, got a scalar")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty; pass at least one input row")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    check_finite(x, name)
    return x


def check_same_length(x: torch.Tensor, y: torch.Tensor, xname: str = "x", yname: str = "y") -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{xname} has {x.shape[0]} rows but {yname} has {y.shape[0]}; pass one target per input row"
        )


def check_positive_int(value, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_positive_float(value, name: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, got {value}")
    return value

"""Small helpers shared by the whole package: input checks (every failure names the
argument and the fix), warnings that point at the user's line, and context managers
for evaluation mode and distribution validation.

Nothing here imports another pyrobdl module, so every module may import it.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import math
import numbers
import os
import warnings
from typing import Iterator, Optional

import numpy as np
import torch

__all__ = [
    "as_tensor",
    "check_finite",
    "check_inputs",
    "check_same_length",
    "check_positive_int",
    "check_positive_float",
    "check_seed",
    "warn_user",
    "eval_mode",
    "unvalidated",
    "ema",
]

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------- checks
def as_tensor(value, name: str, *, dtype: Optional[torch.dtype] = None, device=None) -> torch.Tensor:
    """Convert arrays/lists to a tensor, keeping tensors' device unless ``device`` is given."""
    if isinstance(value, torch.Tensor):
        t = value
    elif isinstance(value, (np.ndarray, list, tuple, numbers.Number)):
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise TypeError(
                f"{name} must hold real numbers, got an array of dtype {arr.dtype}"
                + (" (complex: pass the real part or split it into features)" if arr.dtype.kind == "c" else
                   "; convert it to numbers first (e.g. encode categories, parse strings)")
            )
        t = torch.as_tensor(arr)
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor or a numpy array, got {type(value).__name__}"
        )
    if t.is_complex():
        raise TypeError(f"{name} must be real-valued, got a complex tensor; pass its real part or split it into features")
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    if device is not None and t.device != torch.device(device):
        t = t.to(device)
    return t


def check_finite(t: torch.Tensor, name: str) -> None:
    """``ValueError`` naming ``name`` when a floating tensor holds NaN or inf."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"{name} contains {n_bad} NaN or inf value(s); remove or impute them before fitting or predicting"
        )


def check_inputs(x, name: str = "x", *, keep_integer: bool = False) -> torch.Tensor:
    """Network inputs as a tensor with a leading batch dimension, finite: floating (integer
    and boolean inputs are cast to the default dtype), or with ``keep_integer=True`` integer
    inputs kept as they are (token ids for ``nn.Embedding``; the network decides, see
    :meth:`pyrobdl.BayesianNetwork.cast_inputs`)."""
    x = as_tensor(x, name)
    if x.dim() == 0:
        raise ValueError(f"{name} must have a leading batch dimension, got a scalar")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty; pass at least one input row")
    if x.is_complex():
        raise TypeError(f"{name} must be real-valued, got a complex tensor ({x.dtype})")
    if not x.is_floating_point() and not (keep_integer and x.dtype != torch.bool):
        x = x.to(torch.get_default_dtype())
    check_finite(x, name)
    return x


def check_same_length(x: torch.Tensor, y: torch.Tensor, xname: str = "x", yname: str = "y") -> None:
    """``ValueError`` when inputs and targets have different numbers of rows."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{xname} has {x.shape[0]} rows but {yname} has {y.shape[0]}; pass one target per input row"
        )


def check_positive_int(value, name: str, *, minimum: int = 1) -> int:
    """An integer ``>= minimum`` (``TypeError`` for non-integers and bools)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_positive_float(value, name: str, *, allow_zero: bool = False) -> float:
    """A finite number ``> 0`` (or ``>= 0`` with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, got {value}")
    return value


def check_seed(seed) -> Optional[int]:
    """``None`` or an integer in ``[0, 2**32)`` (what :func:`pyro.set_rng_seed` accepts on
    every platform): ``TypeError`` for other types, ``ValueError`` out of range.

    Example:
        >>> check_seed(3), check_seed(None)
        (3, None)
        >>> check_seed(-1)
        Traceback (most recent call last):
        ...
        ValueError: seed must be an integer in [0, 2**32), got -1
    """
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be None or an integer, got {type(seed).__name__} {seed!r}")
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed}")
    return int(seed)


# ----------------------------------------------------------------------------- warnings
def warn_user(message: str, category=UserWarning) -> None:
    """Warn pointing at the first frame outside pyrobdl (the user's line)."""
    level = 1
    frame = inspect.currentframe()
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PKG_DIR):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


# ----------------------------------------------------------------------------- contexts
@contextlib.contextmanager
def eval_mode(net: torch.nn.Module) -> Iterator[None]:
    """``net`` in evaluation mode inside the block, its previous mode restored after
    (nothing is switched when it already is in eval mode)."""
    was = net.training
    if was:
        net.eval()
    try:
        yield
    finally:
        if was:
            net.train(True)


def unvalidated(d: torch.distributions.Distribution) -> torch.distributions.Distribution:
    """A shallow copy of ``d`` (and of its base distributions) that skips argument and
    support validation in ``log_prob``: for values that are valid by construction (draws
    mapped onto the support by a bijection), evaluated many times on a hot path."""
    d = copy.copy(d)
    d._validate_args = False
    base = getattr(d, "base_dist", None)
    if isinstance(base, torch.distributions.Distribution):
        d.base_dist = unvalidated(base)
    return d


def ema(old: Optional[float], new: float, beta: float = 0.98) -> float:
    """Exponential moving average ``beta * old + (1 - beta) * new`` (``new`` when there is
    no finite ``old``), for progress bars."""
    return new if old is None or not math.isfinite(old) else beta * old + (1 - beta) * new


def parse_device(value, what: str, instead: str) -> torch.device:
    """``value`` as a :class:`torch.device`; ``ValueError`` naming ``what`` (e.g. ``"--device"``)
    for something that is not a device or a CUDA device on a machine without CUDA, suggesting
    ``instead``."""
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"{what} {value!r} is not a device; use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"{what} {value}: CUDA is not available on this machine (torch.cuda.is_available() is False); {instead}"
        )
    return dev

r"""One batched call over samples, members or masks, for any network: :func:`batched_call`.

Every predictive sample (a weight draw, an ensemble member, a dropout mask) runs through the
network in one :func:`torch.func.vmap` pass. Some operations have no batching rule
(``nn.LSTM``, ``nn.GRU``, ``nn.RNN``: ``aten::lstm.input``; fused attention kernels; ops
that call ``.item()``); for them :func:`batched_call` falls back, once per network and with
a one-time note, to a loop over the batch that computes the same function: one ordinary
pass per sample, stacked. Everything else keeps the vectorised path.

The fallback is decided by trying: when ``vmap`` raises and the loop succeeds, the network
is remembered as unbatchable (:func:`uses_loop`) and later calls go straight to the loop;
when the loop fails too, its own error (the real one, e.g. a shape mismatch) is raised.

Example:
    >>> import torch, torch.nn as nn
    >>> from torch.func import functional_call
    >>> lstm = nn.LSTM(1, 4, batch_first=True)
    >>> params = {k: v.detach().expand((3,) + v.shape) for k, v in lstm.named_parameters()}
    >>> def one(p, x):
    ...     return functional_call(lstm, p, (x,))[0]
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     out = batched_call(one, (0, None), (params, torch.randn(2, 5, 1)), owner=lstm)
    >>> out.shape, uses_loop(lstm)
    (torch.Size([3, 2, 5, 4]), True)
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn
from torch.func import vmap

from .._util import warn_user

__all__ = ["batched_call", "uses_loop", "loop_path"]

#: attribute on the owning module: ``True`` when vmap is known to fail for it
_FLAG = "_pyrobdl_vmap_fails"
_FORCE = {"loop": False}


def uses_loop(owner: nn.Module) -> bool:
    """Whether :func:`batched_call` runs ``owner``'s batches as a loop (vmap could not batch it)."""
    return bool(owner.__dict__.get(_FLAG, False))


@contextlib.contextmanager
def loop_path() -> Iterator[None]:
    """Inside the block every :func:`batched_call` runs as the loop (for tests comparing the
    fallback with the vectorised path)."""
    old = _FORCE["loop"]
    _FORCE["loop"] = True
    try:
        yield
    finally:
        _FORCE["loop"] = old


def _index(arg: Any, i: int) -> Any:
    if isinstance(arg, torch.Tensor):
        return arg[i]
    if isinstance(arg, dict):
        return {k: _index(v, i) for k, v in arg.items()}
    if isinstance(arg, (tuple, list)):
        return type(arg)(_index(v, i) for v in arg)
    raise TypeError(f"cannot index a batched argument of type {type(arg).__name__}")


def _batch_size(args: Sequence[Any], in_dims: Sequence[Optional[int]]) -> int:
    for a, d in zip(args, in_dims):
        if d is None:
            continue
        while not isinstance(a, torch.Tensor):
            a = next(iter(a.values())) if isinstance(a, dict) else a[0]
        return int(a.shape[0])
    raise ValueError("batched_call needs at least one batched argument (an in_dims entry of 0)")


def _loop(fn: Callable, in_dims: Sequence[Optional[int]], args: Sequence[Any]) -> torch.Tensor:
    B = _batch_size(args, in_dims)
    outs = [fn(*[a if d is None else _index(a, i) for a, d in zip(args, in_dims)]) for i in range(B)]
    return torch.stack(outs)


def batched_call(
    fn: Callable[..., torch.Tensor],
    in_dims: Sequence[Optional[int]],
    args: Sequence[Any],
    *,
    owner: nn.Module,
) -> torch.Tensor:
    """``vmap(fn, in_dims, randomness="different")(*args)``, or the same function as a loop
    over the batch when ``owner`` (the network) has an operation ``vmap`` cannot batch.

    Args:
        fn: one element's computation, returning a tensor.
        in_dims: per argument, ``0`` (batched along its first dimension; a dict or tuple of
            tensors is batched leaf by leaf) or ``None`` (shared).
        args: the arguments.
        owner: the module the decision is remembered on (and named in the one-time note).

    Returns:
        the stacked results ``(B, ...)``.
    """
    if not (_FORCE["loop"] or uses_loop(owner)):
        try:
            return vmap(fn, in_dims=tuple(in_dims), randomness="different")(*args)
        except (RuntimeError, NotImplementedError, ValueError) as e:
            vmap_error = e
        try:
            out = _loop(fn, in_dims, args)
        except Exception as loop_error:
            raise loop_error from vmap_error
        owner.__dict__[_FLAG] = True
        reason = " ".join(str(vmap_error).split())[:160]
        warn_user(
            f"{type(owner).__name__} has an operation torch.func.vmap cannot batch ({reason}); pyrobdl runs "
            "its samples one at a time in a loop from now on (the same results, slower). Networks of "
            "Linear/Conv layers, normalisation, dropout and elementwise activations keep the vectorised path."
        )
        return out
    return _loop(fn, in_dims, args)

r"""The one chunked predictive engine: ``S`` predictive samples (weight draws, dropout masks,
ensemble members) over ``N`` inputs in passes of ``chunk`` samples :math:`\times` ``rows``
inputs, written into one preallocated ``(S, N, k)`` result.

**The chunk policy** (:func:`plan`). One input row of one sample costs ``row_bytes`` of
activations (measured once per input shape by :func:`row_bytes`) and one sample may cost
``sample_bytes`` whatever the rows (its sampled weights). A pass holds at most
``max_memory`` bytes (default :data:`DEFAULT_MAX_MEMORY`); on the CPU it is also kept near
:data:`CPU_PASS_BYTES`, which keeps the hidden activations cache-resident: elementwise
layers are memory-bound there, and on the 1-50-50-1 tanh network of the benchmarks
(``benchmarks/bench_svi.py``: S=1000, N=100 and S=100, N=10,000;
``benchmarks/bench_baselines.py``: MC dropout at N=10 to 1000) passes of about 10,000
sample-rows (8 MiB) were the fastest, up to 2x faster than one pass
over everything. Other devices take everything ``max_memory`` allows in one pass. The
samples are split into equal chunks; inputs are split only when one sample over all inputs
exceeds the pass size. A given ``chunk_size`` fixes the samples per pass, and inputs are
then split only to respect ``max_memory``.

**Row chunks share samples.** :func:`run` calls ``fn(s0, s1, x_rows, out)`` once per pass;
callers draw a sample chunk's random weights once and reuse them for its row chunks, and
with ``replay_rng=True`` every row chunk of one sample chunk starts from the same random
state, so masks drawn inside ``fn`` (whose shapes do not depend on the rows) are the same for
all rows.

Example:
    >>> import torch
    >>> chunk, rows = plan(1000, 100, row_bytes=800, device=torch.device("cpu"))
    >>> chunk, rows                      # 10 passes of 100 samples x 100 inputs
    (100, 100)
    >>> calls = []
    >>> def fn(s0, s1, xr, out):
    ...     calls.append((s0, s1, xr.shape[0]))
    ...     return xr.expand(s1 - s0, -1, -1) * 2
    >>> x = torch.ones(5, 1)
    >>> run(fn, 4, x, chunk=3, rows=2).shape, len(calls)   # 2 sample chunks x 3 row chunks
    (torch.Size([4, 5, 1]), 6)
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
from torch import nn

__all__ = ["DEFAULT_MAX_MEMORY", "CPU_PASS_BYTES", "plan", "run", "row_bytes"]

#: bytes of activations one predictive pass may hold unless told (``max_memory``)
DEFAULT_MAX_MEMORY = 512 * 2**20
#: on the CPU, the bytes of activations one pass aims at (cache-sized passes, see the module docs)
CPU_PASS_BYTES = 8 * 2**20

PassFn = Callable[[int, int, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def plan(
    S: int,
    N: int,
    *,
    row_bytes: int,
    sample_bytes: int = 0,
    chunk_size: Optional[int] = None,
    max_memory: Optional[int] = None,
    device: Optional[torch.device] = None,
) -> Tuple[int, int]:
    """``(samples per pass, input rows per pass)`` for ``S`` samples over ``N`` inputs (the
    policy of the module docs).

    Example:
        >>> import torch
        >>> cpu = torch.device("cpu")
        >>> plan(100, 10_000, row_bytes=800, device=cpu)           # 1 sample x all inputs
        (1, 10000)
        >>> plan(10, 100_000, row_bytes=800, device=cpu)           # 1 sample x 20,971 inputs
        (1, 10485)
        >>> plan(100, 1000, row_bytes=800, chunk_size=50, max_memory=2**20, device=cpu)
        (50, 26)
    """
    budget = DEFAULT_MAX_MEMORY if max_memory is None else int(max_memory)
    row_bytes = max(int(row_bytes), 1)
    if chunk_size is None:
        on_cpu = device is None or torch.device(device).type == "cpu"
        limit = min(budget, CPU_PASS_BYTES) if on_cpu else budget
        chunk = max(1, min(S, limit // max(N * row_bytes + sample_bytes, 1)))
        chunk = math.ceil(S / math.ceil(S / chunk))  # equal chunks, as few passes
    else:
        limit = budget
        chunk = max(1, min(S, int(chunk_size)))
    rows = max(1, min(N, (limit // chunk - sample_bytes) // row_bytes))
    return chunk, rows


def _rng_state(device: torch.device):
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def run(
    fn: PassFn,
    S: int,
    x: torch.Tensor,
    *,
    chunk: int,
    rows: int,
    out: Optional[torch.Tensor] = None,
    replay_rng: bool = False,
) -> torch.Tensor:
    """``fn(s0, s1, x_rows, dest) -> (s1 - s0, len(x_rows), ...)`` over passes of ``chunk``
    samples and ``rows`` inputs, assembled into ``(S, N, ...)``.

    ``dest`` is the pass's slice of ``out`` (``None`` before the result is allocated, i.e.
    in the first pass when no ``out`` is given); ``fn`` may write into it and return it, or
    return a new tensor that is copied there. One pass returns ``fn``'s own result. With
    ``replay_rng`` every row chunk of a sample chunk starts from the same random state."""
    N = x.shape[0]
    if chunk >= S and rows >= N and out is None:
        return fn(0, S, x, None)
    for s0 in range(0, S, chunk):
        s1 = min(S, s0 + chunk)
        state = _rng_state(x.device) if replay_rng and rows < N else None
        for r0 in range(0, N, rows):
            r1 = min(N, r0 + rows)
            if state is not None:
                _set_rng_state(x.device, state)
            dest = None if out is None else out[s0:s1, r0:r1]
            res = fn(s0, s1, x[r0:r1], dest)
            if out is None:
                out = torch.empty((S, N) + tuple(res.shape[2:]), dtype=res.dtype, device=res.device)
                dest = out[s0:s1, r0:r1]
            if res is not dest:
                dest.copy_(res)
    return out


def row_bytes(net: nn.Module, x: torch.Tensor) -> int:
    """Bytes of activations one input row costs one sample: the outputs of every leaf module
    in a one-row pass of ``net`` (measured with forward hooks, in eval mode, without
    gradients, so BatchNorm statistics are not touched).

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(1, 50), nn.Tanh(), nn.Linear(50, 1))
        >>> row_bytes(net, torch.zeros(3, 1))       # (50 + 50 + 1) float32 values
        404
    """
    total = [0]

    def hook(_m, _i, o):
        if isinstance(o, torch.Tensor):
            total[0] += o.numel() * o.element_size()

    handles = [m.register_forward_hook(hook) for m in net.modules() if next(m.children(), None) is None]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(x[:1])
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return max(total[0], x[:1].numel() * x.element_size())

r"""The Linear-chain fast path: a network that is a plain chain
:math:`f = a_L\circ\ell_L\circ\dots\circ a_1\circ\ell_1` of :class:`~torch.nn.Linear` layers
:math:`\ell` and elementwise activations :math:`a` runs batched over ``B`` weight samples
with one :func:`torch.baddbmm` per layer,

.. math::

    h^{(l)}_b = a_l\big(h^{(l-1)}_b\, W^{(l)\top}_b + b^{(l)}_b\big),\qquad b = 1..B,

instead of :func:`torch.func.vmap` over :func:`torch.func.functional_call`, whose
per-operation dispatch dominates for small networks. Both compute the same function (up to
floating-point summation order; :class:`~torch.nn.Tanh` is evaluated as
:math:`2\sigma(2x)-1`, see :func:`tanh`).

Callers reach it through :meth:`pyrobdl.BayesianNetwork.apply` (and the predictive engine
behind :meth:`~pyrobdl.BayesianNetwork.outputs_from_samples`), which use it whenever
:func:`usable` says so; deep ensembles train through :func:`member_layout`, a layout of
stacked weights that the per-member forward consumes without transposing. **The one switch**: ``USE_CHAIN_PATH`` (or the context manager
:func:`general_path`) sends every caller -- prediction, SVI, dropout, ensembles -- to the
general path; tests compare the two through it.

Example:
    >>> import torch, torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    >>> p = plan(net)
    >>> [s[0] for s in p.steps], p.widths
    (['linear', 'act', 'linear'], [4, 1])
    >>> params = {k: v.detach().expand((3,) + v.shape) for k, v in net.named_parameters()}
    >>> forward(p, params, torch.randn(5, 2), 3).shape     # 3 weight samples, 5 inputs
    torch.Size([3, 5, 1])
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "USE_CHAIN_PATH",
    "general_path",
    "chain_path_enabled",
    "Chain",
    "plan",
    "usable",
    "forward",
    "scratch",
    "tanh",
    "DROPOUT_TYPES",
    "MemberLayout",
    "member_layout",
]

#: The one switch: ``False`` sends every caller to the general ``vmap(functional_call)``
#: path (the chain path is an exact re-implementation, kept switchable for tests).
USE_CHAIN_PATH = True


@contextlib.contextmanager
def general_path() -> Iterator[None]:
    """Inside the block every network runs on the general ``vmap(functional_call)`` path.

    Example:
        >>> with general_path():
        ...     chain_path_enabled()
        False
        >>> chain_path_enabled()
        True
    """
    global USE_CHAIN_PATH
    before = USE_CHAIN_PATH
    USE_CHAIN_PATH = False
    try:
        yield
    finally:
        USE_CHAIN_PATH = before


def chain_path_enabled() -> bool:
    """Whether the chain fast path may run (``USE_CHAIN_PATH``)."""
    return USE_CHAIN_PATH


#: elementwise activations the chain calls as they are (no parameters, no randomness, the same in
#: train and eval mode); in-place variants where the input is a fresh linear output
ELEMENTWISE = (
    nn.Tanh, nn.ReLU, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Softplus, nn.Identity,
    nn.Mish, nn.Hardtanh, nn.ReLU6, nn.SELU, nn.CELU, nn.Softsign, nn.Tanhshrink, nn.Hardswish,
    nn.Hardsigmoid, nn.LogSigmoid,
)
#: dropout modules: the identity in eval mode, where a chain may skip them
DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def tanh(h: torch.Tensor) -> torch.Tensor:
    r""":math:`\tanh x = 2\sigma(2x) - 1`.

    On the CPU builds measured here, ``torch.tanh`` costs ~2.8 ns per float32 element against
    ~0.6 ns for ``torch.sigmoid`` (one thread), and tanh dominated both SVI steps and
    predictive passes of tanh networks. The identity is exact; its float32 rounding error is
    at most a few units of :math:`2^{-24}` in absolute terms (tested against float64 tanh),
    below the rounding of the following matrix product. Differentiable. Other devices (CUDA,
    where ``tanh`` is one memory-bound kernel like ``sigmoid``) use ``torch.tanh``.

    Example:
        >>> x = torch.linspace(-3, 3, 7, dtype=torch.float64)
        >>> bool(torch.allclose(tanh(x), torch.tanh(x), atol=1e-15))
        True
    """
    if h.device.type != "cpu":
        return torch.tanh(h)
    return torch.sigmoid(h * 2.0).mul(2.0).sub_(1.0)


def _tanh_(h):
    """In-place :func:`tanh` of a fresh linear output (out of place when autograd records it)."""
    if h.device.type != "cpu":
        return h.tanh_()
    if torch.is_grad_enabled() and h.requires_grad:
        return tanh(h)
    return h.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)


class _FastTanh:
    forward = staticmethod(lambda m, h: tanh(h))


_INPLACE = {nn.Tanh: _tanh_, nn.ReLU: lambda h: h.relu_(), nn.Sigmoid: lambda h: h.sigmoid_()}


class Chain:
    """A network recognised as a plain chain (see :func:`plan`).

    Attributes:
        steps: ``("linear", module, weight_name, bias_name)`` or
            ``("act", module, forward, inplace_fn)`` in order (``forward`` is the class's
            function, called as ``forward(module, h)``).
        modules: every module involved (containers, identities and skipped dropouts
            included), for the per-call check :meth:`still_plain`.
        dropouts: the skipped dropout modules (the chain is usable only while they are
            the identity: in eval mode, or with ``p = 0``).
        widths: the output width of each Linear layer, in order.
    """

    def __init__(self, steps, modules, dropouts):
        self.steps, self.modules, self.dropouts = steps, modules, dropouts
        self.widths = [s[1].out_features for s in steps if s[0] == "linear"]
        self.n_linear = len(self.widths)

    def still_plain(self) -> bool:
        """No forward or backward hooks and no monkeypatched ``forward`` (e.g. pyrobdl's local
        reparameterisation) on any module of the chain, no global module hooks, and every
        skipped dropout module the identity now."""
        from torch.nn.modules import module as _mod

        if (
            _mod._global_forward_hooks or _mod._global_forward_pre_hooks
            or _mod._global_backward_hooks or _mod._global_backward_pre_hooks
        ):
            return False
        for m in self.modules:
            if (
                m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or "forward" in m.__dict__
            ):
                return False
        return not any(m.training and m.p > 0 for m in self.dropouts)


def plan(net: nn.Module, *, dropout_is_identity: bool = False) -> Optional[Chain]:
    r"""``net`` as a :class:`Chain` when it is a plain chain of Linear layers and elementwise
    activations; else ``None``.

    Accepted: an :class:`~torch.nn.Sequential` (nested ones flattened) whose leaves are exact
    :class:`~torch.nn.Linear` layers or activations of ``ELEMENTWISE`` (exact types: a
    subclass may override ``forward``), with no buffers, no parametrizations or other
    submodules of a leaf, at least one Linear, and no in-place activation before the first
    Linear (it would write into the caller's input); :class:`~torch.nn.Identity` leaves are
    skipped. With ``dropout_is_identity`` dropout modules are skipped too (the chain is then
    usable only while they are in eval mode, see :meth:`Chain.still_plain`). Everything
    else -- normalisation, convolutions, custom modules -- keeps the general path. Hooks and
    patched forwards are checked per call (:func:`usable`)."""
    if type(net) is not nn.Sequential:
        return None
    if next(net.buffers(), None) is not None:
        return None
    names = {id(m): n for n, m in net.named_modules()}
    steps: List[Tuple] = []
    modules: List[nn.Module] = []
    dropouts: List[nn.Module] = []

    def walk(m: nn.Module) -> bool:
        modules.append(m)
        if type(m) is nn.Sequential:
            return all(walk(c) for c in m)
        if m._modules:  # e.g. parametrizations
            return False
        if type(m) is nn.Linear:
            pre = names[id(m)] + "." if names[id(m)] else ""
            steps.append(("linear", m, pre + "weight", pre + "bias" if m.bias is not None else None))
            return True
        if type(m) in ELEMENTWISE:
            if getattr(m, "inplace", False) and not any(s[0] == "linear" for s in steps):
                return False  # would write into the caller's input
            if type(m) is not nn.Identity:
                fwd = _FastTanh.forward if type(m) is nn.Tanh else type(m).forward
                steps.append(("act", m, fwd, _INPLACE.get(type(m))))
            return True
        if dropout_is_identity and type(m) in DROPOUT_TYPES:
            dropouts.append(m)
            return True
        return False

    if not walk(net) or not any(s[0] == "linear" for s in steps):
        return None
    return Chain(steps, modules, dropouts)


def usable(chain: Optional[Chain]) -> Optional[Chain]:
    """``chain`` when the fast path may run now: the switch is on and the chain is still
    plain (:meth:`Chain.still_plain`); else ``None``."""
    if chain is None or not USE_CHAIN_PATH or not chain.still_plain():
        return None
    return chain


def run(chain: Chain, x: torch.Tensor, linear: Callable[[Tuple, torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    """``x`` through the steps of ``chain``: ``linear(step, h, l)`` computes the ``l``-th
    (1-based) Linear layer, activations are applied here, in place when their input is a
    linear layer's own output and the activation has an in-place form (never on ``x``)."""
    h = x
    fresh = False  # h is a linear layer's own output (safe to overwrite in place)
    li = 0
    for step in chain.steps:
        if step[0] == "act":
            _, m, fn, inplace = step
            h = inplace(h) if (fresh and inplace is not None) else fn(m, h)
            fresh = False
        else:
            li += 1
            h = linear(step, h, li)
            fresh = True
    return h


def forward(
    chain: Chain,
    params: Dict[str, torch.Tensor],
    x: torch.Tensor,
    B: int,
    *,
    out: Optional[torch.Tensor] = None,
    buffers: Optional[List[torch.Tensor]] = None,
) -> torch.Tensor:
    r"""Run the chain on inputs ``x`` of shape ``(N, d_in)``, shared by the batch, or
    ``(B, N, d_in)``, one input per batch element.

    ``params`` maps parameter names to values; a value has a leading batch dimension of size
    ``B`` (``B = 0``: no batch dimension) or none (a weight ``(out, in)`` or bias ``(out,)``
    shared by the batch); for a parameter that is not given the module's own tensor is used.
    A shared input stays shared (one 2-D product) until the first batched parameter, so the
    result is ``(N, k)`` when nothing is batched and ``(B, N, k)`` otherwise. Batched layers
    run as one ``baddbmm`` (one GEMM per batch element inside one kernel).

    With ``out`` (shape ``(B, N, k)``) the result is written into it, and with ``buffers``
    (see :func:`scratch`) the hidden activations are written into them in place: no
    allocation per pass (prediction under ``inference_mode``; not differentiable).
    """
    nlin = chain.n_linear

    def layer(step: Tuple, h: torch.Tensor, li: int) -> torch.Tensor:
        _, m, wname, bname = step
        w = params.get(wname)
        if w is None:
            w = m.weight
        b = None
        if bname is not None:
            b = params.get(bname)
            if b is None:
                b = m.bias
        # a shared input through shared parameters stays shared (one 2-D product, not B)
        batched = bool(B) and (w.dim() == 3 or h.dim() == 3 or (b is not None and b.dim() == 2))
        target = None
        if li == nlin and out is not None:
            target = out if batched else None  # a shared result is broadcast into out below
        elif buffers is not None and li < nlin:
            rows, width = h.shape[-2], w.shape[-2]
            n = B if batched else 1
            target = buffers[li - 1][: n * rows * width].view(((B,) if batched else ()) + (rows, width))
        if B and w.dim() == 3:  # batched weights: one baddbmm over the batch
            if h.dim() == 2:
                h = h.expand((B,) + h.shape)
            wt = w.transpose(1, 2)
            if b is None:
                return torch.bmm(h, wt, out=target) if target is not None else torch.bmm(h, wt)
            bb = b.unsqueeze(1) if b.dim() == 2 else b.expand(B, 1, b.shape[-1])
            return torch.baddbmm(bb, h, wt, out=target) if target is not None else torch.baddbmm(bb, h, wt)
        bias_batched = b is not None and b.dim() == 2 and B
        h = F.linear(h, w, None if bias_batched else b)
        if bias_batched:
            h = h + b.unsqueeze(1)
        if target is not None:
            target.copy_(h)
            h = target
        return h

    h = run(chain, x, layer)
    if out is not None and h is not out:  # activations after the last layer that made a new tensor
        out.copy_(h)
        h = out
    return h


class MemberLayout:
    r"""Training layout of :math:`M` stacked networks of one chain with one input batch per
    member (deep ensembles): every parameter is stored the way the forward consumes it --
    a weight as :math:`W^\top`, ``(M, in, out)``, a bias as ``(M, 1, out)`` -- so each layer
    is one ``baddbmm`` with no transposing views in the autograd graph (measured ~10% faster
    per step than :func:`forward` on the usual layout for minibatches of 32 on the 1-50-50-1
    network of ``benchmarks/bench_baselines.py``). Get one with :func:`member_layout`.

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
        >>> layout = member_layout(net)
        >>> stacked = {k: v.detach().expand((3,) + v.shape) for k, v in net.named_parameters()}
        >>> packed = {k: layout.pack(k, v) for k, v in stacked.items()}
        >>> packed["0.weight"].shape, packed["0.bias"].shape
        (torch.Size([3, 2, 4]), torch.Size([3, 1, 4]))
        >>> x = torch.randn(3, 5, 2)                             # one batch per member
        >>> torch.allclose(layout.forward(packed, x), net(x), atol=1e-6)
        True
    """

    def __init__(self, chain: Chain):
        self.chain = chain
        self.kinds: Dict[str, str] = {}
        for step in chain.steps:
            if step[0] == "linear":
                self.kinds[step[2]] = "T"
                if step[3] is not None:
                    self.kinds[step[3]] = "B"

    def pack(self, name: str, v: torch.Tensor) -> torch.Tensor:
        """A stacked parameter ``(M, *shape)`` in the layout (a view)."""
        kind = self.kinds.get(name)
        return v.transpose(1, 2) if kind == "T" else v.unsqueeze(1) if kind == "B" else v

    def unpack(self, params: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Parameters in the layout -> the usual stacked shapes (views)."""
        out = {}
        for k, v in params.items():
            kind = self.kinds.get(k)
            out[k] = v.transpose(1, 2) if kind == "T" else v.squeeze(1) if kind == "B" else v
        return out

    def forward(self, params: Dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Outputs ``(M, B, k)`` for inputs ``(M, B, in)``, every parameter given, packed."""

        def layer(step: Tuple, h: torch.Tensor, li: int) -> torch.Tensor:
            w, bname = params[step[2]], step[3]
            return torch.bmm(h, w) if bname is None else torch.baddbmm(params[bname], h, w)

        return run(self.chain, x, layer)


def member_layout(net: nn.Module) -> Optional[MemberLayout]:
    """The :class:`MemberLayout` of ``net`` when it is a plain chain (dropout modules not
    accepted: they are random in training) and the chain path may run now (the switch,
    hooks, patched forwards; see :func:`usable`); else ``None``, and the caller takes the
    general path."""
    chain = usable(plan(net))
    return None if chain is None else MemberLayout(chain)


def scratch(chain: Chain, rows: int, *, dtype: torch.dtype, device) -> List[torch.Tensor]:
    """Flat scratch tensors for :func:`forward`'s ``buffers``: one per hidden layer, with room
    for ``rows`` rows (samples x inputs) of its width."""
    return [torch.empty(rows * w, dtype=dtype, device=device) for w in chain.widths[:-1]]

r"""Local reparameterisation and flipout for your own Pyro SVI loop: a ``poutine``-style context.

Inside ``with local_reparameterization():`` (or ``flipout()``) every Linear or convolution
layer whose weight (and bias, if any) was sampled from a Gaussian with independent
coordinates -- a guide's :math:`q(w_{ij}) = \mathcal N(\mu_{ij}, \sigma_{ij}^2)` such as
:class:`~pyro.infer.autoguide.AutoNormal`, a hand-written guide of ``Normal(loc,
scale).to_event()`` sites, or the prior itself when no guide runs -- computes its output
from those distributions instead of from the one sampled weight:

* **local reparameterisation** (Kingma, Salimans & Welling 2015): the pre-activation of
  every example is drawn from its exact Gaussian,
  :math:`b = x\mu^\top + \sqrt{x^2(\sigma^2)^\top}\,\varepsilon`, independent per example, so
  the likelihood's gradient has lower variance than with one weight draw per minibatch;
* **flipout** (Wen et al. 2018): the sampled perturbation :math:`\Delta W = W - \mu` is shared
  but decorrelated per example by random signs,
  :math:`b = x\mu^\top + ((x\circ s)\,\Delta W^\top)\circ r`.

The ELBO's prior and entropy terms still use the sampled weights (the sites are unchanged),
so the estimate stays unbiased; only the likelihood's gradient changes. Layers whose weights
were not sampled from such a Gaussian (``AutoDiagonalNormal`` and the other
``AutoContinuous`` guides sample one flat vector; batched particles under
``vectorize_particles``) run as usual. pyrobdl's own ``MeanField`` uses the same estimators
internally (``estimator="local"`` / ``"flipout"``).

Example::

    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal

    guide = AutoNormal(model)                       # model: a pyrobdl.BayesianNetwork
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    with local_reparameterization():
        for step in range(2000):
            svi.step(x, y)

References:
    D. P. Kingma, T. Salimans and M. Welling, *Variational Dropout and the Local
    Reparameterization Trick* (NeurIPS 2015);
    Y. Wen, P. Vicol, J. Ba, D. Tran and R. Grosse, *Flipout: Efficient Pseudo-Independent
    Weight Perturbations on Mini-Batches* (ICLR 2018);
    H. Ritter and T. Karaletsos, *TyXe: Pyro-based Bayesian neural nets for PyTorch* (2022),
    whose ``tyxe.poutine`` contexts this follows.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from pyro.poutine.messenger import Messenger

from .._fast.chain import general_path

__all__ = ["local_reparameterization", "flipout", "LocalReparameterizationMessenger"]


def _normal_parts(fn) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``(loc, scale)`` of a Gaussian with independent coordinates (``Normal`` possibly
    wrapped in ``Independent``), else ``None``."""
    base = fn
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    if not isinstance(base, torch.distributions.Normal):
        return None
    return base.loc, base.scale


class LocalReparameterizationMessenger(Messenger):
    """Records the Gaussian each weight was sampled from and swaps ``F.linear`` and
    ``F.conv1d/2d/3d`` for local reparameterisation or flipout on those weights (see the
    module docs). ``flipout``: use flipout instead of local reparameterisation."""

    _FUNCS = ("linear", "conv1d", "conv2d", "conv3d")

    def __init__(self, flipout: bool = False):
        super().__init__()
        self.flipout = bool(flipout)
        # site name -> (the sampled value, loc, scale); the first registration of a value wins
        # (the guide runs before the model, which replays the same tensor under its prior)
        self._sites: Dict[str, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._saved: Dict[str, Callable] = {}
        self._path = None

    # --------------------------------------------------------------- messenger hooks
    def _postprocess_message(self, msg) -> None:
        if msg["type"] != "sample" or msg["is_observed"] or not isinstance(msg.get("value"), torch.Tensor):
            return
        value = msg["value"]
        old = self._sites.get(msg["name"])
        if old is not None and old[0] is value:
            return  # the model replaying the guide's draw
        parts = _normal_parts(msg["fn"])
        if parts is None:
            # AutoNormal draws "<name>_unconstrained" from a Normal and records "<name>" as a Delta
            # at its transform; for a real support (weights) that is the same value
            aux = self._sites.get(msg["name"] + "_unconstrained")
            if aux is not None and aux[0].shape == value.shape and torch.equal(aux[0], value):
                self._sites[msg["name"]] = (value, aux[1], aux[2])
            else:
                self._sites.pop(msg["name"], None)
            return
        # one Gaussian per coordinate of this very value (no particle or plate batch dims)
        if torch.broadcast_shapes(parts[0].shape, parts[1].shape, value.shape) != value.shape:
            self._sites.pop(msg["name"], None)
            return
        loc, scale = parts
        self._sites[msg["name"]] = (value, loc.expand(value.shape), scale.expand(value.shape))

    def __enter__(self):
        self._path = general_path()  # the Linear-chain fast path does not call F.linear
        self._path.__enter__()
        for name in self._FUNCS:
            original = getattr(F, name)
            self._saved[name] = original
            setattr(F, name, self._wrap(original, name))
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for name, original in self._saved.items():
                setattr(F, name, original)
            self._saved.clear()
            self._sites.clear()
            self._path.__exit__(*exc)

    # --------------------------------------------------------------- the estimators
    def _lookup(self, t: Optional[torch.Tensor]):
        if t is None:
            return None
        for value, loc, scale in self._sites.values():
            if value is t:
                return value, loc, scale
        return False

    def _wrap(self, original: Callable, name: str) -> Callable:
        def fn(input, weight, bias=None, *args, **kwargs):
            w = self._lookup(weight)
            b = self._lookup(bias)
            if not w or b is False:
                return original(input, weight, bias, *args, **kwargs)
            _, wm, ws = w
            if self.flipout:
                mean = original(input, wm, bias, *args, **kwargs)
                pert = original(input * _signs(input, name), weight - wm, None, *args, **kwargs)
                return mean + pert * _signs(pert, name)
            bm, bs = (None, None) if b is None else (b[1], b[2])
            mean = original(input, wm, bm, *args, **kwargs)
            var = original(input * input, ws * ws, None if bs is None else bs * bs, *args, **kwargs)
            return mean + var.clamp_min(1e-16).sqrt() * torch.randn_like(mean)

        return fn


def _signs(like: torch.Tensor, name: str) -> torch.Tensor:
    """Random ±1 per example and feature (Linear: the shape of ``like``) or per example and
    channel (convolutions: ``(N, C, 1, ...)``)."""
    shape = like.shape if name == "linear" else like.shape[:2] + (1,) * (like.dim() - 2)
    return torch.empty(shape, device=like.device, dtype=like.dtype).bernoulli_(0.5).mul_(2).sub_(1)


@contextlib.contextmanager
def local_reparameterization() -> Iterator[LocalReparameterizationMessenger]:
    """Local reparameterisation for the Linear/Conv layers of the Pyro model and guide run
    inside the block (see the module docs)."""
    with LocalReparameterizationMessenger(flipout=False) as m:
        yield m


@contextlib.contextmanager
def flipout() -> Iterator[LocalReparameterizationMessenger]:
    """Flipout for the Linear/Conv layers of the Pyro model and guide run inside the block
    (see the module docs)."""
    with LocalReparameterizationMessenger(flipout=True) as m:
        yield m

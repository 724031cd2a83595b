r"""Any :class:`torch.nn.Module` as a Pyro model with priors over its weights.

:class:`BayesianNetwork` wraps a network :math:`f_\theta` and defines the
generative model

.. math::

    \theta \sim p(\theta) \quad(\text{the selected parameters}),\qquad
    \eta \sim p(\eta) \quad(\text{likelihood latents, e.g. a noise scale}),\qquad
    y_n \mid x_n, \theta, \eta \sim p(y_n \mid f_\theta(x_n), \eta),\ n = 1..N.

Calling it, ``model(x, y=None, num_data=None)``, runs that model with ordinary
``pyro.sample`` statements, so it is a real Pyro model: it works unchanged with
:class:`pyro.infer.SVI`, every :mod:`pyro.infer.autoguide`, :class:`pyro.infer.MCMC`,
:class:`pyro.infer.Predictive` and :mod:`pyro.poutine` handlers. The likelihood
sits in ``pyro.plate("data", num_data)``: pass ``num_data`` (the dataset size)
with a minibatch and the likelihood is scaled by ``num_data / batch_size``, which
keeps the ELBO an unbiased estimate of the full-data ELBO.

Sampled weights with extra leading dimensions (as produced by
``Predictive(parallel=True)`` or ``Trace_ELBO(vectorize_particles=True)``) are run
through the network in one batched pass with :func:`torch.func.vmap`.

Besides the Pyro model, the class offers the fast, trace-free functions that
pyrobdl's inference uses: :meth:`apply`, :meth:`log_prior`,
:meth:`log_likelihood` and :meth:`predict_from_samples` (chunked and vectorised
over posterior samples).
"""
from __future__ import annotations

import fnmatch
import itertools
import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import pyro
import pyro.distributions as dist
import torch
from torch import nn
import torch.nn.functional as F
from torch.distributions import constraints
from torch.func import functional_call, vmap

from . import likelihoods as _lik
from . import priors as _priors
from ._validation import check_inputs, check_positive_int, check_same_length
from .prediction import Prediction

__all__ = ["BayesianNetwork", "LatentSite"]

_uid_counter = itertools.count()

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)

Selector = Union[None, str, type, nn.Module, Callable, Sequence]

DEFAULT_MAX_MEMORY = 512 * 2**20  # bytes of activations per predictive chunk
TARGET_ROWS = 20_000  # samples x inputs per batched predictive pass (see predict_from_samples)
CHAIN_PASS_ROWS = 20_000  # samples x inputs per pass of a plain Linear chain (see _chain_predict)


@dataclass
class LatentSite:
    """One latent variable of a :class:`BayesianNetwork`.

    Attributes:
        name: the Pyro sample-site name.
        shape: the value's shape (without sample dimensions).
        support: the distribution's support (``real`` for weights).
        prior: the prior distribution (event shape == ``shape``).
        param: the network parameter it replaces, or ``None`` for a likelihood latent.
        latent: the likelihood's short name for it (``"sigma"``), or ``None``.
        gaussian: ``(loc, scale)`` scalars of an i.i.d. Gaussian prior, else ``None``.

    Example:
        >>> import torch.nn as nn
        >>> from pyrobdl import priors, likelihoods
        >>> model = BayesianNetwork(nn.Linear(3, 2), prior=priors.Normal(0.0, 0.5), likelihood=likelihoods.Gaussian())
        >>> site = model.latent_sites()["weight"]
        >>> site.shape, site.numel, site.param, site.gaussian
        (torch.Size([2, 3]), 6, 'weight', (0.0, 0.5))
        >>> model.latent_sites()["sigma"].latent        # the likelihood's learned noise scale
        'sigma'
    """

    name: str
    shape: torch.Size
    support: constraints.Constraint
    prior: dist.TorchDistribution
    param: Optional[str] = None
    latent: Optional[str] = None
    gaussian: Optional[Tuple[float, float]] = None

    @property
    def numel(self) -> int:
        return int(math.prod(self.shape))


def _drop_data_dim(value: torch.Tensor, shape: torch.Size, site: str) -> torch.Tensor:
    """Values sampled under outer plates (vectorised particles, ``Predictive(parallel=True)``)
    carry batch dims laid out like the model's plates, whose rightmost (dim -1) is the data plate,
    of size 1 for a global latent. Drop that dim so the batch dims line up with ``(..., N)``.
    (Guides that return values with only the sample dim, e.g. ``AutoDelta`` under ``Predictive``,
    are taken as they are.)"""
    nb = value.dim() - len(shape)
    if nb <= 0 or value.shape[nb - 1] != 1:
        return value
    return value.squeeze(nb - 1)


# ----------------------------------------------------------------------------- plain chains
#: elementwise activations the chain fast path calls as they are (no parameters, no randomness,
#: same in train and eval mode); in-place variants where the input is a fresh linear output
_ELEMENTWISE = (
    nn.Tanh, nn.ReLU, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Softplus, nn.Identity,
    nn.Mish, nn.Hardtanh, nn.ReLU6, nn.SELU, nn.CELU, nn.Softsign, nn.Tanhshrink, nn.Hardswish,
    nn.Hardsigmoid, nn.LogSigmoid,
)


def _tanh_(h):
    r"""In-place :math:`\tanh` of a fresh linear output, as :math:`2\sigma(2x)-1` on the CPU
    (see :func:`_tanh`)."""
    if h.device.type != "cpu":
        return h.tanh_()
    if torch.is_grad_enabled() and h.requires_grad:
        return _tanh(h)
    return h.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)


def _tanh(h):
    r""":math:`\tanh x = 2\sigma(2x) - 1`.

    On the CPU builds measured here, ``torch.tanh`` costs ~2.8 ns per float32 element against
    ~0.6 ns for ``torch.sigmoid`` (one thread), and tanh dominated both SVI steps and
    predictive passes of tanh networks. The identity is exact; its float32 rounding error is
    at most a few units of :math:`2^{-24}` in absolute terms (tested against float64 tanh),
    below the rounding of the following matrix product. Differentiable (the autograd graph
    has sigmoid, two scalings and a shift). Other devices (CUDA, where ``tanh`` is one
    memory-bound kernel like ``sigmoid``) use ``torch.tanh``."""
    if h.device.type != "cpu":
        return torch.tanh(h)
    return torch.sigmoid(h * 2.0).mul(2.0).sub_(1.0)


class _FastTanh:
    forward = staticmethod(lambda m, h: _tanh(h))


def _relu_(h):
    return h.relu_()


def _sigmoid_(h):
    return h.sigmoid_()


_INPLACE = {nn.Tanh: _tanh_, nn.ReLU: _relu_, nn.Sigmoid: _sigmoid_}


#: dropout modules, which a chain may skip when the caller guarantees eval mode (see :func:`_chain_plan`)
_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


class _Chain:
    """A network recognised as a plain chain (see :func:`_chain_plan`).

    Attributes:
        steps: ``("linear", module, weight_name, bias_name)`` or
            ``("act", module, forward, inplace_fn)`` in order (``forward`` is the class's
            function, called as ``forward(module, h)``; run them with :func:`_chain_run`).
        modules: every module involved (containers, identities and skipped dropouts
            included), for the per-call hook check.
    """

    def __init__(self, steps, modules):
        self.steps, self.modules = steps, modules
        self.n_linear = sum(1 for s in steps if s[0] == "linear")

    def still_plain(self) -> bool:
        """No forward or backward hooks and no monkeypatched ``forward`` (e.g. pyrobdl's
        local reparameterisation) on any module of the chain, and no global module hooks."""
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
        return True


def _chain_plan(net: nn.Module, *, dropout_is_identity: bool = False) -> Optional[_Chain]:
    r"""``net`` as a :class:`_Chain` when it is a plain chain
    :math:`f = a_L\circ\ell_L\circ\dots\circ a_1\circ\ell_1` of :class:`~torch.nn.Linear`
    layers :math:`\ell` and elementwise activations :math:`a`; else ``None``.

    Accepted: an :class:`~torch.nn.Sequential` (nested ones flattened) whose leaves are exact
    :class:`~torch.nn.Linear` layers or activations of ``_ELEMENTWISE`` (exact types: a
    subclass may override ``forward``), with no buffers, no parametrizations or other
    submodules of a leaf, at least one Linear, and no in-place activation before the first
    Linear (it would write into the caller's input); :class:`~torch.nn.Identity` leaves are
    skipped. With ``dropout_is_identity`` dropout modules are skipped too (the caller
    guarantees eval mode, e.g. dropout posteriors whose masks act on the weights). Everything
    else -- normalisation, convolutions, custom modules -- keeps the general
    ``functional_call``/``vmap`` path. Hooks and patched forwards are checked per call, by
    :meth:`_Chain.still_plain`."""
    if type(net) is not nn.Sequential:
        return None
    if next(net.buffers(), None) is not None:
        return None
    names = {id(m): n for n, m in net.named_modules()}
    steps: List[Tuple] = []
    modules: List[nn.Module] = []

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
        if type(m) in _ELEMENTWISE:
            if getattr(m, "inplace", False) and not any(s[0] == "linear" for s in steps):
                return False  # would write into the caller's input
            if type(m) is not nn.Identity:
                fwd = _FastTanh.forward if type(m) is nn.Tanh else type(m).forward
                steps.append(("act", m, fwd, _INPLACE.get(type(m))))
            return True
        return dropout_is_identity and type(m) in _DROPOUT_TYPES

    if not walk(net) or not any(s[0] == "linear" for s in steps):
        return None
    return _Chain(steps, modules)


def _chain_run(plan: _Chain, x: torch.Tensor, linear: Callable[[Tuple, torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    """``x`` through the steps of ``plan``: ``linear(step, h, l)`` computes the ``l``-th
    (1-based) Linear layer, activations are applied here, in place when their input is a
    linear layer's own output and the activation has an in-place form (never on ``x``)."""
    h = x
    fresh = False  # h is a linear layer's own output (safe to overwrite in place)
    li = 0
    for step in plan.steps:
        if step[0] == "act":
            _, m, fn, inplace = step
            h = inplace(h) if (fresh and inplace is not None) else fn(m, h)
            fresh = False
        else:
            li += 1
            h = linear(step, h, li)
            fresh = True
    return h


def _chain_forward(
    plan,
    params: Dict[str, torch.Tensor],
    x: torch.Tensor,
    B: int,
    *,
    out: Optional[torch.Tensor] = None,
    buffers: Optional[List[torch.Tensor]] = None,
) -> torch.Tensor:
    r"""Run a plain Linear/activation chain (see :func:`_chain_plan`) on inputs ``x`` of shape
    ``(N, d_in)``, shared by the batch, or ``(B, N, d_in)``, one input per batch element.

    ``params`` maps parameter names to values; a value has a leading batch dimension of size
    ``B`` (``B = 0``: no batch dimension) or none (a weight ``(out, in)`` or bias ``(out,)``
    shared by the batch); for a parameter that is not given the module's own tensor is used.
    A shared input stays shared (one 2-D product) until the first batched parameter, so the
    result is ``(N, k)`` when nothing is batched and ``(B, N, k)`` otherwise. Layer :math:`l` computes
    :math:`h_{l} = h_{l-1}W_l^\top + b_l` for every batch element at once (``baddbmm``,
    one GEMM per batch element inside one kernel), so the result equals
    ``vmap(functional_call)`` up to floating-point reassociation (and :class:`~torch.nn.Tanh`
    is evaluated as :math:`2\sigma(2x)-1`, see :func:`_tanh`: within ~2e-7 absolute in float32).

    With ``out`` (shape ``(B, N, k)``) the result is written into it (by the last layer, and
    by any activation after it), and with ``buffers``
    (flat scratch tensors, one per hidden layer, each with room for ``B*N*width``) the
    hidden activations are written into them in place: no allocation per pass (used by
    prediction under ``inference_mode``; not differentiable).
    """
    nlin = plan.n_linear

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
        target = None
        if li == nlin and out is not None:
            target = out
        elif buffers is not None and li < nlin:
            rows = h.shape[-2]
            lead = (B,) if B else ()
            target = buffers[li - 1][: (B or 1) * rows * w.shape[-2]].view(lead + (rows, w.shape[-2]))
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

    h = _chain_run(plan, x, layer)
    if out is not None and h is not out:  # activations after the last layer that made a new tensor
        out.copy_(h)
        h = out
    return h


class BayesianNetwork(nn.Module):
    r"""Turn a torch network into a Bayesian one: a Pyro model with priors over
    (some of) its parameters.

    Args:
        net: any :class:`torch.nn.Module` mapping inputs ``(N, ...)`` to outputs
            ``(N, k)``.
        prior: a :class:`pyrobdl.priors.Prior` (default :class:`~pyrobdl.priors.FanInNormal`:
            weights :math:`\mathcal N(0, 1/\text{fan\_in})`, biases :math:`\mathcal N(0, 1)`; on the UCI
            benchmarks it fits markedly better than i.i.d. ``Normal(0, 1)``).
        likelihood: a :class:`pyrobdl.likelihoods.Likelihood` (default
            ``Gaussian()`` with a learned noise scale).
        bayesian: which parameters get a prior. ``None`` (default): every
            parameter except those of normalisation layers (BatchNorm, LayerNorm,
            GroupNorm), which stay deterministic point estimates; ``"all"``: every
            parameter; ``"last"``: the parameters of the last module that has
            any; otherwise a glob pattern on parameter names (``"head.*"``,
            ``"2.weight"``), a module type (``nn.Linear``), a module instance,
            a callable ``(name, param, module) -> bool``, or a list of these
            (a parameter is selected when any entry matches).
        name: prefix for the Pyro site names (use different names when one Pyro
            model contains two networks). Sites are named after the
            parameters, e.g. ``"0.weight"``, or ``"enc.0.weight"`` with ``name="enc"``.

    Example::

        >>> import torch, torch.nn as nn
        >>> from pyrobdl import BayesianNetwork, priors, likelihoods
        >>> net = nn.Sequential(nn.Linear(1, 20), nn.Tanh(), nn.Linear(20, 1))
        >>> model = BayesianNetwork(net, prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian())
        >>> sorted(model.site_names)
        ['0.bias', '0.weight', '2.bias', '2.weight', 'sigma']
        >>> trace = pyro.poutine.trace(model).get_trace(torch.randn(5, 1), torch.randn(5))
        >>> trace.nodes["obs"]["value"].shape
        torch.Size([5])

    References:
        R. M. Neal, *Bayesian Learning for Neural Networks* (1996);
        C. Blundell et al., *Weight Uncertainty in Neural Networks* (ICML 2015).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        prior: Optional[_priors.Prior] = None,
        likelihood: Optional[_lik.Likelihood] = None,
        bayesian: Selector = None,
        name: str = "",
    ):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if prior is None:
            prior = _priors.FanInNormal()
        if not isinstance(prior, _priors.Prior):
            raise TypeError(
                f"prior must be a pyrobdl.priors.Prior (e.g. priors.Normal(0, 1)), got {type(prior).__name__}"
            )
        if likelihood is None:
            likelihood = _lik.Gaussian()
        if not isinstance(likelihood, _lik.Likelihood):
            raise TypeError(
                "likelihood must be a pyrobdl.likelihoods.Likelihood (e.g. likelihoods.Gaussian()), "
                f"got {type(likelihood).__name__}"
            )
        if not isinstance(name, str):
            raise TypeError(f"name must be a string, got {type(name).__name__}")
        self.net = net
        self.prior = prior
        self.likelihood = likelihood
        self.name = name
        self._uid = f"pyrobdl.{name or 'bnn'}.{next(_uid_counter)}"
        self._selector = bayesian

        owners: Dict[str, nn.Module] = {}
        for mname, module in net.named_modules():
            for pname, _ in module.named_parameters(recurse=False):
                owners[f"{mname}.{pname}" if mname else pname] = module
        self._owners = owners
        all_names = [n for n, _ in net.named_parameters()]
        self._bayes_names: List[str] = [n for n in all_names if self._is_selected(n, bayesian)]
        self._det_names: List[str] = [n for n in all_names if n not in set(self._bayes_names)]
        if not self._bayes_names:
            raise ValueError(
                f"bayesian={bayesian!r} selects none of the network's parameters "
                f"({', '.join(all_names[:6])}{'...' if len(all_names) > 6 else ''}); "
                "select at least one, or use bayesian='all'"
            )
        pre = f"{name}." if name else ""
        self._site_of = {p: pre + p for p in self._bayes_names}
        self._latent_site_of = {k: pre + k for k in self.likelihood.latent_supports()}
        self.obs_name = pre + "obs"
        self.plate_name = pre + "data"
        clash = set(self._site_of.values()) & (set(self._latent_site_of.values()) | {self.obs_name})
        if clash:
            raise ValueError(f"parameter names {sorted(clash)} clash with likelihood sites; rename them")
        self._prior_cache: Dict[Tuple, Dict[str, LatentSite]] = {}

    # ------------------------------------------------------------------ selection
    def _is_selected(self, pname: str, sel: Selector) -> bool:
        module = self._owners.get(pname)
        if sel is None:
            return not isinstance(module, _NORM_TYPES)
        if isinstance(sel, str):
            if sel == "all":
                return True
            if sel == "last":
                last = [n for n in self._owners][-1]
                return self._owners[pname] is self._owners[last]
            mod_prefix = pname.rsplit(".", 1)[0] if "." in pname else ""
            return fnmatch.fnmatchcase(pname, sel) or (mod_prefix != "" and fnmatch.fnmatchcase(mod_prefix, sel))
        if isinstance(sel, type) and issubclass(sel, nn.Module):
            return isinstance(module, sel)
        if isinstance(sel, nn.Module):
            return module is sel or any(module is m for m in sel.modules())
        if callable(sel):
            return bool(sel(pname, dict(self.net.named_parameters())[pname], module))
        if isinstance(sel, (list, tuple, set)):
            if len(sel) == 0:
                return False
            return any(self._is_selected(pname, s) for s in sel)
        raise TypeError(
            f"bayesian must be None, 'all', 'last', a name pattern, a module type or instance, "
            f"a callable or a list of these; got {type(sel).__name__}"
        )

    # ------------------------------------------------------------------ metadata
    @property
    def bayesian_parameters(self) -> List[str]:
        """Names of the network parameters that get a prior."""
        return list(self._bayes_names)

    @property
    def deterministic_parameters(self) -> List[str]:
        """Names of the network parameters kept as point estimates."""
        return list(self._det_names)

    @property
    def site_names(self) -> List[str]:
        """Pyro sample-site names of all latent variables, in model order."""
        return list(self._site_of.values()) + list(self._latent_site_of.values())

    @property
    def num_bayesian_parameters(self) -> int:
        return sum(p.numel() for n, p in self.net.named_parameters() if n in self._site_of)

    def parameter_site(self, param_name: str) -> str:
        return self._site_of[param_name]

    @property
    def device(self) -> torch.device:
        for p in self.net.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.net.parameters():
            return p.dtype
        return torch.get_default_dtype()

    def latent_sites(self, *, device=None, dtype=None) -> Dict[str, LatentSite]:
        """All latent variables with their priors, on ``device``/``dtype``
        (default: the network's). Cached per device and dtype."""
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        key = (str(device), dtype)
        if key not in self._prior_cache:
            params = dict(self.net.named_parameters())
            out: Dict[str, LatentSite] = {}
            for pname in self._bayes_names:
                p = params[pname]
                ref = torch.empty(p.shape, device=device, dtype=dtype)
                module = self._owners[pname]
                prior = self.prior.distribution(pname, ref, module)
                ls = self.prior.loc_scale(pname, ref, module)
                out[self._site_of[pname]] = LatentSite(
                    name=self._site_of[pname], shape=p.shape, support=prior.support,
                    prior=prior, param=pname, gaussian=ls,
                )
            lat_priors = self.likelihood.latent_priors(dtype=dtype, device=device)
            for short, site in self._latent_site_of.items():
                pr = lat_priors[short]
                out[site] = LatentSite(
                    name=site, shape=torch.Size(pr.event_shape), support=pr.support,
                    prior=pr, latent=short,
                )
            self._prior_cache[key] = out
        return self._prior_cache[key]

    def fresh_copy(self) -> "BayesianNetwork":
        """A deep copy with its own identity in Pyro's param store (what :meth:`fit`
        methods train, so the user's model and earlier posteriors stay untouched)."""
        import copy

        new = copy.deepcopy(self)
        new._uid = f"pyrobdl.{self.name or 'bnn'}.{next(_uid_counter)}"
        new._prior_cache = {}
        new.__dict__.pop("_chain_cache", None)
        new.__dict__.pop("_shapes_cache", None)
        return new

    def _apply(self, fn, *args, **kwargs):  # .to()/.cuda()/.double() invalidate cached priors
        self._prior_cache = {}
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ functional core
    def apply(self, params: Dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Run the network with the given values of its Bayesian parameters.

        Args:
            params: network-parameter name -> value. Values may carry the same
                leading batch shape ``B`` (e.g. posterior samples); the net then
                runs once per batch element in one vectorised pass.
            x: inputs ``(N, ...)``, shared by all batch elements.

        Returns:
            outputs of shape ``B + (N, k)``.
        """
        named = self._param_shapes()
        batch_shape = None
        for pname, v in params.items():
            pshape = named[pname]
            bs = v.shape[: v.dim() - len(pshape)]
            if v.shape[len(bs):] != pshape:
                raise ValueError(
                    f"value for {pname!r} has shape {tuple(v.shape)}, expected (..., {', '.join(map(str, pshape))})"
                )
            if batch_shape is None:
                batch_shape = bs
            elif bs != batch_shape:
                # broadcast: expand to the common batch shape
                batch_shape = torch.broadcast_shapes(batch_shape, bs)
        chain = self._chain() if x.dim() == 2 else None
        if chain is not None:
            B = math.prod(batch_shape) if batch_shape else 0
            flat = params if not batch_shape else {
                k: v.expand(batch_shape + named[k]).reshape((B,) + named[k]) for k, v in params.items()
            }
            out = _chain_forward(chain, flat, x, B)
            return out.reshape(batch_shape + out.shape[-2:]) if batch_shape else out
        if not batch_shape:
            return functional_call(self.net, params, (x,), strict=False)
        B = math.prod(batch_shape)
        if B == 1:  # one sample: a plain pass (2-D matmuls), no vmap
            single = {k: v.reshape(named[k]) for k, v in params.items()}
            out = functional_call(self.net, single, (x,), strict=False)
            return out.reshape(batch_shape + out.shape)
        flat = {
            k: v.expand(batch_shape + named[k]).reshape((B,) + named[k])
            for k, v in params.items()
        }

        def one(p):
            return functional_call(self.net, p, (x,), strict=False)

        out = vmap(one, in_dims=(0,), randomness="different")(flat)
        return out.reshape(batch_shape + out.shape[1:])

    def _chain(self) -> Optional["_Chain"]:
        """The network as a plain chain of :class:`~torch.nn.Linear` layers and elementwise
        activations, or ``None`` when it is anything else (see :func:`_chain_plan`). Such a
        chain runs batched over weight samples with ``baddbmm`` instead of ``vmap``; the
        structure is cached, the per-call checks (hooks, patched forwards) are not."""
        if "_chain_cache" not in self.__dict__:
            self.__dict__["_chain_cache"] = _chain_plan(self.net)
        plan = self.__dict__["_chain_cache"]
        if plan is None or not plan.still_plain():
            return None
        return plan

    def _param_shapes(self) -> Dict[str, torch.Size]:
        shapes = self.__dict__.get("_shapes_cache")
        if shapes is None:
            shapes = self.__dict__["_shapes_cache"] = {n: p.shape for n, p in self.net.named_parameters()}
        return shapes

    def split_values(self, values: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """Split site-name -> value into (network parameters, likelihood latents)."""
        params, lats = {}, {}
        for pname, site in self._site_of.items():
            params[pname] = values[site]
        for short, site in self._latent_site_of.items():
            lats[short] = values[site]
        return params, lats

    def log_prior(self, values: Dict[str, torch.Tensor]) -> torch.Tensor:
        """:math:`\\log p(\\theta) + \\log p(\\eta)` for site values with any leading batch shape."""
        sites = self.latent_sites(device=next(iter(values.values())).device)
        total = 0.0
        for name, site in sites.items():
            total = total + site.prior.log_prob(values[name])
        return total

    def log_likelihood(
        self,
        values: Dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        pointwise: bool = False,
        out: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Log-likelihood of targets ``y`` (already checked by
        :meth:`check_data`) under site values with leading batch shape ``B``.

        Returns shape ``B + (N,)`` if ``pointwise`` else ``B``.
        """
        params, lats = self.split_values(values)
        if out is None:
            out = self.apply(params, x)
        lp = self.likelihood.log_prob(out, y, lats)
        return lp if pointwise else lp.sum(-1)

    def check_data(self, x, y=None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Validate inputs and targets; return them as tensors on the network's
        device with targets shaped as the likelihood scores them."""
        x = check_inputs(x, "x")
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        if y is None:
            return x, None
        y_t = torch.as_tensor(y) if not isinstance(y, torch.Tensor) else y
        if y_t.dim() == 0:
            raise ValueError("y must have one row per input, got a scalar")
        check_same_length(x, y_t)
        was_training = self.net.training
        self.net.eval()  # the probe must not touch BatchNorm running statistics
        try:
            with torch.no_grad():
                named = dict(self.net.named_parameters())
                probe = self.apply({k: named[k].detach() for k in self._bayes_names}, x[:2].to(self.device))
        finally:
            self.net.train(was_training)
        self.likelihood.check_output(probe)
        y_t = self.likelihood.check_target(y_t, probe)
        if y_t.is_floating_point() and y_t.dtype != self.dtype:
            y_t = y_t.to(self.dtype)
        return x, y_t

    # ------------------------------------------------------------------ the Pyro model
    def forward(self, x: torch.Tensor, y: Optional[torch.Tensor] = None, *, num_data: Optional[int] = None):
        """The Pyro model. Returns the network output ``f_θ(x)``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        sites = self.latent_sites(device=x.device, dtype=x.dtype if x.is_floating_point() else None)
        params = {}
        for pname, site in self._site_of.items():
            params[pname] = _drop_data_dim(pyro.sample(site, sites[site].prior), sites[site].shape, site)
        for pname in self._det_names:
            params[pname] = pyro.param(f"{self._uid}${pname}", dict(self.net.named_parameters())[pname])
        lats = {
            short: _drop_data_dim(pyro.sample(site, sites[site].prior), sites[site].shape, site)
            for short, site in self._latent_site_of.items()
        }
        out = self.apply(params, x)
        self.likelihood.check_output(out)
        B = x.shape[0]
        if y is not None:
            check_same_length(x, y)
            y = self.likelihood.check_target(y, out)
            if y.is_floating_point() and y.dtype != out.dtype:
                y = y.to(out.dtype)
        N = B if num_data is None else check_positive_int(num_data, "num_data")
        if N < B:
            raise ValueError(f"num_data={N} is smaller than the batch ({B} rows); pass the full dataset size")
        with pyro.plate(self.plate_name, N, subsample_size=B, dim=-1):
            pyro.sample(self.obs_name, self.likelihood.dist(out, lats), obs=y)
        return out

    # ------------------------------------------------------------------ prediction
    def _bytes_per_row(self, x: torch.Tensor) -> int:
        """Activation bytes one input row costs for one weight sample (measured
        with forward hooks on a one-row pass)."""
        total = [0]

        def hook(_m, _i, o):
            if isinstance(o, torch.Tensor):
                total[0] += o.numel() * o.element_size()

        handles = [m.register_forward_hook(hook) for m in self.net.modules() if next(m.children(), None) is None]
        was_training = self.net.training
        self.net.eval()  # the probe must not touch BatchNorm running statistics
        try:
            with torch.no_grad():
                self.net(x[:1])
        finally:
            self.net.train(was_training)
            for h in handles:
                h.remove()
        return max(total[0], x[:1].numel() * x.element_size())

    def predict_from_samples(
        self,
        x: torch.Tensor,
        samples: Dict[str, torch.Tensor],
        *,
        chunk_size: Optional[int] = None,
        max_memory: Optional[int] = None,
    ) -> Prediction:
        """Push posterior samples through the network in batched, chunked passes.

        Args:
            x: inputs ``(N, ...)``.
            samples: site name -> values ``(S, *shape)`` for every latent site.
            chunk_size: samples per batched pass; default: about 20,000 rows
                (samples x inputs) per pass, one sample per plain pass when ``N``
                alone exceeds 5,000 rows, and never more than fit in ``max_memory``.
            max_memory: bound in bytes on the activations of one pass
                (default 512 MiB). Inputs are chunked too when one sample over
                all inputs exceeds it.

        Returns:
            the likelihood's prediction object.
        """
        params, lats = self.split_values(samples)
        S = next(iter(samples.values())).shape[0]
        N = x.shape[0]
        max_memory = DEFAULT_MAX_MEMORY if max_memory is None else check_positive_int(max_memory, "max_memory")
        per_row = self._bytes_per_row(x)
        chunk_given = chunk_size is not None
        if chunk_size is None:
            # Measured on the 1->50->50->1 net (benchmarks/bench_svi.py): batching samples pays
            # while a pass holds up to ~20k rows (S_chunk * N); beyond that a loop of plain 2-D
            # passes (chunk 1, no vmap) beats one large batched matmul.
            by_rows = TARGET_ROWS // N
            chunk_size = 1 if by_rows < 4 else by_rows
            chunk_size = max(1, min(S, chunk_size, max_memory // max(per_row * N, 1)))
        else:
            chunk_size = check_positive_int(chunk_size, "chunk_size")
        rows = N if per_row * N * chunk_size <= max_memory else max(1, max_memory // (per_row * chunk_size))
        chain = self._chain() if x.dim() == 2 else None
        if chain is not None:
            with torch.inference_mode():
                out = self._chain_predict(chain, params, x, S, chunk_size if chunk_given else None, max_memory, per_row)
            return self.likelihood.prediction(out, lats)
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.inference_mode():
                outs = []
                for s0 in range(0, S, chunk_size):
                    p_chunk = {k: v[s0 : s0 + chunk_size] for k, v in params.items()}
                    if rows >= N:
                        outs.append(self.apply(p_chunk, x))
                    else:
                        outs.append(torch.cat([self.apply(p_chunk, x[r : r + rows]) for r in range(0, N, rows)], -2))
                out = outs[0] if len(outs) == 1 else torch.cat(outs, 0)
        finally:
            self.net.train(was_training)
        return self.likelihood.prediction(out, lats)

    def _chain_predict(
        self, chain: "_Chain", params: Dict[str, torch.Tensor], x: torch.Tensor, S: int,
        chunk_size: Optional[int], max_memory: int, per_row: int,
    ) -> torch.Tensor:
        r"""Outputs ``(S, N, k)`` of a plain Linear/activation chain for ``S`` weight samples.

        Work is split into passes of ``chunk`` samples :math:`\times` ``rows`` inputs, each one
        ``baddbmm`` per layer writing into scratch buffers that are reused by every pass and
        into the preallocated result (no per-pass allocation, no concatenation). By default a
        pass holds about ``CHAIN_PASS_ROWS`` rows (samples :math:`\times` inputs), which keeps a
        hidden activation of a 50-unit layer near the CPU's L2/L3 cache, and never more than
        ``max_memory`` bytes of activations (``per_row`` bytes per row and sample). A given
        ``chunk_size`` fixes the samples per pass; inputs are then chunked only to respect
        ``max_memory``.
        """
        N = x.shape[0]
        budget_rows = max(1, max_memory // max(per_row, 1))  # sample-rows allowed in one pass
        if chunk_size is None:
            target = min(CHAIN_PASS_ROWS, budget_rows)
            chunk = max(1, min(S, target // N))
            rows = min(N, max(1, target // chunk))
        else:
            chunk = min(S, chunk_size)
            rows = min(N, max(1, budget_rows // chunk))
        last = [st for st in chain.steps if st[0] == "linear"][-1][1]
        k = last.out_features
        out = torch.empty((S, N, k), dtype=x.dtype, device=x.device)
        widths = [st[1].out_features for st in chain.steps if st[0] == "linear"][:-1]
        buffers = [torch.empty(chunk * rows * w, dtype=x.dtype, device=x.device) for w in widths]
        for s0 in range(0, S, chunk):
            s1 = min(S, s0 + chunk)
            p = {n: v[s0:s1] for n, v in params.items()}
            for r0 in range(0, N, rows):
                r1 = min(N, r0 + rows)
                _chain_forward(chain, p, x[r0:r1], s1 - s0, out=out[s0:s1, r0:r1], buffers=buffers)
        return out

    def extra_repr(self) -> str:
        return (
            f"prior={self.prior!r}, likelihood={self.likelihood!r}, "
            f"bayesian={len(self._bayes_names)} tensors / {self.num_bayesian_parameters} weights"
        )

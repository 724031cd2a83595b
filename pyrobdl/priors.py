r"""Priors over network weights.

A prior maps each Bayesian parameter of the network (with its owning module)
to a distribution with ``event_shape == param.shape``. Gaussian priors also
expose their ``loc``/``scale`` so that inference can use closed-form KL
divergences (lower-variance ELBO gradients).

- :class:`Normal` — i.i.d. :math:`\mathcal N(\mu, s^2)` on every weight.
- :class:`FanInNormal` — layer-wise :math:`\mathcal N(0, g^2/\text{fan\_in})` on
  weights (Neal, 1996; the scaling that keeps the prior over functions stable
  as width grows), a separate scale for biases.
- :class:`PerSite` — a default prior with overrides by parameter name (glob
  pattern) or module type.
- :class:`Normal` with per-weight tensors, e.g. :func:`moped` — :math:`\mathcal N(w_0, (\delta|w_0|)^2)`
  centred on pretrained weights (Krishnan et al., 2020).
- :class:`ScaleMixture` — :math:`\pi\,\mathcal N(0,\sigma_1^2) + (1-\pi)\,\mathcal N(0,\sigma_2^2)` per
  weight (Blundell et al., 2015).
- :class:`Laplace` and :class:`StudentT` — heavier-tailed i.i.d. priors.

Gaussian priors (:class:`Normal`, :class:`FanInNormal`) with one loc and scale per tensor return
them from :meth:`Prior.loc_scale`, and inference scores them in closed form; every other prior
(per-weight tensors, mixtures, Laplace, Student-t, your own) returns ``None`` there and is scored
through :meth:`Prior.distribution` (in SVI a Monte Carlo estimate of the prior term of the KL).
Weights need a prior on the real line: a distribution whose support is not the real line and
cannot be mapped onto it (a ``MixtureSameFamily``, a discrete distribution) or whose shape is not
the parameter's is refused with a ``ValueError`` naming the parameter (:func:`check_weight_prior`).

Every prior class is registered by name (:func:`register_prior`, as
:func:`pyrobdl.likelihoods.register_likelihood` for likelihoods), so a saved posterior
records its prior as plain data (:meth:`Prior.to_config`) and :func:`prior_from_config`
rebuilds it -- a user's own prior too, once its class is registered.

Example::

    prior = priors.PerSite(
        default=priors.FanInNormal(gain=1.0),
        overrides={"2.*": priors.Normal(0.0, 0.1), torch.nn.Conv2d: priors.Normal(0.0, 0.5)},
    )
    model = BayesianNetwork(net, prior=prior)

References: R. M. Neal, *Bayesian Learning for Neural Networks* (1996);
C. Blundell et al., *Weight Uncertainty in Neural Networks* (ICML 2015);
R. Krishnan, M. Subedar & O. Tickoo, *Specifying Weight Priors in Bayesian Deep Neural Networks
with Empirical Bayes* (AAAI 2020).
"""
from __future__ import annotations

import fnmatch
import functools
import math
import numbers
from typing import Callable, Dict, Mapping, Optional, Tuple, Type, Union

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import nn
from torch.distributions import biject_to, constraints

from ._util import check_positive_float

__all__ = [
    "Prior",
    "Normal",
    "FanInNormal",
    "PerSite",
    "ScaleMixture",
    "ScaleMixtureNormal",
    "Laplace",
    "StudentT",
    "moped",
    "fan_in",
    "check_weight_prior",
    "register_prior",
    "prior_from_config",
    "available_priors",
]

_PRIORS: Dict[str, Type["Prior"]] = {}


def register_prior(cls: Type["Prior"]) -> Type["Prior"]:
    """Class decorator: make a :class:`Prior` subclass loadable from its config
    (:func:`prior_from_config`, :func:`pyrobdl.load`) under its class name, which its
    :meth:`~Prior.to_config` writes as ``"type"``.

    Example: see :class:`Prior`.
    """
    if not (isinstance(cls, type) and issubclass(cls, Prior)):
        raise TypeError(f"register_prior decorates a pyrobdl.priors.Prior subclass, got {cls!r}")
    _PRIORS[cls.__name__] = cls
    return cls


def available_priors() -> list:
    """Names of the registered prior classes.

    Example:
        >>> {"Normal", "FanInNormal", "PerSite"} <= set(available_priors())
        True
    """
    return sorted(_PRIORS)


def prior_from_config(cfg: Mapping) -> "Prior":
    """Rebuild a prior from :meth:`Prior.to_config`'s plain data (or return a
    :class:`Prior` unchanged).

    Raises:
        ValueError: the config names no registered prior class.

    Example:
        >>> prior_from_config({"type": "FanInNormal", "gain": 3.0, "bias_scale": 1.0})
        FanInNormal(gain=3.0, bias_scale=1.0)
    """
    if isinstance(cfg, Prior):
        return cfg
    if not isinstance(cfg, Mapping):
        raise TypeError(f"a prior config is a mapping with a 'type' key, got {type(cfg).__name__}")
    t = cfg.get("type")
    if t not in _PRIORS:
        raise ValueError(
            f"unknown prior type {t!r}; known: {', '.join(available_priors())}. Either register the class "
            f"{t} with @pyrobdl.priors.register_prior (and import it) before loading, or pass the model: "
            f"pyrobdl.load(path, model=BayesianNetwork(net, prior={t}(...), likelihood=...))"
        )
    return _PRIORS[t].from_config({k: v for k, v in cfg.items() if k != "type"})


def fan_in(module: Optional[nn.Module], param: torch.Tensor) -> int:
    r"""Number of inputs feeding one output unit of ``module``.

    ``in_features`` for :class:`~torch.nn.Linear`,
    :math:`\text{in\_channels}\cdot\prod_k \text{kernel\_size}_k` for convolutions
    (per group), the product of the trailing dimensions for other parameters with
    at least two dimensions, and 1 for other 0/1-D parameters.

    Example:
        >>> import torch.nn as nn
        >>> lin = nn.Linear(50, 10)
        >>> fan_in(lin, lin.weight), fan_in(lin, lin.bias)
        (50, 50)
        >>> conv = nn.Conv2d(3, 8, kernel_size=3)
        >>> fan_in(conv, conv.weight)
        27
    """
    if isinstance(module, nn.Linear) or isinstance(module, nn.Bilinear):
        return int(param.shape[-1]) if param.dim() > 1 else int(module.weight.shape[-1])
    if isinstance(module, nn.modules.conv._ConvNd):
        w = module.weight
        transposed = getattr(module, "transposed", False)
        ch = w.shape[0] if transposed else w.shape[1]
        return int(ch * math.prod(w.shape[2:]))
    if param.dim() >= 2:
        return int(math.prod(param.shape[1:]))
    return 1


def _short(v, depth: int = 0) -> str:
    """A short repr of a prior argument: tensors by shape, mappings and callables by name."""
    if isinstance(v, torch.Tensor):
        return f"tensor(shape={list(v.shape)})" if v.dim() else repr(float(v))
    if isinstance(v, Mapping):
        items = list(v.items())
        inner = ", ".join(f"{k!r}: {_short(x, depth + 1)}" for k, x in items[:4])
        return "{" + inner + (f", ... ({len(items)} entries)" if len(items) > 4 else "") + "}"
    if isinstance(v, (list, tuple)):
        return repr(type(v)(_short(x, depth + 1) for x in v)) if depth < 2 else f"[{len(v)} items]"
    if callable(v) and not isinstance(v, (Prior, type)):
        return getattr(v, "__qualname__", None) or getattr(v, "__name__", None) or type(v).__name__
    return repr(v)


def _unwrap_support(support: constraints.Constraint) -> constraints.Constraint:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


def check_weight_prior(
    name: str, param: torch.Tensor, d, *, prior: Optional["Prior"] = None, real_only: bool = False
) -> dist.TorchDistribution:
    r"""Check that ``d`` can be the prior of the network parameter ``name`` and return it.

    A weight prior is a distribution with ``batch_shape == ()`` and ``event_shape ==
    param.shape`` whose support is the real line (``constraints.real``) -- or, unless
    ``real_only``, a support that :func:`torch.distributions.biject_to` maps onto the real
    line (as a positive support: usable by MCMC, but the variational guides start from the
    network's own, possibly negative, weights). :meth:`Prior.distribution` of every
    subclass runs this check (``real_only=False``), so a prior that inference could not
    use fails when the model's priors are first built, with a message naming the parameter.

    Raises:
        TypeError: ``d`` is not a distribution.
        ValueError: wrong shape, or a support that is not (and cannot be mapped onto) the
            real line.

    Example:
        >>> import torch
        >>> w = torch.empty(2, 3)
        >>> check_weight_prior("0.weight", w, dist.Normal(0.0, 1.0).expand((2, 3)).to_event(2)).event_shape
        torch.Size([2, 3])
        >>> check_weight_prior("0.weight", w, dist.HalfNormal(1.0).expand((2, 3)).to_event(2), real_only=True)
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: the prior of parameter '0.weight' (HalfNormal, support ...) is not on the real line; weights need a prior on the real line ...
    """
    who = f" from {type(prior).__name__}.distribution()" if prior is not None else ""
    if not isinstance(d, torch.distributions.Distribution):
        raise TypeError(f"the prior of parameter {name!r}{who} must be a torch/Pyro distribution, got {type(d).__name__}")
    shape = tuple(param.shape)
    if tuple(d.batch_shape) or tuple(d.event_shape) != shape:
        raise ValueError(
            f"the prior of parameter {name!r}{who} has batch shape {tuple(d.batch_shape)} and event shape "
            f"{tuple(d.event_shape)}; a weight prior needs event_shape == the parameter's shape {shape} and no "
            f"batch shape, e.g. dist.Normal(0.0, 1.0).expand({shape}).to_event({len(shape)})"
        )
    support = _unwrap_support(d.support)
    if isinstance(support, type(constraints.real)):
        return d
    base = d
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    what = f"the prior of parameter {name!r}{who} ({type(base).__name__}, support {support})"
    hint = (
        "weights need a prior on the real line (support constraints.real), e.g. priors.Normal, priors.Laplace, "
        "priors.StudentT or priors.ScaleMixture"
    )
    if real_only:
        raise ValueError(f"{what} is not on the real line; {hint}")
    try:
        biject_to(d.support)
    except NotImplementedError:
        mix = " (for a mixture of zero-mean Gaussians use priors.ScaleMixture, whose support is real)" if isinstance(
            base, torch.distributions.MixtureSameFamily
        ) else ""
        raise ValueError(f"{what} is not the real line and cannot be mapped onto it; {hint}{mix}") from None
    return d


class Prior:
    r"""Base class of priors over the network's weights.

    A prior gives every Bayesian parameter ``name`` (with a tensor ``param`` of its shape,
    dtype and device, and its owning ``module``) a distribution over the real line with
    ``event_shape == param.shape``. Subclasses implement one of:

    * :meth:`loc_scale` -- ``(loc, scale)`` numbers of an i.i.d. Gaussian prior
      :math:`\mathcal N(\text{loc}, \text{scale}^2)` for the parameter (or ``None`` where it
      is not one); the default :meth:`distribution` builds the Gaussian, and inference scores
      such parameters in closed form (the exact Gaussian KL in SVI);
    * :meth:`distribution` -- any prior (its :meth:`loc_scale` stays ``None``, the default);
      SVI then estimates its part of the KL by Monte Carlo.

    and, to be saved as data with a posterior, :meth:`to_config` (plus :meth:`from_config` if
    the constructor does not take the config's entries as keyword arguments) and
    :func:`register_prior`. Without them a posterior still saves, and
    ``pyrobdl.load(path, model=BayesianNetwork(net, prior=MyPrior(), ...))`` loads it. Every
    subclass's :meth:`distribution` result is checked by :func:`check_weight_prior`.

    Example:
        A Gaussian prior whose scale depends on the parameter's name:

        >>> import torch.nn as nn
        >>> @register_prior
        ... class BiasWide(Prior):
        ...     def loc_scale(self, name, param, module):
        ...         return 0.0, (10.0 if name.endswith("bias") else 1.0)
        ...     def to_config(self):
        ...         return {"type": "BiasWide"}
        >>> lin = nn.Linear(3, 2)
        >>> BiasWide().distribution("0.bias", lin.bias, lin).base_dist.scale
        tensor([10., 10.])
        >>> prior_from_config(BiasWide().to_config())     # registered: loadable
        BiasWide()

        Any distribution, without ``to_config`` (it still prints, and a posterior with it still
        saves; load it with ``model=``):

        >>> class Cauchy(Prior):
        ...     def __init__(self, scale=1.0):
        ...         self.scale = scale
        ...     def distribution(self, name, param, module):
        ...         return dist.Cauchy(torch.zeros((), dtype=param.dtype), self.scale).expand(param.shape).to_event(param.dim())
        >>> Cauchy(0.5)
        Cauchy(scale=0.5)
        >>> Cauchy().distribution("0.weight", lin.weight, lin).event_shape
        torch.Size([2, 3])
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__.get("distribution")
        if fn is None or getattr(fn, "_pyrobdl_checked", False):
            return

        @functools.wraps(fn)
        def distribution(self, name, param, module):
            return check_weight_prior(name, param, fn(self, name, param, module), prior=self)

        distribution._pyrobdl_checked = True
        cls.distribution = distribution

    def loc_scale(
        self, name: str, param: torch.Tensor, module: Optional[nn.Module]
    ) -> Optional[Tuple[float, float]]:
        """``(loc, scale)`` numbers of an i.i.d. Gaussian prior for this parameter, or
        ``None`` (the default) if the prior is not one."""
        return None

    def distribution(
        self, name: str, param: torch.Tensor, module: Optional[nn.Module]
    ) -> dist.TorchDistribution:
        """The prior of parameter ``name``, with ``event_shape == param.shape``,
        on ``param``'s device and dtype."""
        ls = self.loc_scale(name, param, module)
        if ls is None:
            raise NotImplementedError(
                f"{type(self).__name__} must implement loc_scale(name, param, module) -> (loc, scale) for a Gaussian "
                "prior, or distribution(name, param, module) -> a distribution with event_shape == param.shape"
            )
        loc, scale = ls
        loc_t = torch.full((), float(loc), dtype=param.dtype, device=param.device)
        scale_t = torch.full((), float(scale), dtype=param.dtype, device=param.device)
        return dist.Normal(loc_t, scale_t).expand(param.shape).to_event(param.dim())

    def to_config(self) -> dict:
        """Plain-data description: ``{"type": class name, **constructor arguments}`` (numbers,
        strings, lists, dicts and tensors; for :meth:`Posterior.save` and :func:`prior_from_config`)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement to_config() -> {{'type': '{type(self).__name__}', ...}}, so it "
            "cannot be stored as data; implement it and decorate the class with @pyrobdl.priors.register_prior, or "
            f"load a saved posterior with pyrobdl.load(path, model=BayesianNetwork(net, prior={type(self).__name__}(...), ...))"
        )

    @classmethod
    def from_config(cls, cfg: Mapping) -> "Prior":
        """The prior described by ``cfg`` (:meth:`to_config` without ``"type"``); the default
        passes the entries as keyword arguments to the constructor."""
        return cls(**cfg)

    def __repr__(self) -> str:
        try:
            items = [(k, v) for k, v in self.to_config().items() if k != "type"]
        except Exception:  # no (or no savable) to_config: show the public attributes
            items = [(k, v) for k, v in vars(self).items() if not k.startswith("_")]
        return f"{type(self).__name__}({', '.join(f'{k}={_short(v)}' for k, v in items)})"


#: a prior argument: a number, a tensor broadcastable to every parameter it is used for, a
#: mapping parameter name -> number or tensor, or a callable ``(name, param, module) -> either``
ParamValue = Union[float, torch.Tensor, Mapping[str, Union[float, torch.Tensor]], Callable]


def _check_value(v, what: str, positive: bool):
    """A prior argument as given by the user: a float, a tensor (0-d ones become floats), a
    dict of those, or a callable."""
    if isinstance(v, bool):
        raise TypeError(f"{what} must be a number, a tensor, a mapping name -> tensor or a callable, got {v!r}")
    if isinstance(v, numbers.Real):
        return check_positive_float(v, what) if positive else _finite_float(v, what)
    if isinstance(v, torch.Tensor):
        if not v.is_floating_point() and v.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{what} must be a floating tensor, got dtype {v.dtype}")
        v = v.detach()
        if v.dim() == 0:
            return _check_value(float(v), what, positive)
        _check_tensor(v, what, positive)
        return v.to(torch.get_default_dtype()) if not v.is_floating_point() else v
    if isinstance(v, Mapping):
        out = {}
        for k, x in v.items():
            if not isinstance(k, str):
                raise TypeError(f"the keys of a {what} mapping are parameter names (strings), got {k!r}")
            out[k] = _check_value(x, f"{what}[{k!r}]", positive)
        return out
    if callable(v):
        return v
    raise TypeError(
        f"{what} must be a number, a tensor, a mapping name -> tensor or a callable (name, param, module) -> "
        f"tensor, got {type(v).__name__}"
    )


def _finite_float(v, what: str) -> float:
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{what} must be finite, got {v}")
    return v


def _check_tensor(t: torch.Tensor, what: str, positive: bool) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} holds NaN or infinite values")
    if positive and not bool((t > 0).all()):
        raise ValueError(f"{what} must be > 0 everywhere (min {float(t.min()):.3g})")


def _resolve(spec, what: str, name: str, param: torch.Tensor, module, positive: bool):
    """The value of a prior argument for parameter ``name``: a float, or a tensor of
    ``param``'s dtype and device broadcastable to its shape."""
    v = spec
    if isinstance(v, Mapping):
        if name not in v:
            keys = list(v)
            raise ValueError(
                f"the {what} mapping has no entry for parameter {name!r} (it has {', '.join(map(repr, keys[:6]))}"
                f"{', ...' if len(keys) > 6 else ''}); give one per Bayesian parameter, named as in "
                "net.named_parameters() (priors.moped(net) does)"
            )
        v = v[name]
    elif callable(v):
        got = v(name, param, module)
        if not isinstance(got, (numbers.Real, torch.Tensor)) or isinstance(got, bool):
            raise TypeError(f"{what}({name!r}, param, module) must return a number or a tensor, got {type(got).__name__}")
        v = _check_value(got, f"{what}({name!r}, ...)", positive)
    if isinstance(v, torch.Tensor):
        shape = tuple(param.shape)
        ok = v.dim() <= len(shape) and all(a in (1, b) for a, b in zip(v.shape[::-1], shape[::-1]))
        if not ok:
            raise ValueError(
                f"{what} for parameter {name!r} has shape {tuple(v.shape)}, which does not match the parameter's "
                f"shape {shape}"
            )
        return v.to(device=param.device, dtype=param.dtype)
    return v


@register_prior
class Normal(Prior):
    r"""Gaussian prior :math:`w_i \sim \mathcal N(m_i, s_i^2)`, independent over the weights.

    With numbers for ``loc`` and ``scale`` it is the same :math:`\mathcal N(m, s^2)` on every
    weight (i.i.d.; scored in closed form by inference). Either may also be given per weight:

    * a mapping parameter name -> tensor (or number), e.g. ``{"0.weight": w0, ...}`` with the
      names of ``net.named_parameters()``; a tensor must be broadcastable to its parameter's
      shape (a parameter missing from the mapping, or a tensor of the wrong shape, is a
      ``ValueError`` naming the parameter when the model's priors are built);
    * a tensor, used for every parameter (so it must broadcast to each one's shape);
    * a callable ``(name, param, module) -> tensor or number``; ``param`` is a placeholder of
      the parameter's shape, dtype and device (not its values: read those from ``module``).

    :meth:`around` (also :func:`moped`) builds the MOPED prior centred on a pretrained network:
    :math:`w_i \sim \mathcal N(w_{0,i}, \max(\delta|w_{0,i}|, s_{\min})^2)`.

    A per-weight Gaussian is not i.i.d., so :meth:`loc_scale` returns ``None`` for a parameter
    whose loc or scale is a tensor; inference still recognises it as a Gaussian with independent
    coordinates (:mod:`pyrobdl.inference.flat`), so SVI scores its KL in closed form with the
    per-weight means and scales, and MCMC scores it exactly. Tensors
    are saved with the posterior (as plain tensors, read back with ``weights_only=True``); a
    callable cannot be saved as data (a posterior with it still saves; load it with ``model=``).

    Args:
        loc: prior mean :math:`m` (see above for the forms it takes).
        scale: prior standard deviation :math:`s` (> 0 everywhere).

    Example:
        >>> import torch, torch.nn as nn
        >>> lin = nn.Linear(50, 10)
        >>> prior = Normal(0.0, 0.5)
        >>> prior.loc_scale("0.weight", lin.weight, lin)
        (0.0, 0.5)
        >>> prior.distribution("0.weight", lin.weight, lin).event_shape
        torch.Size([10, 50])

        Per-weight means and scales, given by parameter name:

        >>> w0 = {"weight": torch.ones(10, 50), "bias": torch.zeros(10)}
        >>> per = Normal(loc=w0, scale=0.1)
        >>> per.loc_scale("weight", lin.weight, lin) is None      # not i.i.d.: no closed form
        True
        >>> float(per.distribution("weight", lin.weight, lin).mean.mean())
        1.0
        >>> per
        Normal(loc={'weight': tensor(shape=[10, 50]), 'bias': tensor(shape=[10])}, scale=0.1)

    References:
        * Blundell, Cornebise, Kavukcuoglu & Wierstra (2015). *Weight Uncertainty
          in Neural Networks*. ICML.
        * Krishnan, Subedar & Tickoo (2020). *Specifying Weight Priors in Bayesian Deep
          Neural Networks with Empirical Bayes*. AAAI.
    """

    def __init__(self, loc: ParamValue = 0.0, scale: ParamValue = 1.0):
        self.loc = _check_value(loc, "loc", positive=False)
        self.scale = _check_value(scale, "scale", positive=True)

    @classmethod
    def around(cls, net: nn.Module, delta: float = 0.1, *, min_scale: float = 1e-3) -> "Normal":
        r"""The MOPED prior (Krishnan et al., 2020): a Gaussian centred on the current
        (pretrained) weights of ``net`` with a scale proportional to their magnitude,

        .. math:: w_i \sim \mathcal N\big(w_{0,i},\ \max(\delta\,|w_{0,i}|,\ s_{\min})^2\big).

        The floor :math:`s_{\min}` (``min_scale``, default ``1e-3``) keeps weights that are
        (near) zero from getting a (near) zero prior scale, which would pin them there and make
        the posterior geometry arbitrarily stiff for MCMC.

        Args:
            net: the pretrained network (or a :class:`~pyrobdl.BayesianNetwork`, whose ``net``
                is used); its parameters are copied, so later training does not move the prior.
            delta: :math:`\delta > 0`, the relative prior scale.
            min_scale: :math:`s_{\min} > 0`.

        Example:
            >>> import torch, torch.nn as nn
            >>> lin = nn.Linear(2, 1)
            >>> with torch.no_grad():
            ...     _ = lin.weight.copy_(torch.tensor([[2.0, 0.0]]))
            >>> prior = Normal.around(lin, delta=0.1)
            >>> d = prior.distribution("weight", lin.weight, lin)
            >>> d.mean, d.stddev          # scale 0.1 * |2| = 0.2, and the floor 1e-3 at 0
            (tensor([[2., 0.]]), tensor([[0.2000, 0.0010]]))

        References:
            Krishnan, Subedar & Tickoo (2020). *Specifying Weight Priors in Bayesian Deep
            Neural Networks with Empirical Bayes*. AAAI.
        """
        if hasattr(net, "bayesian_parameters") and isinstance(getattr(net, "net", None), nn.Module):
            net = net.net  # a BayesianNetwork: its parameters are named after the wrapped net's
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        delta = check_positive_float(delta, "delta")
        min_scale = check_positive_float(min_scale, "min_scale")
        loc, scale = {}, {}
        for name, p in net.named_parameters():
            w = p.detach().clone()
            if not bool(torch.isfinite(w).all()):
                raise ValueError(f"parameter {name!r} of the pretrained network holds NaN or infinite values")
            loc[name] = w
            scale[name] = (delta * w.abs()).clamp_min(min_scale)
        if not loc:
            raise ValueError("the network has no parameters to centre a prior on")
        return cls(loc=loc, scale=scale)

    def _values(self, name, param, module):
        loc = _resolve(self.loc, "loc", name, param, module, positive=False)
        scale = _resolve(self.scale, "scale", name, param, module, positive=True)
        return loc, scale

    def loc_scale(self, name, param, module):
        loc, scale = self._values(name, param, module)
        if isinstance(loc, torch.Tensor) or isinstance(scale, torch.Tensor):
            return None  # per-weight: not i.i.d., scored through distribution()
        return loc, scale

    def distribution(self, name, param, module):
        loc, scale = self._values(name, param, module)
        if not isinstance(loc, torch.Tensor) and not isinstance(scale, torch.Tensor):
            return Prior.distribution(self, name, param, module)
        loc_t = torch.as_tensor(loc, dtype=param.dtype, device=param.device)
        scale_t = torch.as_tensor(scale, dtype=param.dtype, device=param.device)
        loc_t, scale_t = torch.broadcast_tensors(loc_t.expand(param.shape), scale_t.expand(param.shape))
        return dist.Normal(loc_t, scale_t).to_event(param.dim())

    def to_config(self) -> dict:
        cfg = {"type": "Normal"}
        for what in ("loc", "scale"):
            v = getattr(self, what)
            if callable(v) and not isinstance(v, (torch.Tensor, Mapping)):
                raise NotImplementedError(
                    f"a Normal prior with a callable {what} cannot be stored as data; give a mapping parameter name "
                    "-> tensor instead (priors.moped(net) gives one), or load a saved posterior with "
                    "pyrobdl.load(path, model=BayesianNetwork(net, prior=..., ...))"
                )
            if isinstance(v, torch.Tensor):
                v = v.detach().cpu()
            elif isinstance(v, Mapping):
                v = {k: (x.detach().cpu() if isinstance(x, torch.Tensor) else x) for k, x in v.items()}
            cfg[what] = v
        return cfg


def moped(net: nn.Module, delta: float = 0.1, *, min_scale: float = 1e-3) -> Normal:
    r"""The MOPED prior centred on ``net``'s (pretrained) weights: :meth:`Normal.around`,

    .. math:: w_i \sim \mathcal N\big(w_{0,i},\ \max(\delta\,|w_{0,i}|,\ s_{\min})^2\big).

    Example:
        >>> import torch.nn as nn
        >>> pretrained = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> prior = moped(pretrained, delta=0.1)
        >>> sorted(prior.loc)
        ['0.bias', '0.weight', '2.bias', '2.weight']

        then ``BayesianNetwork(pretrained, prior=prior)``; the posterior starts from the network's
        own weights (a seeded fit re-draws them first: leave ``seed`` unset to start at the
        pretrained weights).

    References:
        Krishnan, Subedar & Tickoo (2020). *Specifying Weight Priors in Bayesian Deep
        Neural Networks with Empirical Bayes*. AAAI.
    """
    return Normal.around(net, delta, min_scale=min_scale)


@register_prior
class FanInNormal(Prior):
    r"""Layer-wise fan-in-scaled Gaussian prior.

    .. math::

        W_{ij} \sim \mathcal N\!\left(0, \frac{g^2}{\text{fan\_in}}\right),\qquad
        b_i \sim \mathcal N(0, s_b^2)

    where fan_in is the number of inputs to a unit (``in_features`` for
    :class:`~torch.nn.Linear`, ``in_channels * prod(kernel_size)`` for convolutions).
    With :math:`g = 1` the prior variance of each pre-activation stays of order one
    whatever the width (Neal, 1996).

    Args:
        gain: :math:`g`.
        bias_scale: :math:`s_b`, the prior std of biases and other 1-D parameters.

    Example:
        >>> import torch.nn as nn
        >>> lin = nn.Linear(50, 10)
        >>> prior = FanInNormal(gain=1.0, bias_scale=1.0)
        >>> loc, scale = prior.loc_scale("0.weight", lin.weight, lin)
        >>> round(scale, 4)  # 1 / sqrt(50)
        0.1414
        >>> prior.loc_scale("0.bias", lin.bias, lin)
        (0.0, 1.0)

    References:
        Neal (1996). *Bayesian Learning for Neural Networks*. Springer.
    """

    def __init__(self, gain: float = 1.0, bias_scale: float = 1.0):
        self.gain = check_positive_float(gain, "gain")
        self.bias_scale = check_positive_float(bias_scale, "bias_scale")

    def loc_scale(self, name, param, module):
        if param.dim() < 2:
            return 0.0, self.bias_scale
        return 0.0, self.gain / math.sqrt(fan_in(module, param))

    def to_config(self) -> dict:
        return {"type": "FanInNormal", "gain": self.gain, "bias_scale": self.bias_scale}


Key = Union[str, Type[nn.Module]]


@register_prior
class PerSite(Prior):
    """A default prior with per-site overrides.

    Args:
        default: the prior for parameters that match no override.
        overrides: mapping from a parameter-name glob pattern (``"2.weight"``,
            ``"head.*"``) or a module type (``nn.Conv2d``) to a :class:`Prior`.
            The first match in insertion order wins.

    Example:
        >>> import torch.nn as nn
        >>> prior = PerSite(
        ...     default=Normal(0.0, 1.0),
        ...     overrides={"2.*": Normal(0.0, 0.1), nn.Conv2d: Normal(0.0, 0.5)},
        ... )
        >>> lin, conv = nn.Linear(4, 4), nn.Conv2d(1, 2, 3)
        >>> prior.select("2.weight", lin), prior.select("0.weight", lin), prior.select("0.weight", conv)
        (Normal(loc=0.0, scale=0.1), Normal(loc=0.0, scale=1.0), Normal(loc=0.0, scale=0.5))
    """

    def __init__(self, default: Optional[Prior] = None, overrides: Optional[Mapping[Key, Prior]] = None):
        self.default = default if default is not None else Normal()
        self.overrides: Dict[Key, Prior] = dict(overrides or {})
        for k, v in self.overrides.items():
            if not isinstance(v, Prior):
                raise TypeError(f"override for {k!r} must be a pyrobdl.priors.Prior, got {type(v).__name__}")
            if not (isinstance(k, str) or (isinstance(k, type) and issubclass(k, nn.Module))):
                raise TypeError(f"override keys must be name patterns or nn.Module types, got {k!r}")
        if not isinstance(self.default, Prior):
            raise TypeError(f"default must be a pyrobdl.priors.Prior, got {type(self.default).__name__}")

    def select(self, name: str, module: Optional[nn.Module]) -> Prior:
        for key, prior in self.overrides.items():
            if isinstance(key, str):
                if fnmatch.fnmatchcase(name, key):
                    return prior
            elif module is not None and isinstance(module, key):
                return prior
        return self.default

    def loc_scale(self, name, param, module):
        return self.select(name, module).loc_scale(name, param, module)

    def distribution(self, name, param, module):
        return self.select(name, module).distribution(name, param, module)

    def __repr__(self) -> str:
        over = ", ".join(f"{repr(k) if isinstance(k, str) else k.__name__}: {v!r}" for k, v in self.overrides.items())
        return f"PerSite(default={self.default!r}, overrides={{{over}}})"

    def to_config(self) -> dict:
        over = {}
        for k, v in self.overrides.items():
            if not isinstance(k, str):
                raise ValueError(
                    "a PerSite prior keyed by module type cannot be saved; key it by name pattern instead"
                )
            over[k] = v.to_config()
        return {"type": "PerSite", "default": self.default.to_config(), "overrides": over}

    @classmethod
    def from_config(cls, cfg: Mapping) -> "PerSite":
        return cls(
            prior_from_config(cfg["default"]),
            {k: prior_from_config(v) for k, v in cfg.get("overrides", {}).items()},
        )


# ----------------------------------------------------------------------------- scale mixture
class ScaleMixtureNormal(TorchDistribution):
    r"""The two-component zero-mean Gaussian scale mixture, element-wise:

    .. math:: p(w) = \pi\,\mathcal N(w; 0, \sigma_1^2) + (1-\pi)\,\mathcal N(w; 0, \sigma_2^2),

    with ``log_prob`` computed stably by ``logsumexp`` of the two weighted log-densities. Its
    support is the real line (``constraints.real``), so Pyro's autoguides, pyrobdl's flat
    layout and MCMC use it without a transform (unlike a ``MixtureSameFamily``, whose support
    torch cannot transform). Use ``.expand(shape).to_event(len(shape))`` for a weight tensor.

    Args:
        pi: mixture weight :math:`\pi\in(0, 1)` of the first component.
        sigma1, sigma2: the components' standard deviations (> 0).

    Example:
        >>> import math, torch
        >>> d = ScaleMixtureNormal(0.5, 1.0, 0.1)
        >>> w = torch.tensor(0.3)
        >>> ref = math.log(0.5 * math.exp(-0.045) / math.sqrt(2 * math.pi) + 0.5 * math.exp(-4.5) / (0.1 * math.sqrt(2 * math.pi)))
        >>> abs(float(d.log_prob(w)) - ref) < 1e-6
        True
        >>> d.expand((3, 2)).to_event(2).sample((5,)).shape
        torch.Size([5, 3, 2])

    References:
        Blundell, Cornebise, Kavukcuoglu & Wierstra (2015). *Weight Uncertainty in Neural
        Networks*. ICML.
    """

    arg_constraints = {
        "pi": constraints.unit_interval,
        "sigma1": constraints.positive,
        "sigma2": constraints.positive,
    }
    support = constraints.real
    has_rsample = False

    def __init__(self, pi, sigma1, sigma2, validate_args=None):
        self.pi, self.sigma1, self.sigma2 = torch.distributions.utils.broadcast_all(pi, sigma1, sigma2)
        super().__init__(self.pi.shape, torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ScaleMixtureNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        new.pi = self.pi.expand(batch_shape)
        new.sigma1 = self.sigma1.expand(batch_shape)
        new.sigma2 = self.sigma2.expand(batch_shape)
        super(ScaleMixtureNormal, new).__init__(batch_shape, torch.Size(), validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self):
        return torch.zeros_like(self.pi)

    @property
    def variance(self):
        return self.pi * self.sigma1.pow(2) + (1 - self.pi) * self.sigma2.pow(2)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        half_log_2pi = 0.5 * math.log(2 * math.pi)
        v2 = value.pow(2)
        a = self.pi.log() - self.sigma1.log() - half_log_2pi - 0.5 * v2 / self.sigma1.pow(2)
        b = torch.log1p(-self.pi) - self.sigma2.log() - half_log_2pi - 0.5 * v2 / self.sigma2.pow(2)
        return torch.logaddexp(a, b)

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            first = torch.rand(shape, dtype=self.pi.dtype, device=self.pi.device) < self.pi.expand(shape)
            sd = torch.where(first, self.sigma1.expand(shape), self.sigma2.expand(shape))
            return sd * torch.randn(shape, dtype=self.pi.dtype, device=self.pi.device)


@register_prior
class ScaleMixture(Prior):
    r"""Scale-mixture prior (Blundell et al., 2015): every weight, independently,

    .. math:: p(w) = \pi\,\mathcal N(w; 0, \sigma_1^2) + (1-\pi)\,\mathcal N(w; 0, \sigma_2^2),

    a wide component :math:`\sigma_1` and a narrow one :math:`\sigma_2 \ll 1` that pulls many
    weights towards zero (a spike-and-slab-like, heavy-tailed prior).

    The defaults, :math:`\pi = 1/2`, :math:`\sigma_1 = 1 = e^{0}`,
    :math:`\sigma_2 = 0.0025 \approx e^{-6}`, lie on the grid the paper searched
    (:math:`\pi\in\{\frac14,\frac12,\frac34\}`, :math:`-\log\sigma_1\in\{0,1,2\}`,
    :math:`-\log\sigma_2\in\{6,7,8\}`). (blitz's ``BayesianLinear`` defaults,
    ``prior_pi=1, prior_sigma_1=0.1, prior_sigma_2=0.4``, reduce to a single
    :math:`\mathcal N(0, 0.1^2)`; use :class:`Normal` for that.)

    The distribution is a :class:`ScaleMixtureNormal` with support on the real line, so
    mean-field/low-rank/full-rank SVI (Monte Carlo estimate of the prior term of the KL:
    there is no closed form) and HMC/NUTS use it as they are. A narrow :math:`\sigma_2`
    makes the posterior stiff for HMC (small step sizes).

    Args:
        pi: :math:`\pi\in(0, 1)`.
        sigma1: :math:`\sigma_1 > 0`.
        sigma2: :math:`\sigma_2 > 0`.

    Example:
        >>> import torch.nn as nn
        >>> lin = nn.Linear(4, 3)
        >>> prior = ScaleMixture(pi=0.5, sigma1=1.0, sigma2=0.0025)
        >>> prior.loc_scale("weight", lin.weight, lin) is None          # not Gaussian
        True
        >>> prior.distribution("weight", lin.weight, lin).event_shape
        torch.Size([3, 4])
        >>> prior_from_config(prior.to_config())
        ScaleMixture(pi=0.5, sigma1=1.0, sigma2=0.0025)

    References:
        Blundell, Cornebise, Kavukcuoglu & Wierstra (2015). *Weight Uncertainty in Neural
        Networks*. ICML.
    """

    def __init__(self, pi: float = 0.5, sigma1: float = 1.0, sigma2: float = 0.0025):
        if isinstance(pi, bool) or not isinstance(pi, numbers.Real) or not 0.0 < float(pi) < 1.0:
            raise ValueError(f"pi must be a number in (0, 1), got {pi!r} (for pi = 1 use priors.Normal(0, sigma1))")
        self.pi = float(pi)
        self.sigma1 = check_positive_float(sigma1, "sigma1")
        self.sigma2 = check_positive_float(sigma2, "sigma2")

    def distribution(self, name, param, module):
        def t(v):
            return torch.full((), v, dtype=param.dtype, device=param.device)

        return ScaleMixtureNormal(t(self.pi), t(self.sigma1), t(self.sigma2)).expand(param.shape).to_event(param.dim())

    def to_config(self) -> dict:
        return {"type": "ScaleMixture", "pi": self.pi, "sigma1": self.sigma1, "sigma2": self.sigma2}


# ----------------------------------------------------------------------------- Laplace, Student-t
class _LocScaleFamily(Prior):
    """I.i.d. ``family(loc, scale)`` priors, the scale optionally divided by sqrt(fan_in) on weights."""

    _family = None  # the torch distribution class
    _type = ""

    def __init__(self, loc: float = 0.0, scale: float = 1.0, *, fan_in: bool = False):
        self.loc = _finite_float(_number(loc, "loc"), "loc")
        self.scale = check_positive_float(scale, "scale")
        if not isinstance(fan_in, bool):
            raise TypeError(f"fan_in must be True or False, got {fan_in!r}")
        self.fan_in = fan_in

    def _scale(self, param, module) -> float:
        if self.fan_in and param.dim() >= 2:
            return self.scale / math.sqrt(fan_in(module, param))
        return self.scale

    def _args(self, param, module) -> tuple:
        return (self.loc, self._scale(param, module))

    def distribution(self, name, param, module):
        args = [torch.full((), float(a), dtype=param.dtype, device=param.device) for a in self._args(param, module)]
        return self._family(*args).expand(param.shape).to_event(param.dim())

    def to_config(self) -> dict:
        return {"type": self._type, "loc": self.loc, "scale": self.scale, "fan_in": self.fan_in}


def _number(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{what} must be a number, got {v!r}")
    return float(v)


@register_prior
class Laplace(_LocScaleFamily):
    r"""I.i.d. Laplace prior on every weight,

    .. math:: p(w) = \frac{1}{2b}\exp\!\Big(-\frac{|w-\mu|}{b}\Big),

    the Bayesian counterpart of L1 regularisation (its MAP estimate is the lasso), with
    heavier tails and more mass at :math:`\mu` than a Gaussian. No closed-form KL: SVI
    estimates the prior term by Monte Carlo; MCMC scores it exactly.

    Args:
        loc: :math:`\mu`.
        scale: :math:`b > 0` (the standard deviation is :math:`\sqrt2\,b`).
        fan_in: divide the scale of weights (parameters with at least two dimensions) by
            :math:`\sqrt{\text{fan\_in}}` (see :func:`fan_in`), as :class:`FanInNormal` does;
            biases and other 0/1-D parameters keep ``scale``. Default ``False``.

    Example:
        >>> import torch.nn as nn
        >>> lin = nn.Linear(4, 3)
        >>> prior = Laplace(0.0, 0.5, fan_in=True)
        >>> d = prior.distribution("weight", lin.weight, lin)
        >>> float(d.base_dist.scale[0, 0])        # 0.5 / sqrt(4)
        0.25
        >>> prior_from_config(prior.to_config())
        Laplace(loc=0.0, scale=0.5, fan_in=True)

    References:
        Williams (1995). *Bayesian Regularization and Pruning Using a Laplace Prior*.
        Neural Computation 7(1).
    """

    _family = dist.Laplace
    _type = "Laplace"


@register_prior
class StudentT(_LocScaleFamily):
    r"""I.i.d. Student-t prior on every weight,

    .. math:: p(w) = \frac{\Gamma(\frac{\nu+1}2)}{\Gamma(\frac\nu2)\sqrt{\nu\pi}\,s}
        \Big(1 + \frac1\nu\Big(\frac{w-\mu}{s}\Big)^2\Big)^{-\frac{\nu+1}2},

    a heavy-tailed prior (a Gaussian scale mixture with an inverse-gamma variance) that
    Fortuin et al. (2022) found to fit trained networks' weights better than a Gaussian. No
    closed-form KL: SVI estimates the prior term by Monte Carlo; MCMC scores it exactly.

    Args:
        df: degrees of freedom :math:`\nu > 0` (default 3: finite variance, heavy tails).
        loc: :math:`\mu`.
        scale: :math:`s > 0`.
        fan_in: divide the scale of weights (parameters with at least two dimensions) by
            :math:`\sqrt{\text{fan\_in}}` (see :func:`fan_in`); biases keep ``scale``.
            Default ``False``.

    Example:
        >>> import torch.nn as nn
        >>> lin = nn.Linear(4, 3)
        >>> prior = StudentT(df=3.0, loc=0.0, scale=1.0)
        >>> prior.distribution("bias", lin.bias, lin).base_dist.df
        tensor([3., 3., 3.])
        >>> prior
        StudentT(df=3.0, loc=0.0, scale=1.0, fan_in=False)

    References:
        Fortuin, Garriga-Alonso, Ober, Wenzel, Rätsch, Turner, van der Wilk & Aitchison
        (2022). *Bayesian Neural Network Priors Revisited*. ICLR.
    """

    _family = dist.StudentT
    _type = "StudentT"

    def __init__(self, df: float = 3.0, loc: float = 0.0, scale: float = 1.0, *, fan_in: bool = False):
        super().__init__(loc, scale, fan_in=fan_in)
        self.df = check_positive_float(df, "df")

    def _args(self, param, module) -> tuple:
        return (self.df, self.loc, self._scale(param, module))

    def to_config(self) -> dict:
        return {"type": "StudentT", "df": self.df, **{k: v for k, v in super().to_config().items() if k != "type"}}

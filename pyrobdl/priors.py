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
C. Blundell et al., *Weight Uncertainty in Neural Networks* (ICML 2015).
"""
from __future__ import annotations

import fnmatch
import math
from typing import Dict, Mapping, Optional, Tuple, Type, Union

import pyro.distributions as dist
import torch
from torch import nn

from ._util import check_positive_float

__all__ = [
    "Prior",
    "Normal",
    "FanInNormal",
    "PerSite",
    "fan_in",
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
            f"unknown prior type {t!r}; known: {', '.join(available_priors())} (register a custom prior "
            "class with @pyrobdl.priors.register_prior before loading)"
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


class Prior:
    r"""Base class of priors over the network's weights.

    Subclasses implement :meth:`loc_scale` (i.i.d. Gaussian priors
    :math:`\mathcal N(\text{loc}, \text{scale}^2)` per parameter, which lets
    inference use closed-form KL terms) or override :meth:`distribution`
    (any prior with ``event_shape == param.shape``), and :meth:`to_config`.

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
    """

    def loc_scale(
        self, name: str, param: torch.Tensor, module: Optional[nn.Module]
    ) -> Optional[Tuple[float, float]]:
        """``(loc, scale)`` of an i.i.d. Gaussian prior for this parameter, or
        ``None`` if the prior is not Gaussian."""
        raise NotImplementedError

    def distribution(
        self, name: str, param: torch.Tensor, module: Optional[nn.Module]
    ) -> dist.TorchDistribution:
        """The prior of parameter ``name``, with ``event_shape == param.shape``,
        on ``param``'s device and dtype."""
        ls = self.loc_scale(name, param, module)
        if ls is None:  # pragma: no cover - subclasses that are not Gaussian override this
            raise NotImplementedError(f"{type(self).__name__} must implement distribution()")
        loc, scale = ls
        loc_t = torch.full((), float(loc), dtype=param.dtype, device=param.device)
        scale_t = torch.full((), float(scale), dtype=param.dtype, device=param.device)
        return dist.Normal(loc_t, scale_t).expand(param.shape).to_event(param.dim())

    def to_config(self) -> dict:
        """Plain-data description: ``{"type": class name, **constructor arguments}`` (for
        :meth:`Posterior.save` and :func:`prior_from_config`)."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement to_config() -> {{'type': '{type(self).__name__}', ...}} "
            "to be saved"
        )

    @classmethod
    def from_config(cls, cfg: Mapping) -> "Prior":
        """The prior described by ``cfg`` (:meth:`to_config` without ``"type"``); the default
        passes the entries as keyword arguments to the constructor."""
        return cls(**cfg)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items() if k != "type")
        return f"{type(self).__name__}({args})"


@register_prior
class Normal(Prior):
    r"""I.i.d. Gaussian prior :math:`w \sim \mathcal N(\text{loc}, \text{scale}^2)` on every weight.

    Args:
        loc: prior mean.
        scale: prior standard deviation (> 0).

    Example:
        >>> import torch.nn as nn
        >>> lin = nn.Linear(50, 10)
        >>> prior = Normal(0.0, 0.5)
        >>> prior.loc_scale("0.weight", lin.weight, lin)
        (0.0, 0.5)
        >>> prior.distribution("0.weight", lin.weight, lin).event_shape
        torch.Size([10, 50])

    References:
        Blundell, Cornebise, Kavukcuoglu & Wierstra (2015). *Weight Uncertainty
        in Neural Networks*. ICML.
    """

    def __init__(self, loc: float = 0.0, scale: float = 1.0):
        self.loc = float(loc)
        self.scale = check_positive_float(scale, "scale")

    def loc_scale(self, name, param, module):
        return self.loc, self.scale

    def to_config(self) -> dict:
        return {"type": "Normal", "loc": self.loc, "scale": self.scale}


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

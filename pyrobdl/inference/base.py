"""Base classes shared by every inference method: the fitted :class:`Posterior`
with its one predictive interface, the :class:`Inference` algorithm, and the
method registry behind :func:`pyrobdl.fit`."""
from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar, Dict, Iterator, Optional, Tuple, Type

import torch

from .._validation import check_inputs, check_positive_int
from ..network import BayesianNetwork
from ..prediction import Prediction

__all__ = [
    "Posterior",
    "Inference",
    "NotFittedError",
    "fit",
    "get_method",
    "register_method",
    "available_methods",
]


class NotFittedError(ValueError, RuntimeError):
    """Raised when a posterior is used before it has been fitted.

    Example:
        >>> import torch, torch.nn as nn
        >>> from pyrobdl import BayesianNetwork, priors, likelihoods
        >>> from pyrobdl.inference.svi import MeanField
        >>> model = BayesianNetwork(nn.Linear(1, 1), prior=priors.Normal(), likelihood=likelihoods.Gaussian(scale=0.1))
        >>> try:
        ...     Posterior(model).predict(torch.zeros(2, 1))
        ... except NotFittedError as e:
        ...     print(str(e)[:45])
        this Posterior has not been fitted; call .fit
        >>> post = MeanField(num_steps=2, progress=False).fit(model, torch.zeros(4, 1), torch.zeros(4))
        >>> post.is_fitted
        True
    """

_METHODS: Dict[str, Type["Inference"]] = {}
_POSTERIORS: Dict[str, Type["Posterior"]] = {}


def register_method(cls: Type["Inference"]) -> Type["Inference"]:
    """Class decorator: make an :class:`Inference` subclass available to
    :func:`pyrobdl.fit` under its ``name`` (and ``aliases``).

    Example::

        @register_method
        class PriorOnly(Inference):          # the class of the Inference example
            name = "prior-only"
            aliases = ("prior",)
            ...

        posterior = pyrobdl.fit(model, x, y, method="prior-only")
    """
    for key in (cls.name,) + tuple(getattr(cls, "aliases", ())):
        _METHODS[key] = cls
    return cls


def available_methods() -> list:
    """Names accepted by ``pyrobdl.fit(..., method=...)`` (aliases such as
    ``"mfvi"`` are accepted too, but not listed).

    Example:
        >>> import pyrobdl
        >>> {"mean-field", "low-rank", "full-rank", "ensemble"} <= set(pyrobdl.available_methods())
        True
    """
    return sorted(k for k, v in _METHODS.items() if k == v.name)


def get_method(name: str) -> Type["Inference"]:
    """The :class:`Inference` class registered under ``name`` or one of its
    aliases (case-insensitive; ``_`` and ``-`` are the same).

    Raises:
        ValueError: for an unknown name (the message lists the known ones).

    Example:
        >>> get_method("mean_field").__name__, get_method("MFVI").__name__
        ('MeanField', 'MeanField')
    """
    if not isinstance(name, str):
        raise TypeError(f"method must be a string, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    if key not in _METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(available_methods())}")
    return _METHODS[key]


class Posterior:
    r"""A fitted posterior (or posterior-like ensemble) over a
    :class:`~pyrobdl.BayesianNetwork`'s latent variables.

    Subclasses implement :meth:`sample_latents` and the ``_state``/``_from_state``
    pair used by :meth:`save` / :func:`pyrobdl.load`; they set the class
    attribute ``method`` (the name :func:`pyrobdl.fit` knows them by), which
    also registers them for loading.

    Every posterior predicts the same way: :meth:`predict` draws
    :math:`\theta_s \sim q(\theta)` (variational), takes MCMC draws or ensemble
    members, and returns the predictive mixture
    :math:`p(y\mid x) \approx \frac1S\sum_s p(y\mid f_{\theta_s}(x))`.

    Example:
        A posterior that is just the prior (see :class:`Inference` for the
        algorithm that returns it):

        >>> class PriorPosterior(Posterior):
        ...     def sample_latents(self, num_samples):
        ...         return {name: site.prior.sample((num_samples,))
        ...                 for name, site in self.model.latent_sites().items()}
    """

    method: ClassVar[str] = ""
    #: default number of predictive samples when predict() is not told
    default_num_samples: ClassVar[Optional[int]] = 100

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("method"):
            _POSTERIORS[cls.method] = cls

    def __init__(self, model: BayesianNetwork):
        if not isinstance(model, BayesianNetwork):
            raise TypeError(f"model must be a pyrobdl.BayesianNetwork, got {type(model).__name__}")
        self.model = model
        self.fit_info: Dict[str, Any] = {}
        self._fitted = False

    # -- to implement ---------------------------------------------------------
    def sample_latents(self, num_samples: int) -> Dict[str, torch.Tensor]:
        """Draw ``num_samples`` values of every latent site: site -> ``(S, *shape)``."""
        raise NotImplementedError

    def _state(self) -> Dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _from_state(cls, model: BayesianNetwork, state: Dict[str, Any]) -> "Posterior":
        raise NotImplementedError

    # -- common API ------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self._fitted

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise NotFittedError(
                f"this {type(self).__name__} has not been fitted; call .fit(model, x, y) on the "
                "inference object (or pyrobdl.fit) and predict with the posterior it returns"
            )

    @property
    def device(self) -> torch.device:
        return self.model.device

    def to(self, device) -> "Posterior":
        """Move the posterior (network and variational parameters) to ``device``."""
        self.model.to(device)
        return self

    def predict(
        self,
        x,
        *,
        num_samples: Optional[int] = None,
        chunk_size: Optional[int] = None,
        max_memory: Optional[int] = None,
    ) -> Prediction:
        r"""Posterior predictive at inputs ``x``.

        Draws ``num_samples`` latent samples :math:`\theta_s` and runs them
        through the network in batched passes (chunked so one pass's
        activations stay under ``max_memory`` bytes), returning a
        :class:`~pyrobdl.prediction.RegressionPrediction` or
        :class:`~pyrobdl.prediction.ClassificationPrediction`.

        The posterior moves to ``x``'s device.
        """
        self._check_fitted()
        x = check_inputs(x, "x")
        if x.device != self.device:
            self.to(x.device)
        if x.dtype != self.model.dtype:
            x = x.to(self.model.dtype)
        if num_samples is None:
            num_samples = self.default_num_samples
        num_samples = check_positive_int(num_samples, "num_samples") if num_samples is not None else None
        samples = self.sample_latents(num_samples)
        return self.model.predict_from_samples(x, samples, chunk_size=chunk_size, max_memory=max_memory)

    def save(self, path) -> None:
        """Save to ``path`` (state dicts and plain data only; see :func:`pyrobdl.load`)."""
        from ..serialization import save_posterior

        self._check_fitted()
        save_posterior(self, path)

    def to_arviz(self, x=None, y=None, *, num_samples: Optional[int] = None):
        """Export to ArviZ (posterior, sample_stats for MCMC, pointwise
        log_likelihood, posterior_predictive, observed_data); see
        :func:`pyrobdl.diagnostics.to_arviz`."""
        from ..diagnostics import to_arviz

        return to_arviz(self, x, y, num_samples=num_samples)

    def __repr__(self) -> str:
        status = "fitted" if self._fitted else "not fitted"
        return f"{type(self).__name__}({status}, {self.model.num_bayesian_parameters} weights)"


class Inference:
    """Base class of inference algorithms: ``Inference(**settings).fit(model, x, y)``
    returns a :class:`Posterior`.

    Subclasses set ``name`` (and optionally ``aliases``) and implement
    :meth:`fit`; :func:`register_method` makes them available to
    :func:`pyrobdl.fit`.

    Example:
        A (useless) method that returns the prior as the posterior:

        >>> import torch, torch.nn as nn
        >>> from pyrobdl import BayesianNetwork, priors, likelihoods
        >>> class PriorPosterior(Posterior):
        ...     def sample_latents(self, num_samples):
        ...         return {name: site.prior.sample((num_samples,))
        ...                 for name, site in self.model.latent_sites().items()}
        >>> class PriorOnly(Inference):
        ...     name = "prior-only"
        ...     def fit(self, model, x=None, y=None):
        ...         post = PriorPosterior(model)
        ...         post._fitted = True
        ...         return post
        >>> model = BayesianNetwork(nn.Linear(1, 1), prior=priors.Normal(0.0, 1.0),
        ...                         likelihood=likelihoods.Gaussian(scale=0.1))
        >>> pred = PriorOnly().fit(model).predict(torch.zeros(4, 1), num_samples=10)
        >>> pred.mean.shape, pred.num_samples
        (torch.Size([4]), 10)
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[Tuple[str, ...]] = ()

    def fit(self, model: BayesianNetwork, x=None, y=None) -> Posterior:
        raise NotImplementedError


# ---------------------------------------------------------------------------- data
class Data:
    """Full-batch tensors or a DataLoader behind one interface."""

    def __init__(self, model: BayesianNetwork, x, y):
        self.loader = None
        if isinstance(x, torch.utils.data.DataLoader):
            if y is not None:
                raise ValueError("pass either (x, y) tensors or a DataLoader as x, not both")
            self.loader = x
            try:
                self.num_data = len(x.dataset)
            except TypeError as e:
                raise ValueError("the DataLoader's dataset must have a length (the dataset size N)") from e
            xb, yb = self._unpack(next(iter(x)))
            xb, _ = model.check_data(xb, yb)
            self.device = xb.device
            self.x, self.y = None, None
        else:
            if x is None or y is None:
                raise ValueError("fit needs inputs x and targets y (or a DataLoader yielding (x, y) batches)")
            x, y = model.check_data(x, y)
            self.x, self.y = x, y
            self.num_data = x.shape[0]
            self.device = x.device

    @staticmethod
    def _unpack(batch):
        if not isinstance(batch, (list, tuple)) or len(batch) != 2:
            raise ValueError("the DataLoader must yield (x, y) pairs")
        return batch

    def batches(self, model: BayesianNetwork, batch_size: Optional[int], generator=None) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Endless stream of (x, y) batches on the data's device."""
        if self.loader is not None:
            # the first batch is fully validated (in __init__ and here); later batches are only
            # converted, so validation adds no per-step forward pass or device sync
            first = True
            while True:
                for batch in self.loader:
                    xb, yb = self._unpack(batch)
                    xb, yb = xb.to(self.device), yb.to(self.device)
                    if first:
                        xb, yb = model.check_data(xb, yb)
                        self._tshape, self._tdtype = yb.shape[1:], yb.dtype
                        first = False
                    else:
                        if not xb.is_floating_point() or xb.dtype != model.dtype:
                            xb = xb.to(model.dtype)
                        if yb.dtype != self._tdtype:
                            yb = yb.to(self._tdtype)
                        if yb.shape[1:] != self._tshape:
                            yb = yb.reshape((yb.shape[0],) + tuple(self._tshape))
                    yield xb, yb
        N = self.num_data
        if batch_size is None or batch_size >= N:
            while True:
                yield self.x, self.y
        while True:
            perm = torch.randperm(N, generator=generator).to(self.device)
            for i in range(0, N - batch_size + 1, batch_size):
                idx = perm[i : i + batch_size]
                yield self.x[idx], self.y[idx]

    def steps_per_epoch(self, batch_size: Optional[int]) -> int:
        if self.loader is not None:
            return len(self.loader)
        if batch_size is None or batch_size >= self.num_data:
            return 1
        return self.num_data // batch_size


def fit(model: BayesianNetwork, x=None, y=None, *, method: str = "mean-field", **options) -> Posterior:
    """Fit ``model`` to data with the inference method named ``method``.

    ``pyrobdl.fit(model, x, y, method="mean-field", num_steps=2000)`` is
    ``inference.MeanField(num_steps=2000).fit(model, x, y)``. Known names:
    see :func:`available_methods`.

    Example::

        posterior = pyrobdl.fit(model, x, y, method="low-rank", rank=10, progress=False)
        pred = posterior.predict(x_test)
    """
    cls = get_method(method)
    try:
        algo = cls(**options)
    except TypeError as e:
        raise TypeError(f"invalid option for method {method!r}: {e}") from None
    return algo.fit(model, x, y)


def _ema(old: Optional[float], new: float, beta: float = 0.98) -> float:
    return new if old is None or not math.isfinite(old) else beta * old + (1 - beta) * new


def warn_user(message: str, category=UserWarning) -> None:
    """Warn pointing at the user's line (outside pyrobdl)."""
    import inspect
    import os

    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    level = 1
    frame = inspect.currentframe()
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(pkg):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)

"""Base classes shared by every inference method.

* :class:`Inference` -- an algorithm with its settings. ``Inference(**settings).fit(model, x, y)``
  is a template: it checks the model, seeds, wraps the data (:class:`Data`), copies the model
  (the user's stays untouched) and calls the method's own :meth:`Inference._fit`, then checks
  the result for silent failures (:func:`check_fit`).
* :class:`Posterior` -- what ``fit`` returns, fitted from birth. Every posterior predicts the
  same way (:meth:`Posterior.predict`), exports its draws the same way
  (:meth:`Posterior.draws`, ``chains x draws``) and saves through :func:`pyrobdl.load`'s
  registry (:meth:`Posterior.get_state` / :meth:`Posterior.from_state`).

The method registry is :mod:`pyrobdl.inference.registry`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Iterator, Optional, Tuple

import pyro
import torch

from .. import priors as _priors
from .._util import check_inputs, check_positive_int, check_seed, eval_mode, warn_user
from ..network import BayesianNetwork
from ..prediction import ClassificationPrediction, Prediction, RegressionPrediction
from . import registry as _registry
from .registry import available_methods, get_method, register_method

__all__ = [
    "Posterior",
    "Inference",
    "Draws",
    "Data",
    "fit",
    "check_fit",
    "reset_bayesian_parameters",
    "get_method",
    "register_method",
    "available_methods",
    "DEFAULT_NUM_DRAWS",
    "finite_draw_index",
]

#: draws a posterior without a fixed set of draws exports to ArviZ when not told
DEFAULT_NUM_DRAWS = 1000


def finite_draw_index(
    total: int, num_samples: Optional[int], *, what: str = "draws", owner: Any = None, device=None
) -> Optional[torch.Tensor]:
    r"""The one meaning of ``num_samples`` for a posterior with a finite set of ``total``
    draws (MCMC draws, ensemble members): the returned prediction has ``num_samples``
    predictive samples, as for every other posterior.

    * ``None`` or ``total``: every draw once (returns ``None``);
    * fewer: that many, evenly spaced over the set, first and last included (thinning, in
      chain order);
    * more: every draw repeated as evenly as possible (each :math:`\lfloor S/K\rfloor` or
      :math:`\lceil S/K\rceil` times), so the predictive mixture is the same one (exactly
      when ``num_samples`` is a multiple of ``total``), with a one-time warning per
      posterior saying so.

    Returns the index ``(num_samples,)`` into the draws, or ``None`` for all of them once.

    Example:
        >>> finite_draw_index(5, None) is None
        True
        >>> finite_draw_index(10, 4).tolist()
        [0, 3, 6, 9]
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     finite_draw_index(3, 7).tolist()
        [0, 0, 0, 1, 1, 2, 2]
    """
    if num_samples is None or num_samples == total:
        return None
    S = check_positive_int(num_samples, "num_samples")
    if S < total:  # evenly spaced, first and last included
        return torch.linspace(0, total - 1, S, device=device).round().long()
    idx = torch.div(torch.arange(S, device=device) * total, S, rounding_mode="floor")
    if S > total and not getattr(owner, "_warned_repeat", False):
        if owner is not None:
            try:
                owner._warned_repeat = True
            except AttributeError:
                pass
        warn_user(
            f"num_samples={S} is more than the {total} {what} of this posterior: each is used "
            f"{S // total}{'' if S % total == 0 else ' or ' + str(S // total + 1)} times (the same predictive "
            f"mixture{'' if S % total == 0 else ', up to the uneven repeats'}); pass num_samples=None to use each once"
        )
    return idx


@dataclass
class Draws:
    """Posterior draws laid out as ``chains x draws``, the protocol of
    :func:`pyrobdl.diagnostics.to_arviz` and the diagnostics.

    Attributes:
        values: site name -> ``(chains, draws, *shape)``.
        sample_stats: sampler statistics -> ``(chains, draws)`` (MCMC; empty otherwise).
        markov_chains: whether the chains are Markov chains (R-hat and ESS apply).
    """

    values: Dict[str, torch.Tensor]
    sample_stats: Dict[str, torch.Tensor] = field(default_factory=dict)
    markov_chains: bool = False

    @property
    def num_chains(self) -> int:
        return int(next(iter(self.values.values())).shape[0])

    @property
    def num_draws(self) -> int:
        return int(next(iter(self.values.values())).shape[1])

    def flat(self) -> Dict[str, torch.Tensor]:
        """Site -> ``(chains * draws, *shape)``."""
        return {k: v.reshape((-1,) + tuple(v.shape[2:])) for k, v in self.values.items()}


class Posterior:
    r"""A fitted posterior (or posterior-like ensemble) over a
    :class:`~pyrobdl.BayesianNetwork`'s latent variables; returned by
    :meth:`Inference.fit`, fitted from birth.

    Every posterior predicts the same way: :meth:`predict` takes
    :math:`S` predictive samples -- draws :math:`\theta_s \sim q(\theta)`, MCMC draws,
    dropout masks or ensemble members -- and returns the predictive mixture
    :math:`p(y\mid x) \approx \frac1S\sum_s p(y\mid f_{\theta_s}(x))`.

    A subclass implements:

    * :meth:`sample_latents` -- draws of every latent site (the default
      :meth:`sample_outputs` pushes them through the network in batched, chunked passes);
      or :meth:`sample_outputs` itself, when a predictive sample is not a set of latent
      values (dropout masks act on activations);
    * :meth:`get_state` / :meth:`from_state` -- plain data for :meth:`save` and
      :func:`pyrobdl.load`;
    * the class attribute ``method``: the name under which :func:`pyrobdl.load` finds the
      class (setting it registers the class).

    Example:
        A posterior that is just the prior (see :class:`Inference` for the algorithm):

        >>> class PriorPosterior(Posterior):
        ...     method = "doc-prior-only"
        ...     def sample_latents(self, num_samples):
        ...         return {name: site.prior.sample((num_samples,))
        ...                 for name, site in self.model.latent_sites().items()}
        ...     def get_state(self):
        ...         return {}
        ...     @classmethod
        ...     def from_state(cls, model, state):
        ...         return cls(model)
    """

    #: the name :func:`pyrobdl.load` finds the class by (setting it registers the class)
    method: ClassVar[str] = ""
    #: default number of predictive samples when ``predict`` is not told (``None``: all of a
    #: fixed set, e.g. every ensemble member)
    default_num_samples: ClassVar[Optional[int]] = 100
    #: whether :meth:`draws` come from Markov chains (convergence diagnostics apply)
    markov_chains: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("method"):
            _registry.register_posterior(cls)

    def __init__(self, model: BayesianNetwork):
        if not isinstance(model, BayesianNetwork):
            raise TypeError(f"model must be a pyrobdl.BayesianNetwork, got {type(model).__name__}")
        self.model = model
        self.fit_info: Dict[str, Any] = {}

    # -- to implement ---------------------------------------------------------
    def sample_latents(self, num_samples: Optional[int]) -> Dict[str, torch.Tensor]:
        """Draw ``num_samples`` values of every latent site: site -> ``(S, *shape)``."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement sample_latents(num_samples); implement it "
            "(site -> (S, *shape) draws) or sample_outputs(x, num_samples, ...)"
        )

    def get_state(self) -> Dict[str, Any]:
        """Plain data (tensors, numbers, strings, lists, dicts) from which :meth:`from_state`
        rebuilds this posterior; the network's own state is saved beside it."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot be saved: implement get_state() (plain data) and the "
            "classmethod from_state(model, state) to rebuild it"
        )

    @classmethod
    def from_state(cls, model: BayesianNetwork, state: Dict[str, Any]) -> "Posterior":
        """Rebuild a posterior of ``model`` from :meth:`get_state`'s data."""
        raise NotImplementedError(
            f"{cls.__name__} cannot be loaded: implement the classmethod from_state(model, state)"
        )

    # -- common API ------------------------------------------------------------
    @property
    def num_fixed_draws(self) -> Optional[int]:
        """The size of the posterior's fixed set of draws (MCMC draws, ensemble members), or
        ``None`` when it draws afresh (variational, dropout); see :func:`finite_draw_index`
        for what ``num_samples`` means with a fixed set."""
        return None

    @property
    def device(self) -> torch.device:
        return self.model.device

    def to(self, device) -> "Posterior":
        """Move the posterior (network and variational parameters) to ``device``."""
        self.model.to(device)
        return self

    def prepare_inputs(self, x) -> torch.Tensor:
        """Checked inputs as a tensor of the network's dtype; the posterior moves to their
        device (everything follows the device of the inputs)."""
        x = check_inputs(x, "x", keep_integer=True)
        fitted = getattr(self.model, "input_shape", None)
        if fitted is not None and tuple(x.shape[1:]) != tuple(fitted):
            hint = " (x.unsqueeze(-1) for one feature)" if x.dim() == 1 and tuple(fitted) == (1,) else ""
            raise ValueError(
                f"x has shape {tuple(x.shape)} but the posterior was fitted on inputs of shape "
                f"(N, {', '.join(map(str, fitted))}); pass x with that shape{hint}"
            )
        if x.device != self.device:
            self.to(x.device)
        return self.model.cast_inputs(x)

    def sample_outputs(
        self,
        x: torch.Tensor,
        num_samples: Optional[int],
        *,
        chunk_size: Optional[int] = None,
        max_memory: Optional[int] = None,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Network outputs ``(S, N, k)`` for ``S`` predictive samples at checked inputs ``x``,
        and the likelihood's latents ``{short name: (S, ...)}``. The default draws
        :meth:`sample_latents` and runs them through
        :meth:`~pyrobdl.BayesianNetwork.outputs_from_samples`."""
        samples = self.sample_latents(num_samples)
        return self.model.outputs_from_samples(x, samples, chunk_size=chunk_size, max_memory=max_memory)

    def predict(
        self,
        x,
        *,
        num_samples: Optional[int] = None,
        chunk_size: Optional[int] = None,
        max_memory: Optional[int] = None,
    ) -> Prediction:
        r"""Posterior predictive at inputs ``x``.

        Takes ``num_samples`` predictive samples (default :attr:`default_num_samples`) and runs
        them through the network in batched passes (chunked so one pass's activations stay
        under ``max_memory`` bytes, default 512 MiB; ``chunk_size`` fixes the samples per
        pass), returning a :class:`~pyrobdl.prediction.RegressionPrediction` or
        :class:`~pyrobdl.prediction.ClassificationPrediction`. The posterior moves to
        ``x``'s device.
        """
        x = self.prepare_inputs(x)
        if num_samples is None:
            num_samples = self.default_num_samples
        if num_samples is not None:
            num_samples = check_positive_int(num_samples, "num_samples")
        if chunk_size is not None:
            chunk_size = check_positive_int(chunk_size, "chunk_size")
        if max_memory is not None:
            max_memory = check_positive_int(max_memory, "max_memory")
        if num_samples is not None:
            check_prediction_memory(self.model, x, num_samples)
        out, lats = self.sample_outputs(x, num_samples, chunk_size=chunk_size, max_memory=max_memory)
        return self.model.likelihood.prediction(out, lats)

    def draws(self, num_samples: Optional[int] = None) -> Draws:
        """Posterior draws as ``chains x draws`` (:class:`Draws`), for ArviZ and the
        diagnostics. The default is one chain of ``num_samples`` draws of
        :meth:`sample_latents` (``DEFAULT_NUM_DRAWS`` when not told, or the whole fixed set
        of a posterior whose ``default_num_samples`` is ``None``); MCMC posteriors return
        their chains."""
        if num_samples is None:
            n = None if self.default_num_samples is None else DEFAULT_NUM_DRAWS
        else:
            n = check_positive_int(num_samples, "num_samples")
        flat = self.sample_latents(n)
        return Draws({k: v.unsqueeze(0) for k, v in flat.items()}, {}, self.markov_chains)

    def save(self, path) -> None:
        """Save to ``path`` (state dicts and plain data only; see :func:`pyrobdl.load`)."""
        from ..serialization import save_posterior

        save_posterior(self, path)

    def to_arviz(self, x=None, y=None, *, num_samples: Optional[int] = None):
        """Export to ArviZ (posterior, sample_stats for MCMC, pointwise
        log_likelihood, posterior_predictive, observed_data); see
        :func:`pyrobdl.diagnostics.to_arviz`."""
        from ..diagnostics import to_arviz

        return to_arviz(self, x, y, num_samples=num_samples)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model.num_bayesian_parameters} weights)"


class Inference:
    """Base class of inference algorithms: ``Inference(**settings).fit(model, x, y)``
    returns a :class:`Posterior`.

    :meth:`fit` is a template shared by every method: it checks ``model``, seeds the
    random number generators, wraps ``(x, y)`` or a DataLoader in :class:`Data`, works on
    a copy of the model on the data's device (the user's model is never modified), calls
    the method's :meth:`_fit` and finally checks the fit for silent failures
    (:func:`check_fit`). A subclass sets ``name`` (and optionally ``aliases`` and the
    hints below), implements :meth:`_fit`, and is made available to :func:`pyrobdl.fit`
    and ``pyrobdl compare`` by :func:`~pyrobdl.inference.registry.register_method`.

    **The seed rule.** ``seed`` (every method takes it) seeds Pyro's, torch's, numpy's and
    Python's generators before anything random happens, and when it is given the network's
    Bayesian parameters are first re-drawn from their layers' own initialisation
    (:func:`reset_bayesian_parameters`), so a seeded fit depends only on the seed, the
    architecture, the data and the settings -- not on when or how the network was built.
    Without a seed, methods that start from the network's weights (SVI, dropout,
    DropConnect, the first ensemble member) start from the weights as built.

    Args:
        seed: ``None`` or an integer in ``[0, 2**32)``.
        progress: show a progress bar.

    Example:
        A (useless) method that returns the prior as the posterior:

        >>> import torch, torch.nn as nn
        >>> from pyrobdl import BayesianNetwork, priors, likelihoods
        >>> class PriorPosterior(Posterior):
        ...     def sample_latents(self, num_samples):
        ...         return {name: site.prior.sample((num_samples,))
        ...                 for name, site in self.model.latent_sites().items()}
        >>> class PriorOnly(Inference):
        ...     name = "doc-prior-only"
        ...     def _fit(self, model, data):
        ...         return PriorPosterior(model)
        >>> model = BayesianNetwork(nn.Linear(1, 1), prior=priors.Normal(0.0, 1.0),
        ...                         likelihood=likelihoods.Gaussian(scale=0.1))
        >>> x = torch.randn(8, 1)
        >>> pred = PriorOnly(seed=0).fit(model, x, 2 * x[:, 0]).predict(torch.zeros(4, 1), num_samples=10)
        >>> pred.mean.shape, pred.num_samples
        (torch.Size([4]), 10)
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[Tuple[str, ...]] = ()
    #: the family of methods (``"svi"``, ``"mcmc"``, ``"dropout"``, ``"ensemble"``, ...)
    family: ClassVar[str] = ""
    #: the largest network (Bayesian weights) ``pyrobdl compare`` runs the method on unless
    #: it is asked for by name (``None``: no limit)
    max_weights: ClassVar[Optional[int]] = None
    #: whether ``pyrobdl compare`` fits, on regression benchmark data, a network with a
    #: per-input variance head (``HeteroscedasticGaussian``) for this method; see
    #: the docs page "How the defaults were chosen"
    variance_head: ClassVar[bool] = False
    #: advice :func:`check_fit` adds when the fitted posterior has no epistemic spread
    collapse_hint: ClassVar[str] = ""

    def __init__(self, *, seed: Optional[int] = None, progress: bool = True):
        self.seed = check_seed(seed)
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be True or False, got {progress!r}")
        self.progress = progress

    def fit(self, model: BayesianNetwork, x=None, y=None) -> Posterior:
        """Fit ``model`` to ``(x, y)`` tensors (or arrays) or to a DataLoader of ``(x, y)``
        batches passed as ``x``; returns the fitted :class:`Posterior`."""
        if not isinstance(model, BayesianNetwork):
            raise TypeError(
                f"model must be a pyrobdl.BayesianNetwork, got {type(model).__name__}; wrap a torch "
                "network with pyrobdl.BayesianNetwork(net, prior=..., likelihood=...)"
            )
        if self.seed is not None:
            pyro.set_rng_seed(self.seed)
        data = Data(model, x, y)
        for site in model.latent_sites().values():  # weights need a prior on the real line
            if site.param is not None:
                _priors.check_weight_prior(site.name, torch.empty(site.shape), site.prior, real_only=True)
        check_scales(model, data)
        work = model.fresh_copy().to(data.device)
        work.input_shape = data.input_shape
        if self.seed is not None:
            reset_bayesian_parameters(work)
        posterior = self._fit(work, data)
        if not isinstance(posterior, Posterior):
            raise TypeError(f"{type(self).__name__}._fit must return a Posterior, got {type(posterior).__name__}")
        posterior.fit_info.setdefault("method", self.name)
        check_fit(posterior, data, hint=self.collapse_hint)
        return posterior

    def _fit(self, model: BayesianNetwork, data: "Data") -> Posterior:
        """The method itself: fit ``model`` (the template's own copy, on the data's device,
        already seeded) to ``data`` and return the posterior."""
        raise NotImplementedError(f"{type(self).__name__} must implement _fit(model, data)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed!r})"


# ---------------------------------------------------------------------------- seed rule
def reset_bayesian_parameters(model: BayesianNetwork) -> None:
    """Re-draw the Bayesian parameters of ``model`` with their layers' own
    ``reset_parameters()`` (the initialisation torch gives a new layer), under the current
    random state. Deterministic parameters (normalisation layers, a frozen feature
    extractor) and buffers are kept. Layers without ``reset_parameters`` keep their values.

    Example:
        >>> import torch, torch.nn as nn
        >>> from pyrobdl import BayesianNetwork
        >>> model = BayesianNetwork(nn.Linear(3, 2))
        >>> _ = torch.manual_seed(0); reset_bayesian_parameters(model); w0 = model.net.weight.clone()
        >>> _ = torch.manual_seed(0); reset_bayesian_parameters(model)
        >>> torch.equal(w0, model.net.weight)
        True
    """
    bayes = set(model.bayesian_parameters)
    with torch.no_grad():
        for mname, module in model.net.named_modules():
            own = [(n, f"{mname}.{n}" if mname else n, p) for n, p in module.named_parameters(recurse=False)]
            reset = getattr(module, "reset_parameters", None)
            if not own or not callable(reset) or not any(full in bayes for _, full, _ in own):
                continue
            keep = {n: p.detach().clone() for n, full, p in own if full not in bayes}
            buffers = {n: b.detach().clone() for n, b in module.named_buffers(recurse=False) if b is not None}
            reset()
            params = dict(module.named_parameters(recurse=False))
            for n, v in keep.items():
                params[n].copy_(v)
            for n, b in module.named_buffers(recurse=False):
                if n in buffers:
                    b.copy_(buffers[n])


# ---------------------------------------------------------------------------- fit checks
#: rows of the training data :func:`check_fit` predicts on, and predictive samples it draws
CHECK_ROWS = 512
CHECK_SAMPLES = 32
#: :func:`check_fit` warns when the learned noise is below this fraction of the residual std
NOISE_RATIO_WARNING = 1.0 / 3.0


#: the data's scale outside which :func:`check_scales` warns (std of a target; of an input feature
#: only above): the default priors and noise models assume standardised data (std about 1)
SCALE_WARNING = (1e-2, 1e2)


def check_scales(model: BayesianNetwork, data: "Data") -> None:
    """Warn when regression targets, or any input feature, are far from unit scale: the fan-in
    prior and the noise's prior and starting value assume standardised data, so at a scale of
    1e6 a fit returns a finite loss and a near-constant predictor without any other sign."""
    if data.x is None or data.num_data < 2:
        return
    lo, hi = SCALE_WARNING
    x = data.x.reshape(data.num_data, -1)
    x_std = float(x.std(0).max()) if x.is_floating_point() else 0.0
    problems = []
    if x_std > hi:
        problems.append(f"an input feature has std {x_std:.3g}")
    if getattr(model.likelihood, "task", None) == "regression" and data.y.is_floating_point():
        y_std = float(data.y.std())
        if y_std > hi or 0 < y_std < lo:
            problems.append(f"the targets have std {y_std:.3g}")
    if problems:
        warn_user(
            f"{' and '.join(problems)}: the default priors and noise model assume standardised data (std about 1), "
            "so the fit may underfit or return a near-constant predictor. Standardise x and y with the training "
            "data's mean and std (and convert predictions back), or give priors and likelihood scales that match "
            "the data."
        )


def check_fit(posterior: Posterior, data: "Data", *, hint: str = "") -> Dict[str, float]:
    r"""Look for the silent failures of a fit on (up to ``CHECK_ROWS``) training rows and
    warn, pointing at the user's line:

    * **no epistemic spread**: every predictive sample gives the same function (e.g. MC
      dropout whose weight decay drove the weights to zero) -- the predictive then claims
      certainty it does not have;
    * **noise far below the residuals**: the likelihood's learned noise (RMS of the
      aleatoric std) is below ``NOISE_RATIO_WARNING`` times the training residual std
      :math:`\sqrt{\overline{(y-\hat y)^2}}` -- the noise has not reached the residual scale
      (too few steps or too small a learning rate), so intervals are too narrow even on the
      training data.

    The random state is restored afterwards, so the check does not change what the user
    draws next. Returns the measured quantities (stored in ``posterior.fit_info["checks"]``).
    """
    x, y = data.sample(CHECK_ROWS)
    if x is None:
        return {}
    rng_devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), torch.no_grad():
        S = posterior.default_num_samples
        pred = posterior.predict(x, num_samples=None if S is None else min(S, CHECK_SAMPLES))
    checks: Dict[str, float] = {}
    name = type(posterior).__name__
    if pred.num_samples > 1:
        if isinstance(pred, RegressionPrediction):
            spread = float(pred.epistemic_variance.max())
        elif isinstance(pred, ClassificationPrediction):
            p = pred.probs_samples
            spread = float((p - p.mean(0, keepdim=True)).abs().max())
        else:  # pragma: no cover - a user prediction class
            spread = float("nan")
        checks["epistemic_spread"] = spread
        if spread == 0.0:
            warn_user(
                f"the fitted {name} has no epistemic spread: all {pred.num_samples} predictive samples give "
                "the same function on the training inputs, so its uncertainty is only the likelihood's noise. "
                + (hint or "Check the method's settings (regularisation, learning rate, number of steps).")
            )
    lik = posterior.model.likelihood
    if isinstance(pred, RegressionPrediction) and getattr(lik, "learns_noise", False) and y is not None:
        yy = y.reshape(pred.mean.shape).to(pred.mean.dtype)
        resid = float((yy - pred.mean).pow(2).mean().sqrt())
        noise = float(pred.aleatoric_variance.mean().sqrt())
        checks.update(residual_std=resid, noise_std=noise)
        if resid > 0 and noise < NOISE_RATIO_WARNING * resid:
            warn_user(
                f"the fitted {name}'s learned noise (std {noise:.3g}) is far below the training residual std "
                f"({resid:.3g}): the noise has not reached the residual scale, so predictive intervals are too "
                "narrow. Train longer (num_steps/epochs) or with a larger lr, or start the noise nearer the data's "
                "scale (e.g. likelihoods.Gaussian(init=...))."
            )
    posterior.fit_info["checks"] = checks
    return checks


# ---------------------------------------------------------------------------- memory
def memory_limit(device: torch.device) -> Optional[int]:
    """The memory a prediction may use on ``device``, in bytes: the GPU's total memory, or
    this machine's physical memory for the CPU (``None`` when it cannot be told)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def prediction_bytes(num_samples: int, num_weights: int, rows: int, outputs: int, itemsize: int = 4) -> int:
    r"""Bytes a prediction keeps: the :math:`S` latent draws (:math:`S\times D` values) and
    the sampled outputs and the prediction's tensors (about :math:`2\,S\times N\times k`)."""
    return num_samples * (num_weights + 2 * rows * outputs) * itemsize


def check_prediction_memory(model: BayesianNetwork, x: torch.Tensor, num_samples: int) -> None:
    """Refuse, before allocating, a prediction whose kept samples
    (:func:`prediction_bytes`, in ``x``'s dtype) cannot fit in memory. The network's output
    width is probed only when the estimate for one output is already above a thousandth of
    the memory, so an ordinary ``predict`` pays nothing for the check."""
    limit = memory_limit(x.device)
    if limit is None:
        return
    D, N, size = model.num_bayesian_parameters, x.shape[0], x.element_size()
    if prediction_bytes(num_samples, D, N, 1, size) * 1000 <= limit:
        return
    with torch.no_grad(), eval_mode(model.net):
        k = int(math.prod(model.net(x[:1]).shape[1:]))
    need = prediction_bytes(num_samples, D, N, k, size)
    if need > limit:
        raise ValueError(
            f"num_samples={num_samples} needs about {need / 2**30:,.1f} GiB for the predictive samples "
            f"({num_samples} x ({D} weights + 2 x {N} inputs x {k} outputs) values), more than the "
            f"{limit / 2**30:,.1f} GiB of {x.device.type} memory here; use fewer samples (a few hundred to a "
            "few thousand suffice for means and intervals) or predict on fewer inputs at a time"
        )


# ---------------------------------------------------------------------------- data
class Data:
    """Full-batch tensors or a DataLoader behind one interface.

    Attributes:
        x, y: the checked tensors (``None`` for a DataLoader).
        loader: the DataLoader (``None`` for tensors).
        num_data: the dataset size :math:`N`.
        device: the device of the data (the fit runs there).
        input_shape: the shape of one input row, ``x.shape[1:]``.
    """

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
            xb, yb = model.check_data(xb, yb)
            self.device = xb.device
            self.x, self.y = None, None
            self._first = (xb, yb)
            self.input_shape = tuple(xb.shape[1:])
            with torch.no_grad(), eval_mode(model.net):  # one output row: the targets' expected width
                self._out_row = model.net(xb[:1].to(model.device)).detach()
        else:
            if x is None or y is None:
                raise ValueError("fit needs inputs x and targets y (or a DataLoader yielding (x, y) batches)")
            x, y = model.check_data(x, y)
            self.x, self.y = x, y
            self.num_data = x.shape[0]
            self.device = x.device
            self.input_shape = tuple(x.shape[1:])

    @staticmethod
    def _unpack(batch):
        if not isinstance(batch, (list, tuple)) or len(batch) != 2:
            raise ValueError("the DataLoader must yield (x, y) pairs")
        return batch

    def sample(self, rows: int) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Up to ``rows`` training rows (evenly spaced; the first batch of a DataLoader)."""
        if self.loader is not None:
            xb, yb = self._first
            return xb[:rows], yb[:rows]
        if self.x is None:
            return None, None
        if self.num_data <= rows:
            return self.x, self.y
        idx = torch.linspace(0, self.num_data - 1, rows, device=self.x.device).long()
        return self.x[idx], self.y[idx]

    def batches(self, model: BayesianNetwork, batch_size: Optional[int], generator=None) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Endless stream of (x, y) batches on the data's device."""
        if self.loader is not None:
            # the first batch is fully validated (in __init__ and here, with a probe pass); every
            # later batch is checked on the loader's device before it moves (finite x of the fitted
            # row shape, targets the likelihood accepts: finite, labels in range, 0/1), which costs
            # no forward pass and, for a loader yielding CPU tensors, no device sync
            first = True
            epoch = 0
            while True:
                epoch += 1
                for k, batch in enumerate(self.loader):
                    xb, yb = self._unpack(batch)
                    if first:
                        xb, yb = model.check_data(xb.to(self.device), yb.to(self.device))
                        self._tshape, self._tdtype = yb.shape[1:], yb.dtype
                        first = False
                    else:
                        xb, yb = self._check_batch(model, xb, yb, k, epoch)
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

    def _check_batch(self, model: BayesianNetwork, xb, yb, k: int, epoch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """A later DataLoader batch, checked as the first was (without a forward pass), on the
        data's device in the model's dtype; errors name the batch."""
        try:
            xb = check_inputs(xb, "x", keep_integer=True)
            if tuple(xb.shape[1:]) != self.input_shape:
                raise ValueError(
                    f"x has rows of shape {tuple(xb.shape[1:])} but the first batch had {self.input_shape}; "
                    "every batch must have the same row shape"
                )
            yb = torch.as_tensor(yb) if not isinstance(yb, torch.Tensor) else yb
            if yb.dim() == 0 or yb.shape[0] != xb.shape[0]:
                raise ValueError(f"x has {xb.shape[0]} rows but y has shape {tuple(yb.shape)}; pass one target per row")
            yb = model.likelihood.check_target(yb, self._out_row.to(yb.device).expand(yb.shape[0], *self._out_row.shape[1:]))
        except (ValueError, TypeError) as e:
            raise type(e)(f"DataLoader batch {k + 1} of epoch {epoch}: {e}") from None
        xb = model.cast_inputs(xb.to(device=self.device))
        yb = yb.to(device=self.device, dtype=self._tdtype)
        if yb.shape[1:] != self._tshape:
            yb = yb.reshape((yb.shape[0],) + tuple(self._tshape))
        return xb, yb

    def steps_per_epoch(self, batch_size: Optional[int]) -> int:
        if self.loader is not None:
            return len(self.loader)
        if batch_size is None or batch_size >= self.num_data:
            return 1
        return self.num_data // batch_size

    def num_steps(self, num_steps: int, epochs: Optional[int], batch_size: Optional[int]) -> int:
        """``num_steps``, or ``epochs`` passes over the data in batches of ``batch_size``."""
        return num_steps if epochs is None else epochs * self.steps_per_epoch(batch_size)


def fit(model: BayesianNetwork, x=None, y=None, *, method: str = "mean-field", **options) -> Posterior:
    """Fit ``model`` to data with the inference method named ``method``.

    ``pyrobdl.fit(model, x, y, method="mean-field", num_steps=2000)`` is
    ``inference.MeanField(num_steps=2000).fit(model, x, y)``. Known names:
    see :func:`~pyrobdl.inference.registry.available_methods`. With no options every
    method uses its measured defaults (see the docs page "How the defaults were chosen").

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

r"""Observation models :math:`p(y \mid f_\theta(x))` for the network's output.

Each likelihood knows how many network outputs it needs, checks targets,
builds the observation distribution (vectorised over any leading sample
dimensions), declares its own latent variables (e.g. a learned noise scale)
and turns sampled outputs into a :mod:`~pyrobdl.prediction` object.

================================ ==================================== ========================================================
likelihood                       network output                       :math:`p(y\mid f)`
================================ ==================================== ========================================================
:class:`Gaussian`                :math:`\mu` (d)                      :math:`\mathcal N(y;\mu,\sigma^2)`, σ fixed or learned
:class:`HeteroscedasticGaussian` :math:`[\mu, \log\sigma^2]` (2d)     :math:`\mathcal N(y;\mu,\sigma^2(x))` (Kendall & Gal, 2017)
:class:`Categorical`             logits (C)                           :math:`\mathrm{softmax}(f)_y`
:class:`Bernoulli`               logit (d)                            :math:`\sigma(f)^y(1-\sigma(f))^{1-y}`
================================ ==================================== ========================================================

A network with one output gives targets of shape ``(N,)``; with ``d > 1``
outputs, ``(N, d)``.

References: A. Kendall and Y. Gal, *What Uncertainties Do We Need in Bayesian
Deep Learning for Computer Vision?* (NeurIPS 2017).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions import constraints

from ._util import as_tensor, check_finite, check_positive_float
from .prediction import ClassificationPrediction, Prediction, RegressionPrediction

__all__ = [
    "Likelihood",
    "Gaussian",
    "HeteroscedasticGaussian",
    "Categorical",
    "Bernoulli",
    "get_likelihood",
    "register_likelihood",
    "available_likelihoods",
    "CategoricalLogitNoise",
    "HeteroscedasticCategorical",
]

_LIKELIHOODS: Dict[str, type] = {}


def _register(cls):
    _LIKELIHOODS[cls.__name__] = cls
    return cls


class Likelihood:
    r"""Base class of observation models.

    Subclasses set :attr:`task` (``"regression"`` or ``"classification"``),
    implement :meth:`dist` and :meth:`prediction`, and, when the model has
    its own latent variables (a learned noise scale), :meth:`latent_priors`.

    For network outputs :math:`f = f_\theta(x)` of shape ``(..., N, k)`` (any
    leading sample dimensions), :meth:`log_prob` returns the per-point
    :math:`\log p(y_n\mid f_n)` of shape ``(..., N)``, and :meth:`prediction`
    turns ``S`` sampled outputs into a :class:`~pyrobdl.prediction.Prediction`.

    Example:
        The interface, shown on a fixed-noise Gaussian:

        >>> import torch
        >>> lik = Gaussian(scale=1.0)
        >>> out = torch.zeros(3, 1)                     # N=3 points, one output each
        >>> lik.dist(out, {}).batch_shape
        torch.Size([3])
        >>> lik.log_prob(out, torch.zeros(3), {})       # -log(2 pi) / 2 each
        tensor([-0.9189, -0.9189, -0.9189])
        >>> pred = lik.prediction(out.expand(5, 3, 1), {})  # S=5 samples
        >>> pred.mean.shape
        torch.Size([3])
    """

    task: str = "regression"
    #: outputs per target dimension (2 for mean + log-variance)
    outputs_per_target: int = 1

    # -- latent variables -----------------------------------------------------
    def latent_priors(self, *, dtype: torch.dtype, device) -> Dict[str, dist.TorchDistribution]:
        """Priors of the likelihood's own latent variables, keyed by short name."""
        return {}

    def latent_supports(self) -> Dict[str, constraints.Constraint]:
        return {}

    def latent_init(self, y: Optional[torch.Tensor] = None) -> Dict[str, float]:
        """Starting values of the likelihood's latents for gradient-based fits (variational
        inference, MC dropout, ensembles), given the training targets ``y`` when known (a
        noise scale starts relative to their spread); a latent not listed starts at its
        prior median."""
        return {}

    @property
    def learns_noise(self) -> bool:
        """Whether the fit learns the observation noise (a latent noise scale or a variance
        head); :func:`~pyrobdl.inference.base.check_fit` then checks that it reached the
        residual scale."""
        return False

    # -- targets and outputs --------------------------------------------------
    def event_shape(self, out: torch.Tensor) -> torch.Size:
        """Shape of one target given a network output ``out`` of shape (..., N, k)."""
        k = out.shape[-1] // self.outputs_per_target
        return torch.Size(()) if k == 1 else torch.Size((k,))

    def check_output(self, out: torch.Tensor) -> None:
        if out.dim() < 2:
            raise ValueError(
                f"the network must return a (N, outputs) tensor for {type(self).__name__}, "
                f"got shape {tuple(out.shape)}"
            )

    def check_target(self, y, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Validate targets (and, given one output row batch, their width) and
        return them in the shape the likelihood scores: ``(N, *event)``."""
        raise NotImplementedError

    def _reshape_target(self, y: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
        if out is None:
            return y
        ev = self.event_shape(out)
        want = (y.shape[0],) + tuple(ev)
        if tuple(y.shape) == want:
            return y
        if y.numel() == math.prod(want) and y.dim() == len(want) + 1 and y.shape[-1] == 1:
            return y.reshape(want)
        n_out = out.shape[-1]
        raise ValueError(
            f"{type(self).__name__} with a network of {n_out} output(s) scores targets of shape "
            f"(N, {', '.join(map(str, ev)) or ''}) but y has shape {tuple(y.shape)}; "
            f"{self._width_hint(y)}"
        )

    def _width_hint(self, y: torch.Tensor) -> str:
        d = 1 if y.dim() == 1 else int(math.prod(y.shape[1:]))
        return f"give the network's last layer {d * self.outputs_per_target} output(s)"

    # -- distributions ----------------------------------------------------------
    def dist(self, out: torch.Tensor, latents: Dict[str, torch.Tensor]) -> dist.TorchDistribution:
        """Observation distribution with ``batch_shape == out.shape[:-1]`` and the
        target's event shape."""
        raise NotImplementedError

    def log_prob(self, out: torch.Tensor, y: torch.Tensor, latents: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-point log-likelihood, shape ``out.shape[:-1]``."""
        return self.dist(out, latents).log_prob(y)

    def prediction(self, out: torch.Tensor, latents: Dict[str, torch.Tensor]) -> Prediction:
        """Prediction object from sampled outputs ``(S, N, k)`` and latents ``(S, ...)``."""
        raise NotImplementedError

    # -- serialization --------------------------------------------------------
    def to_config(self) -> dict:
        return {"type": type(self).__name__}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_config().items() if k != "type")
        return f"{type(self).__name__}({args})"


def _expand_latent(v: torch.Tensor, event_dims: int) -> torch.Tensor:
    """A per-sample scalar of shape (...,) -> (..., 1, *1s) to broadcast against (..., N, *event)."""
    return v.reshape(v.shape + (1,) * (1 + event_dims))


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _normal_log_prob(y: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, event_dims: int) -> torch.Tensor:
    r""":math:`\log\mathcal N(y\mid\mu,\sigma^2) = -\frac{(y-\mu)^2}{2\sigma^2} - \log\sigma - \tfrac12\log 2\pi`,
    summed over the last ``event_dims`` dimensions.

    The same operations, in the same order, as :meth:`torch.distributions.Normal.log_prob`
    (so the same values), without building a distribution and validating its arguments: the
    training loops call this every step, on targets checked once by ``check_target`` and
    scales that are positive by construction."""
    lp = -((y - loc) ** 2) / (2 * scale**2) - scale.log() - _HALF_LOG_2PI
    return lp.sum(tuple(range(-event_dims, 0))) if event_dims else lp


class _GaussianBase(Likelihood):
    task = "regression"

    def check_target(self, y, out=None):
        y = as_tensor(y, "y")
        if not y.is_floating_point():
            y = y.to(torch.get_default_dtype())
        check_finite(y, "y")
        if y.dim() == 0:
            raise ValueError("y must have one row per input, got a scalar")
        return self._reshape_target(y, out)

    def _squeeze(self, t: torch.Tensor) -> torch.Tensor:
        return t.squeeze(-1) if t.shape[-1] == 1 else t


@_register
class Gaussian(_GaussianBase):
    r"""Homoscedastic Gaussian noise :math:`y \sim \mathcal N(f_\theta(x), \sigma^2)`.

    Args:
        scale: the noise standard deviation σ. ``None`` (default) learns it:
            it becomes a latent variable with prior
            :math:`\sigma\sim\text{HalfNormal}(\text{scale\_prior})` inferred
            together with the weights (a point estimate for maximum-likelihood
            methods). A float fixes it.
        scale_prior: scale of the half-normal prior on σ when it is learned.
        init: starting value of a learned σ for gradient-based fits, as a
            fraction of the training targets' standard deviation (so the start
            does not depend on the units of ``y``; in the units of ``y`` when
            the targets are not known). The default 0.1 starts the noise at a
            tenth of the targets' spread: the fit explains the data with the
            weights before the noise absorbs the residuals (see the docs page
            "How the defaults were chosen"). The noise then moves with its own
            learning rate (:data:`pyrobdl.inference.optim.LIKELIHOOD_LR`), so it
            reaches the residual scale whatever the network's ``lr``.

    Example::

        likelihoods.Gaussian()            # noise learned
        likelihoods.Gaussian(scale=0.1)   # noise fixed
    """

    def __init__(self, scale: Optional[float] = None, *, scale_prior: float = 1.0, init: float = 0.1):
        self.scale = None if scale is None else check_positive_float(scale, "scale")
        self.scale_prior = check_positive_float(scale_prior, "scale_prior")
        self.init = check_positive_float(init, "init")

    @property
    def learned(self) -> bool:
        return self.scale is None

    def latent_priors(self, *, dtype, device):
        if not self.learned:
            return {}
        return {"sigma": dist.HalfNormal(torch.tensor(self.scale_prior, dtype=dtype, device=device))}

    def latent_supports(self):
        return {"sigma": constraints.positive} if self.learned else {}

    def latent_init(self, y: Optional[torch.Tensor] = None):
        if not self.learned:
            return {}
        scale = 1.0
        if y is not None and y.is_floating_point() and y.numel() > 1:
            spread = float(y.detach().std())
            if math.isfinite(spread) and spread > 0:
                scale = spread
        return {"sigma": self.init * scale}

    @property
    def learns_noise(self) -> bool:
        return self.learned

    def _sigma(self, latents, ref: torch.Tensor, event_dims: int) -> torch.Tensor:
        if not self.learned:
            return torch.tensor(self.scale, dtype=ref.dtype, device=ref.device)
        if "sigma" in latents:
            return _expand_latent(latents["sigma"], event_dims)
        if "log_sigma" in latents:
            return _expand_latent(latents["log_sigma"].exp(), event_dims)
        raise ValueError("the learned noise scale 'sigma' is missing; pass it in latents")

    def dist(self, out, latents):
        loc = self._squeeze(out)
        ev = loc.dim() - out.dim() + 1
        sigma = self._sigma(latents, loc, ev)
        return dist.Normal(loc, sigma).to_event(ev)

    def log_prob(self, out, y, latents):
        loc = self._squeeze(out)
        ev = loc.dim() - out.dim() + 1
        return _normal_log_prob(y, loc, self._sigma(latents, loc, ev), ev)

    def prediction(self, out, latents):
        loc = self._squeeze(out)
        ev = loc.dim() - out.dim() + 1
        sigma = self._sigma(latents, loc, ev).expand_as(loc)
        return RegressionPrediction(loc=loc, scale=sigma)

    def to_config(self):
        return {"type": "Gaussian", "scale": self.scale, "scale_prior": self.scale_prior, "init": self.init}


@_register
class HeteroscedasticGaussian(_GaussianBase):
    r"""Input-dependent Gaussian noise (Kendall & Gal, 2017).

    The network outputs :math:`2d` values: the mean :math:`\mu(x)` and the
    log-variance :math:`s(x) = \log\sigma^2(x)`. The negative log-likelihood is

    .. math::

        -\log p(y\mid x) = \frac{\lVert y-\mu(x)\rVert^2}{2\sigma^2(x)} + \tfrac12\log\sigma^2(x) + \tfrac12\log 2\pi,

    and predicting :math:`\log\sigma^2` keeps training stable.

    Args:
        min_log_variance, max_log_variance: the predicted log-variance is
            clamped to this range for numerical safety.

    Example:
        >>> import torch
        >>> lik = HeteroscedasticGaussian()
        >>> out = torch.tensor([[0.5, 0.0], [1.0, -2.0]])   # [mu, log sigma^2] for 2 points
        >>> lik.log_prob(out, torch.tensor([0.5, 1.0]), {})
        tensor([-0.9189,  0.0811])
        >>> lik.prediction(out.unsqueeze(0), {}).aleatoric_variance
        tensor([1.0000, 0.1353])

    References:
        A. Kendall and Y. Gal, *What Uncertainties Do We Need in Bayesian Deep
        Learning for Computer Vision?* (NeurIPS 2017).
    """

    outputs_per_target = 2

    @property
    def learns_noise(self) -> bool:
        return True

    def __init__(self, *, min_log_variance: float = -20.0, max_log_variance: float = 20.0):
        self.min_log_variance = float(min_log_variance)
        self.max_log_variance = float(max_log_variance)

    def check_output(self, out):
        super().check_output(out)
        if out.shape[-1] % 2:
            raise ValueError(
                f"HeteroscedasticGaussian needs 2*d network outputs (d means, then d log-variances), "
                f"got {out.shape[-1]}; give the last layer an even number of outputs"
            )

    def split(self, out):
        d = out.shape[-1] // 2
        loc = self._squeeze(out[..., :d])
        log_var = self._squeeze(out[..., d:]).clamp(self.min_log_variance, self.max_log_variance)
        return loc, (0.5 * log_var).exp()

    def dist(self, out, latents):
        self.check_output(out)
        loc, scale = self.split(out)
        return dist.Normal(loc, scale).to_event(loc.dim() - out.dim() + 1)

    def log_prob(self, out, y, latents):
        self.check_output(out)
        loc, scale = self.split(out)
        return _normal_log_prob(y, loc, scale, loc.dim() - out.dim() + 1)

    def prediction(self, out, latents):
        loc, scale = self.split(out)
        return RegressionPrediction(loc=loc, scale=scale)

    def to_config(self):
        return {
            "type": "HeteroscedasticGaussian",
            "min_log_variance": self.min_log_variance,
            "max_log_variance": self.max_log_variance,
        }


@_register
class Categorical(Likelihood):
    r"""Softmax classification :math:`p(y=c\mid x) = \mathrm{softmax}(f_\theta(x))_c`.

    Targets are integer class labels in :math:`[0, C)`; the network returns
    :math:`C` logits.

    Example:
        >>> import torch
        >>> lik = Categorical()
        >>> out = torch.tensor([[2.0, 0.0, 0.0]])   # one point, C=3 logits
        >>> lik.log_prob(out, torch.tensor([0]), {})
        tensor([-0.2395])
        >>> lik.prediction(out.unsqueeze(0), {}).probs
        tensor([[0.7870, 0.1065, 0.1065]])
    """

    task = "classification"

    def event_shape(self, out):
        return torch.Size(())

    def check_output(self, out):
        super().check_output(out)
        if out.shape[-1] < 2:
            raise ValueError(
                f"Categorical needs one logit per class (at least 2 outputs), got {out.shape[-1]}; "
                "use Bernoulli for a single logit"
            )

    def check_target(self, y, out=None):
        y = as_tensor(y, "y")
        if y.is_floating_point():
            check_finite(y, "y")
            raise TypeError(
                "Categorical targets must be integer class labels (dtype long), got floating-point "
                "values; convert with y.long() if they are whole numbers"
            )
        if y.dtype == torch.bool:
            y = y.long()
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.dim() != 1:
            raise ValueError(f"Categorical targets must have shape (N,), got {tuple(y.shape)}")
        y = y.long()
        if out is not None:
            self.check_output(out)
            C = out.shape[-1]
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= C):
                raise ValueError(
                    f"class labels must lie in [0, {C}) for a network with {C} outputs; "
                    f"got labels in [{int(y.min())}, {int(y.max())}]"
                )
        return y

    def dist(self, out, latents):
        return dist.Categorical(logits=out)

    def log_prob(self, out, y, latents):
        return torch.log_softmax(out, -1).gather(-1, y.expand(out.shape[:-1]).unsqueeze(-1)).squeeze(-1)

    def prediction(self, out, latents):
        return ClassificationPrediction(probs=torch.softmax(out, -1))


@_register
class Bernoulli(Likelihood):
    r"""Binary classification :math:`p(y=1\mid x) = \mathrm{sigmoid}(f_\theta(x))`.

    Targets are 0/1 (ints, bools or floats); one logit per target.

    Example:
        >>> import torch
        >>> lik = Bernoulli()
        >>> out = torch.tensor([[0.0], [2.0]])      # two points, one logit each
        >>> y = lik.check_target([0, 1], out)
        >>> lik.log_prob(out, y, {})
        tensor([-0.6931, -0.1269])
        >>> lik.prediction(out.unsqueeze(0), {}).probs   # [p(y=0), p(y=1)]
        tensor([[0.5000, 0.5000],
                [0.1192, 0.8808]])
    """

    task = "classification"

    def check_target(self, y, out=None):
        y = as_tensor(y, "y")
        if y.dtype == torch.bool:
            y = y.long()
        if y.is_floating_point():
            check_finite(y, "y")
        if y.numel() and not bool(((y == 0) | (y == 1)).all()):
            raise ValueError("Bernoulli targets must be 0 or 1; found other values in y")
        y = y.to(torch.get_default_dtype() if not y.is_floating_point() else y.dtype)
        return self._reshape_target(y, out)

    def _squeeze(self, t):
        return t.squeeze(-1) if t.shape[-1] == 1 else t

    def dist(self, out, latents):
        logits = self._squeeze(out)
        return dist.Bernoulli(logits=logits).to_event(logits.dim() - out.dim() + 1)

    def log_prob(self, out, y, latents):
        logits = self._squeeze(out)
        lp = -F.binary_cross_entropy_with_logits(logits, y.expand_as(logits), reduction="none")
        ev = logits.dim() - out.dim() + 1
        return lp.sum(-1) if ev else lp

    def prediction(self, out, latents):
        p1 = torch.sigmoid(self._squeeze(out))
        return ClassificationPrediction(probs=torch.stack([1 - p1, p1], -1))


def get_likelihood(cfg) -> Likelihood:
    """Build a likelihood from a saved config dict (or return a Likelihood unchanged).

    Example:
        >>> get_likelihood({"type": "Gaussian", "scale": 0.1})
        Gaussian(scale=0.1, scale_prior=1.0, init=0.1)
        >>> get_likelihood(Bernoulli().to_config())
        Bernoulli()
    """
    if isinstance(cfg, Likelihood):
        return cfg
    cfg = dict(cfg)
    t = cfg.pop("type", None)
    if t not in _LIKELIHOODS:
        raise ValueError(
            f"unknown likelihood {t!r}; known: {', '.join(sorted(_LIKELIHOODS))} (register a custom "
            "likelihood class with @pyrobdl.likelihoods.register_likelihood before loading)"
        )
    return _LIKELIHOODS[t](**cfg)


def register_likelihood(cls):
    """Class decorator: make a custom likelihood loadable by :func:`pyrobdl.load`."""
    return _register(cls)


def available_likelihoods() -> List[str]:
    """Names of the registered likelihood classes (for error messages and configs).

    Example:
        >>> "Gaussian" in available_likelihoods()
        True
    """
    return sorted(_LIKELIHOODS)


from ._util import check_positive_int as _check_positive_int  # noqa: E402


@register_likelihood
class CategoricalLogitNoise(Likelihood):
    r"""Softmax classification with learned, input-dependent logit noise
    (aleatoric uncertainty for classification; Kendall & Gal, 2017, Sec. 3.3).

    The network outputs :math:`C` logits :math:`f(x)` and log-variances
    :math:`s(x) = \log\sigma^2(x)` (:math:`C` of them, one per logit, as in
    Kendall & Gal; or one shared by all logits with ``shared_variance=True``),
    i.e. :math:`2C` (or :math:`C+1`) outputs. The logits are distorted by
    Gaussian noise and the likelihood is the softmax averaged over the noise,
    estimated with :math:`T` Monte Carlo draws:

    .. math::

        \hat f_t = f(x) + \sigma(x)\circ\varepsilon_t,\quad \varepsilon_t\sim\mathcal N(0, I),\qquad
        p(y = c\mid x) \approx \frac1T\sum_{t=1}^T \mathrm{softmax}(\hat f_t)_c,

    so :math:`\log p(y\mid x) = \operatorname{logsumexp}_t \log\mathrm{softmax}(\hat f_t)_y - \log T`.
    The noise is reparameterised, so gradients reach both :math:`f` and
    :math:`\sigma`; the network learns a large :math:`\sigma(x)` where the labels
    are noisy.

    Predictions (:class:`~pyrobdl.prediction.ClassificationPrediction`) hold,
    per posterior sample (weight draw, dropout mask or ensemble member), the
    noise-averaged probabilities. The expected entropy over samples therefore
    contains the logit noise (aleatoric), and the mutual information between
    label and sample measures only the disagreement of the samples (epistemic).

    Common random numbers: with ``fixed_noise=True`` (default) the draws
    :math:`\varepsilon_{t,n}` come from a generator seeded with ``noise_seed``
    and depend only on ``(T, N, C)`` and the row index :math:`n`, so the
    log-likelihood is a deterministic function of the network output. HMC/NUTS
    need this (their potential energy must be deterministic); VI, MC dropout
    and ensembles work with either setting (minibatch shuffling already varies
    the noise seen by each example). ``fixed_noise=False`` draws fresh noise
    at every call, independently for every sample dimension.

    Args:
        num_draws: :math:`T`, Monte Carlo draws of the distorted logits.
        shared_variance: one log-variance for all logits (:math:`C+1`
            outputs) instead of one per logit (:math:`2C` outputs).
        fixed_noise: reuse the same seeded noise at every call (see above).
        noise_seed: seed of the fixed noise.
        min_log_variance, max_log_variance: clamp of the predicted
            log-variance, for numerical safety.

    Example::

        net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2 * 3))   # 3 classes
        model = BayesianNetwork(net, likelihood=likelihoods.CategoricalLogitNoise(num_draws=50))
        pred = pyrobdl.fit(model, x, y, method="ensemble").predict(x_test)
        pred.expected_entropy, pred.mutual_information   # aleatoric, epistemic

    References:
        A. Kendall and Y. Gal, *What Uncertainties Do We Need in Bayesian Deep
        Learning for Computer Vision?* (NeurIPS 2017), Eq. 12.
    """

    task = "classification"
    #: elements of one batch of distorted logits (T * rows * C) before chunking
    _chunk_elements = 2**24

    def __init__(
        self,
        *,
        num_draws: int = 50,
        shared_variance: bool = False,
        fixed_noise: bool = True,
        noise_seed: int = 0,
        min_log_variance: float = -20.0,
        max_log_variance: float = 10.0,
    ):
        self.num_draws = _check_positive_int(num_draws, "num_draws")
        self.shared_variance = bool(shared_variance)
        self.fixed_noise = bool(fixed_noise)
        if isinstance(noise_seed, bool) or not isinstance(noise_seed, int):
            raise TypeError(f"noise_seed must be an integer, got {noise_seed!r}")
        self.noise_seed = int(noise_seed)
        self.min_log_variance = float(min_log_variance)
        self.max_log_variance = float(max_log_variance)
        if not self.min_log_variance < self.max_log_variance:
            raise ValueError(
                f"min_log_variance ({min_log_variance}) must be smaller than max_log_variance ({max_log_variance})"
            )

    @property
    def deterministic(self) -> bool:
        """Whether :meth:`log_prob` is a deterministic function of the output
        (``fixed_noise=True``), as HMC/NUTS require."""
        return self.fixed_noise

    def num_classes(self, out: torch.Tensor) -> int:
        """:math:`C` for a network output of width ``2C`` (or ``C + 1``)."""
        k = out.shape[-1]
        return k - 1 if self.shared_variance else k // 2

    def event_shape(self, out):
        return torch.Size(())

    def check_output(self, out):
        super().check_output(out)
        k = out.shape[-1]
        if self.shared_variance:
            if k < 3:
                raise ValueError(
                    f"CategoricalLogitNoise(shared_variance=True) needs C logits + 1 log-variance "
                    f"(at least 3 outputs), got {k}; give the last layer C + 1 outputs"
                )
        elif k < 4 or k % 2:
            raise ValueError(
                f"CategoricalLogitNoise needs C logits then C log-variances (2*C outputs, C >= 2), got {k}; "
                "give the last layer 2*C outputs, or pass shared_variance=True for C + 1 outputs"
            )

    def check_target(self, y, out=None):
        y = Categorical().check_target(y)
        if out is not None:
            self.check_output(out)
            C = self.num_classes(out)
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= C):
                raise ValueError(
                    f"class labels must lie in [0, {C}) for CategoricalLogitNoise with {out.shape[-1]} "
                    f"outputs ({C} classes); got labels in [{int(y.min())}, {int(y.max())}]"
                )
        return y

    def split(self, out: torch.Tensor):
        """``(logits, std)`` of the output; ``std`` broadcasts against ``logits``."""
        C = self.num_classes(out)
        logits = out[..., :C]
        log_var = out[..., C:].clamp(self.min_log_variance, self.max_log_variance)
        return logits, (0.5 * log_var).exp()

    def _noise(self, shape, ref: torch.Tensor) -> torch.Tensor:
        if not self.fixed_noise:
            return torch.randn(shape, dtype=ref.dtype, device=ref.device)
        # Drawn once per (shape, device, dtype) on the CPU -- the same numbers on every
        # device -- and cached (a few entries), so that compiled potentials (torch.compile
        # in HMC) see a constant instead of a generator.
        key = (tuple(shape), str(ref.device), ref.dtype)
        cache = self.__dict__.setdefault("_noise_cache", {})
        eps = cache.get(key)
        if eps is None:
            g = torch.Generator().manual_seed(self.noise_seed)
            eps = torch.randn(tuple(shape), generator=g, dtype=torch.float64).to(ref.device, ref.dtype)
            while len(cache) >= 4:
                cache.pop(next(iter(cache)))
            cache[key] = eps
        return eps

    def log_probs(self, out: torch.Tensor) -> torch.Tensor:
        r"""Log of the noise-averaged class probabilities,
        :math:`\log\frac1T\sum_t\mathrm{softmax}(\hat f_t)`, shape ``out.shape[:-1] + (C,)``.

        Leading dimensions are processed in chunks of at most about
        ``2**24`` distorted-logit elements to bound memory."""
        self.check_output(out)
        logits, std = self.split(out)
        T, C = self.num_draws, logits.shape[-1]
        lead, rows = logits.shape[:-2], logits.shape[-2]
        fixed = self._noise((T, rows, C), logits) if self.fixed_noise else None
        flat_logits = logits.reshape((-1, rows, C))
        flat_std = std.reshape((-1, rows, std.shape[-1]))
        B = flat_logits.shape[0]
        step = max(1, self._chunk_elements // max(T * rows * C, 1))
        parts = []
        for b0 in range(0, B, step):
            lg, sd = flat_logits[b0 : b0 + step], flat_std[b0 : b0 + step]
            eps = fixed.unsqueeze(1) if fixed is not None else self._noise((T,) + lg.shape, lg)
            z = lg.unsqueeze(0) + sd.unsqueeze(0) * eps
            parts.append(torch.logsumexp(torch.log_softmax(z, -1), 0) - math.log(T))
        res = parts[0] if len(parts) == 1 else torch.cat(parts, 0)
        return res.reshape(lead + (rows, C))

    def dist(self, out, latents):
        return dist.Categorical(logits=self.log_probs(out))

    def log_prob(self, out, y, latents):
        lp = self.log_probs(out)
        return lp.gather(-1, y.expand(lp.shape[:-1]).unsqueeze(-1)).squeeze(-1)

    def prediction(self, out, latents):
        return ClassificationPrediction(probs=self.log_probs(out).exp())

    def to_config(self):
        return {
            "type": "CategoricalLogitNoise",
            "num_draws": self.num_draws,
            "shared_variance": self.shared_variance,
            "fixed_noise": self.fixed_noise,
            "noise_seed": self.noise_seed,
            "min_log_variance": self.min_log_variance,
            "max_log_variance": self.max_log_variance,
        }


#: Alias of :class:`CategoricalLogitNoise` (the classification counterpart of
#: :class:`HeteroscedasticGaussian`).
HeteroscedasticCategorical = CategoricalLogitNoise

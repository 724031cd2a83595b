r"""Prediction objects: one interface for every inference method.

Every posterior in pyrobdl (SVI, MCMC, MC dropout, deep ensembles) answers
``posterior.predict(x, num_samples=S)`` with one of the classes below. They hold
the *sampled likelihood parameters* -- one set per posterior sample, dropout
mask or ensemble member -- and derive every summary from them, so that methods
are compared on equal terms.

Regression (a mixture of Gaussians, one component per sample :math:`s`):

.. math::

    p(y \mid x) \approx \frac{1}{S} \sum_{s=1}^S \mathcal N\big(y;\ \mu_s(x),\ \sigma_s^2(x)\big),
    \qquad
    \mu^* = \frac1S\sum_s \mu_s,\qquad
    \sigma^{*2} = \underbrace{\frac1S\sum_s \sigma_s^2}_{\text{aleatoric}}
    + \underbrace{\frac1S\sum_s (\mu_s-\mu^*)^2}_{\text{epistemic}}

(the law of total variance; Lakshminarayanan et al., 2017; Kendall & Gal, 2017).

Classification (one probability vector per sample):

.. math::

    \bar p = \frac1S\sum_s p_s,\qquad
    \underbrace{H[\bar p]}_{\text{predictive entropy}} =
    \underbrace{\frac1S\sum_s H[p_s]}_{\text{expected entropy (aleatoric)}} +
    \underbrace{I[y, \theta]}_{\text{mutual information (epistemic)}}

(Houlsby et al., 2011, "BALD"; Gal, 2016).

Both: :meth:`Prediction.log_prob` is the per-point log predictive density
:math:`\log \frac1S\sum_s p(y\mid x,\theta_s)`, computed with ``logsumexp``.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch

__all__ = ["Prediction", "RegressionPrediction", "ClassificationPrediction", "mixture_quantile",
           "mixture_quantile_batch", "ndtr"]

_LOG_2PI = math.log(2 * math.pi)
#: class probabilities must sum to one within this (or 16 machine epsilons of their dtype)
PROB_SUM_ATOL = 1e-4
_INV_SQRT_2PI = 1.0 / math.sqrt(2 * math.pi)
_SQRT1_2 = math.sqrt(0.5)
#: elements (samples x points x probabilities) per pass of :func:`mixture_quantile_batch`
_CHUNK = 1 << 21


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) over the last dim; 0·log 0 = 0."""
    return -(torch.special.xlogy(probs, probs)).sum(-1)


def ndtr(z: torch.Tensor) -> torch.Tensor:
    r"""Standard normal CDF :math:`\Phi(z) = \tfrac12\operatorname{erfc}(-z/\sqrt2)`, accurate to
    a few ulps relative in the lower tail too (``torch.special.ndtr`` of torch 2.x loses relative
    accuracy below :math:`z\approx-5` and returns 0 below :math:`z\approx-8.3`); also faster.

    Example:
        >>> f"{float(ndtr(torch.tensor(-10.0, dtype=torch.float64))):.6e}"
        '7.619853e-24'
    """
    return 0.5 * torch.erfc(-_SQRT1_2 * z)


def _quantile_chunk(loc: torch.Tensor, scale: torch.Tensor, p: torch.Tensor, max_iter: int) -> torch.Tensor:
    """Safeguarded Newton for a batch of probabilities ``p`` (D, M) against the components
    ``loc``/``scale`` (S, M); see :func:`mixture_quantile_batch`."""
    zq = torch.special.ndtri(p)
    loc, scale = loc.unsqueeze(0), scale.unsqueeze(0)
    if loc.shape[1] == 1:
        return loc[:, 0] + scale[:, 0] * zq
    comp = loc + scale * zq.unsqueeze(1)
    lo, hi = comp.min(1).values, comp.max(1).values
    mean = loc.mean(1)
    std = torch.sqrt((scale * scale).mean(1) + loc.var(1, unbiased=False))
    x = torch.minimum(torch.maximum(mean + std * zq, lo), hi)
    upper = p > 0.5
    flip = torch.where(upper, -1.0, 1.0).to(p.dtype).unsqueeze(1)
    tail = torch.where(upper, 1.0 - p, p)  # exact for p >= 0.5 (Sterbenz)
    tol = 1e-13 * tail
    done = torch.zeros_like(x, dtype=torch.bool)
    for _ in range(max_iter):
        z = (x.unsqueeze(1) - loc) / scale
        t = ndtr(flip * z).mean(1)  # F(x), or 1 - F(x) in the upper half
        diff = torch.where(upper, tail - t, t - tail)  # sign of F(x) - p either way
        dens = (torch.exp(-0.5 * z * z) * _INV_SQRT_2PI / scale).mean(1)
        lo = torch.where(diff < 0, x, lo)
        hi = torch.where(diff > 0, x, hi)
        step = x - diff / dens
        small = (step - x).abs() <= 1e-13 * (1.0 + x.abs())
        done = done | (diff.abs() <= tol) | (hi - lo <= 1e-13 * (1.0 + x.abs())) | (small & (diff.abs() <= 1e-6 * tail))
        if bool(done.all()):
            break
        ok = torch.isfinite(step) & (step > lo) & (step < hi)
        x = torch.where(done, x, torch.where(ok, step, 0.5 * (lo + hi)))
    return x


def mixture_quantile_batch(loc: torch.Tensor, scale: torch.Tensor, p: torch.Tensor, *, max_iter: int = 100) -> torch.Tensor:
    r"""Quantiles :math:`F_m^{-1}(p_{d,m})` of the equal-weight Gaussian mixtures of the columns
    of ``loc``/``scale`` (S, M) at the probabilities ``p`` (D, M), one per element, by Newton's
    method safeguarded with bisection inside the bracket of the smallest and largest component
    quantiles, batched and chunked. Accurate in the far tails too: above :math:`p=\frac12` it solves
    :math:`1-F(x) = 1-p` with the upper-tail CDF, and it stops on a *relative* probability error
    of :math:`10^{-13}` (or a bracket or Newton step below :math:`10^{-13}(1+|x|)`), so e.g.
    :math:`p = 10^{-15}` is solved to full precision, not to an absolute :math:`10^{-14}`.

    Example:
        >>> loc, scale = torch.tensor([[-1.0], [1.0]]), torch.ones(2, 1)
        >>> mixture_quantile_batch(loc, scale, torch.tensor([[0.5], [0.975]]))
        tensor([[0.0000],
                [2.6461]])
    """
    S, M = loc.shape
    D = p.shape[0]
    out = torch.empty((D, M), dtype=loc.dtype, device=loc.device)
    m_step = M if S * M <= _CHUNK else max(1, _CHUNK // S)
    d_step = max(1, _CHUNK // (S * m_step))
    for m0 in range(0, M, m_step):
        cols = slice(m0, m0 + m_step)
        for d0 in range(0, D, d_step):
            rows = slice(d0, d0 + d_step)
            out[rows, cols] = _quantile_chunk(loc[:, cols], scale[:, cols], p[rows, cols], max_iter)
    return out


def mixture_quantile(loc: torch.Tensor, scale: torch.Tensor, q: float, *, max_iter: int = 100) -> torch.Tensor:
    r"""Elementwise ``q``-quantile of the equal-weight Gaussian mixture
    :math:`\frac1S\sum_s\mathcal N(\mu_s,\sigma_s^2)` (``loc``/``scale`` of shape ``(S, ...)``):
    :func:`mixture_quantile_batch` with one probability for every element.

    Solves :math:`F(x) = \frac1S\sum_s\Phi\big((x-\mu_s)/\sigma_s\big) = q`, with
    :math:`\Phi` the standard normal CDF. Used by
    :meth:`RegressionPrediction.quantile` and :meth:`RegressionPrediction.interval`.

    Example:
        >>> import torch
        >>> loc, scale = torch.tensor([[-1.0], [1.0]]), torch.ones(2, 1)   # S=2, N=1
        >>> mixture_quantile(loc, scale, 0.5)
        tensor([0.])
        >>> mixture_quantile(loc, scale, 0.975)     # wider than one component's 1.96
        tensor([2.6461])
    """
    S = loc.shape[0]
    shape = loc.shape[1:]
    p = torch.full((1, math.prod(shape)), float(q), dtype=loc.dtype, device=loc.device)
    out = mixture_quantile_batch(loc.reshape(S, -1), scale.expand_as(loc).reshape(S, -1), p, max_iter=max_iter)
    return out[0].reshape(shape)


def _sample_field(key: str, doc: str) -> property:
    """A read-only view of ``self.samples[key]``."""
    return property(lambda self: self.samples[key], doc=doc)


class Prediction:
    """Base class of prediction objects.

    Attributes:
        samples: dict of sampled likelihood parameters, each with a leading
            sample dimension of size :attr:`num_samples`.

    Example:
        >>> import torch
        >>> pred = RegressionPrediction(loc=torch.tensor([[0.0, 1.0], [2.0, 1.0]]), scale=torch.ones(2, 2))
        >>> isinstance(pred, Prediction), pred.num_samples, sorted(pred.samples)
        (True, 2, ['loc', 'scale'])
        >>> pred.epistemic_variance, pred.aleatoric_variance
        (tensor([1., 0.]), tensor([1., 1.]))
    """

    samples: Dict[str, torch.Tensor]

    @property
    def num_samples(self) -> int:
        return next(iter(self.samples.values())).shape[0]

    @property
    def device(self) -> torch.device:
        return next(iter(self.samples.values())).device

    def log_prob(self, y) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def to(self, device) -> "Prediction":
        """A copy with every tensor on ``device``."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.samples = {k: v.to(device) for k, v in self.samples.items()}
        return new

    def cpu(self) -> "Prediction":
        return self.to("cpu")

    def take(self, index) -> "Prediction":
        """The prediction for the points ``index`` of the data dimension: a slice, a boolean
        mask of length ``N`` or integer positions. The result is of the same class (a
        recalibrated prediction stays recalibrated) and shares no state that depends on the
        points.

        Example:
            >>> import torch
            >>> pred = RegressionPrediction(torch.arange(6.0).reshape(2, 3), torch.ones(2, 3))
            >>> pred.take(slice(0, 2)).mean, pred.take(torch.tensor([True, False, True])).mean
            (tensor([1.5000, 2.5000]), tensor([1.5000, 3.5000]))
        """
        n = next(iter(self.samples.values())).shape[1]
        if not isinstance(index, slice):
            if isinstance(index, (list, tuple)):
                index = torch.as_tensor(index)
            if not isinstance(index, torch.Tensor) or index.dim() != 1 or not (
                index.dtype == torch.bool or not (index.is_floating_point() or index.is_complex())
            ):
                raise TypeError(
                    f"index must be a slice, a boolean mask of length {n} or a 1-D tensor or list of integer "
                    f"positions, got {type(index).__name__}"
                )
            if index.dtype == torch.bool and index.numel() != n:
                raise ValueError(f"a boolean index must have one entry per point ({n}), got {index.numel()}")
            if index.dtype != torch.bool and index.numel() and (int(index.min()) < -n or int(index.max()) >= n):
                raise ValueError(f"positions must lie in [-{n}, {n}), got [{int(index.min())}, {int(index.max())}]")
            index = index.to(self.device)
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.samples = {k: v[:, index] for k, v in self.samples.items()}
        return new

    def _as_target(self, y, *, dtype=None) -> torch.Tensor:
        y = torch.as_tensor(y, device=self.device)
        if dtype is not None:
            y = y.to(dtype)
        return y


class RegressionPrediction(Prediction):
    r"""Predictive distribution of a regression model: an equal-weight
    mixture of Gaussians :math:`\frac1S\sum_s \mathcal N(\mu_s, \sigma_s^2)`.

    Args:
        loc: sampled means, shape ``(S, N, *event)``.
        scale: sampled noise standard deviations, same shape as ``loc`` (or
            broadcastable to it).

    Example::

        pred = posterior.predict(x_test, num_samples=100)
        pred.mean, pred.std, pred.epistemic_variance, pred.aleatoric_variance
        lo, hi = pred.interval(0.9)
        lpd = pred.log_prob(y_test)         # (N,) log predictive densities
    """

    task = "regression"

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor):
        if loc.dim() < 2:
            raise ValueError(
                f"loc must have shape (num_samples, N, ...), got {tuple(loc.shape)}"
            )
        scale = torch.as_tensor(scale, dtype=loc.dtype, device=loc.device).expand_as(loc)
        # one fused check (one device sync): finite means, finite non-negative scales
        if not bool((torch.isfinite(loc).all() & torch.isfinite(scale).all() & (scale >= 0).all())):
            what = "loc has NaN or infinite values" if not bool(torch.isfinite(loc).all()) else (
                "scale has NaN or infinite values" if not bool(torch.isfinite(scale).all()) else "scale has negative values")
            raise ValueError(
                f"RegressionPrediction: {what}; a prediction needs finite means and noise stds >= 0 "
                "(a fit that diverged gives such outputs: check its losses and warnings)"
            )
        self.samples = {"loc": loc, "scale": scale}

    # -- moments -----------------------------------------------------------
    loc_samples = _sample_field("loc", "Sampled means :math:`\\mu_s`, shape ``(S, N, *event)``.")
    scale_samples = _sample_field("scale", "Sampled noise scales :math:`\\sigma_s`, shape of :attr:`loc_samples`.")

    @property
    def mean(self) -> torch.Tensor:
        r""":math:`\mu^* = \frac1S\sum_s\mu_s`."""
        return self.loc_samples.mean(0)

    @property
    def epistemic_variance(self) -> torch.Tensor:
        r"""Variance of the sampled means, :math:`\frac1S\sum_s(\mu_s-\mu^*)^2`."""
        return self.loc_samples.var(0, unbiased=False)

    @property
    def aleatoric_variance(self) -> torch.Tensor:
        r"""Mean of the sampled noise variances, :math:`\frac1S\sum_s\sigma_s^2`."""
        return self.scale_samples.pow(2).mean(0)

    @property
    def variance(self) -> torch.Tensor:
        r"""Total predictive variance :math:`\frac1S\sum_s(\sigma_s^2+\mu_s^2)-\mu^{*2}`."""
        return self.epistemic_variance + self.aleatoric_variance

    @property
    def std(self) -> torch.Tensor:
        return self.variance.sqrt()

    @property
    def epistemic_std(self) -> torch.Tensor:
        return self.epistemic_variance.sqrt()

    @property
    def aleatoric_std(self) -> torch.Tensor:
        return self.aleatoric_variance.sqrt()

    # -- distribution ------------------------------------------------------
    def _check_y(self, y) -> torch.Tensor:
        y = self._as_target(y, dtype=self.loc_samples.dtype)
        target_shape = self.loc_samples.shape[1:]
        if y.shape != target_shape:
            if y.numel() == math.prod(target_shape) and (
                y.dim() == len(target_shape) + 1 and y.shape[-1] == 1
                or y.dim() + 1 == len(target_shape) and target_shape[-1] == 1
            ):
                y = y.reshape(target_shape)
            else:
                raise ValueError(
                    f"y has shape {tuple(y.shape)} but the prediction is for targets of "
                    f"shape {tuple(target_shape)}; pass one target per predicted point"
                )
        if not torch.isfinite(y).all():
            raise ValueError("y contains NaN or inf; remove or impute those targets")
        return y

    def log_prob(self, y) -> torch.Tensor:
        r"""Per-point log predictive density
        :math:`\log\frac1S\sum_s \prod_d \mathcal N(y_d;\mu_{s,d},\sigma_{s,d}^2)`, shape ``(N,)``."""
        y = self._check_y(y)
        loc, scale = self.loc_samples, self.scale_samples
        lp = -0.5 * ((y - loc) / scale).pow(2) - scale.log() - 0.5 * _LOG_2PI
        lp = lp.reshape(lp.shape[0], lp.shape[1], -1).sum(-1)
        return torch.logsumexp(lp, 0) - math.log(lp.shape[0])

    def cdf(self, y) -> torch.Tensor:
        r"""Mixture CDF :math:`\frac1S\sum_s\Phi((y-\mu_s)/\sigma_s)`, elementwise."""
        y = self._check_y(y)
        return self._cdf(y)

    def _cdf(self, y: torch.Tensor) -> torch.Tensor:
        z = (y - self.loc_samples) / self.scale_samples
        return ndtr(z).mean(0)

    def quantile(self, q) -> torch.Tensor:
        """Elementwise quantile of the mixture, found by bisection on :meth:`cdf`.

        Args:
            q: a probability in (0, 1) or a 1-D tensor of them; a tensor gives a
               result with that leading dimension.
        """
        q_t = torch.as_tensor(q, dtype=self.loc_samples.dtype, device=self.device)
        if not ((q_t > 0) & (q_t < 1)).all():
            raise ValueError(f"q must lie strictly between 0 and 1, got {q}")
        loc, scale = self.loc_samples.double(), self.scale_samples.double()
        if q_t.dim() == 1:  # every level in one batched solve
            S, shape = loc.shape[0], loc.shape[1:]
            p = q_t.double().unsqueeze(1).expand(-1, math.prod(shape))
            out = mixture_quantile_batch(loc.reshape(S, -1), scale.reshape(S, -1), p)
            return out.reshape(q_t.shape[0], *shape).to(self.loc_samples.dtype)
        return mixture_quantile(loc, scale, float(q_t)).to(self.loc_samples.dtype)

    def interval(self, level: float = 0.9) -> Tuple[torch.Tensor, torch.Tensor]:
        """Central predictive interval holding ``level`` of the mixture's mass."""
        if not 0 < float(level) < 1:
            raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
        a = (1 - float(level)) / 2
        return self.quantile(a), self.quantile(1 - a)

    def covers(self, y, level: float = 0.9) -> torch.Tensor:
        r"""Whether each target lies in the central ``level`` interval (closed), elementwise.

        For the mixture this is :math:`|2F(y)-1|\le p` (no quantile search). Subclasses whose
        intervals are not the mixture's (conformal ones) override it together with
        :meth:`interval`; :func:`pyrobdl.metrics.interval_coverage` calls it.
        """
        if not 0 < float(level) < 1:
            raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
        y = self._check_y(y)
        return (2.0 * self._cdf(y) - 1.0).abs() <= float(level)

    def sample(self, num_samples: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draws of y from the predictive mixture, shape ``(num_samples, N, *event)``."""
        # one mixture component per draw *and per point*, so points are independent draws
        S = self.num_samples
        loc, scale = self.loc_samples, self.scale_samples
        idx = torch.randint(S, (num_samples,) + tuple(loc.shape[1:]), device=self.device, generator=generator)
        eps = torch.randn(idx.shape, device=self.device, dtype=loc.dtype, generator=generator)
        return loc.gather(0, idx) + scale.gather(0, idx) * eps

    def __repr__(self) -> str:
        return f"RegressionPrediction(num_samples={self.num_samples}, shape={tuple(self.loc_samples.shape[1:])})"


class ClassificationPrediction(Prediction):
    r"""Predictive distribution of a classifier: the average of sampled
    probability vectors, with the entropy decomposition into aleatoric and
    epistemic parts.

    Args:
        probs: sampled class probabilities, shape ``(S, N, *event, C)``; each
            vector sums to one. Binary (Bernoulli) models use ``C = 2``.

    Example::

        pred = posterior.predict(x_test, num_samples=100)
        pred.probs                    # (N, C) mean of the sampled softmax
        pred.predictive_entropy       # total uncertainty
        pred.expected_entropy         # aleatoric part
        pred.mutual_information       # epistemic part (BALD)
    """

    task = "classification"

    def __init__(self, probs: torch.Tensor):
        if probs.dim() < 3:
            raise ValueError(
                f"probs must have shape (num_samples, N, ..., C), got {tuple(probs.shape)}"
            )
        tol = max(PROB_SUM_ATOL, 16 * torch.finfo(probs.dtype).eps) if probs.is_floating_point() else PROB_SUM_ATOL
        ok = torch.isfinite(probs).all() & (probs >= -tol).all() & (probs <= 1 + tol).all()
        ok = ok & ((probs.sum(-1) - 1).abs() <= tol).all()
        if not bool(ok):
            raise ValueError(
                f"ClassificationPrediction: probs must be finite, in [0, 1] and sum to 1 over the last "
                f"(class) dimension within {tol}; apply softmax to logits first"
            )
        self.samples = {"probs": probs}

    probs_samples = _sample_field("probs", "Sampled class probabilities :math:`p_s`, shape ``(S, N, *event, C)``.")

    @property
    def num_classes(self) -> int:
        return self.probs_samples.shape[-1]

    @property
    def probs(self) -> torch.Tensor:
        r""":math:`\bar p = \frac1S\sum_s p_s`."""
        return self.probs_samples.mean(0)

    #: Same as :attr:`probs` (the mean of the sampled probability vectors).
    mean = probs

    @property
    def predicted(self) -> torch.Tensor:
        """The most probable class under :attr:`probs`."""
        return self.probs.argmax(-1)

    @property
    def confidence(self) -> torch.Tensor:
        """Top-label probability ``probs.max(-1)``."""
        return self.probs.max(-1).values

    max_prob = confidence

    @property
    def predictive_entropy(self) -> torch.Tensor:
        r""":math:`H[\bar p]` (total uncertainty, nats)."""
        return _entropy(self.probs)

    @property
    def expected_entropy(self) -> torch.Tensor:
        r""":math:`\frac1S\sum_s H[p_s]` (aleatoric part, nats)."""
        return _entropy(self.probs_samples).mean(0)

    @property
    def mutual_information(self) -> torch.Tensor:
        r""":math:`H[\bar p] - \frac1S\sum_s H[p_s]` (epistemic part, nats; clamped at 0)."""
        return (self.predictive_entropy - self.expected_entropy).clamp_min(0.0)

    # Regression-style aliases so one plotting/metric path can treat both tasks.
    @property
    def aleatoric_uncertainty(self) -> torch.Tensor:
        return self.expected_entropy

    @property
    def epistemic_uncertainty(self) -> torch.Tensor:
        return self.mutual_information

    def _check_labels(self, y) -> torch.Tensor:
        y = self._as_target(y)
        if y.is_floating_point():
            if not torch.equal(y, y.round()):
                raise TypeError("class labels must be integers; got non-integer floats")
            y = y.long()
        y = y.long()
        target_shape = self.probs_samples.shape[1:-1]
        if y.shape != target_shape:
            if y.numel() == math.prod(target_shape):
                y = y.reshape(target_shape)
            else:
                raise ValueError(
                    f"labels have shape {tuple(y.shape)} but the prediction is for "
                    f"{tuple(target_shape)}; pass one label per predicted point"
                )
        C = self.num_classes
        if y.numel() and (y.min() < 0 or y.max() >= C):
            raise ValueError(f"labels must lie in [0, {C}); got values in [{int(y.min())}, {int(y.max())}]")
        return y

    def log_prob(self, y) -> torch.Tensor:
        r"""Per-point log predictive probability :math:`\log\frac1S\sum_s p_s[y]`, shape ``(N,)``."""
        y = self._check_labels(y)
        p = self.probs_samples
        idx = y.unsqueeze(0).unsqueeze(-1).expand(*p.shape[:-1], 1)
        lp = p.gather(-1, idx).squeeze(-1).clamp_min(torch.finfo(p.dtype).tiny).log()
        lp = lp.reshape(lp.shape[0], lp.shape[1], -1).sum(-1)
        return torch.logsumexp(lp, 0) - math.log(lp.shape[0])

    def prediction_sets(self, level: float = 0.9) -> torch.Tensor:
        r"""Prediction sets as a boolean mask ``(N, *event, C)``: for each point the most
        probable classes under :attr:`probs`, in order, until their total probability reaches
        ``level`` (at least one class).

        These trust the model's probabilities, so their coverage is only as good as its
        calibration; the sets of a posterior recalibrated with
        ``pyrobdl.calibration.recalibrate(..., method="aps" | "raps")`` carry the conformal
        guarantee :math:`P(y\in C(x))\ge` ``level`` instead.
        """
        if not 0 < float(level) < 1:
            raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
        p = self.probs
        sorted_p, order = p.sort(-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass of the classes ranked above each class
        keep_sorted = before < float(level)
        return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)

    def sample(self, num_samples: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draws of labels from the predictive, shape ``(num_samples, N, *event)``."""
        p = self.probs
        flat = p.reshape(-1, p.shape[-1])
        draws = torch.multinomial(flat, num_samples, replacement=True, generator=generator)
        return draws.T.reshape(num_samples, *p.shape[:-1])

    def __repr__(self) -> str:
        return (
            f"ClassificationPrediction(num_samples={self.num_samples}, "
            f"shape={tuple(self.probs_samples.shape[1:-1])}, num_classes={self.num_classes})"
        )

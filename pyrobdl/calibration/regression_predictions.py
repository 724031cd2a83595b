r"""The prediction objects returned by the regression recalibrators of
:mod:`pyrobdl.calibration.regression`, and the numerics they share.

* :class:`IsotonicRegressionPrediction`: the model's Gaussian mixture :math:`F` composed with a
  monotone map, :math:`F'(y) = R(F(y))` (Kuleshov et al. 2018); every distributional quantity
  (CDF, quantiles, intervals, density, moments, draws) is that of :math:`F'`.
* :class:`ConformalRegressionPrediction`: split-conformal intervals
  :math:`\mu^*\pm\hat q\,\sigma^*` for any level; the distribution stays the model's.
* :class:`ConformalizedQuantileRegressionPrediction`: CQR intervals (Romano et al. 2019) for the
  fitted level; the distribution stays the model's.

All three keep the model's samples (``loc_samples``/``scale_samples``), so they survive the
shallow float64 copies the metrics make and :meth:`~pyrobdl.prediction.Prediction.to`, and
each holds one target per point (event shape ``()`` or ``(1,)``).
"""
from __future__ import annotations

import math
from typing import ClassVar, Optional, Tuple

import torch

from .._util import check_positive_int
from ..prediction import RegressionPrediction, mixture_quantile, mixture_quantile_batch, ndtr
from .base import check_level, conformal_rank, min_calibration_size, work_dtype

__all__ = [
    "IsotonicRegressionPrediction",
    "ConformalRegressionPrediction",
    "ConformalizedQuantileRegressionPrediction",
]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
#: elements of the (batch, S, points) work tensors per chunk (16 MiB of float64)
_CHUNK = 1 << 21


# ----------------------------------------------------------------------------- helpers
def check_one_target(pred: RegressionPrediction, who: str) -> None:
    """ValueError unless ``pred`` predicts one number per point (event shape ``()`` or ``(1,)``)."""
    event = tuple(pred.loc_samples.shape[2:])
    if math.prod(event) != 1:
        raise ValueError(
            f"{who} supports one target per point (event shape ()), but the prediction is for "
            f"targets of shape {event} per point; recalibrate each output separately "
            "(one prediction per output column) or use method='variance', which handles any shape"
        )


def check_positive_scale(pred: RegressionPrediction, who: str) -> None:
    """ValueError unless every sampled noise std is > 0 (the CDF must be continuous)."""
    if not bool((pred.scale_samples > 0).all()):
        raise ValueError(
            f"{who} needs noise stds > 0 in every sample (a continuous predictive CDF); the "
            "prediction has scale samples equal to 0: use a likelihood with noise"
        )


def check_not_recalibrated(pred, who: str) -> RegressionPrediction:
    """The plain model prediction ``pred``: TypeError for classification or recalibrated ones."""
    if not isinstance(pred, RegressionPrediction):
        raise TypeError(f"{who} maps regression predictions; got {type(pred).__name__}")
    if getattr(pred, "recalibrated", False):
        raise TypeError(
            f"{who} got an already recalibrated {type(pred).__name__}; recalibrators do not stack: "
            "pass the posterior's own prediction"
        )
    return pred


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation through ``(xp, fp)`` (``xp`` strictly increasing),
    ``x`` clamped to ``[xp[0], xp[-1]]``; any shape of ``x``."""
    x = x.clamp(float(xp[0]), float(xp[-1]))
    i = (torch.searchsorted(xp, x.contiguous(), right=True) - 1).clamp(0, xp.numel() - 2)
    x0, x1, f0, f1 = xp[i], xp[i + 1], fp[i], fp[i + 1]
    return f0 + (x - x0) * ((f1 - f0) / (x1 - x0))


def slope(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Slope of that interpolant at ``x`` (the right segment at a knot)."""
    x = x.clamp(float(xp[0]), float(xp[-1]))
    i = (torch.searchsorted(xp, x.contiguous(), right=True) - 1).clamp(0, xp.numel() - 2)
    return (fp[i + 1] - fp[i]) / (xp[i + 1] - xp[i])


def recalibrated_moments(
    loc: torch.Tensor, scale: torch.Tensor, knots_x: torch.Tensor, knots_y: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Exact mean and variance of :math:`F' = R\circ F` for the mixtures of the columns of
    ``loc``/``scale`` (S, M) and the piecewise-linear :math:`R` through ``(knots_x, knots_y)``
    (from (0, 0) to (1, 1)).

    :math:`R'` is constant, :math:`r_k`, between knots, so with :math:`Q=F^{-1}` and
    :math:`c` the mixture mean (for accuracy)

    .. math::

        \mathbb E_{F'}[(Y-c)^j] = \int_0^1 (Q(u)-c)^j R'(u)\,du
        = \sum_k r_k\,\mathbb E_F\big[(Y-c)^j\,\mathbf 1\{Q(x_k) < Y \le Q(x_{k+1})\}\big],

    each term a difference of closed-form partial moments of the Gaussian components: of the
    lower ones :math:`\mathbb E[(Y-c)^j\mathbf 1\{Y\le t\}]` below the median and of the upper
    ones :math:`\mathbb E[(Y-c)^j\mathbf 1\{Y>t\}]` above it, so that steep segments of
    :math:`R` in either tail multiply accurate small numbers. The only iterative numerics are
    the knot quantiles :math:`Q(x_k)` (:func:`mixture_quantile_batch`, ~1e-13 relative).
    """
    c = loc.mean(0)
    m, s = loc - c, scale
    base_var = (s * s).mean(0) + (m * m).mean(0)
    q = mixture_quantile_batch(loc, scale, knots_x[1:-1, None].expand(-1, loc.shape[1]).contiguous()) - c
    K1, M = q.shape
    low1, low2, up1, up2 = (torch.empty_like(q) for _ in range(4))
    m_step = M if loc.shape[0] * M <= _CHUNK else max(1, _CHUNK // loc.shape[0])
    k_step = max(1, _CHUNK // (loc.shape[0] * m_step))
    for m0 in range(0, M, m_step):
        cols = slice(m0, m0 + m_step)
        mm, ss = m[None, :, cols], s[None, :, cols]
        for k0 in range(0, K1, k_step):
            rows = slice(k0, k0 + k_step)
            t = q[rows, cols].unsqueeze(1)
            a = (t - mm) / ss
            below, above, phi = ndtr(a), ndtr(-a), torch.exp(-0.5 * a * a) * _INV_SQRT_2PI
            second = mm * mm + ss * ss
            low1[rows, cols] = (mm * below - ss * phi).mean(1)
            low2[rows, cols] = (second * below - ss * (mm + t) * phi).mean(1)
            up1[rows, cols] = (mm * above + ss * phi).mean(1)
            up2[rows, cols] = (second * above + ss * (mm + t) * phi).mean(1)
    zero = torch.zeros_like(c)[None]
    low1, up1 = torch.cat([zero, low1, zero]), torch.cat([zero, up1, zero])  # E[Y - c] = 0
    low2, up2 = torch.cat([zero, low2, base_var[None]]), torch.cat([base_var[None], up2, zero])
    upper = (knots_x[1:] > 0.5)[:, None]  # segment k ends above the median: use the upper moments
    seg1 = torch.where(upper, up1[:-1] - up1[1:], low1[1:] - low1[:-1])
    seg2 = torch.where(upper, up2[:-1] - up2[1:], low2[1:] - low2[:-1])
    r = ((knots_y[1:] - knots_y[:-1]) / (knots_x[1:] - knots_x[:-1]))[:, None]
    d1, d2 = (r * seg1).sum(0), (r * seg2).sum(0)
    return c + d1, (d2 - d1 * d1).clamp_min(0.0)


def check_knots(knots_x, knots_y) -> Tuple[torch.Tensor, torch.Tensor]:
    """The knots of a recalibration map as float64 CPU tensors, checked: same length >= 2,
    strictly increasing, from (0, 0) to (1, 1)."""
    kx = torch.as_tensor(knots_x).detach().to("cpu", torch.float64).reshape(-1)
    ky = torch.as_tensor(knots_y).detach().to("cpu", torch.float64).reshape(-1)
    ok = kx.numel() == ky.numel() >= 2 and bool(torch.isfinite(kx).all() & torch.isfinite(ky).all())
    ok = ok and bool((kx.diff() > 0).all() & (ky.diff() > 0).all())
    ok = ok and float(kx[0]) == 0.0 and float(ky[0]) == 0.0 and float(kx[-1]) == 1.0 and float(ky[-1]) == 1.0
    if not ok:
        raise ValueError(
            "the recalibration map's knots must be two 1-D tensors of the same length >= 2, strictly "
            "increasing from (0, 0) to (1, 1); refit the recalibrator (the state may be corrupt)"
        )
    return kx, ky


def conformal_quantile(sorted_scores: torch.Tensor, level: float) -> float:
    r"""The split-conformal quantile: the :math:`\lceil (n+1)p\rceil`-th smallest of the ``n``
    sorted scores for level :math:`p` (0 when that rank is 0), or a ValueError naming the
    minimum calibration size when the rank exceeds :math:`n`.

    Example:
        >>> conformal_quantile(torch.arange(1.0, 20.0), 0.9)     # n = 19: k = 18
        18.0
    """
    n = int(sorted_scores.numel())
    k = conformal_rank(n, level)
    if k > n:
        raise ValueError(
            f"level={level} needs at least {min_calibration_size(level)} calibration points for a finite "
            f"conformal interval, but the scores come from {n}; pass a lower level or recalibrate with "
            "more calibration data"
        )
    return 0.0 if k < 1 else float(sorted_scores[k - 1])


def _level(level, default: float) -> float:
    return default if level is None else check_level(level)


def _probability(q, dtype: torch.dtype) -> torch.Tensor:
    """``q`` as a CPU tensor of probabilities in (0, 1), a scalar or 1-D."""
    if isinstance(q, bool):
        raise TypeError(f"q must be a probability in (0, 1) or a 1-D tensor of them, got {q!r}")
    q_t = torch.as_tensor(q, dtype=dtype).detach().cpu()
    if q_t.dim() > 1:
        raise ValueError(f"q must be a probability or a 1-D tensor of them, got shape {tuple(q_t.shape)}")
    if not bool(((q_t > 0) & (q_t < 1)).all()):
        raise ValueError(f"q must lie strictly between 0 and 1, got {q}")
    return q_t


# ----------------------------------------------------------------------------- isotonic
class IsotonicRegressionPrediction(RegressionPrediction):
    r"""A regression prediction recalibrated by a monotone map of its CDF (Kuleshov et al. 2018):

    .. math::

        F'(y) = R\big(F(y)\big),\qquad
        F(y) = \frac1S\sum_s\Phi\Big(\frac{y-\mu_s}{\sigma_s}\Big),

    with :math:`R` the continuous, strictly increasing piecewise-linear map through the knots
    ``(knots_pit, knots_prob)`` from (0, 0) to (1, 1) (fitted by
    :class:`~pyrobdl.calibration.IsotonicCalibration`). Everything is that of :math:`F'`:

    * ``cdf`` :math:`R(F(y))`; ``quantile(q)`` :math:`F^{-1}(R^{-1}(q))` (with
      :func:`mixture_quantile_batch`, which stays accurate for the tiny tail probabilities
      :math:`R^{-1}` can map moderate ones to); ``interval``/``covers`` the central
      interval :math:`[Q'(\frac{1-p}2), Q'(\frac{1+p}2)]` (closed), i.e. :math:`|2F'(y)-1|\le p`;
    * ``log_prob`` :math:`\log R'(F(y)) + \log f(y)` (a density: it integrates to 1);
    * ``mean``/``variance``/``std``: the exact moments of :math:`F'` (see
      :func:`recalibrated_moments`; the knot quantiles are solved to ~1e-13 relative), computed
      once per prediction: 5 to 10 Newton iterations over ``len(knots_pit) * S * N`` normal CDFs,
      e.g. 1.5 s for 100 knots, ``S = 100`` and ``N = 1000`` on one CPU thread;
    * ``epistemic_variance``/``aleatoric_variance``: the model's, both multiplied by
      :math:`\mathrm{Var}_{F'}/\mathrm{Var}_F` (a map of the CDF cannot tell the two sources
      apart, so the model's ratio between them is kept and they sum to the new variance);
    * ``sample``: inverse-CDF draws :math:`F^{-1}(R^{-1}(U))`, :math:`U\sim\mathcal U(0,1)`.

    ``loc_samples``/``scale_samples`` are the model's (unchanged). Computations run in float64
    and return the samples' dtype and device.

    Args:
        loc, scale: the model's samples, shape ``(S, N)`` (or ``(S, N, 1)``); scales > 0.
        knots_pit, knots_prob: the knots :math:`(x_k, R(x_k))`.
        level: default level of :meth:`interval` and :meth:`covers`.

    Example:
        >>> pred = IsotonicRegressionPrediction(torch.zeros(1, 2), torch.ones(1, 2),
        ...     knots_pit=[0.0, 0.5, 1.0], knots_prob=[0.0, 0.25, 1.0])
        >>> pred.cdf(torch.zeros(2))                   # R(F(0)) = R(0.5)
        tensor([0.2500, 0.2500])
        >>> pred.quantile(0.25)
        tensor([0., 0.])
    """

    recalibrated: ClassVar[bool] = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, *, knots_pit, knots_prob, level: float = 0.9):
        super().__init__(loc, scale)
        check_one_target(self, "IsotonicRegressionPrediction")
        check_positive_scale(self, "IsotonicRegressionPrediction")
        self.knots_pit, self.knots_prob = check_knots(knots_pit, knots_prob)
        self.level = check_level(level)
        self._moments_cache: Optional[tuple] = None

    # -- the map ---------------------------------------------------------------
    def _work(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """loc, scale (S, M) and the knots, in the work dtype on the samples' device."""
        dt = work_dtype(self.device)
        S = self.num_samples
        loc = self.loc_samples.detach().to(dt).reshape(S, -1)
        scale = self.scale_samples.detach().to(dt).reshape(S, -1)
        return loc, scale, self.knots_pit.to(self.device, dt), self.knots_prob.to(self.device, dt)

    def _pit(self, y: torch.Tensor) -> torch.Tensor:
        """The model's :math:`F(y)` in the work dtype, shape of ``y``."""
        loc, scale, _, _ = self._work()
        z = (y.to(loc.dtype).reshape(1, -1) - loc) / scale
        return ndtr(z).mean(0).reshape(y.shape)

    def _cdf(self, y: torch.Tensor) -> torch.Tensor:
        r""":math:`R(F(y))` for checked targets (what :meth:`cdf` uses)."""
        _, _, kx, ky = self._work()
        return interp(self._pit(y), kx, ky).to(self.loc_samples.dtype)

    def cdf(self, y) -> torch.Tensor:
        r"""Recalibrated CDF :math:`R(F(y))`, elementwise."""
        return self._cdf(self._check_y(y))

    def quantile(self, q) -> torch.Tensor:
        r"""Recalibrated quantile :math:`F^{-1}(R^{-1}(q))` (a 1-D ``q`` adds a leading dimension)."""
        q_t = _probability(q, torch.float64)
        loc, scale, kx, ky = self._work()
        fin = torch.finfo(loc.dtype)
        p = interp(q_t.to(self.device, loc.dtype), ky, kx).clamp(fin.tiny, 1.0 - fin.eps / 2)
        x = mixture_quantile_batch(loc, scale, p.reshape(-1, 1).expand(-1, loc.shape[1]).contiguous())
        shape = self.loc_samples.shape[1:]
        x = x.reshape(shape) if q_t.dim() == 0 else x.reshape(-1, *shape)
        return x.to(self.loc_samples.dtype)

    def interval(self, level: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""Central interval :math:`[Q'(\frac{1-p}2), Q'(\frac{1+p}2)]` of :math:`F'`
        (default :math:`p` = the ``level`` given at construction)."""
        a = 0.5 * (1.0 - _level(level, self.level))
        lo, hi = self.quantile(torch.tensor([a, 1.0 - a], dtype=torch.float64))
        return lo, hi

    def covers(self, y, level: Optional[float] = None) -> torch.Tensor:
        r"""Whether each target lies in :meth:`interval` ``(level)`` (closed): :math:`|2F'(y)-1|\le p`."""
        p = _level(level, self.level)
        y = self._check_y(y)
        _, _, kx, ky = self._work()
        return (2.0 * interp(self._pit(y), kx, ky) - 1.0).abs() <= p

    def log_prob(self, y) -> torch.Tensor:
        r"""Per-point log density :math:`\log R'(F(y)) + \log f(y)`, shape ``(N,)``."""
        y = self._check_y(y)
        _, _, kx, ky = self._work()
        corr = slope(self._pit(y), kx, ky).log().reshape(y.shape[0], -1).sum(-1)
        base = super().log_prob(y)
        return base + corr.to(base.dtype)

    # -- moments ---------------------------------------------------------------
    def _moments(self) -> Tuple[torch.Tensor, torch.Tensor]:
        cache = self._moments_cache
        if cache is not None and cache[0] is self.loc_samples:
            return cache[1], cache[2]
        loc, scale, kx, ky = self._work()
        mean, var = recalibrated_moments(loc, scale, kx, ky)
        shape, dt = self.loc_samples.shape[1:], self.loc_samples.dtype
        mean, var = mean.reshape(shape).to(dt), var.reshape(shape).to(dt)
        self._moments_cache = (self.loc_samples, mean, var)
        return mean, var

    @property
    def mean(self) -> torch.Tensor:
        r"""Mean of :math:`F'` (exact; see :func:`recalibrated_moments`)."""
        return self._moments()[0]

    @property
    def variance(self) -> torch.Tensor:
        r"""Variance of :math:`F'` (exact; see :func:`recalibrated_moments`)."""
        return self._moments()[1]

    def _variance_ratio(self) -> torch.Tensor:
        base = RegressionPrediction.epistemic_variance.fget(self) + RegressionPrediction.aleatoric_variance.fget(self)
        return self.variance / base

    @property
    def epistemic_variance(self) -> torch.Tensor:
        r"""The model's :math:`\frac1S\sum_s(\mu_s-\mu^*)^2` times :math:`\mathrm{Var}_{F'}/\mathrm{Var}_F`."""
        return RegressionPrediction.epistemic_variance.fget(self) * self._variance_ratio()

    @property
    def aleatoric_variance(self) -> torch.Tensor:
        r"""The model's :math:`\frac1S\sum_s\sigma_s^2` times :math:`\mathrm{Var}_{F'}/\mathrm{Var}_F`."""
        return RegressionPrediction.aleatoric_variance.fget(self) * self._variance_ratio()

    def sample(self, num_samples: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        r"""Draws :math:`F^{-1}(R^{-1}(U))`, shape ``(num_samples, N, *event)``."""
        num_samples = check_positive_int(num_samples, "num_samples")
        loc, scale, kx, ky = self._work()
        fin = torch.finfo(loc.dtype)
        u = torch.rand((num_samples, loc.shape[1]), generator=generator, device=self.device, dtype=loc.dtype)
        p = interp(u.clamp_min(fin.tiny), ky, kx).clamp(fin.tiny, 1.0 - fin.eps / 2)
        draws = mixture_quantile_batch(loc, scale, p)
        return draws.reshape(num_samples, *self.loc_samples.shape[1:]).to(self.loc_samples.dtype)

    def to(self, device) -> "IsotonicRegressionPrediction":
        new = super().to(device)
        new._moments_cache = None
        return new

    def __repr__(self) -> str:
        return (
            f"IsotonicRegressionPrediction(num_samples={self.num_samples}, "
            f"shape={tuple(self.loc_samples.shape[1:])}, knots={self.knots_pit.numel()})"
        )


# ----------------------------------------------------------------------------- conformal
class ConformalRegressionPrediction(RegressionPrediction):
    r"""A regression prediction with split-conformal intervals on normalised scores
    (Papadopoulos 2008; Lei et al. 2018):

    .. math::

        C_p(x) = \big[\mu^*(x) - \hat q_p\,\sigma^*(x),\ \mu^*(x) + \hat q_p\,\sigma^*(x)\big],
        \qquad \hat q_p = s_{(k)},\ k = \lceil (n+1)p\rceil,

    with :math:`s_{(k)}` the :math:`k`-th smallest calibration score
    :math:`|y_i-\mu^*_i|/\sigma^*_i` and :math:`\mu^*, \sigma^*` the model's predictive mean and
    total std. For exchangeable data :math:`P(y\in C_p(x))\ge p` for *every* level :math:`p` with
    :math:`k\le n` (the sorted scores are kept), and :math:`< p + 1/(n+1)` with continuous scores.

    Only the intervals change (:meth:`interval`, :meth:`covers`, and :meth:`quantile`, which
    gives their endpoints); ``mean``, ``std``, the epistemic/aleatoric split, ``cdf``,
    ``log_prob`` and ``sample`` stay the model's. Conformal calibration is a statement about
    intervals at a level, not a distribution: the scores do not define a density, and keeping
    the model's distribution keeps its NLL, CRPS and uncertainty decomposition comparable with
    the uncalibrated model.

    Args:
        loc, scale: the model's samples, shape ``(S, N)`` (or ``(S, N, 1)``).
        scores: the calibration scores (any order; stored sorted, float64, on the CPU).
        level: the fitted level, the default of :meth:`interval`.

    Example:
        >>> pred = ConformalRegressionPrediction(torch.zeros(1, 1), 2 * torch.ones(1, 1),
        ...     scores=torch.arange(1.0, 20.0) / 10, level=0.9)    # n = 19
        >>> pred.interval()                                       # k = 18: 1.8 * 2
        (tensor([-3.6000]), tensor([3.6000]))
        >>> pred.interval(0.5)                                    # k = 10
        (tensor([-2.]), tensor([2.]))
    """

    recalibrated: ClassVar[bool] = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, *, scores, level: float = 0.9):
        super().__init__(loc, scale)
        check_one_target(self, "ConformalRegressionPrediction")
        s = torch.as_tensor(scores).detach().to("cpu", torch.float64).reshape(-1)
        if s.numel() == 0 or not bool((torch.isfinite(s) & (s >= 0)).all()):
            raise ValueError("scores must be a non-empty 1-D tensor of finite numbers >= 0 (the calibration scores)")
        self.scores = s.sort().values
        self.level = check_level(level)
        self.score_quantile(self.level)  # the fitted level must be reachable
        if not bool((self.std > 0).all()):
            raise ValueError(
                "ConformalRegressionPrediction: the predictive std is 0 at some points, where the normalised "
                "interval mu* +- q * std would be a single point; use a model with noise, or method='cqr'"
            )

    @property
    def num_calibration(self) -> int:
        return int(self.scores.numel())

    def score_quantile(self, level: Optional[float] = None) -> float:
        r""":math:`\hat q_p`, the :math:`\lceil (n+1)p\rceil`-th smallest calibration score
        (ValueError when that rank exceeds :math:`n`); default :math:`p`: the fitted level."""
        return conformal_quantile(self.scores, _level(level, self.level))

    def interval(self, level: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        r""":math:`\mu^*\pm\hat q_p\,\sigma^*` for any level :math:`p` (default: the fitted one)."""
        qhat = self.score_quantile(level)
        mu, sd = self.mean, self.std
        return mu - qhat * sd, mu + qhat * sd

    def covers(self, y, level: Optional[float] = None) -> torch.Tensor:
        """Whether each target lies in :meth:`interval` ``(level)`` (closed)."""
        lo, hi = self.interval(level)
        y = self._check_y(y)
        return (y >= lo) & (y <= hi)

    def quantile(self, q) -> torch.Tensor:
        r"""The conformal interval endpoints as quantiles: for :math:`q<\frac12` the lower end of
        the level :math:`1-2q` interval, for :math:`q>\frac12` the upper end of the level
        :math:`2q-1` interval, :math:`\mu^*` at :math:`\frac12`; so ``(quantile(a), quantile(1-a))``
        is ``interval(1 - 2a)``. Nondecreasing in :math:`q`."""
        q_t = _probability(q, torch.float64)
        if q_t.dim() == 1:
            return torch.stack([self.quantile(float(qi)) for qi in q_t])
        qv = float(q_t)
        p = abs(2.0 * qv - 1.0)
        if p == 0.0:
            return self.mean.clone()
        return self.mean + math.copysign(self.score_quantile(p), qv - 0.5) * self.std

    def __repr__(self) -> str:
        return (
            f"ConformalRegressionPrediction(num_samples={self.num_samples}, shape={tuple(self.loc_samples.shape[1:])}, "
            f"level={self.level}, num_calibration={self.num_calibration})"
        )


class ConformalizedQuantileRegressionPrediction(RegressionPrediction):
    r"""A regression prediction with conformalised quantile regression intervals
    (Romano, Patterson & Candès 2019) for the fitted level :math:`p`:

    .. math::

        C(x) = \big[\hat q_{lo}(x) - \hat Q,\ \hat q_{hi}(x) + \hat Q\big],

    with :math:`\hat q_{lo}, \hat q_{hi}` the model's mixture quantiles at :math:`(1\mp p)/2` and
    :math:`\hat Q` the conformal correction fitted by
    :class:`~pyrobdl.calibration.ConformalizedQuantileRegression`. A negative :math:`\hat Q`
    shrinks the interval; where it would cross (:math:`\hat q_{hi}-\hat q_{lo} < -2\hat Q`) both
    ends are the midpoint (a superset of CQR's empty set, so the guarantee holds).

    The correction is valid for the fitted level only: :meth:`interval` for another level is a
    ValueError. Everything else (mean, std, the epistemic/aleatoric split, cdf, log_prob,
    sample) stays the model's, as for :class:`ConformalRegressionPrediction`.

    Example:
        >>> pred = ConformalizedQuantileRegressionPrediction(torch.zeros(1, 1), torch.ones(1, 1),
        ...     correction=0.5, level=0.9)
        >>> pred.interval()                 # +-1.645 widened by 0.5
        (tensor([-2.1449]), tensor([2.1449]))
    """

    recalibrated: ClassVar[bool] = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, *, correction: float, level: float):
        super().__init__(loc, scale)
        check_one_target(self, "ConformalizedQuantileRegressionPrediction")
        if isinstance(correction, bool) or not math.isfinite(float(correction)):
            raise ValueError(f"correction must be a finite number, got {correction!r}")
        self.correction = float(correction)
        self.level = check_level(level)

    def _check_fitted_level(self, level) -> None:
        if level is not None and abs(check_level(level) - self.level) > 1e-12:
            raise ValueError(
                f"CQR intervals are calibrated for level={self.level} only, got level={level}; recalibrate "
                f"with recalibrate(..., method='cqr', level={level}) (or use method='conformal', whose "
                "intervals hold for any level)"
            )

    def interval(self, level: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        r""":math:`[\hat q_{lo}-\hat Q,\ \hat q_{hi}+\hat Q]` (``level`` must be the fitted one)."""
        self._check_fitted_level(level)
        a = 0.5 * (1.0 - self.level)
        loc, scale = self.loc_samples, self.scale_samples
        dt = work_dtype(self.device)
        lo = mixture_quantile(loc.to(dt), scale.to(dt), a) - self.correction
        hi = mixture_quantile(loc.to(dt), scale.to(dt), 1.0 - a) + self.correction
        mid = 0.5 * (lo + hi)
        cross = lo > hi
        lo, hi = torch.where(cross, mid, lo), torch.where(cross, mid, hi)
        return lo.to(loc.dtype), hi.to(loc.dtype)

    def covers(self, y, level: Optional[float] = None) -> torch.Tensor:
        """Whether each target lies in :meth:`interval` (closed)."""
        lo, hi = self.interval(level)
        y = self._check_y(y)
        return (y >= lo) & (y <= hi)

    def quantile(self, q) -> torch.Tensor:
        r"""The interval's ends: :math:`q=(1-p)/2` gives the lower, :math:`(1+p)/2` the upper end;
        other :math:`q` are a ValueError (CQR calibrates those two quantiles only)."""
        q_t = _probability(q, torch.float64)
        if q_t.dim() == 1:
            return torch.stack([self.quantile(float(qi)) for qi in q_t])
        qv, a = float(q_t), 0.5 * (1.0 - self.level)
        if abs(qv - a) <= 1e-12:
            return self.interval()[0]
        if abs(qv - (1.0 - a)) <= 1e-12:
            return self.interval()[1]
        raise ValueError(
            f"CQR fitted at level={self.level} calibrates the quantiles {a:g} and {1 - a:g} only, got q={qv}; "
            f"recalibrate with level={abs(2 * qv - 1):g} for that quantile"
        )

    def __repr__(self) -> str:
        return (
            f"ConformalizedQuantileRegressionPrediction(num_samples={self.num_samples}, "
            f"shape={tuple(self.loc_samples.shape[1:])}, level={self.level}, correction={self.correction:.4g})"
        )

r"""Recalibration of regression predictions: variance scaling, isotonic CDF recalibration,
split-conformal intervals and conformalised quantile regression.

* :class:`VarianceScaling` (``"variance"``): one factor :math:`c` on the predictive std,
  fitted by the calibration NLL (Levi et al. 2020; Laves et al. 2020); a plain
  :class:`~pyrobdl.prediction.RegressionPrediction` comes back.
* :class:`IsotonicCalibration` (``"isotonic"``): a monotone map :math:`R` of the predictive CDF,
  :math:`F' = R\circ F` (Kuleshov et al. 2018); an :class:`IsotonicRegressionPrediction`.
* :class:`ConformalRegression` (``"conformal"``): split conformal on
  :math:`|y-\mu^*|/\sigma^*`, intervals for any level; a :class:`ConformalRegressionPrediction`.
* :class:`ConformalizedQuantileRegression` (``"cqr"``): CQR on the model's quantiles
  (Romano et al. 2019); a :class:`ConformalizedQuantileRegressionPrediction`.

The conformal ones cover a new exchangeable point with probability in
:math:`[p, p + 1/(n+1))` (continuous scores); isotonic and variance scaling improve calibration
without a finite-sample guarantee. All four fit on one target per point; variance scaling
also on multi-output predictions.

References: D. Levi, L. Gispan, N. Giladi and E. Fetaya, *Evaluating and Calibrating
Uncertainty Prediction in Regression Tasks* (2020, arXiv:1905.11659); M.-H. Laves, S. Ihler,
J. F. Fast, L. A. Kahrs and T. Ortmaier, *Well-Calibrated Regression Uncertainty in Medical
Imaging with Deep Learning* (MIDL 2020); V. Kuleshov, N. Fenner and S. Ermon, *Accurate
Uncertainties for Deep Learning Using Calibrated Regression* (ICML 2018); V. Vovk, A. Gammerman
and G. Shafer, *Algorithmic Learning in a Random World* (2005); H. Papadopoulos, *Inductive
Conformal Prediction: Theory and Application to Neural Networks* (2008); J. Lei, M. G'Sell,
A. Rinaldo, R. J. Tibshirani and L. Wasserman, *Distribution-Free Predictive Inference for
Regression* (JASA 2018); Y. Romano, E. Patterson and E. J. Candès, *Conformalized Quantile
Regression* (NeurIPS 2019).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch

from .._util import check_positive_float, check_positive_int
from ..prediction import Prediction, RegressionPrediction, mixture_quantile, ndtr
from .base import (Recalibrator, check_bounds, check_level, conformal_rank, fit_positive_scalar, register_recalibrator,
                   work_dtype)
from .regression_predictions import (
    ConformalizedQuantileRegressionPrediction,
    ConformalRegressionPrediction,
    IsotonicRegressionPrediction,
    check_knots,
    check_not_recalibrated,
    check_one_target,
    check_positive_scale,
    conformal_quantile,
    interp,
)

__all__ = [
    "VarianceScaling",
    "IsotonicCalibration",
    "ConformalRegression",
    "ConformalizedQuantileRegression",
    "SplitConformal",
    "IsotonicRegressionPrediction",
    "ConformalRegressionPrediction",
    "ConformalizedQuantileRegressionPrediction",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _not_fitted(who: str) -> RuntimeError:
    return RuntimeError(f"{who} is not fitted; call fit(prediction, y) or use pyrobdl.calibration.recalibrate")


def _set_conformal_state(recal: Recalibrator, state: Dict[str, Any]) -> None:
    """Restore sorted ``scores`` and the common state, checking the level is reachable."""
    s = torch.as_tensor(state["scores"]).detach().to("cpu", torch.float64).reshape(-1)
    if s.numel() < 1 or not bool(torch.isfinite(s).all()):
        raise ValueError(f"{type(recal).__name__}: the state's scores must be a non-empty 1-D tensor of finite numbers")
    level = check_level(state.get("level", recal.level))
    if conformal_rank(s.numel(), level) > s.numel():
        raise ValueError(f"{type(recal).__name__}: the state's {s.numel()} scores are too few for level={level}")
    recal.scores = s.sort().values
    recal.restore_common_state(state)


def _mean_std(pred: RegressionPrediction) -> Tuple[torch.Tensor, torch.Tensor]:
    """The mixture mean and total std in the work dtype, flattened to (N,)."""
    dt = work_dtype(pred.device)
    S = pred.num_samples
    loc = pred.loc_samples.detach().to(dt).reshape(S, -1)
    scale = pred.scale_samples.detach().to(dt).reshape(S, -1)
    return loc.mean(0), torch.sqrt((scale * scale).mean(0) + loc.var(0, unbiased=False))


# ----------------------------------------------------------------------------- variance scaling
@register_recalibrator
class VarianceScaling(Recalibrator):
    r"""Variance scaling (Levi et al. 2020; Laves et al. 2020): one factor :math:`c>0` on the
    predictive std, applied to the mixture around its mean :math:`\mu^*`,

    .. math::

        \mu'_s = \mu^* + c\,(\mu_s - \mu^*),\qquad \sigma'_s = c\,\sigma_s,\qquad
        \hat c = \arg\min_c\; -\frac1n\sum_{i=1}^n \log\frac1S\sum_s
        \mathcal N\big(y_i;\ \mu'_s(x_i),\ \sigma'^2_s(x_i)\big).

    The mean is kept, and the total, epistemic and aleatoric variances are all multiplied by
    :math:`c^2`, so their ratio is the model's. With :math:`S=1` this is
    :math:`\hat c^2 = \frac1n\sum_i (y_i-\mu_i)^2/\sigma_i^2`.

    :math:`\hat c` minimises the NLL in float64 over :math:`\log c` on ``bounds``: the best of
    61 log-spaced factors (steps of 0.23 in :math:`\log c` for the default bounds), then
    golden-section search between its two neighbours to :math:`10^{-10}` in :math:`\log c`
    (:func:`~pyrobdl.calibration.base.minimize_1d`). A warning says when :math:`\hat c` ends
    on the bounds.

    Args:
        level: default level of the returned prediction's intervals (unused by the fit).
        bounds: the range ``(c_min, c_max)`` searched.

    Attributes:
        factor (float): the fitted :math:`\hat c`.

    Example:
        >>> import torch
        >>> from pyrobdl.prediction import RegressionPrediction
        >>> g = torch.Generator().manual_seed(0)
        >>> y = 3.0 * torch.randn(5000, generator=g)             # the model says std 1
        >>> vs = VarianceScaling().fit(RegressionPrediction(torch.zeros(1, 5000), torch.ones(1, 5000)), y)
        >>> round(vs.factor, 1)
        3.0
    """

    name = "variance"
    task = "regression"

    def __init__(self, *, level: float = 0.9, bounds: Tuple[float, float] = (1e-3, 1e3)):
        super().__init__(level=level)
        self.bounds = check_bounds(bounds, "c_min", "c_max")
        self.factor: Optional[float] = None

    def _fit(self, pred: RegressionPrediction, y: torch.Tensor) -> None:
        pred = check_not_recalibrated(pred, "VarianceScaling")
        check_positive_scale(pred, "VarianceScaling")
        dt = work_dtype(pred.device)
        S, N = pred.loc_samples.shape[:2]
        loc = pred.loc_samples.detach().to(dt).reshape(S, N, -1)
        scale = pred.scale_samples.detach().to(dt).reshape(S, N, -1)
        mu = loc.mean(0)
        dev, res = loc - mu, (y.to(dt).reshape(1, N, -1) - mu)
        const = (-scale.log() - 0.5 * _LOG_2PI).sum(-1)
        D = loc.shape[-1]

        def nll(t: float) -> float:
            z = (res * math.exp(-t) - dev) / scale
            lp = const - 0.5 * (z * z).sum(-1)
            return float(math.log(S) - torch.logsumexp(lp, 0).mean()) + D * t

        self.factor = fit_positive_scalar(
            nll, self.bounds, what="variance factor", grid=61, tol=1e-10,
            hint="check the calibration targets (units, order), or widen bounds=(c_min, c_max)",
        )

    def transform(self, pred: Prediction) -> RegressionPrediction:
        """A :class:`~pyrobdl.prediction.RegressionPrediction` with :math:`\\mu'_s, \\sigma'_s`
        (same dtype and device as ``pred``)."""
        pred = check_not_recalibrated(pred, "VarianceScaling")
        if self.factor is None:
            raise _not_fitted("VarianceScaling")
        loc, scale = pred.loc_samples, pred.scale_samples
        mu = loc.mean(0, keepdim=True)
        return RegressionPrediction(mu + self.factor * (loc - mu), self.factor * scale)

    def get_state(self) -> Dict[str, Any]:
        if self.factor is None:
            raise _not_fitted("VarianceScaling")
        return {"factor": float(self.factor), **self.common_state()}

    def set_state(self, state: Dict[str, Any]) -> None:
        self.factor = check_positive_float(state["factor"], "factor")
        self.restore_common_state(state)

    def __repr__(self) -> str:
        return f"VarianceScaling(factor={self.factor}, num_calibration={self.num_calibration})"


# ----------------------------------------------------------------------------- isotonic
def isotonic_knots(u: torch.Tensor, max_knots: int) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Knots of the recalibration map fitted to the calibration PITs ``u`` (float64 CPU).

    The isotonic regression of the empirical frequencies
    :math:`\hat P(u_i) = \frac1n\#\{j: u_j\le u_i\}` on :math:`u_i` is those frequencies
    themselves (they already increase with :math:`u_i`; tied PITs share one value), i.e. the
    empirical CDF of the PITs at its distinct values. Kept are every distinct PIT in (0, 1), or
    ``max_knots`` of them evenly spread in rank when there are more, plus (0, 0) and (1, 1);
    then :math:`R = (1-\varepsilon)R_{iso} + \varepsilon\,\mathrm{id}` with
    :math:`\varepsilon = 1/(n+1)` makes every slope positive.

    Example:
        >>> isotonic_knots(torch.tensor([0.5, 0.1, 0.1]), 100)       # n = 3: eps = 1/4
        (tensor([0.0000, 0.1000, 0.5000, 1.0000], dtype=torch.float64), tensor([0.0000, 0.5250, 0.8750, 1.0000], dtype=torch.float64))
    """
    n = u.numel()
    vals, counts = torch.unique_consecutive(u.detach().to("cpu", torch.float64).reshape(-1).sort().values, return_counts=True)
    freq = counts.cumsum(0).to(torch.float64) / n
    keep = (vals > 0) & (vals < 1)
    vals, freq = vals[keep], freq[keep]
    if vals.numel() > max_knots:
        idx = torch.linspace(0, vals.numel() - 1, max_knots, dtype=torch.float64).round().long().unique()
        vals, freq = vals[idx], freq[idx]
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    eps = 1.0 / (n + 1)
    mixed = (1.0 - eps) * freq + eps * vals
    ok = mixed < 1.0  # a PIT within an ulp of 1 may round onto the end knot
    return torch.cat([zero, vals[ok], one]), torch.cat([zero, mixed[ok], one])


@register_recalibrator
class IsotonicCalibration(Recalibrator):
    r"""Isotonic CDF recalibration (Kuleshov, Fenner & Ermon 2018): a monotone map :math:`R`
    from the calibration PITs :math:`u_i = F_i(y_i)` to their empirical frequencies, so that the
    recalibrated CDF :math:`F'(y) = R(F(y))` is calibrated on the calibration set,
    :math:`\frac1n\#\{i: F'_i(y_i)\le p\}\approx p`.

    :math:`R` is the isotonic fit (see :func:`isotonic_knots`: the empirical CDF of the PITs)
    interpolated linearly through (0, 0), at most ``max_knots`` PIT knots and (1, 1), mixed with
    a share :math:`\varepsilon = 1/(n+1)` of the identity:
    :math:`R = (1-\varepsilon)R_{iso} + \varepsilon u`. So :math:`R` is continuous and strictly
    increasing with slopes :math:`\ge\varepsilon`: quantiles are unique and the density
    :math:`R'(F(y))f(y)` is positive everywhere. With :math:`n\le` ``max_knots`` every distinct
    PIT is a knot; beyond, keeping ``max_knots`` of them (even in rank) moves :math:`R` by at most
    about ``1/max_knots``, and bounds the cost of the exact recalibrated moments.

    The map acts on the whole predictive CDF, so it cannot split a change of spread between the
    sources: the returned :class:`IsotonicRegressionPrediction` scales the model's epistemic and
    aleatoric variances by the same factor :math:`\mathrm{Var}_{F'}/\mathrm{Var}_F`.

    Args:
        level: default level of the returned prediction's intervals.
        max_knots: most PIT knots kept in :math:`R` (>= 2).

    Attributes:
        knots_pit, knots_prob: the knots :math:`(x_k, R(x_k))` of :math:`R`, float64 tensors.

    Example:
        >>> import torch
        >>> from pyrobdl.prediction import RegressionPrediction
        >>> g = torch.Generator().manual_seed(0)
        >>> y = 2.0 * torch.randn(500, generator=g)              # the model says std 1
        >>> iso = IsotonicCalibration().fit(RegressionPrediction(torch.zeros(1, 500), torch.ones(1, 500)), y)
        >>> pred = iso.transform(RegressionPrediction(torch.zeros(1, 1), torch.ones(1, 1)))
        >>> lo, hi = pred.interval(0.9)                          # truth: +-3.29
        >>> 2.9 < float(hi) < 3.7
        True
    """

    name = "isotonic"
    task = "regression"

    def __init__(self, *, level: float = 0.9, max_knots: int = 100):
        super().__init__(level=level)
        self.max_knots = check_positive_int(max_knots, "max_knots", minimum=2)
        self.knots_pit: Optional[torch.Tensor] = None
        self.knots_prob: Optional[torch.Tensor] = None

    def _fit(self, pred: RegressionPrediction, y: torch.Tensor) -> None:
        pred = check_not_recalibrated(pred, "IsotonicCalibration")
        check_one_target(pred, "IsotonicCalibration")
        check_positive_scale(pred, "IsotonicCalibration")
        dt = work_dtype(pred.device)
        S = pred.num_samples
        loc = pred.loc_samples.detach().to(dt).reshape(S, -1)
        scale = pred.scale_samples.detach().to(dt).reshape(S, -1)
        u = ndtr((y.to(dt).reshape(1, -1) - loc) / scale).mean(0)
        self.knots_pit, self.knots_prob = isotonic_knots(u, self.max_knots)

    def calibration_map(self, u) -> torch.Tensor:
        r""":math:`R(u)` for probabilities ``u`` in [0, 1] (float64)."""
        if self.knots_pit is None:
            raise _not_fitted("IsotonicCalibration")
        return interp(torch.as_tensor(u, dtype=torch.float64).detach().cpu(), self.knots_pit, self.knots_prob)

    def transform(self, pred: Prediction) -> IsotonicRegressionPrediction:
        """An :class:`IsotonicRegressionPrediction` of ``pred``'s samples and the fitted map."""
        pred = check_not_recalibrated(pred, "IsotonicCalibration")
        if self.knots_pit is None:
            raise _not_fitted("IsotonicCalibration")
        return IsotonicRegressionPrediction(
            pred.loc_samples, pred.scale_samples, knots_pit=self.knots_pit, knots_prob=self.knots_prob, level=self.level
        )

    def get_state(self) -> Dict[str, Any]:
        if self.knots_pit is None:
            raise _not_fitted("IsotonicCalibration")
        return {"knots_pit": self.knots_pit.clone(), "knots_prob": self.knots_prob.clone(),
                "max_knots": float(self.max_knots), **self.common_state()}

    def set_state(self, state: Dict[str, Any]) -> None:
        self.knots_pit, self.knots_prob = check_knots(state["knots_pit"], state["knots_prob"])
        self.max_knots = int(state.get("max_knots", self.max_knots))
        self.restore_common_state(state)

    def __repr__(self) -> str:
        k = None if self.knots_pit is None else self.knots_pit.numel()
        return f"IsotonicCalibration(knots={k}, num_calibration={self.num_calibration})"


# ----------------------------------------------------------------------------- conformal
class SplitConformal(Recalibrator):
    """What the split-conformal recalibrators share: one score per calibration point
    (the hook :meth:`_scores`), kept sorted (float64, CPU) in ``scores``, saved and restored
    with the level. Subclasses set ``name`` and implement :meth:`_scores` and ``transform``."""

    conformal = True

    def __init__(self, *, level: float = 0.9):
        super().__init__(level=level)
        self.scores: Optional[torch.Tensor] = None

    def _scores(self, pred: RegressionPrediction, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fit(self, pred: RegressionPrediction, y: torch.Tensor) -> None:
        who = type(self).__name__
        pred = check_not_recalibrated(pred, who)
        check_one_target(pred, who)
        self.scores = self._scores(pred, y).to("cpu", torch.float64).sort().values

    def fitted_scores(self) -> torch.Tensor:
        """The sorted calibration scores (a RuntimeError before :meth:`fit`)."""
        if self.scores is None:
            raise _not_fitted(type(self).__name__)
        return self.scores

    def get_state(self) -> Dict[str, Any]:
        return {"scores": self.fitted_scores().clone(), **self.common_state()}

    def set_state(self, state: Dict[str, Any]) -> None:
        _set_conformal_state(self, state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(level={self.level}, num_calibration={self.num_calibration})"


@register_recalibrator
class ConformalRegression(SplitConformal):
    r"""Split conformal regression on normalised scores (Vovk et al. 2005; Papadopoulos 2008;
    Lei et al. 2018):

    .. math::

        s_i = \frac{|y_i - \mu^*_i|}{\sigma^*_i},\qquad
        C_p(x) = \mu^*(x) \pm s_{(\lceil (n+1)p\rceil)}\,\sigma^*(x),

    with :math:`\mu^*, \sigma^*` the model's predictive mean and total std (epistemic and
    aleatoric), so the intervals keep the model's shape across inputs and are rescaled to cover.
    The sorted scores are kept, so ``interval(level)`` works for every level :math:`p` with
    :math:`\lceil (n+1)p\rceil\le n`, each with :math:`P(y\in C_p)\in[p, p+\frac1{n+1})` for
    exchangeable data and continuous scores.

    Only intervals change: the returned :class:`ConformalRegressionPrediction` keeps the
    model's mean, std, epistemic/aleatoric split, cdf and log_prob (a guarantee about intervals
    says nothing about densities). A calibration point with :math:`\sigma^* = 0` is a ValueError
    (its score is undefined), as is a later prediction with one.

    Args:
        level: the coverage :math:`p` fitted, the default of ``interval``.

    Attributes:
        scores (torch.Tensor): the sorted calibration scores (float64, CPU).

    Example:
        >>> import torch
        >>> from pyrobdl.prediction import RegressionPrediction
        >>> g = torch.Generator().manual_seed(0)
        >>> y = 2.0 * torch.randn(999, generator=g)              # the model says std 1
        >>> cp = ConformalRegression(level=0.9).fit(RegressionPrediction(torch.zeros(1, 999), torch.ones(1, 999)), y)
        >>> round(cp.score_quantile(), 2)                        # truth: 2 * 1.645 = 3.29
        3.31
        >>> lo, hi = cp.transform(RegressionPrediction(torch.zeros(1, 1), torch.ones(1, 1))).interval(0.5)
        >>> 1.2 < float(hi) < 1.5                                # truth: 2 * 0.674 = 1.35
        True
    """

    name = "conformal"
    task = "regression"

    def _scores(self, pred: RegressionPrediction, y: torch.Tensor) -> torch.Tensor:
        mu, sd = _mean_std(pred)
        bad = int((sd <= 0).sum())
        if bad:
            raise ValueError(
                f"ConformalRegression: the predictive std is 0 at {bad} calibration point(s), where the "
                "normalised score |y - mu| / std is undefined; use a model with noise, or method='cqr'"
            )
        return (y.to(mu.dtype).reshape(-1) - mu).abs() / sd

    def score_quantile(self, level: Optional[float] = None) -> float:
        r""":math:`\hat q_p = s_{(k)}`, :math:`k=\lceil (n+1)p\rceil`, for any reachable level
        (default: the fitted one), as ``ConformalRegressionPrediction.score_quantile``."""
        return conformal_quantile(self.fitted_scores(), self.level if level is None else check_level(level))

    def transform(self, pred: Prediction) -> ConformalRegressionPrediction:
        """A :class:`ConformalRegressionPrediction` of ``pred``'s samples and the scores."""
        pred = check_not_recalibrated(pred, "ConformalRegression")
        scores = self.fitted_scores()
        return ConformalRegressionPrediction(pred.loc_samples, pred.scale_samples, scores=scores, level=self.level)


@register_recalibrator
class ConformalizedQuantileRegression(SplitConformal):
    r"""Conformalised quantile regression (Romano, Patterson & Candès 2019) on the model's
    predictive quantiles :math:`\hat q_{lo}, \hat q_{hi}` at :math:`(1\mp p)/2`:

    .. math::

        E_i = \max\big(\hat q_{lo}(x_i) - y_i,\ y_i - \hat q_{hi}(x_i)\big),\qquad
        C(x) = \big[\hat q_{lo}(x) - \hat Q,\ \hat q_{hi}(x) + \hat Q\big],\qquad
        \hat Q = E_{(\lceil (n+1)p\rceil)}.

    The quantiles are those of the full mixture (epistemic and aleatoric), found by
    :func:`~pyrobdl.prediction.mixture_quantile`. Unlike :class:`ConformalRegression` the
    correction is additive, so it suits predictives whose width is right in shape but off by
    an offset; it is valid for the fitted level only (``interval(other_level)`` is a
    ValueError). Only the intervals change, as for :class:`ConformalRegression`.

    Args:
        level: the coverage :math:`p`.

    Attributes:
        scores (torch.Tensor): the sorted calibration scores :math:`E_i` (float64, CPU).
        correction (float): :math:`\hat Q`.

    Example:
        >>> import torch
        >>> from pyrobdl.prediction import RegressionPrediction
        >>> g = torch.Generator().manual_seed(0)
        >>> y = 2.0 * torch.randn(999, generator=g)              # the model says std 1
        >>> cqr = ConformalizedQuantileRegression(level=0.9).fit(
        ...     RegressionPrediction(torch.zeros(1, 999), torch.ones(1, 999)), y)
        >>> 1.3 < cqr.correction < 1.95                          # truth: 3.29 - 1.645
        True
    """

    name = "cqr"
    task = "regression"

    def _scores(self, pred: RegressionPrediction, y: torch.Tensor) -> torch.Tensor:
        dt = work_dtype(pred.device)
        loc, scale = pred.loc_samples.detach().to(dt), pred.scale_samples.detach().to(dt)
        a = 0.5 * (1.0 - self.level)
        q_lo, q_hi = mixture_quantile(loc, scale, a).reshape(-1), mixture_quantile(loc, scale, 1.0 - a).reshape(-1)
        yy = y.to(dt).reshape(-1)
        return torch.maximum(q_lo - yy, yy - q_hi)

    @property
    def correction(self) -> float:
        r""":math:`\hat Q`, the :math:`\lceil (n+1)p\rceil`-th smallest score."""
        return conformal_quantile(self.fitted_scores(), self.level)

    def transform(self, pred: Prediction) -> ConformalizedQuantileRegressionPrediction:
        """A :class:`ConformalizedQuantileRegressionPrediction` of ``pred``'s samples."""
        pred = check_not_recalibrated(pred, "ConformalizedQuantileRegression")
        return ConformalizedQuantileRegressionPrediction(
            pred.loc_samples, pred.scale_samples, correction=self.correction, level=self.level
        )

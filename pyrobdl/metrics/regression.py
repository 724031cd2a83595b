r"""Regression metrics: accuracy of the predictive mean, log-likelihood, CRPS,
interval coverage and width, calibration curves and sharpness.

See :mod:`pyrobdl.metrics` for the conventions shared by every metric.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch

from pyrobdl.metrics._common import (
    ArrayLike,
    PredictionLike,
    as_array,
    as_targets,
    check_level,
    classification_inputs,
    float64_prediction,
    frozen,
    regression_prediction,
    same_shape,
    to_numpy,
)
from pyrobdl.prediction import ClassificationPrediction, Prediction, RegressionPrediction, mixture_quantile


_SQRT_PI = math.sqrt(math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _area_between(x: np.ndarray, d: np.ndarray) -> float:
    r"""Exact :math:`\int |d|` of the piecewise-linear ``d`` through ``(x, d)``."""
    h = np.diff(x)
    d0, d1 = d[:-1], d[1:]
    same = d0 * d1 >= 0
    a0, a1 = np.abs(d0), np.abs(d1)
    denom = np.where(same, 1.0, a0 + a1)
    seg = np.where(same, 0.5 * (a0 + a1) * h, 0.5 * h * (d0 * d0 + d1 * d1) / denom)
    return float(seg.sum())


@dataclass(frozen=True, eq=False)
class CalibrationCurve:
    r"""Regression calibration curve (Kuleshov et al., 2018): for each expected
    coverage level :math:`p`, the observed fraction of targets inside the central
    :math:`p` predictive interval.

    Attributes:
        expected: the levels :math:`p`, shape ``(L,)``, increasing.
        observed: observed coverage at each level, shape ``(L,)``.

    Example:
        Returned by :func:`calibration_curve` (here with predictive mean 0 and
        std 1 for four targets):

        >>> curve = calibration_curve([0.0] * 4, [1.0] * 4, [0.1, -0.5, 1.5, -2.5], levels=[0.5, 0.9])
        >>> curve.expected, curve.observed
        (array([0.5, 0.9]), array([0.5 , 0.75]))
        >>> round(curve.miscalibration_area, 4)
        0.03

    References:
        Kuleshov, Fenner & Ermon (2018). *Accurate Uncertainties for Deep
        Learning Using Calibrated Regression*. ICML.
    """

    expected: np.ndarray
    observed: np.ndarray

    @property
    def miscalibration_area(self) -> float:
        """Area between the (piecewise-linear) curve and the diagonal; see :func:`miscalibration_area`.
        Levels without an observed coverage (NaN: a conformal rule that cannot give them) are
        skipped; NaN when more than half of the inner levels are missing."""
        ok = np.isfinite(self.observed)
        inner = (self.expected > 0) & (self.expected < 1)
        if ok.all():
            return _area_between(self.expected, self.observed - self.expected)
        if inner.any() and (ok & inner).sum() * 2 < inner.sum():
            return float("nan")
        return _area_between(self.expected[ok], self.observed[ok] - self.expected[ok])

def _point_and_target(prediction, y, fname: str) -> Tuple[np.ndarray, np.ndarray]:
    if isinstance(prediction, ClassificationPrediction):
        raise TypeError(f"{fname} is a regression metric; got a ClassificationPrediction")
    if isinstance(prediction, RegressionPrediction):
        pred = float64_prediction(prediction)
        yy = as_targets(pred, y)
        return to_numpy(pred.mean).reshape(-1), to_numpy(yy).reshape(-1)
    mean = as_array(prediction, "prediction", min_ndim=1)
    target = as_array(y, "y", min_ndim=1)
    mean, target = same_shape(mean, target, "prediction", "y")
    return mean.reshape(-1), target.reshape(-1)


def rmse(prediction: PredictionLike, y: ArrayLike, /) -> float:
    r"""Root mean squared error of the predictive mean,
    :math:`\sqrt{\frac1N\sum_i(\mu^*_i-y_i)^2}` (averaged over every output dimension).

    Args:
        prediction: a :class:`RegressionPrediction` (its :attr:`mean` is used) or
            point predictions of the same shape as ``y``.
        y: targets.

    Example::

        >>> rmse([0.0, 1.0], [1.0, 1.0])
        0.7071067811865476
    """
    mean, target = _point_and_target(prediction, y, "rmse")
    return float(np.sqrt(np.mean((mean - target) ** 2)))


def mae(prediction: PredictionLike, y: ArrayLike, /) -> float:
    r"""Mean absolute error of the predictive mean, :math:`\frac1N\sum_i|\mu^*_i-y_i|`.

    Example::

        >>> mae([0.0, 1.0], [1.0, 3.0])
        1.5
    """
    mean, target = _point_and_target(prediction, y, "mae")
    return float(np.mean(np.abs(mean - target)))


def nll(prediction: PredictionLike, target: ArrayLike, y: Optional[ArrayLike] = None, /) -> float:
    r"""Negative mean log predictive density (regression) or probability (classification).

    Three call forms:

    * ``nll(pred, y)`` with a prediction object: :math:`-\frac1N\sum_i \log p(y_i\mid x_i)`
      from :meth:`Prediction.log_prob`, i.e. from the *samples*: the log of the
      equal-weight mixture :math:`\frac1S\sum_s p(y_i\mid x_i,\theta_s)` (not a
      Gaussian fitted to its moments). Multi-output targets ``(N, D)`` contribute
      the joint log density of each point (summed over ``D``).
    * ``nll(mean, std, y)`` with Gaussian arrays: the closed form
      :math:`\frac1N\sum_i\big[\tfrac12\log 2\pi\sigma_i^2 + \tfrac{(y_i-\mu_i)^2}{2\sigma_i^2}\big]`.
    * ``nll(probs, labels)`` with probabilities ``(N, C)``:
      :math:`-\frac1N\sum_i \log \bar p_{i,y_i}`, a probability of exactly 0
      clamped to the smallest positive float64 (so the result stays finite).

    Example::

        >>> round(nll([0.0], [1.0], [0.0]), 6)     # Gaussian: 0.5 log(2 pi)
        0.918939
        >>> round(nll([[0.5, 0.5]], [1]), 6)       # log 2
        0.693147
    """
    if isinstance(prediction, Prediction):
        if y is not None:
            raise TypeError("nll(prediction, y) takes two arguments when given a prediction object")
        if isinstance(prediction, ClassificationPrediction):
            classification_inputs(prediction, target, "nll")  # validation with clear messages
        pred = float64_prediction(prediction)
        yy = as_targets(pred, target) if isinstance(pred, RegressionPrediction) else target
        return float(-pred.log_prob(yy).mean())
    if y is None:
        probs, labels = classification_inputs(prediction, target, "nll")
        p_true = probs[np.arange(len(labels)), labels]
        return float(-np.mean(np.log(np.maximum(p_true, np.finfo(np.float64).tiny))))
    pred = regression_prediction(prediction, target, "nll")
    return float(-pred.log_prob(as_targets(pred, y)).mean())


def _gaussian_abs_moment(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    r""":math:`E|Z|` for :math:`Z\sim\mathcal N(m, s^2)`: :math:`m(2\Phi(m/s)-1)+2s\varphi(m/s)`."""
    z = m / s
    return m * (2.0 * torch.special.ndtr(z) - 1.0) + 2.0 * s * _INV_SQRT_2PI * torch.exp(-0.5 * z * z)


def _mixture_crps(loc: torch.Tensor, scale: torch.Tensor, y: torch.Tensor, *, chunk_elems: int = 1_000_000) -> torch.Tensor:
    """Exact CRPS of the equal-weight Gaussian mixture, per point; loc/scale (S, M), y (M,)."""
    S, M = loc.shape
    term1 = _gaussian_abs_moment(y - loc, scale).mean(0)
    if S == 1:
        return term1 - scale[0] / _SQRT_PI
    # E|X - X'|: diagonal pairs give 2 sigma_s / sqrt(pi); off-diagonal pairs are symmetric.
    diag = (2.0 / _SQRT_PI) * scale.sum(0)
    i, j = torch.triu_indices(S, S, 1, device=loc.device)
    var = scale * scale
    off = torch.empty(M, dtype=loc.dtype, device=loc.device)
    step = max(1, chunk_elems // len(i))
    for start in range(0, M, step):
        sl = slice(start, start + step)
        l, v = loc[:, sl], var[:, sl]
        off[sl] = _gaussian_abs_moment(l[i] - l[j], torch.sqrt(v[i] + v[j])).sum(0)
    term2 = (diag + 2.0 * off) / (S * S)
    return term1 - 0.5 * term2


def _ensemble_crps(x: torch.Tensor, y: torch.Tensor, fair: bool) -> torch.Tensor:
    """CRPS of point-mass ensembles x (M, K) for targets y (K,), per target."""
    m = x.shape[0]
    term1 = (x - y).abs().mean(0)
    xs = torch.sort(x, dim=0).values
    # sum_{i,j} |x_i - x_j| = 2 sum_i (2i - m - 1) x_(i)  (x sorted ascending, i = 1..m)
    w = 2.0 * torch.arange(1, m + 1, dtype=x.dtype, device=x.device) - m - 1
    pair_sum = 2.0 * (w[:, None] * xs).sum(0)
    denom = 2.0 * m * (m - 1) if fair else 2.0 * m * m
    return term1 - pair_sum / denom


def _draws_crps(
    loc: torch.Tensor, scale: torch.Tensor, y: torch.Tensor, num_draws: int, seed: int,
    *, chunk_elems: int = 2_000_000,
) -> torch.Tensor:
    """Fair ensemble CRPS of ``num_draws`` draws from each point's mixture; loc/scale (S, K)."""
    S, K = loc.shape
    gen = torch.Generator(device=loc.device).manual_seed(int(seed))
    out = torch.empty(K, dtype=loc.dtype, device=loc.device)
    step = max(1, chunk_elems // num_draws)
    for start in range(0, K, step):
        sl = slice(start, start + step)
        n = out[sl].shape[0]
        comp = torch.randint(S, (num_draws, n), generator=gen, device=loc.device)
        eps = torch.randn((num_draws, n), generator=gen, dtype=loc.dtype, device=loc.device)
        x = loc[:, sl].gather(0, comp) + scale[:, sl].gather(0, comp) * eps
        out[sl] = _ensemble_crps(x, y[sl], fair=True)
    return out


def crps(
    prediction: PredictionLike,
    target: ArrayLike,
    y: Optional[ArrayLike] = None,
    /,
    *,
    method: str = "exact",
    num_draws: int = 1000,
    seed: int = 0,
) -> float:
    r"""Mean continuous ranked probability score (lower is better; Gneiting & Raftery, 2007).

    .. math::

        \mathrm{CRPS}(F, y) = \int_{-\infty}^{\infty}\big(F(z)-\mathbf 1\{z\ge y\}\big)^2dz
        = \mathbb E|X-y| - \tfrac12\,\mathbb E|X-X'|,\qquad X,X'\overset{iid}{\sim}F.

    * ``crps(mean, std, y)`` or a prediction with one sample (``S == 1``): the
      closed form for a Gaussian (Gneiting et al., 2005),
      :math:`\sigma\big[z(2\Phi(z)-1)+2\varphi(z)-1/\sqrt\pi\big]`, :math:`z=(y-\mu)/\sigma`.
    * a :class:`RegressionPrediction` with ``S > 1`` and ``method="exact"``
      (default): the energy form evaluated *exactly* for the equal-weight
      Gaussian mixture :math:`\frac1S\sum_s\mathcal N(\mu_s,\sigma_s^2)` (Grimit et al., 2006),

      .. math::

          \frac1S\sum_s A(y-\mu_s, \sigma_s^2) - \frac1{2S^2}\sum_{s,t} A(\mu_s-\mu_t, \sigma_s^2+\sigma_t^2),
          \quad A(m, v) = m\big(2\Phi(m/\sqrt v)-1\big) + 2\sqrt v\,\varphi(m/\sqrt v)

      (:math:`A(m,v)=\mathbb E|Z|` for :math:`Z\sim\mathcal N(m,v)`). Cost
      :math:`O(S^2N)`: about a second for ``S = 100, N = 10^4`` on two CPU threads.
    * ``method="draws"``: ``num_draws`` draws from each point's mixture (a
      ``torch.Generator`` seeded with ``seed``, so the result is deterministic)
      scored with the unbiased ("fair") ensemble estimator of :func:`crps_ensemble`;
      cost :math:`O(N\,M\log M)` for :math:`M` draws, independent of :math:`S`.
      Worth it only when :math:`S` is large (thousands of MCMC samples), where the
      exact :math:`S^2` pair sum is expensive; the Monte Carlo error is
      :math:`O(M^{-1/2})` of the score's spread.
    * a prediction whose CDF is recalibrated (``pyrobdl.calibration``'s isotonic): the draws
      form on the prediction's own draws, whatever ``method`` says.

    Multi-output targets are scored elementwise and averaged over all elements.

    Example::

        >>> round(crps([0.0], [1.0], [0.0]), 6)   # (sqrt 2 - 1) / sqrt pi
        0.233695
    """
    if method not in ("exact", "draws"):
        raise ValueError(f"method must be 'exact' or 'draws', got {method!r}")
    if y is None:
        pred = regression_prediction(prediction, None, "crps")
        yy = as_targets(pred, target)
    else:
        pred = regression_prediction(prediction, target, "crps")
        yy = as_targets(pred, y)
    if type(pred)._cdf is not RegressionPrediction._cdf:
        # a recalibrated CDF (pyrobdl.calibration's isotonic): score the prediction's own draws
        if isinstance(num_draws, bool) or not isinstance(num_draws, numbers.Integral) or num_draws < 2:
            raise ValueError(f"num_draws must be an integer >= 2, got {num_draws!r}")
        gen = torch.Generator(device=pred.device).manual_seed(int(seed))
        draws = pred.sample(int(num_draws), generator=gen).reshape(int(num_draws), -1)
        return float(_ensemble_crps(draws, yy.reshape(-1), fair=True).mean())
    loc = pred.samples["loc"]
    S = loc.shape[0]
    if method == "draws" and S > 1:
        if isinstance(num_draws, bool) or not isinstance(num_draws, numbers.Integral) or num_draws < 2:
            raise ValueError(f"num_draws must be an integer >= 2, got {num_draws!r}")
        scores = _draws_crps(
            loc.reshape(S, -1), pred.samples["scale"].reshape(S, -1), yy.reshape(-1), int(num_draws), int(seed)
        )
        return float(scores.mean())
    scores = _mixture_crps(loc.reshape(S, -1), pred.samples["scale"].reshape(S, -1), yy.reshape(-1))
    return float(scores.mean())


def crps_ensemble(samples: ArrayLike, y: ArrayLike, /, *, fair: bool = False) -> float:
    r"""Mean CRPS of a sample (ensemble) forecast treated as point masses.

    With draws :math:`x_1,\dots,x_M` for each target,

    .. math::

        \mathrm{CRPS} = \frac1M\sum_i|x_i-y| - \frac{1}{2M^2}\sum_{i,j}|x_i-x_j|

    which is the exact CRPS of the empirical distribution (as in properscoring's
    ``crps_ensemble``). ``fair=True`` divides the second term by :math:`2M(M-1)`
    instead, an unbiased estimate of the CRPS of the distribution the draws come
    from (Ferro, 2014). The pair sum is computed from the sorted draws,
    :math:`\sum_{i,j}|x_i-x_j| = 2\sum_i(2i-M-1)x_{(i)}`, in :math:`O(M\log M)`.

    Args:
        samples: draws of shape ``(M, *y.shape)``.
        y: targets.

    Example::

        >>> crps_ensemble([[0.0], [2.0]], [1.0])   # 1 - (1/8)*4
        0.5
    """
    x = as_array(samples, "samples", min_ndim=1)
    target = as_array(y, "y")
    if x.shape[1:] != target.shape:
        if x.ndim >= 2 and x[0].size == target.size:
            target = target.reshape(x.shape[1:])
        elif x.ndim == 1 and target.size == 1:
            x, target = x[:, None], target.reshape(1)
        else:
            raise ValueError(
                f"samples has shape {x.shape} but y has shape {target.shape}; samples must be "
                "(num_draws, *y.shape)"
            )
    if fair and x.shape[0] < 2:
        raise ValueError("fair=True needs at least 2 draws per target")
    m = x.shape[0]
    scores = _ensemble_crps(
        torch.from_numpy(x.reshape(m, -1)), torch.from_numpy(target.reshape(-1)), fair=bool(fair)
    )
    return float(scores.mean())


def _pit(pred: RegressionPrediction, yy: torch.Tensor) -> np.ndarray:
    """Probability integral transform F(y), flattened."""
    return to_numpy(pred.cdf(yy)).reshape(-1)


def _regression_pit(prediction, target, y, fname) -> Tuple[RegressionPrediction, np.ndarray]:
    if y is None:
        pred = regression_prediction(prediction, None, fname)
        return pred, _pit(pred, as_targets(pred, target))
    pred = regression_prediction(prediction, target, fname)
    return pred, _pit(pred, as_targets(pred, y))


def interval_coverage(
    prediction: PredictionLike, target: ArrayLike, y: Optional[ArrayLike] = None, /, *, level: float = 0.9
) -> float:
    r"""Fraction of targets inside the central ``level`` predictive interval
    :math:`[F^{-1}(\tfrac{1-p}2), F^{-1}(\tfrac{1+p}2)]` (closed), :math:`p` = ``level``.

    Computed from the probability integral transform: for a continuous, strictly
    increasing predictive CDF :math:`F`, :math:`y` lies in that interval iff
    :math:`|2F(y)-1|\le p`, so no quantiles need to be found and any predictive
    with a CDF (Gaussian mixture, not just a Gaussian) is handled exactly.

    Call as ``interval_coverage(pred, y, level=0.9)`` or
    ``interval_coverage(mean, std, y, level=0.9)`` (Gaussian).

    Example::

        >>> interval_coverage([0.0, 0.0], [1.0, 1.0], [0.5, 3.0], level=0.9)
        0.5
    """
    level = check_level(level)
    if isinstance(prediction, Prediction):
        # the prediction's own interval rule (conformal predictions override covers())
        pred = regression_prediction(prediction, y, "interval_coverage")
        return float(pred.covers(as_targets(pred, target), level).double().mean())
    _, u = _regression_pit(prediction, target, y, "interval_coverage")
    return float(np.mean(np.abs(2.0 * u - 1.0) <= level))


def mean_interval_width(
    prediction: PredictionLike, std: Optional[ArrayLike] = None, /, *, level: float = 0.9
) -> float:
    r"""Mean width of the central ``level`` predictive interval,
    :math:`\frac1N\sum_i \big(F_i^{-1}(\tfrac{1+p}2)-F_i^{-1}(\tfrac{1-p}2)\big)`.

    For a Gaussian, :math:`2\,\Phi^{-1}(\tfrac{1+p}2)\,\sigma_i`. For a Gaussian
    mixture the quantiles are found by safeguarded Newton iteration (bracketed by
    the smallest and largest component quantiles) to about ``1e-13`` relative.

    Call as ``mean_interval_width(pred, level=0.9)``, ``mean_interval_width(std, level=0.9)``
    or ``mean_interval_width(mean, std, level=0.9)`` (Gaussian).

    Example::

        >>> round(mean_interval_width([1.0, 2.0], level=0.95), 6)   # 2 * 1.959964 * 1.5
        5.879892
    """
    level = check_level(level)
    a = 0.5 * (1.0 - level)
    if isinstance(prediction, Prediction):
        pred = regression_prediction(prediction, std, "mean_interval_width")
        if type(pred).interval is not RegressionPrediction.interval:
            lo, hi = pred.interval(level)  # a recalibrated prediction's own intervals
            return float((hi - lo).double().mean())
        S = pred.num_samples
        loc = pred.samples["loc"].reshape(S, -1)
        scale = pred.samples["scale"].reshape(S, -1)
        width = mixture_quantile(loc, scale, 1.0 - a) - mixture_quantile(loc, scale, a)
        return float(width.mean())
    sd = as_array(prediction if std is None else std, "std")
    if std is not None:
        as_array(prediction, "mean")
    if (sd < 0).any():
        raise ValueError("std must be >= 0 everywhere")
    z = float(torch.special.ndtri(torch.tensor(1.0 - a, dtype=torch.float64)))
    return float(2.0 * z * np.mean(sd))


def calibration_curve(
    prediction: PredictionLike,
    target: ArrayLike,
    y: Optional[ArrayLike] = None,
    /,
    *,
    num_levels: int = 100,
    levels: Optional[ArrayLike] = None,
) -> CalibrationCurve:
    r"""Expected vs observed coverage of central predictive intervals (Kuleshov et al., 2018).

    For each level :math:`p` on a grid (default ``np.linspace(0, 1, 100)``, as in
    uncertainty-toolbox), the observed coverage is

    .. math::

        \hat p = \frac1N\sum_i \mathbf 1\Big\{F_i^{-1}\big(\tfrac{1-p}2\big) \le y_i \le F_i^{-1}\big(\tfrac{1+p}2\big)\Big\}
        = \frac1N\sum_i \mathbf 1\{|2F_i(y_i)-1|\le p\},

    the second form (through the predictive CDF) being exact for any continuous
    predictive, e.g. the Gaussian mixture of a :class:`RegressionPrediction`.
    A calibrated predictive lies on the diagonal :math:`\hat p = p`. A conformal prediction
    (``pyrobdl.calibration``) is scored by its own intervals (``covers`` at each level), with
    NaN where its rule gives no interval.

    Call as ``calibration_curve(pred, y)`` or ``calibration_curve(mean, std, y)``.

    Example::

        curve = calibration_curve(pred, y_test)
        plt.plot(curve.expected, curve.observed)
    """
    if levels is None:
        if isinstance(num_levels, bool) or not isinstance(num_levels, numbers.Integral) or num_levels < 2:
            raise ValueError(f"num_levels must be an integer >= 2, got {num_levels!r}")
        grid = np.linspace(0.0, 1.0, int(num_levels))
    else:
        grid = as_array(levels, "levels", min_ndim=1).reshape(-1)
        if grid.min() < 0 or grid.max() > 1:
            raise ValueError("levels must lie in [0, 1]")
        if np.any(np.diff(grid) <= 0):
            raise ValueError("levels must be strictly increasing; sort them (np.unique)")
    if isinstance(prediction, RegressionPrediction) and _own_intervals(prediction):
        return _covers_curve(prediction, target, y, grid)
    _, u = _regression_pit(prediction, target, y, "calibration_curve")
    # Observed coverage at p = fraction of |2F - 1| <= p: a sorted search, O((N + L) log N).
    d = np.sort(np.abs(2.0 * u - 1.0))
    observed = np.searchsorted(d, grid, side="right") / d.size
    return CalibrationCurve(*frozen(grid, observed))


def _own_intervals(pred: RegressionPrediction) -> bool:
    """Whether ``pred``'s intervals are its own rule rather than its CDF's (conformal predictions
    override ``covers`` and keep the model's CDF)."""
    cls = type(pred)
    return cls.covers is not RegressionPrediction.covers and cls._cdf is RegressionPrediction._cdf


def _covers_curve(prediction, target, y, grid: np.ndarray) -> CalibrationCurve:
    """The calibration curve of a prediction with its own interval rule: ``covers`` at each
    level; 0 and 1 at the ends; NaN at the levels the rule cannot give (a conformal quantile
    beyond the calibration set, or a CQR level other than the fitted one)."""
    pred = regression_prediction(prediction, y, "calibration_curve")
    yy = as_targets(pred, target)
    observed = np.full(grid.shape, np.nan)
    for i, p in enumerate(grid):
        if p <= 0.0 or p >= 1.0:
            observed[i] = float(p >= 1.0)
            continue
        try:
            observed[i] = float(pred.covers(yy, float(p)).double().mean())
        except ValueError:  # a level this rule cannot give
            pass
    return CalibrationCurve(*frozen(grid, observed))


def miscalibration_area(
    prediction: Union[CalibrationCurve, PredictionLike],
    target: Optional[ArrayLike] = None,
    y: Optional[ArrayLike] = None,
    /,
    *,
    num_levels: int = 100,
) -> float:
    r"""Area between the regression calibration curve and the diagonal,
    :math:`\int_0^1 |\hat p(p) - p|\,dp`, with :math:`\hat p` linearly
    interpolated between the grid points of :func:`calibration_curve` (the
    integral is exact for that interpolant, crossings of the diagonal included;
    the same quantity as uncertainty-toolbox's ``miscalibration_area``).

    Call as ``miscalibration_area(curve)``, ``miscalibration_area(pred, y)`` or
    ``miscalibration_area(mean, std, y)``.

    Example::

        >>> from pyrobdl.metrics import CalibrationCurve
        >>> miscalibration_area(CalibrationCurve(np.array([0., 1.]), np.array([1., 1.])))
        0.5
    """
    if isinstance(prediction, CalibrationCurve):
        if target is not None:
            raise TypeError("miscalibration_area(curve) takes no targets")
        return prediction.miscalibration_area
    if target is None:
        raise TypeError("miscalibration_area needs targets: (pred, y) or (mean, std, y)")
    return calibration_curve(prediction, target, y, num_levels=num_levels).miscalibration_area


def sharpness(prediction: PredictionLike, /) -> float:
    r"""Sharpness: the root mean predictive variance :math:`\sqrt{\frac1N\sum_i\sigma_i^2}`
    (uncertainty-toolbox's definition; Kuleshov et al., 2018 use its square).
    Lower is sharper; only meaningful together with calibration.

    Args:
        prediction: a :class:`RegressionPrediction` (its total predictive variance
            is used) or an array of predictive standard deviations.

    Example::

        >>> round(sharpness([1.0, 7.0]), 6)   # sqrt((1 + 49) / 2)
        5.0
    """
    if isinstance(prediction, ClassificationPrediction):
        raise TypeError("sharpness is a regression metric; got a ClassificationPrediction")
    if isinstance(prediction, RegressionPrediction):
        var = to_numpy(float64_prediction(prediction).variance)
    else:
        sd = as_array(prediction, "std")
        if (sd < 0).any():
            raise ValueError("std must be >= 0 everywhere")
        var = sd * sd
    return float(np.sqrt(np.mean(var)))

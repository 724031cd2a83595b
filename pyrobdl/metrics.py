r"""Evaluation metrics for Bayesian deep learning: accuracy, likelihood,
calibration, out-of-distribution detection and selective prediction.

Every metric takes either a prediction object (:class:`~pyrobdl.prediction.RegressionPrediction`,
:class:`~pyrobdl.prediction.ClassificationPrediction`) plus targets, or plain
arrays (torch tensors, numpy arrays or lists). Scalars come back as Python
``float``; per-point scores as float64 numpy arrays; curves as small frozen
dataclasses of read-only numpy arrays. All arithmetic is done in float64.

The definitions follow the standard references so that numbers can be checked
against torchmetrics, netcal, uncertainty-toolbox, properscoring and
scikit-learn:

==========================  ===============================================
group                       functions
==========================  ===============================================
regression                  :func:`rmse`, :func:`mae`, :func:`nll`, :func:`crps`,
                            :func:`crps_ensemble`, :func:`interval_coverage`,
                            :func:`mean_interval_width`, :func:`calibration_curve`,
                            :func:`miscalibration_area`, :func:`sharpness`
classification              :func:`accuracy`, :func:`nll`, :func:`brier_score`,
                            :func:`expected_calibration_error`,
                            :func:`maximum_calibration_error`, :func:`reliability_curve`
uncertainty scores          :func:`predictive_std`, :func:`predictive_entropy`,
                            :func:`expected_entropy`, :func:`mutual_information`,
                            :func:`max_probability`, :func:`uncertainty_score`
OOD detection               :func:`ood_auroc`, :func:`ood_aupr`, :func:`fpr_at_95_tpr`
selective prediction        :func:`accuracy_rejection_curve`, :func:`aurc`,
                            :func:`fit_class_thresholds`, :func:`class_threshold_rejection`
==========================  ===============================================

Bad input (NaN, empty arrays, shape mismatches, probabilities whose rows do not
sum to one within ``1e-4``, labels out of range, ``n_bins < 1``) raises a
``ValueError`` (or ``TypeError`` for a wrong kind of object) whose message names
the argument and the fix.

References:
    * Naeini, Cooper & Hauskrecht (2015). Obtaining well calibrated probabilities
      using Bayesian binning. AAAI. (ECE, MCE)
    * Guo, Pleiss, Sun & Weinberger (2017). On calibration of modern neural
      networks. ICML. (top-label ECE with 15 equal-width bins, reliability diagrams)
    * Nixon, Dusenberry, Zhang, Jerfel & Tran (2019). Measuring calibration in deep
      learning. CVPR Workshops. (equal-mass / adaptive bins)
    * Gneiting & Raftery (2007). Strictly proper scoring rules, prediction, and
      estimation. JASA 102(477). (CRPS, energy form)
    * Gneiting, Raftery, Westveld & Goldman (2005). Calibrated probabilistic
      forecasting using ensemble model output statistics. MWR. (Gaussian CRPS)
    * Grimit, Gneiting, Berrocal & Johnson (2006). The continuous ranked probability
      score for circular variables... QJRMS. (CRPS of a Gaussian mixture)
    * Ferro (2014). Fair scores for ensemble forecasts. QJRMS. (fair ensemble CRPS)
    * Kuleshov, Fenner & Ermon (2018). Accurate uncertainties for deep learning
      using calibrated regression. ICML. (regression calibration, sharpness)
    * Chung, Char, Guo, Schneider & Neiswanger (2021). Uncertainty Toolbox.
      arXiv:2109.10254. (miscalibration area, sharpness conventions)
    * Houlsby, Huszár, Ghahramani & Lengyel (2011). Bayesian active learning for
      classification and preference learning. arXiv:1112.5745. (BALD / mutual information)
    * Hendrycks & Gimpel (2017). A baseline for detecting misclassified and
      out-of-distribution examples in neural networks. ICLR. (AUROC, AUPR, max-probability score)
    * Nadeem, Zucker & Hanczar (2009). Accuracy-rejection curves (ARCs) for
      comparing classification methods with a reject option. MLSB.
    * Geifman & El-Yaniv (2017). Selective classification for deep neural
      networks. NeurIPS. Geifman, Uziel & El-Yaniv (2019). Bias-reduced
      uncertainty estimation for deep neural classifiers. ICLR. (risk-coverage, AURC, E-AURC)
"""
from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pyrobdl.prediction import ClassificationPrediction, Prediction, RegressionPrediction

__all__ = [
    # result containers
    "CalibrationCurve",
    "ReliabilityCurve",
    "RejectionCurve",
    "ClassThresholds",
    # regression
    "rmse",
    "mae",
    "nll",
    "crps",
    "crps_ensemble",
    "interval_coverage",
    "mean_interval_width",
    "calibration_curve",
    "miscalibration_area",
    "sharpness",
    # classification
    "accuracy",
    "brier_score",
    "expected_calibration_error",
    "maximum_calibration_error",
    "reliability_curve",
    # uncertainty scores
    "predictive_std",
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
    "max_probability",
    "uncertainty_score",
    # OOD
    "ood_auroc",
    "ood_aupr",
    "fpr_at_95_tpr",
    # selective prediction
    "accuracy_rejection_curve",
    "aurc",
    "fit_class_thresholds",
    "class_threshold_rejection",
]

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence, float]
PredictionLike = Union[Prediction, ArrayLike]

#: Rows of a probability matrix must sum to one within this absolute tolerance.
PROB_ATOL = 1e-4
_SQRT_PI = math.sqrt(math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

# --------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------


def _array(value, name: str, *, allow_inf: bool = False, min_ndim: int = 0) -> np.ndarray:
    """``value`` as a float64 numpy array; empty, NaN (and inf unless allowed) are errors."""
    if isinstance(value, Prediction):
        raise TypeError(
            f"{name} must be an array or tensor here, got a {type(value).__name__}; "
            "pass the prediction object as the first argument instead"
        )
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise TypeError(f"{name} must be real-valued, got a complex tensor")
        arr = value.detach().to("cpu", torch.float64).numpy()
    elif isinstance(value, (np.ndarray, list, tuple, numbers.Number, np.generic)):
        arr = np.asarray(value)
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise TypeError(
                f"{name} must hold real numbers, got an array of dtype {arr.dtype}; "
                "pass a numeric tensor, array or list"
            )
        arr = arr.astype(np.float64)
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor, numpy array or list, got {type(value).__name__}"
        )
    if arr.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimension(s), got shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"{name} is empty; pass at least one value")
    if np.isnan(arr).any():
        raise ValueError(
            f"{name} contains {int(np.isnan(arr).sum())} NaN value(s); remove or impute them first"
        )
    if not allow_inf and np.isinf(arr).any():
        raise ValueError(
            f"{name} contains {int(np.isinf(arr).sum())} infinite value(s); remove them first"
        )
    return arr


def _labels(
    value, name: str, num_classes: Optional[int], target_shape: Tuple[int, ...]
) -> np.ndarray:
    """Integer class labels of shape ``target_shape`` in ``[0, num_classes)``."""
    if isinstance(value, Prediction):
        raise TypeError(f"{name} must be an array of class labels, got a {type(value).__name__}")
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        arr = t.to(torch.float64).numpy() if (t.is_floating_point() or t.is_complex()) else t.numpy()
    elif isinstance(value, (np.ndarray, list, tuple, numbers.Number, np.generic)):
        arr = np.asarray(value)
    else:
        raise TypeError(f"{name} must be a torch.Tensor, numpy array or list, got {type(value).__name__}")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold integer class labels, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; pass one label per predicted point")
    if arr.dtype.kind == "f":
        if np.isnan(arr).any():
            raise ValueError(f"{name} contains NaN; every point needs an integer class label")
        if not np.all(arr == np.round(arr)):
            raise TypeError(
                f"{name} must hold integer class labels, got non-integer floats; "
                "pass class indices, not probabilities or one-hot rows"
            )
    arr = arr.astype(np.int64)
    if arr.shape != tuple(target_shape):
        if arr.size == math.prod(target_shape):
            arr = arr.reshape(target_shape)
        else:
            raise ValueError(
                f"{name} has shape {arr.shape} but the predictions are for points of shape "
                f"{tuple(target_shape)}; pass one label per predicted point"
            )
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) for {num_classes} classes, got values in "
            f"[{lo}, {hi}]; re-index the labels to 0..{(num_classes or 1) - 1}"
        )
    return arr


def _check_probs(probs: np.ndarray, name: str) -> np.ndarray:
    if probs.ndim < 2:
        raise ValueError(
            f"{name} must have shape (N, C) with one probability per class, got shape {probs.shape}; "
            "for a binary problem with p = P(y=1) pass np.stack([1 - p, p], axis=-1)"
        )
    if probs.shape[-1] < 2:
        raise ValueError(f"{name} needs at least 2 classes in its last dimension, got {probs.shape[-1]}")
    if probs.min() < -PROB_ATOL or probs.max() > 1 + PROB_ATOL:
        raise ValueError(
            f"{name} must lie in [0, 1], got values in [{probs.min():.4g}, {probs.max():.4g}]; "
            "pass probabilities (apply softmax to logits), not logits"
        )
    sums = probs.sum(-1)
    bad = np.abs(sums - 1.0) > PROB_ATOL
    if bad.any():
        worst = float(sums.reshape(-1)[np.argmax(np.abs(sums - 1.0).reshape(-1))])
        raise ValueError(
            f"{name}: {int(bad.sum())} row(s) do not sum to 1 within {PROB_ATOL} (e.g. {worst:.6g}); "
            "normalise them (softmax over the class dimension)"
        )
    return probs


def _float64_prediction(pred: Prediction) -> Prediction:
    """A shallow copy of ``pred`` whose sample tensors are float64 (same device)."""
    new = object.__new__(type(pred))
    new.__dict__.update(pred.__dict__)
    new.samples = {
        k: (v.detach().to(torch.float64) if v.is_floating_point() else v) for k, v in pred.samples.items()
    }
    return new


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _classification_inputs(prediction, labels, fname: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(probs (M, C), labels (M,))`` from a prediction object or arrays."""
    if isinstance(prediction, RegressionPrediction):
        raise TypeError(f"{fname} is a classification metric; got a RegressionPrediction")
    if isinstance(prediction, ClassificationPrediction):
        probs = _check_probs(_np(prediction.probs), "prediction.probs")
    else:
        probs = _check_probs(_array(prediction, "probs"), "probs")
    y = _labels(labels, "labels", probs.shape[-1], probs.shape[:-1])
    return probs.reshape(-1, probs.shape[-1]), y.reshape(-1)


def _same_shape(a: np.ndarray, b: np.ndarray, aname: str, bname: str) -> Tuple[np.ndarray, np.ndarray]:
    if a.shape == b.shape:
        return a, b
    if a.size == b.size and (
        (a.ndim == b.ndim + 1 and a.shape[-1] == 1) or (b.ndim == a.ndim + 1 and b.shape[-1] == 1)
    ):
        return a.reshape(-1), b.reshape(-1)
    raise ValueError(
        f"{aname} has shape {a.shape} but {bname} has shape {b.shape}; pass one target per prediction"
    )


def _regression_prediction(prediction, std, fname: str) -> RegressionPrediction:
    """A float64 :class:`RegressionPrediction` from a prediction object or Gaussian ``(mean, std)``."""
    if isinstance(prediction, ClassificationPrediction):
        raise TypeError(f"{fname} is a regression metric; got a ClassificationPrediction")
    if isinstance(prediction, RegressionPrediction):
        if std is not None:
            raise TypeError(
                f"{fname}: pass either (prediction, y) or (mean, std, y), not a prediction object and a std"
            )
        pred = _float64_prediction(prediction)
        if not bool((pred.samples["scale"] > 0).all()):
            raise ValueError("prediction has non-positive scale samples; every noise std must be > 0")
        return pred
    if std is None:
        raise TypeError(
            f"{fname} needs a predictive distribution: pass a RegressionPrediction and y, "
            "or Gaussian arrays (mean, std, y)"
        )
    mean = _array(prediction, "mean", min_ndim=1)
    sd = _array(std, "std")
    try:
        shape = np.broadcast_shapes(mean.shape, sd.shape)
    except ValueError:
        shape = None
    if shape != mean.shape:
        if sd.size == mean.size:
            sd = sd.reshape(mean.shape)
        else:
            raise ValueError(
                f"std has shape {sd.shape} but mean has shape {mean.shape}; pass one std per mean "
                "(or a scalar for homoscedastic noise)"
            )
    if (sd <= 0).any():
        raise ValueError("std must be > 0 everywhere; clamp it (e.g. std + 1e-6) or drop those points")
    loc = torch.from_numpy(np.array(mean, dtype=np.float64))[None]
    scale = torch.from_numpy(np.array(np.broadcast_to(sd, mean.shape), dtype=np.float64))[None]
    return RegressionPrediction(loc, scale)


def _targets(pred: RegressionPrediction, y) -> torch.Tensor:
    """Validated float64 targets shaped like one draw of ``pred``."""
    arr = _array(y, "y")
    return pred._check_y(torch.from_numpy(arr))


def _check_level(level, name: str = "level", *, closed: bool = False) -> float:
    if isinstance(level, bool) or not isinstance(level, numbers.Real):
        raise TypeError(f"{name} must be a number in (0, 1), got {level!r}")
    level = float(level)
    ok = 0 <= level <= 1 if closed else 0 < level < 1
    if not ok:
        raise ValueError(f"{name} must lie in {'[0, 1]' if closed else '(0, 1)'}, got {level}")
    return level


def _check_n_bins(n_bins) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral):
        raise TypeError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}; the standard is 15")
    return int(n_bins)


def _frozen(*arrays: np.ndarray) -> Tuple[np.ndarray, ...]:
    out = []
    for a in arrays:
        a = np.array(a, copy=True)
        a.setflags(write=False)
        out.append(a)
    return tuple(out)


# --------------------------------------------------------------------------
# result containers
# --------------------------------------------------------------------------


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
        """Area between the (piecewise-linear) curve and the diagonal; see :func:`miscalibration_area`."""
        return _area_between(self.expected, self.observed - self.expected)


@dataclass(frozen=True, eq=False)
class ReliabilityCurve:
    r"""Per-bin data of a reliability diagram (top-label calibration).

    Attributes:
        bin_edges: ``(B + 1,)`` edges; bin :math:`b` is
            :math:`(e_b, e_{b+1}]`, the first bin also holding :math:`e_0`.
        confidence: mean top-label confidence per bin, ``NaN`` for empty bins.
        accuracy: fraction correct per bin, ``NaN`` for empty bins.
        count: number of points per bin (int).

    Example:
        Returned by :func:`reliability_curve`:

        >>> probs = [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55]]
        >>> curve = reliability_curve(probs, [0, 1, 1, 1], n_bins=2)
        >>> curve.count, curve.accuracy
        (array([0, 4]), array([ nan, 0.75]))

    References:
        Guo, Pleiss, Sun & Weinberger (2017). *On Calibration of Modern Neural
        Networks*. ICML.
    """

    bin_edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def num_points(self) -> int:
        return int(self.count.sum())

    @property
    def nonempty(self) -> np.ndarray:
        """Boolean mask of the bins holding at least one point."""
        return self.count > 0

    @property
    def gap(self) -> np.ndarray:
        """``confidence - accuracy`` per bin (positive = over-confident), NaN for empty bins."""
        return self.confidence - self.accuracy

    @property
    def ece(self) -> float:
        r""":math:`\sum_b \frac{|B_b|}{N}\,|\mathrm{acc}(B_b)-\mathrm{conf}(B_b)|` over non-empty bins."""
        m = self.nonempty
        return float(np.sum(self.count[m] / self.num_points * np.abs(self.gap[m])))

    @property
    def mce(self) -> float:
        r""":math:`\max_b |\mathrm{acc}(B_b)-\mathrm{conf}(B_b)|` over non-empty bins."""
        return float(np.max(np.abs(self.gap[self.nonempty])))


@dataclass(frozen=True, eq=False)
class RejectionCurve:
    """Accuracy–rejection curve.

    Attributes:
        rejection_rate: fraction of points refused (the most uncertain first), ``(R,)``.
        accuracy: accuracy on the retained points, ``NaN`` where none are retained.
        num_retained: number of retained points at each rate (int).

    Example:
        Returned by :func:`accuracy_rejection_curve`:

        >>> probs = [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55]]
        >>> curve = accuracy_rejection_curve(probs, [0, 1, 1, 1], rejection_rates=[0.0, 0.5])
        >>> curve.accuracy, curve.num_retained
        (array([0.75, 1.  ]), array([4, 2]))

    References:
        Nadeem, Zucker & Hanczar (2009). *Accuracy-Rejection Curves (ARCs) for
        Comparing Classification Methods with a Reject Option*. MLSB.
    """

    rejection_rate: np.ndarray
    accuracy: np.ndarray
    num_retained: np.ndarray


@dataclass(frozen=True, eq=False)
class ClassThresholds:
    """Per-class confidence thresholds for refusing predictions (see :func:`fit_class_thresholds`).

    Attributes:
        thresholds: ``(C,)``; ``inf`` for a class with no correct validation prediction.
        percentile: the percentile of the correct-prediction probabilities used.

    Example:
        >>> probs = [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55]]
        >>> th = fit_class_thresholds(probs, [0, 1, 1, 1], percentile=10.0)
        >>> th.thresholds
        array([0.9  , 0.575])
        >>> th.refuse(probs)               # top-label probability below its class's threshold
        array([False,  True, False,  True])
    """

    thresholds: np.ndarray
    percentile: float

    def refuse(self, prediction: PredictionLike) -> np.ndarray:
        r"""Boolean mask ``(N,)`` of the points to refuse: those whose top-label
        probability is strictly below the threshold of their predicted class,
        :math:`\max_c \bar p_c(x) < t_{\hat y(x)}`.

        Args:
            prediction: a :class:`ClassificationPrediction` or probabilities ``(N, C)``.
        """
        if isinstance(prediction, ClassificationPrediction):
            probs = _check_probs(_np(prediction.probs), "prediction.probs")
        else:
            probs = _check_probs(_array(prediction, "probs"), "probs")
        probs = probs.reshape(-1, probs.shape[-1])
        if probs.shape[1] != len(self.thresholds):
            raise ValueError(
                f"probs has {probs.shape[1]} classes but the thresholds were fitted for "
                f"{len(self.thresholds)}; use predictions for the same classes"
            )
        predicted = probs.argmax(1)
        conf = probs[np.arange(len(probs)), predicted]
        return conf < self.thresholds[predicted]


# --------------------------------------------------------------------------
# regression
# --------------------------------------------------------------------------


def _point_and_target(prediction, y, fname: str) -> Tuple[np.ndarray, np.ndarray]:
    if isinstance(prediction, ClassificationPrediction):
        raise TypeError(f"{fname} is a regression metric; got a ClassificationPrediction")
    if isinstance(prediction, RegressionPrediction):
        pred = _float64_prediction(prediction)
        yy = _targets(pred, y)
        return _np(pred.mean).reshape(-1), _np(yy).reshape(-1)
    mean = _array(prediction, "prediction", min_ndim=1)
    target = _array(y, "y", min_ndim=1)
    mean, target = _same_shape(mean, target, "prediction", "y")
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
            _classification_inputs(prediction, target, "nll")  # validation with clear messages
        pred = _float64_prediction(prediction)
        yy = _targets(pred, target) if isinstance(pred, RegressionPrediction) else target
        return float(-pred.log_prob(yy).mean())
    if y is None:
        probs, labels = _classification_inputs(prediction, target, "nll")
        p_true = probs[np.arange(len(labels)), labels]
        return float(-np.mean(np.log(np.maximum(p_true, np.finfo(np.float64).tiny))))
    pred = _regression_prediction(prediction, target, "nll")
    return float(-pred.log_prob(_targets(pred, y)).mean())


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

    Multi-output targets are scored elementwise and averaged over all elements.

    Example::

        >>> round(crps([0.0], [1.0], [0.0]), 6)   # (sqrt 2 - 1) / sqrt pi
        0.233695
    """
    if method not in ("exact", "draws"):
        raise ValueError(f"method must be 'exact' or 'draws', got {method!r}")
    if y is None:
        pred = _regression_prediction(prediction, None, "crps")
        yy = _targets(pred, target)
    else:
        pred = _regression_prediction(prediction, target, "crps")
        yy = _targets(pred, y)
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
    x = _array(samples, "samples", min_ndim=1)
    target = _array(y, "y")
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
    return _np(pred.cdf(yy)).reshape(-1)


def _regression_pit(prediction, target, y, fname) -> Tuple[RegressionPrediction, np.ndarray]:
    if y is None:
        pred = _regression_prediction(prediction, None, fname)
        return pred, _pit(pred, _targets(pred, target))
    pred = _regression_prediction(prediction, target, fname)
    return pred, _pit(pred, _targets(pred, y))


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
    level = _check_level(level)
    _, u = _regression_pit(prediction, target, y, "interval_coverage")
    return float(np.mean(np.abs(2.0 * u - 1.0) <= level))


from .prediction import mixture_quantile as _mixture_quantile  # noqa: E402


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
    level = _check_level(level)
    a = 0.5 * (1.0 - level)
    if isinstance(prediction, Prediction):
        pred = _regression_prediction(prediction, std, "mean_interval_width")
        S = pred.num_samples
        loc = pred.samples["loc"].reshape(S, -1)
        scale = pred.samples["scale"].reshape(S, -1)
        width = _mixture_quantile(loc, scale, 1.0 - a) - _mixture_quantile(loc, scale, a)
        return float(width.mean())
    sd = _array(prediction if std is None else std, "std")
    if std is not None:
        _array(prediction, "mean")
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
    A calibrated predictive lies on the diagonal :math:`\hat p = p`.

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
        grid = _array(levels, "levels", min_ndim=1).reshape(-1)
        if grid.min() < 0 or grid.max() > 1:
            raise ValueError("levels must lie in [0, 1]")
        if np.any(np.diff(grid) <= 0):
            raise ValueError("levels must be strictly increasing; sort them (np.unique)")
    _, u = _regression_pit(prediction, target, y, "calibration_curve")
    # Observed coverage at p = fraction of |2F - 1| <= p: a sorted search, O((N + L) log N).
    d = np.sort(np.abs(2.0 * u - 1.0))
    observed = np.searchsorted(d, grid, side="right") / d.size
    return CalibrationCurve(*_frozen(grid, observed))


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
        var = _np(_float64_prediction(prediction).variance)
    else:
        sd = _array(prediction, "std")
        if (sd < 0).any():
            raise ValueError("std must be >= 0 everywhere")
        var = sd * sd
    return float(np.sqrt(np.mean(var)))


# --------------------------------------------------------------------------
# classification
# --------------------------------------------------------------------------


def accuracy(prediction: PredictionLike, labels: ArrayLike, /) -> float:
    r"""Fraction of points whose most probable class is the label,
    :math:`\frac1N\sum_i\mathbf 1\{\arg\max_c \bar p_{ic} = y_i\}` (ties go to the
    lowest class index, as ``argmax`` does).

    Args:
        prediction: a :class:`ClassificationPrediction`, probabilities ``(N, C)``,
            or integer predicted labels ``(N,)``.
        labels: integer class labels ``(N,)``.

    Example::

        >>> accuracy([[0.9, 0.1], [0.3, 0.7]], [0, 0])
        0.5
    """
    if not isinstance(prediction, Prediction):
        raw = prediction.detach().cpu().numpy() if isinstance(prediction, torch.Tensor) else np.asarray(prediction)
        if raw.ndim == 1 and raw.dtype.kind in "iub":
            if raw.size == 0:
                raise ValueError("prediction is empty; pass at least one predicted label")
            predicted = raw.astype(np.int64)
            y = _labels(labels, "labels", None, predicted.shape)
            return float(np.mean(predicted == y))
    probs, y = _classification_inputs(prediction, labels, "accuracy")
    return float(np.mean(probs.argmax(1) == y))


def brier_score(prediction: PredictionLike, labels: ArrayLike, /) -> float:
    r"""Multiclass Brier score (Brier, 1950),
    :math:`\frac1N\sum_i\sum_c(\bar p_{ic}-\mathbf 1\{y_i=c\})^2`, in :math:`[0, 2]`.

    For two classes this is twice the binary score of ``sklearn.metrics.brier_score_loss``
    on :math:`P(y=1)` (and equal to sklearn's multiclass value with ``scale_by_half=False``).

    Example::

        >>> brier_score([[1.0, 0.0], [0.5, 0.5]], [0, 0])
        0.25
    """
    probs, y = _classification_inputs(prediction, labels, "brier_score")
    p_true = probs[np.arange(len(y)), y]
    # sum_c (p_c - 1{c=y})^2 = sum_c p_c^2 - 2 p_y + 1, without an (N, C) one-hot matrix.
    return float(np.mean(np.einsum("ij,ij->i", probs, probs) - 2.0 * p_true + 1.0))


_EQUAL_WIDTH = ("equal_width", "uniform")
_EQUAL_MASS = ("equal_mass", "adaptive", "quantile")


def _bin_edges(conf: np.ndarray, n_bins: int, binning: str) -> np.ndarray:
    if binning in _EQUAL_WIDTH:
        return np.linspace(0.0, 1.0, n_bins + 1)
    if binning in _EQUAL_MASS:
        s = np.sort(conf)
        n = s.size
        k = np.arange(1, n_bins)
        idx = (k * n + n_bins - 1) // n_bins - 1  # ceil(k n / B) - 1, in integers
        return np.concatenate([[0.0], s[np.clip(idx, 0, n - 1)], [1.0]])
    raise ValueError(
        f"binning must be 'equal_width' (alias 'uniform') or 'equal_mass' (aliases 'adaptive', "
        f"'quantile'), got {binning!r}"
    )


def reliability_curve(
    prediction: PredictionLike, labels: ArrayLike, /, *, n_bins: int = 15, binning: str = "equal_width"
) -> ReliabilityCurve:
    r"""Per-bin top-label confidence, accuracy and count (Naeini et al., 2015; Guo et al., 2017).

    Each point's confidence is its top-label probability
    :math:`c_i=\max_k\bar p_{ik}`, correct when :math:`\arg\max_k\bar p_{ik}=y_i`.
    Bins are half-open on the left, :math:`(e_{b}, e_{b+1}]`, with :math:`e_0=0`
    included in the first bin (the rule of Guo et al.'s reference code:
    ``conf > lo and conf <= hi``; implemented as ``np.searchsorted(edges, c, side="left") - 1``
    against the float edges, so a confidence exactly on an edge goes to the lower bin).

    * ``binning="equal_width"`` (default): ``edges = np.linspace(0, 1, n_bins + 1)``.
    * ``binning="equal_mass"`` ("adaptive"; Nixon et al., 2019): with sorted
      confidences :math:`c_{(1)}\le\dots\le c_{(N)}`, the inner edges are
      :math:`e_b = c_{(\lceil bN/B\rceil)}`, :math:`b=1..B-1`, and :math:`e_0=0,\ e_B=1`;
      with the same :math:`(e_b, e_{b+1}]` rule the bins hold :math:`\lfloor N/B\rfloor`
      or :math:`\lceil N/B\rceil` points when confidences are distinct; tied
      confidences stay together (duplicate edges give empty bins).

    Empty bins have ``count == 0`` and ``NaN`` confidence and accuracy.

    Example::

        curve = reliability_curve(pred, y_test, n_bins=15)
        curve.ece, curve.mce, curve.count
    """
    n_bins = _check_n_bins(n_bins)
    probs, y = _classification_inputs(prediction, labels, "reliability_curve")
    predicted = probs.argmax(1)
    conf = probs[np.arange(len(y)), predicted]
    correct = (predicted == y).astype(np.float64)
    edges = _bin_edges(conf, n_bins, binning)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        mean_acc = np.where(count > 0, acc_sum / count, np.nan)
    return ReliabilityCurve(*_frozen(edges, mean_conf, mean_acc, count.astype(np.int64)))


def expected_calibration_error(
    prediction: PredictionLike, labels: ArrayLike, /, *, n_bins: int = 15, binning: str = "equal_width"
) -> float:
    r"""Expected calibration error (Naeini et al., 2015; Guo et al., 2017),

    .. math::

        \mathrm{ECE} = \sum_{b:\,|B_b|>0} \frac{|B_b|}{N}\,\big|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)\big|,

    with top-label confidences in ``n_bins`` bins :math:`(e_b, e_{b+1}]` (the
    first including 0); see :func:`reliability_curve` for the binning rules and
    the ``"equal_mass"`` (adaptive) option. Empty bins are skipped. Equals
    torchmetrics' ``multiclass_calibration_error(norm="l1")`` (up to its float32
    arithmetic) except when a confidence lies exactly on an inner bin edge:
    torchmetrics (>= 0.11) bins :math:`[e_b, e_{b+1})`, Guo et al.'s code and this
    function :math:`(e_b, e_{b+1}]`.

    Args:
        prediction: a :class:`ClassificationPrediction` (its :attr:`probs` are used)
            or probabilities ``(N, C)``.
        labels: integer labels ``(N,)``.
        n_bins: number of bins (standard: 15).
        binning: ``"equal_width"`` or ``"equal_mass"``.

    Example::

        >>> round(expected_calibration_error([[0.8, 0.2], [0.8, 0.2]], [0, 1], n_bins=10), 6)
        0.3
    """
    return reliability_curve(prediction, labels, n_bins=n_bins, binning=binning).ece


def maximum_calibration_error(
    prediction: PredictionLike, labels: ArrayLike, /, *, n_bins: int = 15, binning: str = "equal_width"
) -> float:
    r"""Maximum calibration error (Naeini et al., 2015),
    :math:`\max_{b:\,|B_b|>0}|\mathrm{acc}(B_b)-\mathrm{conf}(B_b)|`, with the bins of
    :func:`reliability_curve`; empty bins are skipped.

    Example::

        >>> round(maximum_calibration_error([[0.9, 0.1], [0.6, 0.4]], [0, 1], n_bins=10), 6)
        0.6
    """
    return reliability_curve(prediction, labels, n_bins=n_bins, binning=binning).mce


# --------------------------------------------------------------------------
# uncertainty scores
# --------------------------------------------------------------------------


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) over the last axis, with 0 log 0 = 0."""
    logp = np.log(p, out=np.zeros_like(p), where=p > 0)
    return -np.einsum("...c,...c->...", p, logp)


def _prob_samples(prediction, fname: str, *, need_samples: bool) -> np.ndarray:
    """``(S, N, ..., C)`` probability samples; plain ``(N, C)`` arrays give ``S = 1`` unless samples are needed."""
    if isinstance(prediction, RegressionPrediction):
        raise TypeError(f"{fname} is a classification score; use predictive_std for regression")
    if isinstance(prediction, ClassificationPrediction):
        return _check_probs(_np(prediction.probs_samples), "prediction.probs_samples")
    p = _check_probs(_array(prediction, "probs"), "probs")
    if p.ndim == 2:
        if need_samples:
            raise ValueError(
                f"{fname} needs sampled probabilities of shape (S, N, C), got {p.shape}; "
                "pass a ClassificationPrediction or the stacked per-sample softmax outputs"
            )
        return p[None]
    if p.ndim != 3:
        raise ValueError(
            f"probs must be (N, C) or samples (S, N, C), got shape {p.shape}; for extra event "
            "dimensions pass a ClassificationPrediction"
        )
    return p


def predictive_std(prediction: RegressionPrediction, /) -> np.ndarray:
    r"""Total predictive standard deviation :math:`\sigma^*_i` of a regression
    prediction (the mixture's, by the law of total variance), shape ``(N, *event)``.

    Example::

        score = predictive_std(pred)   # higher = more uncertain
    """
    if not isinstance(prediction, RegressionPrediction):
        raise TypeError(
            f"predictive_std needs a RegressionPrediction, got {type(prediction).__name__}; "
            "with Gaussian arrays the std is already the score"
        )
    return _np(_float64_prediction(prediction).std)


def predictive_entropy(prediction: PredictionLike, /) -> np.ndarray:
    r"""Predictive entropy :math:`H[\bar p_i] = -\sum_c \bar p_{ic}\log\bar p_{ic}` (nats;
    :math:`0\log0=0`), the total uncertainty, shape ``(N,)``.

    Args:
        prediction: a :class:`ClassificationPrediction`, probabilities ``(N, C)``
            or probability samples ``(S, N, C)`` (averaged over ``S`` first).

    Example::

        >>> predictive_entropy([[0.5, 0.5]]).round(6)
        array([0.693147])
    """
    return _entropy(_prob_samples(prediction, "predictive_entropy", need_samples=False).mean(0))


def expected_entropy(prediction: PredictionLike, /) -> np.ndarray:
    r"""Expected entropy :math:`\frac1S\sum_s H[p_{s,i}]` (nats), the aleatoric part.

    Args:
        prediction: a :class:`ClassificationPrediction` or probability samples ``(S, N, C)``.

    Example::

        >>> expected_entropy([[[1.0, 0.0]], [[0.0, 1.0]]])
        array([0.])
    """
    return _entropy(_prob_samples(prediction, "expected_entropy", need_samples=True)).mean(0)


def mutual_information(prediction: PredictionLike, /) -> np.ndarray:
    r"""Mutual information between label and parameters (BALD; Houlsby et al., 2011),
    :math:`H[\bar p_i]-\frac1S\sum_sH[p_{s,i}]` (nats, clamped at 0), the epistemic part.

    Args:
        prediction: a :class:`ClassificationPrediction` or probability samples ``(S, N, C)``.

    Example::

        >>> mutual_information([[[1.0, 0.0]], [[0.0, 1.0]]]).round(6)
        array([0.693147])
    """
    p = _prob_samples(prediction, "mutual_information", need_samples=True)
    return np.maximum(_entropy(p.mean(0)) - _entropy(p).mean(0), 0.0)


def max_probability(prediction: PredictionLike, /) -> np.ndarray:
    r"""Top-label probability :math:`\max_c\bar p_{ic}` (the softmax-response
    confidence of Hendrycks & Gimpel, 2017); *higher = more confident*.

    Example::

        >>> max_probability([[0.2, 0.8]])
        array([0.8])
    """
    return _prob_samples(prediction, "max_probability", need_samples=False).mean(0).max(-1)


_SCORES = {
    "std": "regression",
    "variance": "regression",
    "epistemic_std": "regression",
    "aleatoric_std": "regression",
    "entropy": "classification",
    "predictive_entropy": "classification",
    "expected_entropy": "classification",
    "mutual_information": "classification",
    "least_confidence": "classification",
}


def uncertainty_score(prediction: PredictionLike, /, *, kind: str) -> np.ndarray:
    r"""A per-point uncertainty score, *higher = more uncertain*, by name.

    ========================  ==================================================
    ``kind``                  score
    ========================  ==================================================
    ``"std"``                 total predictive std :math:`\sigma^*` (regression)
    ``"variance"``            total predictive variance
    ``"epistemic_std"``       std of the sampled means
    ``"aleatoric_std"``       root mean sampled noise variance
    ``"entropy"``             predictive entropy :math:`H[\bar p]` (alias ``"predictive_entropy"``)
    ``"expected_entropy"``    :math:`\frac1S\sum_sH[p_s]`
    ``"mutual_information"``  :math:`H[\bar p]-\frac1S\sum_sH[p_s]`
    ``"least_confidence"``    :math:`1-\max_c\bar p_c`
    ========================  ==================================================

    Example::

        s_in = uncertainty_score(pred_in, kind="mutual_information")
        s_out = uncertainty_score(pred_out, kind="mutual_information")
        ood_auroc(s_in, s_out)
    """
    if kind not in _SCORES:
        raise ValueError(f"kind must be one of {sorted(_SCORES)}, got {kind!r}")
    if _SCORES[kind] == "regression":
        if not isinstance(prediction, RegressionPrediction):
            raise TypeError(f"kind={kind!r} needs a RegressionPrediction, got {type(prediction).__name__}")
        pred = _float64_prediction(prediction)
        value = {
            "std": lambda: pred.std,
            "variance": lambda: pred.variance,
            "epistemic_std": lambda: pred.epistemic_std,
            "aleatoric_std": lambda: pred.aleatoric_std,
        }[kind]()
        return _np(value)
    if kind in ("entropy", "predictive_entropy"):
        return predictive_entropy(prediction)
    if kind == "expected_entropy":
        return expected_entropy(prediction)
    if kind == "mutual_information":
        return mutual_information(prediction)
    return 1.0 - max_probability(prediction)


# --------------------------------------------------------------------------
# OOD detection
# --------------------------------------------------------------------------


def _scores(scores_in, scores_out) -> Tuple[np.ndarray, np.ndarray]:
    a = _array(scores_in, "scores_in", allow_inf=True).reshape(-1)
    b = _array(scores_out, "scores_out", allow_inf=True).reshape(-1)
    return a, b


def _threshold_counts(scores_in: np.ndarray, scores_out: np.ndarray):
    """For the rule "OOD if score >= t" at every distinct score t (descending): (tps, fps)."""
    s = np.concatenate([scores_out, scores_in])
    t = np.concatenate([np.ones(scores_out.size), np.zeros(scores_in.size)])
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    last = np.r_[s[1:] != s[:-1], True]  # last index of each run of equal scores
    tps = np.cumsum(t)[last]
    fps = np.flatnonzero(last) + 1 - tps
    return tps, fps


def ood_auroc(scores_in: ArrayLike, scores_out: ArrayLike, /) -> float:
    r"""Area under the ROC curve for detecting out-of-distribution points
    (Hendrycks & Gimpel, 2017), OOD as the positive class, *higher score = more OOD*.

    Computed from ranks (Mann–Whitney): with :math:`R_j` the rank of OOD score
    :math:`j` among all scores (ties get their average rank),

    .. math::

        \mathrm{AUROC} = \frac{\sum_j R_j - n_{out}(n_{out}+1)/2}{n_{in}\,n_{out}}
        = P(s_{out} > s_{in}) + \tfrac12 P(s_{out} = s_{in}),

    identical to ``sklearn.metrics.roc_auc_score`` (ties count one half).

    Example::

        >>> ood_auroc([0.1, 0.4], [0.35, 0.8])
        0.75
    """
    a, b = _scores(scores_in, scores_out)
    s = np.concatenate([a, b])
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    new = np.r_[True, ss[1:] != ss[:-1]]
    group = np.cumsum(new) - 1
    counts = np.bincount(group)
    avg_rank = np.cumsum(counts) - 0.5 * (counts - 1)  # 1-based average rank of each tie group
    ranks = np.empty(s.size)
    ranks[order] = avg_rank[group]
    n_in, n_out = a.size, b.size
    return float((ranks[n_in:].sum() - 0.5 * n_out * (n_out + 1)) / (n_in * n_out))


def ood_aupr(scores_in: ArrayLike, scores_out: ArrayLike, /, *, positive: str = "out") -> float:
    r"""Area under the precision–recall curve for OOD detection, as average precision,

    .. math:: \mathrm{AP} = \sum_k (R_k - R_{k-1})\,P_k,

    over the thresholds "positive if score :math:`\ge t_k`" at every distinct score
    (identical to ``sklearn.metrics.average_precision_score``). ``positive="out"``
    (default; "AUPR-Out") takes OOD as positive and higher scores as more OOD;
    ``positive="in"`` ("AUPR-In", Hendrycks & Gimpel, 2017) takes the
    in-distribution points as positive, ranked by the negated score.

    Example::

        >>> round(ood_aupr([0.1, 0.4], [0.35, 0.8]), 6)   # (1/2)*1 + (1/2)*(2/3)
        0.833333
    """
    if positive not in ("out", "in"):
        raise ValueError(f"positive must be 'out' or 'in', got {positive!r}")
    a, b = _scores(scores_in, scores_out)
    if positive == "in":
        a, b = -b, -a
    tps, fps = _threshold_counts(a, b)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_95_tpr(scores_in: ArrayLike, scores_out: ArrayLike, /, *, tpr: float = 0.95) -> float:
    r"""False-positive rate on in-distribution points at the first threshold that
    detects at least ``tpr`` of the OOD points (OOD positive, higher = more OOD):

    .. math:: \mathrm{FPR}(t^*),\quad t^* = \max\{t:\ \mathrm{TPR}(t)\ge 0.95\},
        \qquad \mathrm{TPR}(t)=\frac{\#\{s_{out}\ge t\}}{n_{out}},\ \mathrm{FPR}(t)=\frac{\#\{s_{in}\ge t\}}{n_{in}}

    i.e. the smallest FPR among thresholds reaching the target TPR; equal to
    ``fpr[np.searchsorted(tpr_curve, 0.95)]`` on sklearn's ``roc_curve``.
    (Hendrycks & Gimpel's code instead takes the threshold whose recall is
    *closest* to 0.95, which can differ when no threshold hits 0.95 exactly.)

    Example::

        >>> fpr_at_95_tpr([0.1, 0.4], [0.35, 0.8])
        0.5
    """
    tpr = _check_level(tpr, "tpr", closed=True)
    a, b = _scores(scores_in, scores_out)
    tps, fps = _threshold_counts(a, b)
    k = int(np.searchsorted(tps / b.size, tpr, side="left"))
    return float(fps[min(k, len(fps) - 1)] / a.size)


# --------------------------------------------------------------------------
# selective prediction
# --------------------------------------------------------------------------


def _selective_inputs(prediction, labels, uncertainty, fname):
    probs, y = _classification_inputs(prediction, labels, fname)
    correct = (probs.argmax(1) == y).astype(np.float64)
    if uncertainty is None:
        u = 1.0 - probs.max(1)
    elif isinstance(uncertainty, str):
        u = uncertainty_score(prediction, kind=uncertainty).reshape(-1)
    else:
        u = _array(uncertainty, "uncertainty", allow_inf=True).reshape(-1)
    if u.size != y.size:
        raise ValueError(
            f"uncertainty has {u.size} values but there are {y.size} points; pass one score per point"
        )
    return u, correct


def _expected_correct_of_most_certain(u: np.ndarray, correct: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Expected number of correct points among the ``keep`` least uncertain, ties broken at random."""
    order = np.argsort(u, kind="mergesort")
    us, cs = u[order], correct[order]
    new = np.r_[True, us[1:] != us[:-1]]
    group = np.cumsum(new) - 1
    g_count = np.bincount(group).astype(np.float64)
    g_correct = np.bincount(group, weights=cs)
    g_end = np.cumsum(g_count)
    g_start = g_end - g_count
    c_start = np.cumsum(g_correct) - g_correct
    gi = np.clip(np.searchsorted(g_end, keep, side="left"), 0, len(g_end) - 1)
    return c_start[gi] + (keep - g_start[gi]) * g_correct[gi] / g_count[gi]


def accuracy_rejection_curve(
    prediction: PredictionLike,
    labels: ArrayLike,
    /,
    *,
    uncertainty: Union[None, str, ArrayLike] = None,
    rejection_rates: Optional[ArrayLike] = None,
) -> RejectionCurve:
    r"""Accuracy on the retained points as the most uncertain fraction is refused
    (Nadeem et al., 2009).

    At rejection rate :math:`r` the :math:`n_r = N - \lfloor rN\rfloor` least uncertain
    points are kept and the curve reports their accuracy. Points with tied
    uncertainty are treated as exchangeable: the reported accuracy is its
    expectation over a random order of the ties (so the curve does not depend on
    the order of the input).

    Args:
        prediction: a :class:`ClassificationPrediction` or probabilities ``(N, C)``.
        labels: integer labels ``(N,)``.
        uncertainty: per-point scores (higher = more uncertain), or a ``kind`` of
            :func:`uncertainty_score`; default :math:`1-\max_c\bar p_c`.
        rejection_rates: rates in ``[0, 1]``; default ``np.arange(100) / 100``.

    Example::

        curve = accuracy_rejection_curve(pred, y_test, uncertainty="mutual_information")
        plt.plot(curve.rejection_rate, curve.accuracy)
    """
    u, correct = _selective_inputs(prediction, labels, uncertainty, "accuracy_rejection_curve")
    if rejection_rates is None:
        rates = np.arange(100) / 100.0
    else:
        rates = _array(rejection_rates, "rejection_rates", min_ndim=1).reshape(-1)
        if rates.min() < 0 or rates.max() > 1:
            raise ValueError("rejection_rates must lie in [0, 1]")
    n = u.size
    keep = n - np.floor(rates * n + 1e-9).astype(np.int64)
    exp_correct = _expected_correct_of_most_certain(u, correct, np.maximum(keep, 1).astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(keep > 0, exp_correct / np.maximum(keep, 1), np.nan)
    return RejectionCurve(*_frozen(rates, acc, keep))


def aurc(
    prediction: PredictionLike,
    labels: ArrayLike,
    /,
    *,
    uncertainty: Union[None, str, ArrayLike] = None,
    excess: bool = False,
) -> float:
    r"""Area under the risk–coverage curve (Geifman & El-Yaniv, 2017; Geifman et al., 2019),

    .. math:: \mathrm{AURC} = \frac1N\sum_{k=1}^N \Big(1 - \frac{\#\text{correct among the }k\text{ least uncertain}}{k}\Big),

    the selective risk (0-1 loss) averaged over the coverages :math:`k/N`; lower is
    better. Ties in the uncertainty are averaged over as in
    :func:`accuracy_rejection_curve`. ``excess=True`` gives E-AURC: AURC minus
    that of an oracle ordering all correct points first (same formula).

    Args:
        prediction: a :class:`ClassificationPrediction` or probabilities ``(N, C)``.
        labels: integer labels ``(N,)``.
        uncertainty: as in :func:`accuracy_rejection_curve` (default :math:`1-\max_c\bar p_c`).

    Example::

        >>> aurc([[0.9, 0.1], [0.6, 0.4]], [0, 1])   # risks 0 (k=1), 1/2 (k=2)
        0.25
    """
    u, correct = _selective_inputs(prediction, labels, uncertainty, "aurc")
    n = u.size
    k = np.arange(1, n + 1, dtype=np.float64)
    risk = 1.0 - _expected_correct_of_most_certain(u, correct, k) / k
    value = float(np.mean(risk))
    if excess:
        oracle = np.maximum(k - correct.sum(), 0.0) / k
        value -= float(np.mean(oracle))
    return value


def fit_class_thresholds(
    prediction: PredictionLike, labels: ArrayLike, /, *, percentile: float = 10.0
) -> ClassThresholds:
    r"""Per-class refusal thresholds fitted on validation data (the seed's rule).

    For each class :math:`c`, the threshold :math:`t_c` is the ``percentile``-th
    percentile (``np.percentile``, linear interpolation) of the top-label
    probabilities of the validation points predicted as :math:`c` *and correct*.
    A test point is then refused when its top-label probability is strictly below
    the threshold of its predicted class (:meth:`ClassThresholds.refuse`). A class
    with no correct validation prediction gets :math:`t_c=\infty` (all its
    predictions refused) and a warning.

    Example::

        th = fit_class_thresholds(val_pred, y_val)          # 10th percentile
        refused = th.refuse(test_pred)                      # bool (N_test,)
        accuracy(test_pred.probs[~refused], y_test[~refused])
    """
    if isinstance(percentile, bool) or not isinstance(percentile, numbers.Real) or not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be a number in [0, 100], got {percentile!r}")
    probs, y = _classification_inputs(prediction, labels, "fit_class_thresholds")
    predicted = probs.argmax(1)
    conf = probs[np.arange(len(y)), predicted]
    ok = predicted == y
    num_classes = probs.shape[1]
    thresholds = np.full(num_classes, np.inf)
    order = np.argsort(predicted[ok], kind="stable")
    cls_sorted, conf_sorted = predicted[ok][order], conf[ok][order]
    bounds = np.searchsorted(cls_sorted, np.arange(num_classes + 1))
    for c in range(num_classes):  # one np.percentile per class, O(N) in total
        lo, hi = bounds[c], bounds[c + 1]
        if hi > lo:
            thresholds[c] = np.percentile(conf_sorted[lo:hi], float(percentile))
    missing = np.flatnonzero(np.isinf(thresholds))
    if missing.size:
        warnings.warn(
            f"classes {missing.tolist()} have no correct validation prediction; their threshold is "
            "inf, so every test prediction of those classes is refused",
            UserWarning,
            stacklevel=2,
        )
    (thresholds,) = _frozen(thresholds)
    return ClassThresholds(thresholds=thresholds, percentile=float(percentile))


def class_threshold_rejection(
    val_prediction: PredictionLike,
    val_labels: ArrayLike,
    test_prediction: PredictionLike,
    /,
    *,
    percentile: float = 10.0,
) -> np.ndarray:
    r"""Which test points to refuse under per-class thresholds fitted on validation data:
    ``fit_class_thresholds(val_prediction, val_labels, percentile=...).refuse(test_prediction)``.

    Returns:
        Boolean array ``(N_test,)``, ``True`` = refuse to predict.

    Example::

        refused = class_threshold_rejection(val_pred, y_val, test_pred)
    """
    return fit_class_thresholds(val_prediction, val_labels, percentile=percentile).refuse(test_prediction)

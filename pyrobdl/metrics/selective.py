r"""Selective prediction: accuracy-rejection and risk-coverage curves, and
per-class confidence thresholds for refusing predictions.

See :mod:`pyrobdl.metrics` for the conventions shared by every metric.
"""
from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from pyrobdl.metrics._common import ArrayLike, PredictionLike, as_array, classification_inputs, frozen, probabilities
from pyrobdl.metrics.ood import uncertainty_score


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
        probs = probabilities(prediction)
        probs = probs.reshape(-1, probs.shape[-1])
        if probs.shape[1] != len(self.thresholds):
            raise ValueError(
                f"probs has {probs.shape[1]} classes but the thresholds were fitted for "
                f"{len(self.thresholds)}; use predictions for the same classes"
            )
        predicted = probs.argmax(1)
        conf = probs[np.arange(len(probs)), predicted]
        return conf < self.thresholds[predicted]

def _selective_inputs(prediction, labels, uncertainty, fname):
    probs, y = classification_inputs(prediction, labels, fname)
    correct = (probs.argmax(1) == y).astype(np.float64)
    if uncertainty is None:
        u = 1.0 - probs.max(1)
    elif isinstance(uncertainty, str):
        u = uncertainty_score(prediction, kind=uncertainty).reshape(-1)
    else:
        u = as_array(uncertainty, "uncertainty", allow_inf=True).reshape(-1)
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
        rates = as_array(rejection_rates, "rejection_rates", min_ndim=1).reshape(-1)
        if rates.min() < 0 or rates.max() > 1:
            raise ValueError("rejection_rates must lie in [0, 1]")
    n = u.size
    keep = n - np.floor(rates * n + 1e-9).astype(np.int64)
    exp_correct = _expected_correct_of_most_certain(u, correct, np.maximum(keep, 1).astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(keep > 0, exp_correct / np.maximum(keep, 1), np.nan)
    return RejectionCurve(*frozen(rates, acc, keep))


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
    probs, y = classification_inputs(prediction, labels, "fit_class_thresholds")
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
    (thresholds,) = frozen(thresholds)
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

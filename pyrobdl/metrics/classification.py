r"""Classification metrics: accuracy, Brier score and top-label calibration
(reliability curves, ECE, MCE).

See :mod:`pyrobdl.metrics` for the conventions shared by every metric (the
negative log-likelihood, :func:`pyrobdl.metrics.nll`, serves both tasks).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pyrobdl.metrics._common import (
    ArrayLike,
    PredictionLike,
    as_labels,
    check_n_bins,
    classification_inputs,
    frozen,
)
from pyrobdl.prediction import Prediction


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
            y = as_labels(labels, "labels", None, predicted.shape)
            return float(np.mean(predicted == y))
    probs, y = classification_inputs(prediction, labels, "accuracy")
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
    probs, y = classification_inputs(prediction, labels, "brier_score")
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
    n_bins = check_n_bins(n_bins)
    probs, y = classification_inputs(prediction, labels, "reliability_curve")
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
    return ReliabilityCurve(*frozen(edges, mean_conf, mean_acc, count.astype(np.int64)))


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

r"""Uncertainty scores (predictive std, entropy, mutual information, ...) and
out-of-distribution detection with them (AUROC, AUPR, FPR at 95% TPR).

See :mod:`pyrobdl.metrics` for the conventions shared by every metric.
"""
from __future__ import annotations

import numpy as np

from pyrobdl.metrics._common import (
    ArrayLike,
    PredictionLike,
    as_array,
    check_level,
    check_probs,
    float64_prediction,
    score_arrays,
    to_numpy,
)
from pyrobdl.prediction import ClassificationPrediction, RegressionPrediction


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) over the last axis, with 0 log 0 = 0."""
    logp = np.log(p, out=np.zeros_like(p), where=p > 0)
    return -np.einsum("...c,...c->...", p, logp)


def _prob_samples(prediction, fname: str, *, need_samples: bool) -> np.ndarray:
    """``(S, N, ..., C)`` probability samples; plain ``(N, C)`` arrays give ``S = 1`` unless samples are needed."""
    if isinstance(prediction, RegressionPrediction):
        raise TypeError(f"{fname} is a classification score; use predictive_std for regression")
    if isinstance(prediction, ClassificationPrediction):
        return check_probs(to_numpy(prediction.probs_samples), "prediction.probs_samples")
    p = check_probs(as_array(prediction, "probs"), "probs")
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
    return to_numpy(float64_prediction(prediction).std)


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
        pred = float64_prediction(prediction)
        value = {
            "std": lambda: pred.std,
            "variance": lambda: pred.variance,
            "epistemic_std": lambda: pred.epistemic_std,
            "aleatoric_std": lambda: pred.aleatoric_std,
        }[kind]()
        return to_numpy(value)
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
    a, b = score_arrays(scores_in, scores_out)
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
    a, b = score_arrays(scores_in, scores_out)
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
    tpr = check_level(tpr, "tpr", closed=True)
    a, b = score_arrays(scores_in, scores_out)
    tps, fps = _threshold_counts(a, b)
    k = int(np.searchsorted(tps / b.size, tpr, side="left"))
    return float(fps[min(k, len(fps) - 1)] / a.size)

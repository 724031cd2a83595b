r"""How far one posterior predictive is from another, point by point: the
distances :func:`pyrobdl.compare.compare` reports between every method and the
reference sampler.

Regression predictives are compared through their moments: each is replaced by
the Gaussian with its mean and total variance at every input, and the two
Gaussians are compared by the 2-Wasserstein distance or the KL divergence.
Classification predictives are compared through their class probabilities: the
total variation distance and the top-1 agreement (Izmailov et al., 2021).

Example:
    >>> import torch
    >>> from pyrobdl.prediction import RegressionPrediction
    >>> ref = RegressionPrediction(torch.zeros(1, 2), torch.ones(1, 2))
    >>> approx = RegressionPrediction(torch.tensor([[3.0, 0.0]]), torch.tensor([[1.0, 5.0]]))
    >>> round(gaussian_w2(approx, ref), 6)   # mean of sqrt(3^2 + 0^2) and sqrt(0^2 + 4^2)
    3.5
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from pyrobdl.metrics._common import (
    PredictionLike,
    as_array,
    float64_prediction,
    probabilities,
    same_shape,
    to_numpy,
)
from pyrobdl.prediction import ClassificationPrediction, RegressionPrediction

__all__ = ["gaussian_w2", "gaussian_kl", "total_variation", "agreement"]


def _moments(prediction, name: str, fname: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` of a regression predictive (a prediction object or a ``(mean, std)`` pair)."""
    if isinstance(prediction, ClassificationPrediction):
        raise TypeError(f"{fname} is a regression distance; {name} is a ClassificationPrediction")
    if isinstance(prediction, RegressionPrediction):
        pred = float64_prediction(prediction)
        return to_numpy(pred.mean), to_numpy(pred.std)
    if isinstance(prediction, tuple) and len(prediction) == 2:
        mean = as_array(prediction[0], f"{name}[0] (the mean)", min_ndim=1)
        std = as_array(prediction[1], f"{name}[1] (the std)")
        if std.size == 1:
            std = np.full(mean.shape, float(std.reshape(-1)[0]))
        mean, std = same_shape(mean, std, f"{name}[0]", f"{name}[1]")
        if (std < 0).any():
            raise ValueError(f"{name}[1] (the std) must be >= 0 everywhere")
        return mean, std
    raise TypeError(
        f"{fname}: {name} must be a RegressionPrediction or a (mean, std) pair of arrays, "
        f"got {type(prediction).__name__}"
    )


def _pair(prediction, reference, fname: str):
    m1, s1 = _moments(prediction, "prediction", fname)
    m2, s2 = _moments(reference, "reference", fname)
    if m1.shape != m2.shape:
        raise ValueError(
            f"{fname}: prediction has shape {m1.shape} but reference has shape {m2.shape}; "
            "predict both at the same inputs"
        )
    return m1, s1, m2, s2


def _per_point(values: np.ndarray) -> float:
    """Mean over points of a per-element quantity summed over the output dims (if any)."""
    return float(np.mean(values.reshape(values.shape[0], -1).sum(-1)))


def gaussian_w2(prediction: PredictionLike, reference: PredictionLike, /) -> float:
    r"""Mean over inputs of the 2-Wasserstein distance between the moment-matched
    Gaussians of two regression predictives,

    .. math:: W_2\big(\mathcal N(m, s^2), \mathcal N(m_r, s_r^2)\big)
              = \sqrt{(m - m_r)^2 + (s - s_r)^2},

    with :math:`m, s` the predictive mean and total std (summed over output dims
    under the square root for multi-output predictions). In the targets' units:
    zero when the two agree in mean and spread, growing with either error.

    Args:
        prediction: a :class:`~pyrobdl.prediction.RegressionPrediction` or a
            ``(mean, std)`` pair of arrays.
        reference: the same, at the same inputs (e.g. a converged sampler's).

    Example:
        >>> round(gaussian_w2(([0.0, 1.0], [1.0, 1.0]), ([0.0, 1.0], [2.0, 1.0])), 6)
        0.5

    References:
        Izmailov, Vikram, Hoffman & Wilson (2021). *What Are Bayesian Neural
        Network Posteriors Really Like?* ICML (distances to an HMC reference).
    """
    m1, s1, m2, s2 = _pair(prediction, reference, "gaussian_w2")
    sq = (m1 - m2) ** 2 + (s1 - s2) ** 2
    return float(np.mean(np.sqrt(sq.reshape(sq.shape[0], -1).sum(-1))))


def gaussian_kl(prediction: PredictionLike, reference: PredictionLike, /) -> float:
    r"""Mean over inputs of :math:`\mathrm{KL}(\text{reference}\,\|\,\text{prediction})`
    between the moment-matched Gaussians of two regression predictives,

    .. math:: \mathrm{KL}\big(\mathcal N(m_r, s_r^2)\,\|\,\mathcal N(m, s^2)\big)
              = \log\frac{s}{s_r} + \frac{s_r^2 + (m_r - m)^2}{2 s^2} - \frac12

    (summed over output dims). In nats and unit-free. The direction charges an
    approximation for missing the reference's mass: an over-confident predictive
    (small :math:`s`) costs more than an over-cautious one.

    Args:
        prediction: a :class:`~pyrobdl.prediction.RegressionPrediction` or a
            ``(mean, std)`` pair of arrays (std > 0).
        reference: the same, at the same inputs.

    Example:
        >>> round(gaussian_kl(([0.0], [2.0]), ([0.0], [1.0])), 6)   # log 2 + 1/8 - 1/2
        0.318147
    """
    m1, s1, m2, s2 = _pair(prediction, reference, "gaussian_kl")
    if (s1 <= 0).any() or (s2 <= 0).any():
        raise ValueError("gaussian_kl needs std > 0 everywhere in both predictives")
    kl = np.log(s1 / s2) + (s2**2 + (m2 - m1) ** 2) / (2.0 * s1**2) - 0.5
    return _per_point(kl)


def _probs_pair(prediction, reference, fname: str) -> Tuple[np.ndarray, np.ndarray]:
    for name, p in (("prediction", prediction), ("reference", reference)):
        if isinstance(p, RegressionPrediction):
            raise TypeError(f"{fname} is a classification distance; {name} is a RegressionPrediction")
    p1, p2 = probabilities(prediction), probabilities(reference)
    if p1.shape != p2.shape:
        raise ValueError(
            f"{fname}: prediction has probabilities of shape {p1.shape} but reference {p2.shape}; "
            "predict both at the same inputs with the same classes"
        )
    return p1.reshape(-1, p1.shape[-1]), p2.reshape(-1, p2.shape[-1])


def total_variation(prediction: PredictionLike, reference: PredictionLike, /) -> float:
    r"""Mean over inputs of the total variation distance between two predictive
    class distributions, :math:`\tfrac12\sum_c |p_c - p^{\mathrm{ref}}_c|`, in [0, 1].

    Args:
        prediction: a :class:`~pyrobdl.prediction.ClassificationPrediction` (its
            mean probabilities) or an ``(N, C)`` probability array.
        reference: the same, at the same inputs.

    Example:
        >>> total_variation([[0.9, 0.1], [0.5, 0.5]], [[0.7, 0.3], [0.5, 0.5]])
        0.1

    References:
        Izmailov, Vikram, Hoffman & Wilson (2021). *What Are Bayesian Neural
        Network Posteriors Really Like?* ICML.
    """
    p1, p2 = _probs_pair(prediction, reference, "total_variation")
    return float(np.round(np.mean(0.5 * np.abs(p1 - p2).sum(-1)), 12))


def agreement(prediction: PredictionLike, reference: PredictionLike, /) -> float:
    r"""Fraction of inputs where the two predictives' most probable classes agree,
    :math:`\frac1N\sum_i \mathbb 1[\arg\max_c p_{ic} = \arg\max_c p^{\mathrm{ref}}_{ic}]`
    (Izmailov et al., 2021). Arguments as for :func:`total_variation`.

    Example:
        >>> agreement([[0.9, 0.1], [0.4, 0.6]], [[0.6, 0.4], [0.7, 0.3]])
        0.5
    """
    p1, p2 = _probs_pair(prediction, reference, "agreement")
    return float(np.mean(p1.argmax(-1) == p2.argmax(-1)))

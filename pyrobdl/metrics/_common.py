"""Input checks shared by the metric modules: arrays, labels, probabilities and
prediction objects in, float64 numpy arrays (or float64 predictions) out.

Bad input raises a ``ValueError`` (or ``TypeError`` for a wrong kind of object)
whose message names the argument and the fix.
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pyrobdl.prediction import ClassificationPrediction, Prediction, RegressionPrediction

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence, float]
PredictionLike = Union[Prediction, ArrayLike]

#: Rows of a probability matrix must sum to one within this absolute tolerance.
PROB_ATOL = 1e-4


def as_array(value, name: str, *, allow_inf: bool = False, min_ndim: int = 0) -> np.ndarray:
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


def as_labels(
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
        target_shape = tuple(target_shape)
        extra = arr.shape[len(target_shape):]
        if arr.shape[: len(target_shape)] == target_shape and all(d == 1 for d in extra):
            arr = arr.reshape(target_shape)  # (N, 1) labels for N points
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


def check_probs(probs: np.ndarray, name: str) -> np.ndarray:
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


def float64_prediction(pred: Prediction) -> Prediction:
    """A shallow copy of ``pred`` whose sample tensors are float64 (same device)."""
    new = object.__new__(type(pred))
    new.__dict__.update(pred.__dict__)
    new.samples = {
        k: (v.detach().to(torch.float64) if v.is_floating_point() else v) for k, v in pred.samples.items()
    }
    return new


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def probabilities(prediction) -> np.ndarray:
    """Checked predictive probabilities ``(..., C)`` of a :class:`ClassificationPrediction`
    (its mean over samples) or of a probability array."""
    if isinstance(prediction, ClassificationPrediction):
        return check_probs(to_numpy(prediction.probs), "prediction.probs")
    return check_probs(as_array(prediction, "probs"), "probs")


def classification_inputs(prediction, labels, fname: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(probs (M, C), labels (M,))`` from a prediction object or arrays."""
    if isinstance(prediction, RegressionPrediction):
        raise TypeError(f"{fname} is a classification metric; got a RegressionPrediction")
    probs = probabilities(prediction)
    y = as_labels(labels, "labels", probs.shape[-1], probs.shape[:-1])
    return probs.reshape(-1, probs.shape[-1]), y.reshape(-1)


def same_shape(a: np.ndarray, b: np.ndarray, aname: str, bname: str) -> Tuple[np.ndarray, np.ndarray]:
    if a.shape == b.shape:
        return a, b
    if a.size == b.size and (
        (a.ndim == b.ndim + 1 and a.shape[-1] == 1) or (b.ndim == a.ndim + 1 and b.shape[-1] == 1)
    ):
        return a.reshape(-1), b.reshape(-1)
    raise ValueError(
        f"{aname} has shape {a.shape} but {bname} has shape {b.shape}; pass one target per prediction"
    )


def regression_prediction(prediction, std, fname: str) -> RegressionPrediction:
    """A float64 :class:`RegressionPrediction` from a prediction object or Gaussian ``(mean, std)``."""
    if isinstance(prediction, ClassificationPrediction):
        raise TypeError(f"{fname} is a regression metric; got a ClassificationPrediction")
    if isinstance(prediction, RegressionPrediction):
        if std is not None:
            raise TypeError(
                f"{fname}: pass either (prediction, y) or (mean, std, y), not a prediction object and a std"
            )
        pred = float64_prediction(prediction)
        if not bool((pred.samples["scale"] > 0).all()):
            raise ValueError("prediction has non-positive scale samples; every noise std must be > 0")
        return pred
    if std is None:
        raise TypeError(
            f"{fname} needs a predictive distribution: pass a RegressionPrediction and y, "
            "or Gaussian arrays (mean, std, y)"
        )
    mean = as_array(prediction, "mean", min_ndim=1)
    sd = as_array(std, "std")
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


def as_targets(pred: RegressionPrediction, y) -> torch.Tensor:
    """Validated float64 targets shaped like one draw of ``pred``."""
    arr = as_array(y, "y")
    return pred._check_y(torch.from_numpy(arr))


def check_level(level, name: str = "level", *, closed: bool = False) -> float:
    if isinstance(level, bool) or not isinstance(level, numbers.Real):
        raise TypeError(f"{name} must be a number in (0, 1), got {level!r}")
    level = float(level)
    ok = 0 <= level <= 1 if closed else 0 < level < 1
    if not ok:
        raise ValueError(f"{name} must lie in {'[0, 1]' if closed else '(0, 1)'}, got {level}")
    return level


def check_n_bins(n_bins) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral):
        raise TypeError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}; the standard is 15")
    return int(n_bins)


def frozen(*arrays: np.ndarray) -> Tuple[np.ndarray, ...]:
    out = []
    for a in arrays:
        a = np.array(a, copy=True)
        a.setflags(write=False)
        out.append(a)
    return tuple(out)


def score_arrays(scores_in, scores_out) -> Tuple[np.ndarray, np.ndarray]:
    """Uncertainty scores of in-distribution and OOD points as flat float64 arrays (inf allowed)."""
    a = as_array(scores_in, "scores_in", allow_inf=True).reshape(-1)
    b = as_array(scores_out, "scores_out", allow_inf=True).reshape(-1)
    return a, b

r"""``pyrobdl compare --recalibrate``: hold out part of each training split, fit a recalibrator
(:mod:`pyrobdl.calibration`) on the posterior's prediction there, and score the test
prediction before and after.

Every method then trains on the remaining ``1 - calibration_fraction`` of the training split,
and both columns of the report come from that one fit, so "before" and "after" differ only by
the recalibration. Regression recalibrators are fitted and applied in the target's original
units (every recalibrator here is equivariant to an affine change of units, so this only fixes
the units of the reported numbers).

Example::

    from pyrobdl.compare import compare
    results = compare("boston", methods="mean-field", recalibrate="conformal", splits=20)
    results["methods"]["mean-field"]["summary"]["coverage_90_recal"]["mean"]
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Dict, Optional, Tuple

import torch

from .. import datasets as _datasets
from .. import metrics as _metrics
from ..calibration import available_recalibrators, get_recalibrator, min_calibration_size
from ..prediction import Prediction, RegressionPrediction
from .evaluation import to_original_units

__all__ = ["LEVEL", "RECAL_METRICS", "check_recalibration", "calibration_split", "recalibrated_metrics"]

#: the coverage conformal recalibrators are fitted for, and the level of the interval/set metrics
LEVEL = 0.9

#: metrics this module adds to a split's record (see :data:`pyrobdl.compare.evaluation.METRICS`)
RECAL_METRICS = {
    "regression": ("ll_recal", "coverage_90_recal", "mean_width_90_recal", "miscalibration_area_recal"),
    "classification": ("accuracy_recal", "nll_recal", "brier_recal", "ece_recal", "set_coverage_90", "set_size_90"),
}


def check_recalibration(method: Optional[str], fraction, task: str, n_train: int) -> Optional[Dict[str, Any]]:
    """The recalibration settings of a ``compare`` run, checked before anything is fitted
    (``ValueError`` naming ``--recalibrate`` / ``--calibration-fraction`` and the fix); ``None``
    when ``method`` is ``None``."""
    if method is None:
        return None
    names = available_recalibrators(task)
    try:
        cls = get_recalibrator(method)
    except (TypeError, ValueError):
        raise ValueError(
            f"unknown --recalibrate {method!r}; for this {task} dataset choose one of {', '.join(names)}"
        ) from None
    if cls.task != task:
        raise ValueError(
            f"--recalibrate {method!r} is for {cls.task}, but this dataset is {task}; choose one of {', '.join(names)}"
        )
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 < float(fraction) < 1.0:
        raise ValueError(
            f"--calibration-fraction must be a number strictly between 0 and 1 (the share of each training "
            f"split held out to fit the recalibrator, e.g. 0.2), got {fraction!r}"
        )
    fraction = float(fraction)
    n_cal = int(round(fraction * n_train))
    need = max(min_calibration_size(LEVEL) if cls.conformal else 2, 2)
    if n_cal < need:
        raise ValueError(
            f"--calibration-fraction {fraction} holds out {n_cal} of {n_train} training rows, fewer than the "
            f"{need} that {cls.name!r} needs at level {LEVEL}; raise --calibration-fraction"
        )
    if n_train - n_cal < 2:
        raise ValueError(
            f"--calibration-fraction {fraction} leaves {n_train - n_cal} training row(s); lower it"
        )
    return {"method": cls.name, "calibration_fraction": fraction, "level": LEVEL}


def calibration_split(ds: _datasets.Dataset, fraction: float, seed: int) -> Tuple[_datasets.Dataset, torch.Tensor, torch.Tensor]:
    """``ds`` with a random ``fraction`` of its training rows removed (seeded by ``seed``), and
    those rows ``(x_cal, y_cal)`` in the dataset's units."""
    n = ds.n_train
    n_cal = int(round(fraction * n))
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g).to(ds.x_train.device)
    cal, keep = perm[:n_cal], perm[n_cal:]
    fit_ds = dataclasses.replace(ds, x_train=ds.x_train[keep], y_train=ds.y_train[keep])
    return fit_ds, ds.x_train[cal], ds.y_train[cal]


def recalibrated_metrics(
    method: str, pred_cal: Prediction, y_cal: torch.Tensor, pred_test: Prediction, ds: _datasets.Dataset
) -> Tuple[Dict[str, float], Dict[str, Any]]:
    """Fit ``method`` on the calibration prediction (dataset units; converted to the target's
    original units for regression) and score the recalibrated test prediction. Returns the
    ``*_recal`` metrics and a description of the fitted recalibrator."""
    pred_cal, pred_test = pred_cal.cpu(), pred_test.cpu()
    y_cal = y_cal.cpu()
    recal = get_recalibrator(method)(level=LEVEL)
    m = _metrics
    out: Dict[str, float] = {}
    if isinstance(pred_test, RegressionPrediction):
        recal.fit(to_original_units(pred_cal, ds), ds.unnormalize_mean(y_cal))
        after = recal.transform(to_original_units(pred_test, ds))
        y = ds.y_test_original.cpu()
        out["ll_recal"] = -m.nll(after, y)
        out["coverage_90_recal"] = m.interval_coverage(after, y, level=LEVEL)
        out["mean_width_90_recal"] = m.mean_interval_width(after, level=LEVEL)
        out["miscalibration_area_recal"] = m.miscalibration_area(after, y)
    else:
        recal.fit(pred_cal, y_cal)
        after = recal.transform(pred_test)
        y = ds.y_test.cpu()
        out["accuracy_recal"] = m.accuracy(after, y)
        out["nll_recal"] = m.nll(after, y)
        out["brier_recal"] = m.brier_score(after, y)
        out["ece_recal"] = m.expected_calibration_error(after, y)
        sets = after.prediction_sets(LEVEL)
        yy = y.long().reshape(-1)
        out["set_coverage_90"] = float(sets.reshape(yy.shape[0], -1)[torch.arange(yy.shape[0]), yy].double().mean())
        out["set_size_90"] = float(sets.reshape(yy.shape[0], -1).sum(-1).double().mean())
    info = {"method": recal.name, "num_calibration": recal.num_calibration,
            "state": {k: v for k, v in recal.get_state().items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)}}
    return out, info

r"""Scoring one posterior predictive for :func:`pyrobdl.compare.compare`: every
metric of :data:`METRICS` that fits the dataset, in the target's original
units, and the plain-JSON form of the results.

Example::

    from pyrobdl.compare import evaluate
    values = evaluate(posterior.predict(ds.x_test), ds)
    values["rmse"], values["ll"]
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from .. import datasets as _datasets
from .. import metrics as _metrics
from ..prediction import Prediction, RegressionPrediction

__all__ = ["METRICS", "evaluate", "reference_distances", "subset", "summarise", "to_jsonable", "to_original_units", "write_json"]

#: Every metric :func:`evaluate` can report: ``direction`` says which way is
#: better (``"lower"``, ``"higher"``, ``"target"`` with ``target``, or ``None``
#: when the metric is descriptive and has no best value).
METRICS: Dict[str, Dict[str, Any]] = {
    # regression
    "rmse": {"direction": "lower", "label": "RMSE", "task": "regression"},
    "ll": {"direction": "higher", "label": "test LL", "task": "regression"},
    "nll": {"direction": "lower", "label": "NLL", "task": "both"},
    "crps": {"direction": "lower", "label": "CRPS", "task": "regression"},
    "coverage_90": {"direction": "target", "target": 0.9, "label": "90% coverage", "task": "regression"},
    "mean_width_90": {"direction": None, "label": "90% width", "task": "regression"},
    "miscalibration_area": {"direction": "lower", "label": "miscal. area", "task": "regression"},
    "sharpness": {"direction": None, "label": "sharpness", "task": "regression"},
    "rmse_in_range": {"direction": "lower", "label": "RMSE in train range", "task": "regression"},
    "ll_in_range": {"direction": "higher", "label": "LL in train range", "task": "regression"},
    "ood_auroc_std": {"direction": "higher", "label": "OOD AUROC (std)", "task": "regression"},
    "ood_auroc_epistemic": {"direction": "higher", "label": "OOD AUROC (epistemic std)", "task": "regression"},
    # classification
    "accuracy": {"direction": "higher", "label": "accuracy", "task": "classification"},
    "brier": {"direction": "lower", "label": "Brier", "task": "classification"},
    "ece": {"direction": "lower", "label": "ECE", "task": "classification"},
    "mce": {"direction": "lower", "label": "MCE", "task": "classification"},
    "aurc": {"direction": "lower", "label": "AURC", "task": "classification"},
    "ood_auroc_entropy": {"direction": "higher", "label": "OOD AUROC (entropy)", "task": "classification"},
    "ood_aupr_entropy": {"direction": "higher", "label": "OOD AUPR (entropy)", "task": "classification"},
    "fpr95_entropy": {"direction": "lower", "label": "FPR@95 (entropy)", "task": "classification"},
    "ood_auroc_mi": {"direction": "higher", "label": "OOD AUROC (MI)", "task": "classification"},
    "ood_aupr_mi": {"direction": "higher", "label": "OOD AUPR (MI)", "task": "classification"},
    "fpr95_mi": {"direction": "lower", "label": "FPR@95 (MI)", "task": "classification"},
    "ood_accuracy": {"direction": "higher", "label": "shifted accuracy", "task": "classification"},
    # distance to the reference sampler's predictive (see reference_distances)
    "ref_w2": {"direction": "lower", "label": "W2 to reference", "task": "regression"},
    "ref_kl": {"direction": "lower", "label": "KL from reference", "task": "regression"},
    "ref_tv": {"direction": "lower", "label": "TV to reference", "task": "classification"},
    "ref_agreement": {"direction": "higher", "label": "agreement with reference", "task": "classification"},
    # after recalibration (``compare(recalibrate=...)``; pyrobdl.compare.recalibration)
    "ll_recal": {"direction": "higher", "label": "test LL, recalibrated", "task": "regression"},
    "coverage_90_recal": {"direction": "target", "target": 0.9, "label": "90% coverage, recalibrated",
                          "task": "regression"},
    "mean_width_90_recal": {"direction": None, "label": "90% width, recalibrated", "task": "regression"},
    "miscalibration_area_recal": {"direction": "lower", "label": "miscal. area, recalibrated", "task": "regression"},
    "accuracy_recal": {"direction": "higher", "label": "accuracy, recalibrated", "task": "classification"},
    "nll_recal": {"direction": "lower", "label": "NLL, recalibrated", "task": "classification"},
    "brier_recal": {"direction": "lower", "label": "Brier, recalibrated", "task": "classification"},
    "ece_recal": {"direction": "lower", "label": "ECE, recalibrated", "task": "classification"},
    "set_coverage_90": {"direction": "target", "target": 0.9, "label": "90% set coverage", "task": "classification"},
    "set_size_90": {"direction": "lower", "label": "90% set size", "task": "classification"},
    # both
    "fit_seconds": {"direction": "lower", "label": "fit s", "task": "both"},
    "predict_seconds": {"direction": "lower", "label": "predict s", "task": "both"},
}


def subset(pred: Prediction, index: Any) -> Prediction:
    """The prediction for the points ``index`` (a slice or a boolean mask): :meth:`~pyrobdl.prediction.Prediction.take`, so a
    recalibrated prediction stays recalibrated.

    Example:
        >>> import torch
        >>> pred = RegressionPrediction(torch.zeros(2, 5), torch.ones(2, 5))
        >>> subset(pred, slice(0, 3)).mean.shape
        torch.Size([3])
    """
    return pred.take(index)


def to_original_units(pred: RegressionPrediction, ds: _datasets.Dataset) -> RegressionPrediction:
    r"""A regression prediction made in ``ds``'s normalised units, in the target's original units:
    :math:`\mu_s \mapsto \bar y + s_y\mu_s`, :math:`\sigma_s \mapsto s_y\sigma_s`
    (``ds.y_mean``, ``ds.y_std``).

    Example:
        >>> import torch
        >>> from pyrobdl import datasets
        >>> from pyrobdl.prediction import RegressionPrediction
        >>> ds = datasets.load("boston")
        >>> pred = to_original_units(RegressionPrediction(torch.zeros(1, 3), torch.ones(1, 3)), ds)
        >>> bool(torch.allclose(pred.mean, torch.tensor(ds.y_mean))), bool(torch.allclose(pred.std, torch.tensor(ds.y_std)))
        (True, True)
    """
    return RegressionPrediction(ds.unnormalize_mean(pred.loc_samples), ds.unnormalize_std(pred.scale_samples))


def evaluate(
    pred: Prediction,
    ds: _datasets.Dataset,
    *,
    pred_ood: Optional[Prediction] = None,
) -> Dict[str, float]:
    """Every metric of :data:`METRICS` that fits ``ds`` (see the module docs),
    from the test prediction ``pred`` (and ``pred_ood`` on ``ds.x_ood``).

    Example::

        pred = posterior.predict(ds.x_test)
        evaluate(pred, ds)["rmse"]
    """
    m = _metrics
    out: Dict[str, float] = {}
    pred, pred_ood = pred.cpu(), None if pred_ood is None else pred_ood.cpu()
    if isinstance(pred, RegressionPrediction):
        y_norm = ds.y_test.cpu()
        y = ds.y_test_original.cpu()
        orig = to_original_units(pred, ds)
        out["rmse"] = m.rmse(orig, y)
        out["ll"] = -m.nll(pred, y_norm) + ds.log_likelihood_offset
        out["nll"] = -out["ll"]
        out["crps"] = m.crps(orig, y)
        out["coverage_90"] = m.interval_coverage(orig, y, level=0.9)
        out["mean_width_90"] = m.mean_interval_width(orig, level=0.9)
        out["miscalibration_area"] = m.miscalibration_area(orig, y)
        out["sharpness"] = m.sharpness(orig)
        inside = ds.in_train_range(ds.x_test.cpu()).numpy()
        if ds.train_range is not None and inside.any():
            mask = torch.from_numpy(inside)
            inner = subset(orig, mask)
            out["rmse_in_range"] = m.rmse(inner, y[mask])
            out["ll_in_range"] = -m.nll(inner, y[mask])
        if pred_ood is not None:
            if inside.any():
                for key, kind in (("ood_auroc_std", "std"), ("ood_auroc_epistemic", "epistemic_std")):
                    s_in = m.uncertainty_score(pred, kind=kind)[inside]
                    s_out = m.uncertainty_score(pred_ood, kind=kind)
                    out[key] = m.ood_auroc(s_in, s_out)
        return out
    y = ds.y_test.cpu()
    out["accuracy"] = m.accuracy(pred, y)
    out["nll"] = m.nll(pred, y)
    out["brier"] = m.brier_score(pred, y)
    out["ece"] = m.expected_calibration_error(pred, y)
    out["mce"] = m.maximum_calibration_error(pred, y)
    out["aurc"] = m.aurc(pred, y)
    if pred_ood is not None:
        for suffix, kind in (("entropy", "entropy"), ("mi", "mutual_information")):
            s_in = m.uncertainty_score(pred, kind=kind)
            s_out = m.uncertainty_score(pred_ood, kind=kind)
            out[f"ood_auroc_{suffix}"] = m.ood_auroc(s_in, s_out)
            out[f"ood_aupr_{suffix}"] = m.ood_aupr(s_in, s_out)
            out[f"fpr95_{suffix}"] = m.fpr_at_95_tpr(s_in, s_out)
        if ds.y_ood is not None:
            out["ood_accuracy"] = m.accuracy(pred_ood, ds.y_ood.cpu())
    return out


def reference_distances(pred: Prediction, reference: Prediction, ds: _datasets.Dataset) -> Dict[str, float]:
    r"""How far ``pred`` is from the ``reference`` predictive at the same test inputs of ``ds``
    (both made in ``ds``'s normalised units):

    * regression: ``ref_w2``, the mean 2-Wasserstein distance between the moment-matched
      Gaussians (:func:`pyrobdl.metrics.gaussian_w2`) in the target's original units, and
      ``ref_kl``, the mean :math:`\mathrm{KL}(\text{reference}\,\|\,\text{pred})` between them
      (:func:`pyrobdl.metrics.gaussian_kl`, unit-free);
    * classification: ``ref_tv``, the mean total variation between the class probabilities
      (:func:`pyrobdl.metrics.total_variation`), and ``ref_agreement``, the fraction of inputs
      with the same top class (:func:`pyrobdl.metrics.agreement`; Izmailov et al., 2021).

    Example::

        ref = reference_posterior.predict(ds.x_test)
        reference_distances(posterior.predict(ds.x_test), ref, ds)["ref_w2"]
    """
    m = _metrics
    pred, reference = pred.cpu(), reference.cpu()
    if isinstance(pred, RegressionPrediction):
        orig, ref = to_original_units(pred, ds), to_original_units(reference, ds)
        return {"ref_w2": m.gaussian_w2(orig, ref), "ref_kl": m.gaussian_kl(orig, ref)}
    return {"ref_tv": m.total_variation(pred, reference), "ref_agreement": m.agreement(pred, reference)}


def summarise(values: Sequence[float]) -> Dict[str, Optional[float]]:
    """Mean, standard error (``ddof=1``; ``None`` for one value) and count of the
    finite ``values`` (e.g. one metric over splits).

    Example:
        >>> summarise([1.0, 3.0, float("nan")])
        {'mean': 2.0, 'stderr': 1.0, 'n': 2}
    """
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return {"mean": None, "stderr": None, "n": 0}
    se = float(arr.std(ddof=1) / math.sqrt(arr.size)) if arr.size > 1 else None
    return {"mean": float(arr.mean()), "stderr": se, "n": int(arr.size)}


# ============================================================================ JSON
def to_jsonable(obj: Any) -> Any:
    """Plain-JSON form of ``obj``: dicts with string keys, lists, finite floats
    (NaN/inf become ``None``), ints, strings; tensors, numpy arrays and pandas
    frames (``to_dict``) are converted; anything else becomes its ``str``.

    Example:
        >>> import torch
        >>> to_jsonable({"ll": float("nan"), "rmse": torch.tensor([1.0, 2.0]), 3: "x"})
        {'ll': None, 'rmse': [1.0, 2.0], '3': 'x'}
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().numpy())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        try:
            return to_jsonable(to_dict(orient="index"))
        except TypeError:
            return to_jsonable(to_dict())
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return to_jsonable(obj.item())
        except (TypeError, ValueError):
            pass
    return str(obj)


def write_json(data: Mapping[str, Any], path: Path) -> None:
    """Write :func:`to_jsonable` of ``data`` to ``path`` atomically (a temporary
    file renamed over it), so a reader never sees half a file.

    Example:
        >>> import json, tempfile
        >>> path = Path(tempfile.mkdtemp()) / "results.json"
        >>> write_json({"rmse": float("inf")}, path)
        >>> json.loads(path.read_text())
        {'rmse': None}
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: two writers never share it
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(to_jsonable(data), fh, indent=2, allow_nan=False)
        fh.write("\n")
    os.replace(tmp, path)

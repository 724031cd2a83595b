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
distance to a reference     :func:`gaussian_w2`, :func:`gaussian_kl` (regression),
                            :func:`total_variation`, :func:`agreement` (classification)
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
    * Izmailov, Vikram, Hoffman & Wilson (2021). What are Bayesian neural network
      posteriors really like? ICML. (agreement and total variation to an HMC reference)
    * Houlsby, Huszár, Ghahramani & Lengyel (2011). Bayesian active learning for
      classification and preference learning. arXiv:1112.5745. (BALD / mutual information)
    * Hendrycks & Gimpel (2017). A baseline for detecting misclassified and
      out-of-distribution examples in neural networks. ICLR. (AUROC, AUPR, max-probability score)
    * Nadeem, Zucker & Hanczar (2009). Accuracy-rejection curves (ARCs) for
      comparing classification methods with a reject option. MLSB.
    * Geifman & El-Yaniv (2017). Selective classification for deep neural
      networks. NeurIPS. Geifman, Uziel & El-Yaniv (2019). Bias-reduced
      uncertainty estimation for deep neural classifiers. ICLR. (risk-coverage, AURC, E-AURC)

The functions live in submodules by topic (``regression``, ``classification``,
``ood`` for the uncertainty scores and OOD detection, ``selective``, ``distance``); import
them from here, ``pyrobdl.metrics``.
"""
from __future__ import annotations

from pyrobdl.metrics._common import PROB_ATOL  # noqa: F401 - part of the module's namespace
from pyrobdl.metrics.classification import (
    ReliabilityCurve,
    accuracy,
    brier_score,
    expected_calibration_error,
    maximum_calibration_error,
    reliability_curve,
)
from pyrobdl.metrics.distance import agreement, gaussian_kl, gaussian_w2, total_variation
from pyrobdl.metrics.ood import (
    expected_entropy,
    fpr_at_95_tpr,
    max_probability,
    mutual_information,
    ood_aupr,
    ood_auroc,
    predictive_entropy,
    predictive_std,
    uncertainty_score,
)
from pyrobdl.metrics.regression import (
    CalibrationCurve,
    calibration_curve,
    crps,
    crps_ensemble,
    interval_coverage,
    mae,
    mean_interval_width,
    miscalibration_area,
    nll,
    rmse,
    sharpness,
)
from pyrobdl.metrics.selective import (
    ClassThresholds,
    RejectionCurve,
    accuracy_rejection_curve,
    aurc,
    class_threshold_rejection,
    fit_class_thresholds,
)

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
    # distance to a reference predictive
    "gaussian_w2",
    "gaussian_kl",
    "total_variation",
    "agreement",
]

r"""Post-hoc recalibration and conformal prediction for any posterior.

:func:`recalibrate` fits a recalibrator on held-out calibration data and returns a
posterior whose ``predict`` gives the same kind of prediction object, recalibrated:

* regression: ``"variance"`` (variance scaling), ``"isotonic"`` (CDF recalibration),
  ``"conformal"`` (split conformal on normalised scores :math:`|y-\mu|/\sigma`) and
  ``"cqr"`` (conformalised quantile regression);
* classification: ``"temperature"`` and ``"vector"`` (scaling of the predictive's logits),
  ``"aps"`` and ``"raps"`` (conformal prediction sets, ``prediction_sets(level)``).

Example::

    from pyrobdl.calibration import recalibrate
    cal = recalibrate(posterior, x_val, y_val, method="conformal", level=0.9)
    lo, hi = cal.predict(x_test).interval(0.9)

Split conformal methods guarantee, for exchangeable data, coverage
:math:`\ge` ``level`` and, with continuous scores, below ``level + 1/(n+1)``
(Vovk et al. 2005; Lei et al. 2018; Angelopoulos & Bates 2023).
"""
from .base import (
    RecalibratedPosterior,
    Recalibrator,
    available_recalibrators,
    get_recalibrator,
    min_calibration_size,
    recalibrate,
    register_recalibrator,
)
from .classification import *  # noqa: F401,F403
from .classification import __all__ as _classification_all
from .regression import *  # noqa: F401,F403
from .regression import __all__ as _regression_all

__all__ = [
    "recalibrate",
    "RecalibratedPosterior",
    "Recalibrator",
    "register_recalibrator",
    "get_recalibrator",
    "available_recalibrators",
    "min_calibration_size",
] + list(_regression_all) + list(_classification_all)

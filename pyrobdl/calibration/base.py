r"""The recalibration core: a :class:`Recalibrator` base class with hooks, its registry, the
:class:`RecalibratedPosterior` wrapper and :func:`recalibrate`.

A recalibrator is fitted on the posterior's prediction at held-out calibration inputs and
then maps every later prediction of that posterior to a recalibrated one of the same kind
(a :class:`~pyrobdl.prediction.RegressionPrediction` or
:class:`~pyrobdl.prediction.ClassificationPrediction`, or a subclass of them), so metrics,
plots and ``compare`` treat it as any other prediction. A new recalibrator is one class::

    from pyrobdl.calibration import Recalibrator, register_recalibrator

    @register_recalibrator
    class MeanShift(Recalibrator):
        name = "mean-shift"
        task = "regression"

        def _fit(self, pred, y):
            self.shift = float((y - pred.mean).mean())

        def transform(self, pred):
            return RegressionPrediction(pred.loc_samples + self.shift, pred.scale_samples)

        def get_state(self):
            return {"shift": self.shift}

        def set_state(self, state):
            self.shift = float(state["shift"])
"""
from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import torch

from .._util import check_positive_float, warn_user
from ..prediction import ClassificationPrediction, Prediction, RegressionPrediction

__all__ = [
    "Recalibrator",
    "RecalibratedPosterior",
    "recalibrate",
    "register_recalibrator",
    "get_recalibrator",
    "available_recalibrators",
    "check_level",
    "conformal_rank",
    "min_calibration_size",
    "minimize_1d",
    "work_dtype",
]

_RECALIBRATORS: Dict[str, type] = {}
_TASKS = ("regression", "classification")


def check_level(level, name: str = "level") -> float:
    """``level`` as a float in (0, 1), else a TypeError/ValueError naming ``name``."""
    if isinstance(level, bool) or not isinstance(level, numbers.Real):
        raise TypeError(f"{name} must be a number in (0, 1) (the coverage, e.g. 0.9), got {level!r}")
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(
            f"{name} must lie strictly between 0 and 1 (the coverage 1 - alpha, e.g. 0.9), got {level}"
        )
    return level


def conformal_rank(n: int, level: float) -> int:
    r"""The rank :math:`k = \lceil (n+1)\,p\rceil` of the split-conformal quantile among ``n``
    sorted calibration scores for coverage :math:`p` = ``level`` (Vovk et al. 2005; Lei et al.
    2018): the interval with the :math:`k`-th smallest score covers a new exchangeable point
    with probability in :math:`[p,\ p + 1/(n+1))` (continuous scores). :math:`k > n` means the
    calibration set is too small for ``level``.

    Example:
        >>> conformal_rank(99, 0.9), conformal_rank(9, 0.9), conformal_rank(8, 0.9)
        (90, 9, 9)
    """
    # the small epsilon keeps (n + 1) * level = integer from rounding up by one ulp
    return int(math.ceil((n + 1) * level - 1e-9))


def min_calibration_size(level: float) -> int:
    r"""The fewest calibration points for a finite conformal quantile at ``level``:
    the smallest :math:`n` with :math:`\lceil (n+1)p\rceil \le n`, i.e.
    :math:`n \ge p/(1-p)`.

    Example:
        >>> min_calibration_size(0.9), min_calibration_size(0.95), min_calibration_size(0.5)
        (9, 19, 1)
    """
    level = check_level(level)
    n = max(1, int(math.floor(level / (1.0 - level))))
    while conformal_rank(n, level) > n:
        n += 1
    return n


def minimize_1d(f, lo: float, hi: float, *, grid: int = 33, tol: float = 1e-8) -> float:
    """Minimiser of a 1-D function on ``[lo, hi]``: the best of ``grid`` evenly spaced points,
    then golden-section search between its two neighbours to ``tol`` (robust to a flat or
    multimodal objective). The recalibrators fit their scalar (a log temperature, a log
    variance factor) with it.

    Example:
        >>> round(minimize_1d(lambda u: (u - 0.3) ** 2, -2.0, 2.0), 6)
        0.3
    """
    us = torch.linspace(lo, hi, grid, dtype=torch.float64).tolist()
    vals = [f(u) for u in us]
    i = min(range(grid), key=vals.__getitem__)
    a, b = us[max(i - 1, 0)], us[min(i + 1, grid - 1)]
    r = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - r * (b - a), a + r * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd, c = d, c, fc, d - r * (d - a)
            fc = f(c)
        else:
            a, c, fc, d = c, d, fd, c + r * (b - c)
            fd = f(d)
    return min((vals[i], us[i]), (fc, c), (fd, d))[1]


def work_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (MPS has not)."""
    return torch.float32 if device.type == "mps" else torch.float64


def check_bounds(bounds, lo_name: str, hi_name: str) -> Tuple[float, float]:
    """``bounds`` as a pair of floats ``0 < lo < hi`` (TypeError/ValueError naming them)."""
    if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
        raise TypeError(f"bounds must be a pair ({lo_name}, {hi_name}), got {bounds!r}")
    lo, hi = (check_positive_float(b, "bounds") for b in bounds)
    if not lo < hi:
        raise ValueError(f"bounds must satisfy 0 < {lo_name} < {hi_name}, got {bounds!r}")
    return lo, hi


def fit_positive_scalar(nll_of_log, bounds: Tuple[float, float], *, what: str, hint: str,
                        grid: int = 33, tol: float = 1e-8) -> float:
    """The positive scalar :math:`e^u` minimising ``nll_of_log(u)`` over ``log(bounds)``
    (:func:`minimize_1d`); a warning naming ``what`` and saying ``hint`` when it ends on a bound."""
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    u = minimize_1d(nll_of_log, lo, hi, grid=grid, tol=tol)
    if min(u - lo, hi - u) < 1e-6:
        warn_user(f"the fitted {what} {math.exp(u):.4g} lies on the searched bounds {tuple(bounds)}; {hint}")
    return math.exp(u)


def register_recalibrator(cls: type) -> type:
    """Class decorator: make a :class:`Recalibrator` subclass available to
    :func:`recalibrate` (``method=cls.name``), to ``pyrobdl compare --recalibrate`` and to
    :func:`pyrobdl.load`."""
    if not (isinstance(cls, type) and issubclass(cls, Recalibrator)):
        raise TypeError(f"register_recalibrator takes a Recalibrator subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a class attribute name = '...' to be registered")
    if cls.task not in _TASKS:
        raise ValueError(f"{cls.__name__}.task must be one of {_TASKS}, got {cls.task!r}")
    other = _RECALIBRATORS.get(name)
    if other is not None and other is not cls and other.__qualname__ != cls.__qualname__:
        raise ValueError(f"a recalibrator named {name!r} is already registered ({other.__name__})")
    _RECALIBRATORS[name] = cls
    return cls


def available_recalibrators(task: Optional[str] = None) -> List[str]:
    """Registered recalibrator names, all or those for ``task`` ("regression" or "classification").

    Example:
        >>> import pyrobdl.calibration
        >>> pyrobdl.calibration.available_recalibrators("classification")
        ['temperature', 'vector', 'aps', 'raps']
    """
    if task is not None and task not in _TASKS:
        raise ValueError(f"task must be one of {_TASKS}, got {task!r}")
    return [k for k, c in _RECALIBRATORS.items() if task is None or c.task == task]


def get_recalibrator(name: str) -> type:
    """The registered recalibrator class called ``name`` (ValueError listing the names)."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a string naming a recalibrator, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    if key not in _RECALIBRATORS:
        raise ValueError(
            f"unknown recalibration method {name!r}; choose one of {sorted(_RECALIBRATORS)} "
            "(regression: " + ", ".join(available_recalibrators("regression"))
            + "; classification: " + ", ".join(available_recalibrators("classification")) + ")"
        )
    return _RECALIBRATORS[key]


class Recalibrator:
    r"""Base class: fitted on a calibration prediction and its targets, then maps predictions.

    Subclasses set ``name`` and ``task`` and implement :meth:`_fit`, :meth:`transform`,
    :meth:`get_state` and :meth:`set_state`; :meth:`fit` checks the calibration data first
    (kind of prediction, targets, enough points for ``level``).

    Attributes:
        level: the coverage the recalibrator was fitted for (conformal methods), or the
            default level of its intervals.
        num_calibration: number of calibration points it was fitted on.
    """

    name: ClassVar[str] = ""
    task: ClassVar[str] = "regression"
    #: whether the method needs ``ceil((n+1) level) <= n`` calibration points (conformal)
    conformal: ClassVar[bool] = False

    def __init__(self, *, level: float = 0.9):
        self.level = check_level(level)
        self.num_calibration: Optional[int] = None

    # -- hooks -------------------------------------------------------------------------
    def _fit(self, pred: Prediction, y: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def transform(self, pred: Prediction) -> Prediction:  # pragma: no cover - abstract
        """The recalibrated version of ``pred`` (a prediction of the fitted posterior)."""
        raise NotImplementedError

    def get_state(self) -> Dict[str, Any]:  # pragma: no cover - abstract
        """Tensors and plain values that :meth:`set_state` restores (saved by ``save``)."""
        raise NotImplementedError

    def set_state(self, state: Dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- state shared by every recalibrator ---------------------------------------------
    def common_state(self) -> Dict[str, float]:
        """``level`` and ``num_calibration``, for a subclass's :meth:`get_state` to include."""
        return {"level": float(self.level), "num_calibration": float(self.num_calibration or 0)}

    def restore_common_state(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`common_state` saved (for a subclass's :meth:`set_state`)."""
        self.level = check_level(state.get("level", self.level))
        self.num_calibration = int(state.get("num_calibration", 0)) or None

    # -- template ----------------------------------------------------------------------
    def fit(self, pred: Prediction, y) -> "Recalibrator":
        """Fit on the prediction ``pred`` at the calibration inputs and their targets ``y``."""
        kind = RegressionPrediction if self.task == "regression" else ClassificationPrediction
        if not isinstance(pred, kind):
            got = getattr(pred, "task", type(pred).__name__)
            raise TypeError(
                f"recalibration method {self.name!r} is for {self.task}, but the posterior predicts "
                f"{got}; choose one of {available_recalibrators(getattr(pred, 'task', None))}"
            )
        y = pred._check_y(y) if self.task == "regression" else pred._check_labels(y)
        n = int(y.shape[0])
        if self.conformal and conformal_rank(n, self.level) > n:
            raise ValueError(
                f"{n} calibration points are too few for level={self.level}: split conformal needs at "
                f"least {min_calibration_size(self.level)} (n >= level / (1 - level)); pass more "
                "calibration data or a lower level"
            )
        if n < 2:
            raise ValueError(f"recalibration needs at least 2 calibration points, got {n}")
        self._fit(pred, y)
        self.num_calibration = n
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(level={self.level}, num_calibration={self.num_calibration})"


class RecalibratedPosterior:
    """A posterior whose predictions pass through a fitted :class:`Recalibrator`.

    It answers ``predict`` like the posterior it wraps (same arguments, same kind of
    prediction object) and forwards everything else (``model``, ``to_arviz``, ``draws``,
    ...) to it; ``save`` stores both, and :func:`pyrobdl.load` restores both.

    Attributes:
        posterior: the wrapped posterior, unchanged.
        recalibrator: the fitted :class:`Recalibrator`.
    """

    def __init__(self, posterior, recalibrator: Recalibrator):
        if isinstance(posterior, RecalibratedPosterior):
            raise TypeError(
                "this posterior is already recalibrated; recalibrate its .posterior instead "
                "(recalibrators do not stack)"
            )
        self.posterior = posterior
        self.recalibrator = recalibrator

    def predict(self, x, **kwargs) -> Prediction:
        """``posterior.predict(x, **kwargs)``, recalibrated. Each call draws fresh posterior
        samples; to compare before and after on the same draws, recalibrate one prediction:
        ``pred = cal.posterior.predict(x); cal.recalibrator.transform(pred)``."""
        return self.recalibrator.transform(self.posterior.predict(x, **kwargs))

    def to(self, device) -> "RecalibratedPosterior":
        self.posterior.to(device)
        return self

    def save(self, path) -> None:
        """Save the posterior and the fitted recalibrator (see :func:`pyrobdl.load`)."""
        from ..serialization import save_posterior

        save_posterior(self, path)

    def __getattr__(self, name):
        # only called for attributes not found here: forward to the wrapped posterior
        if name in ("posterior", "recalibrator"):
            raise AttributeError(name)
        return getattr(self.posterior, name)

    def __repr__(self) -> str:
        return f"RecalibratedPosterior({self.posterior!r}, {self.recalibrator!r})"


def recalibrate(
    posterior,
    x_cal,
    y_cal,
    *,
    method: str,
    level: float = 0.9,
    num_samples: Optional[int] = None,
    **options,
) -> RecalibratedPosterior:
    r"""Fit a recalibrator on held-out data and return the recalibrated posterior.

    Args:
        posterior: any fitted posterior (``pyrobdl.fit``'s result, a loaded one, or any
            object whose ``predict(x, num_samples=...)`` returns a pyrobdl prediction).
        x_cal, y_cal: calibration inputs and targets, not used in training. ``x_cal`` may
            also be the posterior's prediction at the calibration inputs (a
            :class:`~pyrobdl.prediction.Prediction` already computed, e.g. to try several
            methods on one set of predictive samples); ``num_samples`` is then not used.
        method: regression: ``"variance"`` (one factor on the predictive std, Levi et al.
            2020), ``"isotonic"`` (CDF recalibration, Kuleshov et al. 2018), ``"conformal"``
            (split conformal on :math:`|y-\mu|/\sigma`), ``"cqr"`` (conformalised quantile
            regression, Romano et al. 2019); classification: ``"temperature"`` (Guo et al.
            2017), ``"vector"`` (vector scaling), ``"aps"`` / ``"raps"`` (conformal prediction
            sets, Romano et al. 2020; Angelopoulos et al. 2021).
        level: coverage of the conformal intervals or sets (and the default level of
            ``interval``), in (0, 1).
        num_samples: predictive samples at the calibration inputs (default: the posterior's).
        options: settings of the recalibrator class (see each class).

    Returns:
        A :class:`RecalibratedPosterior` whose ``predict`` returns recalibrated predictions.

    Example::

        from pyrobdl.calibration import recalibrate
        cal = recalibrate(posterior, x_val, y_val, method="conformal", level=0.9)
        lo, hi = cal.predict(x_test).interval(0.9)      # covers 90% of new points
        cls = recalibrate(clf_posterior, x_val, y_val, method="temperature")
        cls.predict(x_test).prediction_sets(0.9)
    """
    if isinstance(posterior, RecalibratedPosterior):
        raise TypeError(
            "posterior is already recalibrated; pass its .posterior to recalibrate it another way"
        )
    if not callable(getattr(posterior, "predict", None)):
        raise TypeError(f"posterior must be a fitted posterior with a predict method, got {type(posterior).__name__}")
    cls = get_recalibrator(method)
    recal = cls(level=level, **options)
    if isinstance(x_cal, Prediction):
        pred = x_cal
        if pred.task != getattr(getattr(getattr(posterior, "model", None), "likelihood", None), "task", pred.task):
            raise ValueError(
                f"x_cal is a {type(pred).__name__} but the posterior predicts a {posterior.model.likelihood.task} "
                "task; pass the posterior's own prediction at the calibration inputs"
            )
    else:
        kwargs = {} if num_samples is None else {"num_samples": num_samples}
        pred = posterior.predict(x_cal, **kwargs)
    rows = next(iter(pred.samples.values())).shape[1]
    n_y = len(y_cal) if hasattr(y_cal, "__len__") else None
    if n_y is not None and n_y != rows:
        raise ValueError(f"x_cal has {rows} rows but y_cal has {n_y}; pass one target per calibration input")
    recal.fit(pred, y_cal)
    return RecalibratedPosterior(posterior, recal)

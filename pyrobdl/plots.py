r"""Plots for uncertainty evaluation (matplotlib only).

Every function takes an optional ``ax=`` to draw into and returns what it drew
on: the :class:`~matplotlib.axes.Axes`, except :func:`reliability_diagram`,
which returns the :class:`~matplotlib.figure.Figure` (it may add a second axes
for the bin counts). No function shows the figure itself; in a notebook the figure
displays itself, in a script call ``fig.savefig(...)``.

==================================  =============================================
function                            what it shows
==================================  =============================================
:func:`plot_predictive_1d`          1-D predictive mean with total and epistemic
                                    bands and the training range
:func:`reliability_diagram`         per-bin accuracy, gap to the diagonal, counts
:func:`plot_calibration_curve`      regression calibration (expected vs observed
                                    coverage) with the miscalibration area
:func:`plot_uncertainty_histogram`  an uncertainty score in- vs out-of-distribution
:func:`plot_accuracy_rejection`     accuracy–rejection curves of several methods
:func:`plot_metric_comparison`      one metric across methods as bars
==================================  =============================================

Artists that tests and users may want to find carry a ``gid`` (e.g.
``"total_band"``, ``"epistemic_band"``, ``"train_range"``, ``"accuracy"``,
``"gap"``, ``"diagonal"``, ``"counts"``).

References:
    * Guo, Pleiss, Sun & Weinberger (2017). On calibration of modern neural networks. ICML.
    * Kuleshov, Fenner & Ermon (2018). Accurate uncertainties for deep learning using
      calibrated regression. ICML.
    * Kendall & Gal (2017). What uncertainties do we need in Bayesian deep learning for
      computer vision? NeurIPS. (epistemic vs aleatoric bands)
    * Hendrycks & Gimpel (2017). A baseline for detecting misclassified and
      out-of-distribution examples in neural networks. ICLR.
    * Nadeem, Zucker & Hanczar (2009). Accuracy-rejection curves (ARCs) for comparing
      classification methods with a reject option. MLSB.
"""
from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pyrobdl.metrics import (
    CalibrationCurve,
    RejectionCurve,
    ReliabilityCurve,
    calibration_curve,
    ood_auroc,
    reliability_curve,
)
from pyrobdl.metrics._common import as_array, float64_prediction, score_arrays, to_numpy
from pyrobdl.prediction import RegressionPrediction

if TYPE_CHECKING:  # matplotlib.pyplot is imported by the functions that draw, not on import
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "plot_predictive_1d",
    "reliability_diagram",
    "plot_calibration_curve",
    "plot_uncertainty_histogram",
    "plot_accuracy_rejection",
    "plot_metric_comparison",
]

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence, float]


def _vector(value, name: str, n: Optional[int] = None, *, allow_scalar: bool = False) -> np.ndarray:
    arr = as_array(value, name)
    if allow_scalar and arr.size == 1 and n is not None:
        return np.full(n, float(arr.reshape(-1)[0]))
    if arr.ndim > 1 and arr.size == arr.shape[0]:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per point), got shape {arr.shape}")
    if n is not None and arr.size != n:
        raise ValueError(f"{name} has {arr.size} values but x has {n}; pass one value per x")
    return arr


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def _new_axes(ax: Optional[Axes], figsize: Tuple[float, float] = (6.4, 4.4)) -> Axes:
    if ax is None:
        _, ax = _pyplot().subplots(figsize=figsize)
    return ax


def _curve_or_compute(value: Any, curve_type: type, targets: Any, compute: Callable[[], Any], *,
                      fname: str, what: str, forms: str) -> Any:
    """``value`` when it is already a ``curve_type`` (then no ``what`` may be given),
    else ``compute()`` from the prediction and its targets."""
    if isinstance(value, curve_type):
        if targets is not None:
            raise TypeError(f"{fname}(curve) takes no {what}")
        return value
    if targets is None:
        raise TypeError(f"{fname} needs {what}: {forms} or (curve)")
    return compute()


def plot_predictive_1d(
    x: ArrayLike,
    prediction: Union[RegressionPrediction, ArrayLike],
    epistemic_std: Optional[ArrayLike] = None,
    aleatoric_std: Optional[ArrayLike] = None,
    /,
    *,
    x_train: Optional[ArrayLike] = None,
    y_train: Optional[ArrayLike] = None,
    train_range: Optional[Tuple[float, float]] = None,
    x_test: Optional[ArrayLike] = None,
    y_test: Optional[ArrayLike] = None,
    num_std: float = 2.0,
    ax: Optional[Axes] = None,
    color: str = "C0",
    label: str = "predictive mean",
    title: Optional[str] = None,
) -> Axes:
    r"""1-D predictive bands with the epistemic and aleatoric parts shaded apart.

    Draws the predictive mean :math:`\mu^*(x)`, a light *total* band
    :math:`\mu^*\pm k\sqrt{\sigma_{epi}^2+\sigma_{ale}^2}` and a darker *epistemic*
    band :math:`\mu^*\pm k\,\sigma_{epi}` (:math:`k` = ``num_std``; the part of the
    light band outside the dark one is what the noise adds), and marks the training
    range with a shaded span and dashed vertical lines. Epistemic bands should
    widen outside that range.

    Args:
        x: inputs ``(N,)`` (or ``(N, 1)``); they are sorted before drawing.
        prediction: a :class:`RegressionPrediction` for ``x`` (one output per point),
            or the predictive mean ``(N,)``; then ``epistemic_std`` and
            ``aleatoric_std`` (``(N,)`` or a scalar) are required.
        x_train, y_train: training points; scattered when both are given.
        train_range: ``(lo, hi)`` of the training inputs; default the range of ``x_train``.
        x_test, y_test: held-out points to scatter.
        num_std: band half-width in standard deviations (2 ≈ 95% for a Gaussian).
        ax: axes to draw into (a new figure if ``None``).

    Returns:
        The Axes.

    Example::

        ax = plot_predictive_1d(x_grid, posterior.predict(x_grid), x_train=x, y_train=y)
        ax.figure.savefig("bands.png")
    """
    xs = _vector(x, "x")
    n = xs.size
    if isinstance(prediction, RegressionPrediction):
        if epistemic_std is not None or aleatoric_std is not None:
            raise TypeError("pass either a RegressionPrediction or (mean, epistemic_std, aleatoric_std)")
        pred = float64_prediction(prediction)
        mean = _vector(to_numpy(pred.mean), "prediction.mean", n)
        epi = _vector(to_numpy(pred.epistemic_std), "prediction.epistemic_std", n)
        ale = _vector(to_numpy(pred.aleatoric_std), "prediction.aleatoric_std", n)
    else:
        if epistemic_std is None or aleatoric_std is None:
            raise TypeError(
                "with a mean array, pass epistemic_std and aleatoric_std too: "
                "plot_predictive_1d(x, mean, epistemic_std, aleatoric_std)"
            )
        mean = _vector(prediction, "mean", n)
        epi = _vector(epistemic_std, "epistemic_std", n, allow_scalar=True)
        ale = _vector(aleatoric_std, "aleatoric_std", n, allow_scalar=True)
    if (epi < 0).any() or (ale < 0).any():
        raise ValueError("epistemic_std and aleatoric_std must be >= 0")
    if isinstance(num_std, bool) or not isinstance(num_std, numbers.Real) or num_std <= 0:
        raise ValueError(f"num_std must be a positive number, got {num_std!r}")
    k = float(num_std)
    order = np.argsort(xs, kind="mergesort")
    xs, mean, epi, ale = xs[order], mean[order], epi[order], ale[order]
    total = np.sqrt(epi**2 + ale**2)

    ax = _new_axes(ax)
    ax.fill_between(
        xs, mean - k * total, mean + k * total, color=color, alpha=0.18, linewidth=0,
        label=f"total ±{k:g}σ (aleatoric + epistemic)", gid="total_band",
    )
    ax.fill_between(
        xs, mean - k * epi, mean + k * epi, color=color, alpha=0.45, linewidth=0,
        label=f"epistemic ±{k:g}σ", gid="epistemic_band",
    )
    ax.plot(xs, mean, color=color, lw=2, label=label, gid="mean")

    xt = None if x_train is None else _vector(x_train, "x_train")
    if train_range is None and xt is not None:
        train_range = (float(xt.min()), float(xt.max()))
    if train_range is not None:
        lo, hi = (float(v) for v in train_range)
        if not lo <= hi:
            raise ValueError(f"train_range must be (lo, hi) with lo <= hi, got {train_range}")
        ax.axvspan(lo, hi, color="0.5", alpha=0.08, label="training range", gid="train_range")
        for v in (lo, hi):
            ax.axvline(v, color="0.35", ls="--", lw=1, gid="train_range_edge")
    if y_train is not None:
        if xt is None:
            raise TypeError("y_train needs x_train")
        yt = _vector(y_train, "y_train", xt.size)
        ax.scatter(xt, yt, s=10, color="k", alpha=0.6, label="training data", zorder=3, gid="train_points")
    if y_test is not None or x_test is not None:
        if x_test is None or y_test is None:
            raise TypeError("pass both x_test and y_test")
        xv = _vector(x_test, "x_test")
        ax.scatter(xv, _vector(y_test, "y_test", xv.size), s=10, marker="x", color="C3", alpha=0.6,
                   label="test data", zorder=3, gid="test_points")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    if title is not None:
        ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    return ax


def reliability_diagram(
    prediction,
    labels: Optional[ArrayLike] = None,
    /,
    *,
    n_bins: int = 15,
    binning: str = "equal_width",
    ax: Optional[Axes] = None,
    show_counts: bool = True,
    show_ece: bool = True,
    title: Optional[str] = None,
) -> Figure:
    r"""Reliability diagram (Guo et al., 2017): per-bin accuracy bars, gap bars to
    the diagonal, the diagonal, and the bin counts.

    * blue bars (``gid="accuracy"``): accuracy of each *non-empty* bin; empty
      bins get no bar (not a bar of height 0);
    * hatched red bars (``gid="gap"``): from the accuracy to the mean confidence
      of the bin, above the accuracy bar when over-confident, below it when
      under-confident;
    * dashed diagonal (``gid="diagonal"``): perfect calibration;
    * title: ECE and MCE (when ``show_ece``), under ``title`` if one is given;
    * counts: without ``ax`` a second, small axes under the diagram holds a bar
      per non-empty bin (``gid="counts"``); with ``ax`` given the counts are
      written above the bars instead (when ``show_counts``).

    Args:
        prediction: a :class:`~pyrobdl.metrics.ReliabilityCurve` (then no labels),
            a :class:`ClassificationPrediction` or probabilities ``(N, C)``.
        labels: integer labels, unless a curve is passed.
        n_bins, binning: as in :func:`pyrobdl.metrics.reliability_curve`.
        ax: axes for the diagram (a new figure with a counts panel if ``None``).

    Returns:
        The Figure (``fig.axes[0]`` is the diagram, ``fig.axes[1]`` the counts
        panel when one was made).

    Example::

        fig = reliability_diagram(pred, y_test, n_bins=15)
        fig.savefig("reliability.png")
    """
    curve = _curve_or_compute(
        prediction, ReliabilityCurve, labels,
        lambda: reliability_curve(prediction, labels, n_bins=n_bins, binning=binning),
        fname="reliability_diagram", what="labels", forms="(pred, labels), (probs, labels)",
    )

    count_ax = None
    if ax is None:
        plt = _pyplot()
        if show_counts:
            fig, (ax, count_ax) = plt.subplots(
                2, 1, sharex=True, figsize=(5.2, 6.2), gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08}
            )
        else:
            fig, ax = plt.subplots(figsize=(5.2, 5.0))
    fig = ax.figure

    m = curve.nonempty
    edges = curve.bin_edges
    left, width = edges[:-1][m], np.diff(edges)[m]
    acc, conf, cnt = curve.accuracy[m], curve.confidence[m], curve.count[m]
    ax.bar(left, acc, width=width, align="edge", color="C0", edgecolor="k", lw=0.6,
           label="accuracy", gid="accuracy")
    ax.bar(left, conf - acc, bottom=acc, width=width, align="edge", color="C3", alpha=0.3,
           edgecolor="C3", hatch="//", lw=0.6, label="gap (confidence − accuracy)", gid="gap")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration", gid="diagonal")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize="small")
    heading = [] if title is None else [title]
    if show_ece and curve.num_points:
        heading.append(f"ECE = {curve.ece:.3f}, MCE = {curve.mce:.3f} ({len(edges) - 1} bins)")
    if heading:
        ax.set_title("\n".join(heading))
    if count_ax is not None:
        count_ax.bar(left, cnt, width=width, align="edge", color="0.5", edgecolor="k", lw=0.6, gid="counts")
        count_ax.set_ylabel("count")
        count_ax.set_xlabel("confidence (top-label probability)")
        count_ax.set_xlim(0, 1)
    else:
        ax.set_xlabel("confidence (top-label probability)")
        if show_counts:
            for lo, w, a, c in zip(left, width, np.maximum(acc, conf), cnt):
                ax.annotate(str(int(c)), (lo + w / 2, min(a, 0.97)), xytext=(0, 2), textcoords="offset points",
                            ha="center", va="bottom", fontsize="x-small", gid="count_label")
    return fig


def plot_calibration_curve(
    prediction,
    target: Optional[ArrayLike] = None,
    y: Optional[ArrayLike] = None,
    /,
    *,
    num_levels: int = 100,
    ax: Optional[Axes] = None,
    label: str = "model",
    color: Optional[str] = None,
    show_area: bool = True,
) -> Axes:
    r"""Regression calibration curve: observed vs expected coverage of central
    predictive intervals (Kuleshov et al., 2018), the diagonal, and the
    miscalibration area shaded between them.

    Call with a :class:`~pyrobdl.metrics.CalibrationCurve`, or with the arguments
    of :func:`pyrobdl.metrics.calibration_curve` (``pred, y`` or ``mean, std, y``).
    Call repeatedly with the same ``ax`` and different ``label`` to compare methods.

    Returns:
        The Axes.

    Example::

        ax = plot_calibration_curve(pred_vi, y_test, label="VI")
        plot_calibration_curve(pred_ens, y_test, label="ensemble", ax=ax)
    """
    curve = _curve_or_compute(
        prediction, CalibrationCurve, target,
        lambda: calibration_curve(prediction, target, y, num_levels=num_levels),
        fname="plot_calibration_curve", what="targets", forms="(pred, y), (mean, std, y)",
    )
    ax = _new_axes(ax, (5.0, 5.0))
    (line,) = ax.plot(curve.expected, curve.observed, lw=2, color=color, label=label, gid="calibration")
    if show_area:
        ax.fill_between(curve.expected, curve.expected, curve.observed, color=line.get_color(), alpha=0.2,
                        label=f"{label}: miscalibration area = {curve.miscalibration_area:.3f}", gid="area")
    if not any(a.get_gid() == "diagonal" for a in ax.lines):
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration", gid="diagonal")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("expected coverage (central interval level)")
    ax.set_ylabel("observed coverage")
    ax.legend(loc="upper left", fontsize="small")
    return ax


def plot_uncertainty_histogram(
    scores_in: ArrayLike,
    scores_out: ArrayLike,
    /,
    *,
    bins: int = 30,
    ax: Optional[Axes] = None,
    score_name: str = "uncertainty score",
    labels: Tuple[str, str] = ("in-distribution", "out-of-distribution"),
    density: bool = True,
    show_auroc: bool = True,
) -> Axes:
    r"""Histograms of an uncertainty score for in-distribution and OOD inputs on
    shared bin edges (e.g. predictive entropy on MNIST vs FashionMNIST). The title
    reports :func:`pyrobdl.metrics.ood_auroc` when ``show_auroc``.

    Non-finite scores are counted in the AUROC but cannot be drawn; they are left
    out of the histograms.

    Returns:
        The Axes (its two histograms carry ``gid="hist_in"`` and ``gid="hist_out"``).

    Example::

        ax = plot_uncertainty_histogram(predictive_entropy(p_in), predictive_entropy(p_out),
                                        score_name="predictive entropy (nats)")
    """
    a, b = score_arrays(scores_in, scores_out)
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    fa, fb = a[np.isfinite(a)], b[np.isfinite(b)]
    both = np.concatenate([fa, fb])
    edges = np.histogram_bin_edges(both if both.size else np.zeros(1), bins=int(bins))
    ax = _new_axes(ax)
    _, _, p_in = ax.hist(fa, bins=edges, density=density, alpha=0.55, color="C0", label=labels[0],
                         edgecolor="C0")
    _, _, p_out = ax.hist(fb, bins=edges, density=density, alpha=0.55, color="C3", label=labels[1],
                          edgecolor="C3")
    for patch in p_in:
        patch.set_gid("hist_in")
    for patch in p_out:
        patch.set_gid("hist_out")
    ax.set_xlabel(score_name)
    ax.set_ylabel("density" if density else "count")
    if show_auroc:
        ax.set_title(f"OOD AUROC = {ood_auroc(a, b):.3f}")
    ax.legend(fontsize="small")
    return ax


def plot_accuracy_rejection(
    curves: Union[RejectionCurve, Mapping[str, RejectionCurve]],
    /,
    *,
    ax: Optional[Axes] = None,
    title: Optional[str] = None,
) -> Axes:
    r"""Accuracy–rejection curves of several methods on one axes (Nadeem et al., 2009).

    Args:
        curves: ``{method name: RejectionCurve}`` (from
            :func:`pyrobdl.metrics.accuracy_rejection_curve`), or one curve.

    Returns:
        The Axes, one line per method (``gid`` = the method name).

    Example::

        curves = {name: accuracy_rejection_curve(p, y_test) for name, p in preds.items()}
        plot_accuracy_rejection(curves)
    """
    if isinstance(curves, RejectionCurve):
        curves = {"model": curves}
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError("curves must be a non-empty mapping {method name: RejectionCurve}")
    ax = _new_axes(ax)
    for name, curve in curves.items():
        if not isinstance(curve, RejectionCurve):
            raise TypeError(
                f"curves[{name!r}] must be a RejectionCurve (from accuracy_rejection_curve), "
                f"got {type(curve).__name__}"
            )
        ax.plot(curve.rejection_rate, curve.accuracy, lw=2, label=str(name), gid=str(name))
    ax.set_xlabel("rejection rate (most uncertain refused first)")
    ax.set_ylabel("accuracy on retained points")
    ax.set_xlim(0, 1)
    if title is not None:
        ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return ax


def plot_metric_comparison(
    values: Mapping[str, Union[float, Sequence[float], np.ndarray, torch.Tensor]],
    /,
    *,
    metric: str,
    lower_is_better: Optional[bool] = None,
    ax: Optional[Axes] = None,
    annotate: bool = True,
) -> Axes:
    r"""Bar chart of one metric across methods.

    A method given several values (e.g. 20 random train/test splits) is drawn at
    their mean with an error bar of one standard error,
    :math:`s/\sqrt n` (:math:`s` the sample standard deviation, ``ddof=1``).
    With ``lower_is_better`` set, the best bar gets a thick outline and the title
    says which direction is better.

    Returns:
        The Axes (bars carry ``gid`` = the method name).

    Example::

        plot_metric_comparison({"VI": rmses_vi, "MC dropout": rmses_do, "ensemble": rmses_ens},
                               metric="test RMSE", lower_is_better=True)
    """
    if not isinstance(values, Mapping) or not values:
        raise ValueError("values must be a non-empty mapping {method name: value or values}")
    names, means, errs = [], [], []
    for name, v in values.items():
        arr = as_array(v, f"values[{name!r}]").reshape(-1)
        names.append(str(name))
        means.append(float(arr.mean()))
        errs.append(float(arr.std(ddof=1) / np.sqrt(arr.size)) if arr.size > 1 else 0.0)
    ax = _new_axes(ax)
    pos = np.arange(len(names))
    bars = ax.bar(pos, means, yerr=errs if any(errs) else None, capsize=4,
                  color=[f"C{i % 10}" for i in range(len(names))], edgecolor="k", lw=0.6)
    for bar, name in zip(bars, names):
        bar.set_gid(name)
    if lower_is_better is not None:
        best = int(np.argmin(means) if lower_is_better else np.argmax(means))
        bars[best].set_linewidth(2.5)
        ax.set_title(f"{metric} ({'lower' if lower_is_better else 'higher'} is better)")
    else:
        ax.set_title(metric)
    if annotate:
        ax.bar_label(bars, labels=[f"{m:.3g}" for m in means], padding=3, fontsize="small")
    ax.set_xticks(pos)
    ax.set_xticklabels(names, rotation=20 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylabel(metric)
    return ax

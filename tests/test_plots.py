"""Each plot function runs headless (Agg, set in conftest), returns a Figure/Axes with
the expected artists, and never calls plt.show()."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

import pyrobdl
import pyrobdl.metrics as M
import pyrobdl.plots as P
from pyrobdl.prediction import ClassificationPrediction, RegressionPrediction


@pytest.fixture(autouse=True)
def _no_show_and_close(monkeypatch):
    def _fail(*args, **kwargs):
        raise AssertionError("plot functions must not call plt.show()")

    monkeypatch.setattr(plt, "show", _fail)
    yield
    plt.close("all")


def _by_gid(artists, gid):
    return [a for a in artists if a.get_gid() == gid]


def _band_halfwidth(collection):
    """Largest half-width (upper - lower) / 2 of a fill_between band over its x values."""
    verts = collection.get_paths()[0].vertices
    widths = [np.ptp(verts[verts[:, 0] == x, 1]) for x in np.unique(verts[:, 0])]
    return max(widths) / 2


def _toy_regression(n=120):
    x = torch.linspace(-10, 10, n)
    inside = (x.abs() <= 7).double()
    # epistemic spread grows outside the training range [-7, 7]
    loc = torch.sin(x)[None].double() + torch.randn(30, n, dtype=torch.float64) * (0.05 + 0.6 * (1 - inside))
    scale = torch.full((30, n), 0.3, dtype=torch.float64)
    return x, RegressionPrediction(loc, scale)


def test_predictive_1d_from_prediction_has_bands_and_training_range():
    x, pred = _toy_regression()
    x_train = torch.linspace(-7, 7, 40)
    y_train = torch.sin(x_train)
    ax = P.plot_predictive_1d(x, pred, x_train=x_train, y_train=y_train)
    assert isinstance(ax, Axes) and isinstance(ax.figure, Figure)
    total = _by_gid(ax.collections, "total_band")
    epi = _by_gid(ax.collections, "epistemic_band")
    assert len(total) == 1 and len(epi) == 1
    assert isinstance(total[0], PolyCollection)
    assert _band_halfwidth(total[0]) > _band_halfwidth(epi[0]) > 0
    assert len(_by_gid(ax.patches, "train_range")) == 1  # the shaded span
    edges = _by_gid(ax.lines, "train_range_edge")
    assert sorted(line.get_xdata()[0] for line in edges) == pytest.approx([-7.0, 7.0])
    assert len(_by_gid(ax.collections, "train_points")) == 1
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "training range" in labels and any("epistemic" in t for t in labels)
    assert ax.get_xlabel() and ax.get_ylabel()


def test_predictive_1d_from_arrays_into_given_axes():
    fig, ax = plt.subplots()
    x = np.linspace(-3, 3, 50)
    out = P.plot_predictive_1d(x, np.sin(x), 0.1 + 0.1 * x**2, 0.2, train_range=(-1, 1), num_std=1)
    assert out is not ax  # no ax passed: a new one
    out = P.plot_predictive_1d(x, np.sin(x), 0.1 + 0.1 * x**2, 0.2, train_range=(-1, 1), ax=ax)
    assert out is ax
    # total half-width at the widest point is 2 * sqrt(epi^2 + ale^2)
    epi_max = 0.1 + 0.1 * 9
    assert _band_halfwidth(_by_gid(ax.collections, "total_band")[0]) == pytest.approx(
        2 * np.sqrt(epi_max**2 + 0.04), rel=1e-6
    )
    with pytest.raises(TypeError, match="epistemic_std"):
        P.plot_predictive_1d(x, np.sin(x))
    with pytest.raises(ValueError, match="one value per x"):
        P.plot_predictive_1d(x, np.sin(x[:10]), 0.1, 0.2)


def _classification(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    p1 = rng.uniform(0.5, 1.0, n)  # binary: confidences only in [0.5, 1] -> low bins empty
    labels = (rng.uniform(size=n) < p1 - 0.1).astype(int)
    return np.stack([1 - p1, p1], 1), labels


def test_reliability_diagram_bars_gaps_diagonal_counts_and_empty_bins():
    probs, labels = _classification()
    fig = P.reliability_diagram(probs, labels, n_bins=15)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    ax, count_ax = fig.axes
    curve = M.reliability_curve(probs, labels, n_bins=15)
    n_nonempty = int((curve.count > 0).sum())
    assert 0 < n_nonempty < 15  # bins below 0.5 are empty ...
    acc_bars = _by_gid(ax.patches, "accuracy")
    gap_bars = _by_gid(ax.patches, "gap")
    assert len(acc_bars) == n_nonempty and len(gap_bars) == n_nonempty  # ... and get no bar
    heights = np.array([b.get_height() for b in acc_bars])
    np.testing.assert_allclose(heights, curve.accuracy[curve.count > 0])
    np.testing.assert_allclose([b.get_height() for b in gap_bars], curve.gap[curve.count > 0])
    assert len(_by_gid(ax.lines, "diagonal")) == 1
    counts = _by_gid(count_ax.patches, "counts")
    assert [int(b.get_height()) for b in counts] == curve.count[curve.count > 0].tolist()
    assert f"ECE = {curve.ece:.3f}" in ax.get_title()


def test_reliability_diagram_into_given_axes_annotates_counts():
    probs, labels = _classification()
    fig, ax = plt.subplots()
    pred = ClassificationPrediction(torch.tensor(probs)[None])
    out = P.reliability_diagram(pred, labels, ax=ax, n_bins=10)
    assert out is fig and len(fig.axes) == 1
    curve = M.reliability_curve(probs, labels, n_bins=10)
    notes = [t for t in ax.texts if t.get_gid() == "count_label"]
    assert [int(t.get_text()) for t in notes] == curve.count[curve.count > 0].tolist()
    # a precomputed curve works too
    assert isinstance(P.reliability_diagram(curve), Figure)


def test_calibration_curve_plot():
    rng = np.random.default_rng(1)
    mean, std = rng.normal(size=500), np.full(500, 1.0)
    y = mean + 0.5 * rng.normal(size=500)  # over-dispersed predictions
    ax = P.plot_calibration_curve(mean, std, y, label="wide")
    line = _by_gid(ax.lines, "calibration")[0]
    curve = M.calibration_curve(mean, std, y)
    np.testing.assert_allclose(line.get_ydata(), curve.observed)
    assert len(_by_gid(ax.collections, "area")) == 1
    P.plot_calibration_curve(M.calibration_curve(mean, 0.5 * std, y), ax=ax, label="right")
    assert len(_by_gid(ax.lines, "calibration")) == 2
    assert len(_by_gid(ax.lines, "diagonal")) == 1  # drawn once
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("miscalibration area" in t for t in labels)


def test_uncertainty_histogram():
    rng = np.random.default_rng(2)
    s_in, s_out = rng.gamma(2, 0.1, 400), rng.gamma(4, 0.2, 300)
    ax = P.plot_uncertainty_histogram(s_in, s_out, bins=25, score_name="predictive entropy")
    assert len(_by_gid(ax.patches, "hist_in")) == 25 and len(_by_gid(ax.patches, "hist_out")) == 25
    assert f"{M.ood_auroc(s_in, s_out):.3f}" in ax.get_title()
    assert ax.get_xlabel() == "predictive entropy"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["in-distribution", "out-of-distribution"]


def test_accuracy_rejection_plot_several_methods():
    probs, labels = _classification(500)
    curves = {
        "max prob": M.accuracy_rejection_curve(probs, labels),
        "random": M.accuracy_rejection_curve(probs, labels, uncertainty=np.random.default_rng(0).uniform(size=500)),
    }
    ax = P.plot_accuracy_rejection(curves)
    assert [line.get_gid() for line in ax.lines] == ["max prob", "random"]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), curves["max prob"].accuracy)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["max prob", "random"]
    with pytest.raises(TypeError, match="RejectionCurve"):
        P.plot_accuracy_rejection({"x": [1, 2]})


def test_metric_comparison_bars():
    values = {"VI": [0.50, 0.55, 0.52], "MC dropout": [0.60, 0.58, 0.61], "ensemble": 0.45}
    ax = P.plot_metric_comparison(values, metric="RMSE", lower_is_better=True)
    bars = [p for p in ax.patches if p.get_gid() in values]
    assert [b.get_gid() for b in bars] == list(values)
    np.testing.assert_allclose([b.get_height() for b in bars], [np.mean(values["VI"]), np.mean(values["MC dropout"]), 0.45])
    assert bars[2].get_linewidth() > bars[0].get_linewidth()  # best (lowest) is outlined
    assert "lower is better" in ax.get_title()
    assert len(ax.containers) >= 2  # bars + error bars
    with pytest.raises(ValueError):
        P.plot_metric_comparison({}, metric="RMSE")


def test_import_pyrobdl_does_not_import_pyplot():
    """`import pyrobdl` (and metrics, compare) leaves matplotlib.pyplot alone; pyrobdl.plots
    is imported on first use and imports pyplot only when it draws."""
    import subprocess
    import sys

    code = (
        "import sys, pyrobdl, pyrobdl.metrics, pyrobdl.compare\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'import pyrobdl imported pyplot'\n"
        "assert 'pyrobdl.plots' not in sys.modules, 'import pyrobdl imported pyrobdl.plots'\n"
        "assert 'plots' in pyrobdl.__all__\n"
        "f = pyrobdl.plots.plot_metric_comparison\n"
        "from pyrobdl import plots\n"
        "assert plots.plot_metric_comparison is f and 'matplotlib.pyplot' not in sys.modules\n"
        "import matplotlib; matplotlib.use('Agg')\n"
        "plots.plot_metric_comparison({'a': 1.0, 'b': 2.0}, metric='m')\n"
        "assert 'matplotlib.pyplot' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(AttributeError, match="no attribute 'no_such_module'"):
        getattr(pyrobdl, "no_such_module")

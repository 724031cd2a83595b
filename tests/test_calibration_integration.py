"""pyrobdl.calibration with the rest of the library: save/load of a recalibrated posterior,
``compare --recalibrate`` (before/after columns, report table, bad settings)."""
import json

import pytest
import torch
from torch import nn

import pyrobdl
from pyrobdl import BayesianNetwork, likelihoods
from pyrobdl import compare as compare_mod
from pyrobdl.calibration import RecalibratedPosterior, recalibrate
from pyrobdl.cli import main


def _regression_posterior():
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 120).unsqueeze(-1)
    y = torch.sin(2 * x[:, 0]) + 0.2 * torch.randn(120)
    model = BayesianNetwork(nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1)))
    post = pyrobdl.fit(model, x[::2], y[::2], num_steps=300, progress=False, seed=0)
    return post, x[1::2], y[1::2]


def _classification_posterior():
    torch.manual_seed(0)
    x = torch.randn(150, 2)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    model = BayesianNetwork(nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 3)),
                            likelihood=likelihoods.Categorical())
    post = pyrobdl.fit(model, x[:100], y[:100], num_steps=300, progress=False, seed=0)
    return post, x[100:], y[100:]


@pytest.mark.parametrize("method", ["variance", "isotonic", "conformal", "cqr"])
def test_save_load_regression_recalibrated(tmp_path, method):
    post, x, y = _regression_posterior()
    cal = recalibrate(post, x[:40], y[:40], method=method, level=0.8, num_samples=50)
    path = tmp_path / "cal.pt"
    cal.save(path)
    loaded = pyrobdl.load(path)
    assert isinstance(loaded, RecalibratedPosterior) and loaded.recalibrator.name == method
    assert loaded.recalibrator.num_calibration == 40
    pyro_seed = 3
    pyrobdl.inference  # noqa: B018 - the package is imported
    torch.manual_seed(pyro_seed)
    import pyro

    pyro.set_rng_seed(pyro_seed)
    a = cal.predict(x[40:], num_samples=50)
    pyro.set_rng_seed(pyro_seed)
    b = loaded.predict(x[40:], num_samples=50)
    assert type(a) is type(b)
    lo_a, hi_a = a.interval(0.8)
    lo_b, hi_b = b.interval(0.8)
    torch.testing.assert_close(lo_a, lo_b)
    torch.testing.assert_close(hi_a, hi_b)


@pytest.mark.parametrize("method", ["temperature", "vector", "aps", "raps"])
def test_save_load_classification_recalibrated(tmp_path, method):
    post, x, y = _classification_posterior()
    cal = recalibrate(post, x[:30], y[:30], method=method, num_samples=30)
    cal.save(tmp_path / "cal.pt")
    loaded = pyrobdl.load(tmp_path / "cal.pt")
    import pyro

    pyro.set_rng_seed(1)
    a = cal.predict(x[30:], num_samples=30)
    pyro.set_rng_seed(1)
    b = loaded.predict(x[30:], num_samples=30)
    torch.testing.assert_close(a.probs, b.probs)
    assert torch.equal(a.prediction_sets(0.9), b.prediction_sets(0.9))


def test_recalibrated_posterior_forwards_and_refuses_stacking():
    post, x, y = _regression_posterior()
    cal = recalibrate(post, x[:40], y[:40], method="variance")
    assert cal.model is post.model and cal.method == post.method  # forwarded attributes
    with pytest.raises(TypeError, match="already recalibrated"):
        recalibrate(cal, x[:40], y[:40], method="conformal")
    with pytest.raises(ValueError, match="unknown recalibration method 'platt'"):
        recalibrate(post, x[:40], y[:40], method="platt")
    with pytest.raises(TypeError, match="is for classification"):
        recalibrate(post, x[:40], y[:40], method="temperature")
    with pytest.raises(ValueError, match="x_cal has 40 rows but y_cal has 39"):
        recalibrate(post, x[:40], y[:39], method="variance")


# ----------------------------------------------------------------------------- compare --recalibrate
def _run(capsys, *args):
    code = main(["compare", "--quick", "--no-progress", *map(str, args)])
    return code, capsys.readouterr()


def test_compare_recalibrate_regression(tmp_path, capsys):
    out = tmp_path / "reg"
    code, cap = _run(capsys, "--methods", "mean-field", "--recalibrate", "conformal", "--out", out)
    assert code == 0, cap.err
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["recalibration"] == {"method": "conformal", "calibration_fraction": 0.2, "level": 0.9}
    rec = results["methods"]["mean-field"]["splits"][0]
    assert rec["recalibration"]["method"] == "conformal"
    n_train = results["dataset"]["n_train"]
    assert rec["recalibration"]["num_calibration"] == round(0.2 * n_train)
    for key in ("ll_recal", "coverage_90_recal", "mean_width_90_recal", "miscalibration_area_recal"):
        assert key in rec["metrics"] and key in results["methods"]["mean-field"]["summary"]
    md = (out / "report.md").read_text()
    assert "Recalibration: before and after (conformal" in md and "90% coverage, recalibrated" in md


def test_compare_recalibrate_classification(tmp_path, capsys):
    out = tmp_path / "cls"
    code, cap = _run(capsys, "--dataset", "digits", "--methods", "mean-field", "--recalibrate", "temperature",
                     "--calibration-fraction", "0.25", "--out", out)
    assert code == 0, cap.err
    results = json.loads((out / "results.json").read_text())
    m = results["methods"]["mean-field"]["splits"][0]["metrics"]
    for key in ("accuracy_recal", "nll_recal", "ece_recal", "set_coverage_90", "set_size_90"):
        assert key in m
    assert 1.0 <= m["set_size_90"] <= results["dataset"]["num_classes"]


def test_compare_without_recalibrate_has_no_recalibration_table(tmp_path, capsys):
    out = tmp_path / "plain"
    code, _ = _run(capsys, "--methods", "mean-field", "--out", out)
    assert code == 0
    assert "Recalibration" not in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--recalibrate", "temperature"], "--recalibrate 'temperature' is for classification"),
        (["--recalibrate", "platt"], "unknown --recalibrate 'platt'; for this regression dataset choose one of"),
        (["--recalibrate", "conformal", "--calibration-fraction", "1.5"], "--calibration-fraction must be"),
        (["--recalibrate", "conformal", "--calibration-fraction", "0.001"], "raise --calibration-fraction"),
    ],
)
def test_compare_recalibrate_bad_settings(tmp_path, capsys, args, message):
    code, cap = _run(capsys, "--methods", "mean-field", "--out", tmp_path / "bad", *args)
    assert code == 2 and message in cap.err and "Traceback" not in cap.err
    assert not (tmp_path / "bad" / "results.json").exists()  # refused before anything ran


def test_compare_api_takes_recalibrate(tmp_path):
    results = compare_mod.compare("toy-regression", methods="mean-field", quick=True, out=tmp_path,
                                  progress=False, recalibrate="variance", calibration_fraction=0.3)
    rec = results["methods"]["mean-field"]["splits"][0]["recalibration"]
    assert rec["method"] == "variance" and rec["state"]["factor"] > 0


def test_take_keeps_the_class_and_agrees_with_the_whole():
    """Prediction.take: the same class and settings for a subset of the points, every summary
    equal to the whole prediction's at those points (conformal, isotonic, plain, classification)."""
    from pyrobdl.calibration import ConformalRegression, IsotonicCalibration
    from pyrobdl.prediction import ClassificationPrediction, RegressionPrediction

    g = torch.Generator().manual_seed(3)
    loc, scale = torch.randn(4, 50, generator=g, dtype=torch.float64), torch.rand(4, 50, generator=g, dtype=torch.float64) + 0.5
    y = torch.randn(50, generator=g, dtype=torch.float64) * 2
    base = RegressionPrediction(loc, scale)
    mask = torch.arange(50) % 3 == 0
    for pred in (base, ConformalRegression().fit(base, y).transform(base), IsotonicCalibration().fit(base, y).transform(base)):
        part = pred.take(mask)
        assert type(part) is type(pred)
        torch.testing.assert_close(part.mean, pred.mean[mask])
        torch.testing.assert_close(part.std, pred.std[mask])
        for a, b in zip(part.interval(0.8), pred.interval(0.8)):
            torch.testing.assert_close(a, b[mask])
    probs = torch.softmax(torch.randn(3, 10, 4, generator=g), -1)
    cls = ClassificationPrediction(probs)
    torch.testing.assert_close(cls.take([1, 3]).probs, cls.probs[[1, 3]])
    with pytest.raises(ValueError, match="one entry per point"):
        base.take(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="positions must lie in"):
        base.take([0, 50])
    with pytest.raises(TypeError, match="index must be a slice"):
        base.take(torch.tensor([0.5]))


def test_recalibrate_takes_a_precomputed_prediction():
    """Passing the prediction at the calibration inputs fits the same recalibrator as passing
    the inputs (same samples: predictions with a fixed torch seed are reproducible)."""
    post, x, y = _regression_posterior()
    torch.manual_seed(3)
    pred = post.predict(x[:40], num_samples=50)
    from_pred = recalibrate(post, pred, y[:40], method="variance")
    torch.manual_seed(3)
    from_x = recalibrate(post, x[:40], y[:40], method="variance", num_samples=50)
    assert from_pred.recalibrator.get_state() == from_x.recalibrator.get_state()
    clf, xc, yc = _classification_posterior()
    with pytest.raises(ValueError, match="predicts a classification task"):
        recalibrate(clf, pred, y[:40], method="temperature")

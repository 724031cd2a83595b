"""Tests of pyrobdl.metrics: hand-computed small cases, agreement with scikit-learn,
statistical checks with tolerances justified by the sample size, and bad input."""
import math
import time

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score, roc_curve

import pyrobdl.metrics as M
from pyrobdl.prediction import ClassificationPrediction, RegressionPrediction


def _rows(top, classes, num_classes):
    """Probability rows with ``top`` on ``classes`` and the rest spread evenly."""
    top = np.asarray(top, dtype=float)
    p = np.repeat(((1 - top) / (num_classes - 1))[:, None], num_classes, axis=1)
    p[np.arange(len(top)), classes] = top
    return p


def _gaussian_mixture_pred(rng, S, N, dtype=torch.float64):
    loc = torch.tensor(rng.normal(size=(S, N)) * 2, dtype=dtype)
    scale = torch.tensor(rng.uniform(0.3, 1.5, size=(S, N)), dtype=dtype)
    return RegressionPrediction(loc, scale)


# ----------------------------------------------------------------------------- regression


def test_rmse_mae_hand_computed_for_arrays_and_prediction():
    # errors 0, 1, -2: RMSE = sqrt(5/3), MAE = 1
    assert M.rmse([1.0, 2.0, 3.0], [1.0, 1.0, 5.0]) == pytest.approx(math.sqrt(5 / 3), rel=1e-15)
    assert M.mae(np.array([1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 5.0])) == pytest.approx(1.0, rel=1e-15)
    pred = RegressionPrediction(torch.tensor([[0.0, 2.0, 2.0], [2.0, 2.0, 4.0]]), torch.ones(2, 3))  # mean 1, 2, 3
    assert M.rmse(pred, [1.0, 1.0, 5.0]) == pytest.approx(math.sqrt(5 / 3), rel=1e-12)
    assert M.mae(pred, [[1.0], [1.0], [5.0]]) == pytest.approx(1.0, rel=1e-12)  # (N, 1) targets accepted
    assert isinstance(M.rmse(pred, [1.0, 1.0, 5.0]), float)


def test_gaussian_nll_closed_form():
    # N(2; 0, 2^2): 0.5 log(2 pi 4) + 0.5 ; N(0; 1, 1): 0.5 log(2 pi) + 0.5
    expected = np.mean([0.5 * math.log(2 * math.pi * 4) + 0.5, 0.5 * math.log(2 * math.pi) + 0.5])
    assert M.nll([0.0, 1.0], [2.0, 1.0], [2.0, 0.0]) == pytest.approx(expected, rel=1e-14)
    # a one-sample prediction object gives the same
    pred = RegressionPrediction(torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, 1.0]]))
    assert M.nll(pred, [2.0, 0.0]) == pytest.approx(expected, rel=1e-7)


def test_mixture_nll_uses_the_samples_not_a_gaussian_fit():
    loc = torch.tensor([[-3.0], [3.0]], dtype=torch.float64)
    scale = torch.tensor([[0.5], [1.0]], dtype=torch.float64)
    pred = RegressionPrediction(loc, scale)
    y = 2.5
    density = 0.5 * stats.norm.pdf(y, -3, 0.5) + 0.5 * stats.norm.pdf(y, 3, 1.0)
    assert M.nll(pred, [y]) == pytest.approx(-math.log(density), rel=1e-13)
    moment_fit = M.nll(pred.mean.numpy(), pred.std.numpy(), [y])
    assert abs(moment_fit - M.nll(pred, [y])) > 0.5


def test_nll_float32_prediction_is_evaluated_in_float64():
    rng = np.random.default_rng(0)
    p64 = _gaussian_mixture_pred(rng, 10, 200)
    p32 = RegressionPrediction(p64.samples["loc"].float(), p64.samples["scale"].float())
    y = rng.normal(size=200)
    # the only difference left is the float32 rounding of the stored samples (~1e-7 relative)
    assert M.nll(p32, y) == pytest.approx(M.nll(p64, y), rel=1e-6)


def test_crps_gaussian_closed_form_hand_and_quadrature():
    # mu = 0, sigma = 1, y = 0: 2 phi(0) - 1/sqrt(pi) = (sqrt 2 - 1)/sqrt(pi)
    assert M.crps([0.0], [1.0], [0.0]) == pytest.approx((math.sqrt(2) - 1) / math.sqrt(math.pi), rel=1e-14)
    mu, sd, y = 0.3, 1.7, -1.1
    F = lambda z: stats.norm.cdf(z, mu, sd)  # noqa: E731
    numeric = integrate.quad(lambda z: F(z) ** 2, -np.inf, y)[0] + integrate.quad(lambda z: (1 - F(z)) ** 2, y, np.inf)[0]
    assert M.crps([mu], [sd], [y]) == pytest.approx(numeric, rel=1e-9)
    # S == 1 prediction object uses the same closed form
    pred = RegressionPrediction(torch.tensor([[mu]], dtype=torch.float64), torch.tensor([[sd]], dtype=torch.float64))
    assert M.crps(pred, [y]) == pytest.approx(numeric, rel=1e-9)


def test_crps_mixture_exact_matches_quadrature():
    rng = np.random.default_rng(1)
    pred = _gaussian_mixture_pred(rng, 4, 3)
    y = rng.normal(size=3)
    loc, scale = pred.samples["loc"].numpy(), pred.samples["scale"].numpy()
    per_point = []
    for i in range(3):
        F = lambda z: stats.norm.cdf(z, loc[:, i], scale[:, i]).mean()  # noqa: E731
        lo = integrate.quad(lambda z: F(z) ** 2, -np.inf, y[i], epsabs=1e-12)[0]
        hi = integrate.quad(lambda z: (1 - F(z)) ** 2, y[i], np.inf, epsabs=1e-12)[0]
        per_point.append(lo + hi)
    assert M.crps(pred, y) == pytest.approx(np.mean(per_point), rel=1e-8)


def test_crps_draws_agrees_with_exact_within_monte_carlo_error():
    rng = np.random.default_rng(2)
    pred = _gaussian_mixture_pred(rng, 20, 500)
    y = rng.normal(size=500)
    exact = M.crps(pred, y)
    # Over 20 seeds the draws estimate (M = 500 draws, N = 500 points) has sd ~0.001
    # around the exact value; 0.005 is 5 SE.
    assert M.crps(pred, y, method="draws", num_draws=500, seed=0) == pytest.approx(exact, abs=0.005)
    assert M.crps(pred, y, method="draws", num_draws=500, seed=3) == M.crps(
        pred, y, method="draws", num_draws=500, seed=3
    )


def test_crps_ensemble_hand_and_brute_force():
    # draws {0, 2}, y = 1: E|X - y| = 1, sum_ij |x_i - x_j| = 4
    assert M.crps_ensemble([[0.0], [2.0]], [1.0]) == pytest.approx(1 - 4 / 8)
    assert M.crps_ensemble([[0.0], [2.0]], [1.0], fair=True) == pytest.approx(1 - 4 / 4)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(7, 40)), rng.normal(size=40)
    brute = np.abs(x - y).mean(0) - 0.5 * np.abs(x[:, None] - x[None]).mean((0, 1))
    assert M.crps_ensemble(x, y) == pytest.approx(brute.mean(), rel=1e-13)
    # a point-mass ensemble of one member is the absolute error
    assert M.crps_ensemble([[1.0, 2.0]], [0.0, 0.0]) == pytest.approx(1.5)


def test_interval_coverage_hand_and_against_explicit_interval():
    # z_0.95 = 1.6449: 0 and 1.6 inside, 1.7 and -3 outside
    assert M.interval_coverage([0.0] * 4, [1.0] * 4, [0.0, 1.6, 1.7, -3.0], level=0.9) == 0.5
    rng = np.random.default_rng(4)
    pred = _gaussian_mixture_pred(rng, 5, 400)
    y = torch.tensor(rng.normal(size=400) * 3)
    lo, hi = pred.interval(0.8)
    explicit = ((y >= lo) & (y <= hi)).double().mean().item()
    assert M.interval_coverage(pred, y, level=0.8) == explicit


def test_interval_coverage_of_calibrated_gaussian():
    rng = np.random.default_rng(5)
    n = 20_000
    mean, std = rng.normal(size=n), rng.uniform(0.5, 2.0, n)
    y = mean + std * rng.normal(size=n)
    # SE of a coverage estimated from n = 20,000 draws: sqrt(0.9*0.1/n) = 0.0021; 0.01 is ~5 SE.
    assert M.interval_coverage(mean, std, y, level=0.9) == pytest.approx(0.9, abs=0.01)


def test_mean_interval_width_gaussian_and_mixture():
    z = stats.norm.ppf(0.975)
    assert M.mean_interval_width([1.0, 2.0], level=0.95) == pytest.approx(2 * z * 1.5, rel=1e-14)
    assert M.mean_interval_width([5.0, 6.0], [1.0, 2.0], level=0.95) == pytest.approx(2 * z * 1.5, rel=1e-14)
    rng = np.random.default_rng(6)
    pred = _gaussian_mixture_pred(rng, 6, 300)
    lo, hi = pred.interval(0.7)  # 60 bisection halvings in float64
    assert M.mean_interval_width(pred, level=0.7) == pytest.approx((hi - lo).mean().item(), rel=1e-10)


def test_calibration_curve_hand_computed():
    # |2 Phi(y) - 1| for y = 0, 0.5, 2, -1: 0, 0.3829, 0.9545, 0.6827
    curve = M.calibration_curve([0.0] * 4, [1.0] * 4, [0.0, 0.5, 2.0, -1.0], levels=[0.1, 0.5, 0.9, 1.0])
    np.testing.assert_array_equal(curve.expected, [0.1, 0.5, 0.9, 1.0])
    np.testing.assert_allclose(curve.observed, [0.25, 0.5, 0.75, 1.0])
    default = M.calibration_curve([0.0] * 4, [1.0] * 4, [0.0, 0.5, 2.0, -1.0])
    assert default.expected.shape == (100,) and default.expected[0] == 0 and default.expected[-1] == 1
    with pytest.raises(ValueError):
        default.observed[0] = 1.0  # frozen, read-only arrays


def test_calibration_curve_of_gaussian_on_its_own_data_lies_on_the_diagonal():
    rng = np.random.default_rng(7)
    n = 20_000
    mean, std = rng.normal(size=n), rng.uniform(0.5, 2.0, n)
    y = mean + std * rng.normal(size=n)
    curve = M.calibration_curve(mean, std, y)
    # The curve is the empirical CDF of |2F(y) - 1| ~ U(0, 1); by the DKW inequality
    # P(sup deviation > 0.015) <= 2 exp(-2 n 0.015^2) = 2.5e-4.
    assert np.max(np.abs(curve.observed - curve.expected)) < 0.015
    # over-dispersed predictions: observed coverage above the diagonal, area far from 0
    wide = M.calibration_curve(mean, 2 * std, y)
    assert np.all(wide.observed[1:-1] > wide.expected[1:-1])
    assert M.miscalibration_area(mean, 2 * std, y) > 0.1
    assert M.miscalibration_area(mean, std, y) < 0.01


def test_calibration_curve_uses_mixture_quantiles_for_non_gaussian_predictives():
    rng = np.random.default_rng(8)
    n = 20_000
    loc = torch.tensor(np.stack([np.full(n, -2.0), np.full(n, 2.0)]))
    scale = torch.full((2, n), 0.5, dtype=torch.float64)
    pred = RegressionPrediction(loc, scale)
    comp = rng.integers(0, 2, n)
    y = loc.numpy()[comp, np.arange(n)] + 0.5 * rng.normal(size=n)  # one component per point
    curve = M.calibration_curve(pred, y)
    assert np.max(np.abs(curve.observed - curve.expected)) < 0.015  # DKW bound as above
    # a Gaussian with the mixture's moments is visibly miscalibrated on the same data
    assert M.miscalibration_area(pred.mean.numpy(), pred.std.numpy(), y) > 0.05


def test_miscalibration_area_hand_computed_with_crossing():
    area = M.miscalibration_area(M.CalibrationCurve(np.array([0.0, 0.5, 1.0]), np.array([0.0, 1.0, 1.0])))
    assert area == pytest.approx(0.25)
    # crosses the diagonal at 0.5: two triangles of area 1/4
    crossing = M.CalibrationCurve(np.array([0.0, 1.0]), np.array([1.0, 0.0]))
    assert M.miscalibration_area(crossing) == pytest.approx(0.5)


def test_sharpness():
    assert M.sharpness([1.0, 7.0]) == pytest.approx(5.0)
    pred = RegressionPrediction(torch.tensor([[0.0, 1.0], [2.0, 1.0]]), torch.ones(2, 2))
    # variances: (1 + 1) and (1 + 0) -> sqrt(1.5)
    assert M.sharpness(pred) == pytest.approx(math.sqrt(1.5), rel=1e-7)


# ------------------------------------------------------------------------- classification


def test_accuracy_nll_brier_hand_computed():
    probs = [[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]
    labels = [0, 1, 1]
    assert M.accuracy(probs, labels) == pytest.approx(2 / 3)  # tie -> class 0
    assert M.accuracy([0, 1, 0], labels) == pytest.approx(2 / 3)  # predicted labels
    assert M.nll(probs, labels) == pytest.approx(-(math.log(0.5) + math.log(0.1) + math.log(0.8)) / 3)
    # Brier: (0.25 + 0.25) + (0.81 + 0.81) + (0.04 + 0.04) over 3
    assert M.brier_score(probs, labels) == pytest.approx((0.5 + 1.62 + 0.08) / 3)


def test_classification_metrics_agree_with_sklearn_and_prediction_object():
    rng = np.random.default_rng(9)
    samples = torch.softmax(torch.tensor(rng.normal(size=(8, 300, 5)) * 2), -1)
    pred = ClassificationPrediction(samples)
    labels = rng.integers(0, 5, 300)
    probs = pred.probs.numpy()
    assert M.nll(pred, labels) == pytest.approx(log_loss(labels, probs, labels=range(5)), rel=1e-12)
    assert M.nll(probs, labels) == pytest.approx(M.nll(pred, labels), rel=1e-12)
    assert M.brier_score(pred, labels) == pytest.approx(
        brier_score_loss(labels, probs, labels=range(5), scale_by_half=False), rel=1e-12
    )
    assert M.accuracy(pred, labels) == np.mean(probs.argmax(1) == labels)


def _ece_probs():
    # top confidences 0.3 (correct), 0.4 (wrong), 0.9 (correct), 0.8 (correct), 0.6 (wrong); 4 classes
    probs = _rows([0.3, 0.4, 0.9, 0.8, 0.6], [0, 1, 2, 3, 0], 4)
    labels = [0, 2, 2, 3, 1]
    return probs, labels


def test_ece_mce_hand_computed():
    probs, labels = _ece_probs()
    # 4 bins (0,.25] (.25,.5] (.5,.75] (.75,1]:
    #   bin 2: conf .35, acc .5 (2 pts); bin 3: conf .6, acc 0 (1 pt); bin 4: conf .85, acc 1 (2 pts)
    # ECE = 2/5 * .15 + 1/5 * .6 + 2/5 * .15 = 0.24 ; MCE = 0.6
    assert M.expected_calibration_error(probs, labels, n_bins=4) == pytest.approx(0.24, abs=1e-15)
    assert M.maximum_calibration_error(probs, labels, n_bins=4) == pytest.approx(0.6, abs=1e-15)
    curve = M.reliability_curve(probs, labels, n_bins=4)
    np.testing.assert_array_equal(curve.count, [0, 2, 1, 2])
    assert np.isnan(curve.accuracy[0]) and np.isnan(curve.confidence[0])  # empty bin: NaN, not 0
    np.testing.assert_allclose(curve.accuracy[1:], [0.5, 0.0, 1.0])
    np.testing.assert_allclose(curve.confidence[1:], [0.35, 0.6, 0.85])
    # one bin: |mean accuracy - mean confidence| = |0.6 - 0.6| = 0
    assert M.expected_calibration_error(probs, labels, n_bins=1) == pytest.approx(0.0, abs=1e-15)


def test_ece_bin_edges_are_left_open_right_closed():
    # confidences exactly on the edges 0.25, 0.5, 0.75 (exact in binary) and 1.0
    probs = _rows([0.25, 0.5, 0.75, 1.0, 0.6], [0, 1, 2, 3, 0], 4)
    curve = M.reliability_curve(probs, [0, 0, 0, 0, 0], n_bins=4)
    # (0, .25] gets .25; (.25, .5] gets .5; (.5, .75] gets .75 and .6; (.75, 1] gets 1.0
    np.testing.assert_array_equal(curve.count, [1, 1, 2, 1])
    # a confidence equal to a float edge of np.linspace(0, 1, 16) falls in the bin below it
    edges = np.linspace(0, 1, 16)
    k = np.arange(2, 16)
    probs = _rows(edges[k], np.zeros(len(k), dtype=int), 20)
    curve = M.reliability_curve(probs, np.zeros(len(k), dtype=int), n_bins=15)
    np.testing.assert_array_equal(np.flatnonzero(curve.count), k - 1)


def test_ece_of_perfectly_calibrated_predictions_is_near_zero():
    rng = np.random.default_rng(10)
    n = 100_000
    p1 = rng.uniform(size=n)
    labels = (rng.uniform(size=n) < p1).astype(int)
    probs = np.stack([1 - p1, p1], 1)
    # Each of ~8 non-empty bins holds ~12,500 points, |acc - conf| ~ sqrt(p(1-p)/n_b) <= 0.0045,
    # so E[ECE] ~ 0.003; 0.01 leaves room.
    assert M.expected_calibration_error(probs, labels) < 0.01
    assert M.expected_calibration_error(probs, labels, binning="equal_mass") < 0.01


def test_ece_of_known_miscalibration():
    rng = np.random.default_rng(11)
    n = 100_000
    conf = rng.uniform(0.6, 1.0, n)
    correct = rng.uniform(size=n) < conf - 0.1  # over-confident by exactly 0.1
    labels = np.where(correct, 1, 0)
    probs = np.stack([1 - conf, conf], 1)
    # Every bin's gap is 0.1 in expectation; the count-weighted gap has SE ~ sqrt(0.2/n) = 0.0014,
    # so 0.01 is ~7 SE.
    assert M.expected_calibration_error(probs, labels) == pytest.approx(0.1, abs=0.01)
    assert M.expected_calibration_error(probs, labels, binning="adaptive") == pytest.approx(0.1, abs=0.01)


def test_equal_mass_bins():
    rng = np.random.default_rng(12)
    n = 1003
    conf = rng.uniform(0.5, 1.0, n)  # distinct almost surely
    probs = np.stack([conf, 1 - conf], 1)
    labels = rng.integers(0, 2, n)
    curve = M.reliability_curve(probs, labels, n_bins=10, binning="equal_mass")
    assert set(curve.count.tolist()) <= {100, 101} and curve.count.sum() == n
    # against a direct implementation: split the sorted points into those chunks
    order = np.argsort(conf)
    chunks = np.split(order, np.cumsum(curve.count)[:-1])
    correct = (probs.argmax(1) == labels).astype(float)
    direct = sum(len(c) / n * abs(correct[c].mean() - conf[c].mean()) for c in chunks)
    assert M.expected_calibration_error(probs, labels, n_bins=10, binning="equal_mass") == pytest.approx(direct, rel=1e-12)
    # ties stay together: identical confidences give one non-empty bin
    same = M.reliability_curve(np.tile([0.7, 0.3], (50, 1)), np.zeros(50, dtype=int), n_bins=10, binning="equal_mass")
    assert (same.count > 0).sum() == 1


def test_ece_accepts_prediction_objects():
    probs, labels = _ece_probs()
    pred = ClassificationPrediction(torch.tensor(probs)[None].repeat(3, 1, 1))
    assert M.expected_calibration_error(pred, labels, n_bins=4) == pytest.approx(0.24, abs=1e-12)


# ------------------------------------------------------------------------ uncertainty scores


def test_entropy_decomposition_hand_computed_and_consistent_with_prediction():
    samples = [[[1.0, 0.0]], [[0.0, 1.0]]]  # two confident samples that disagree
    np.testing.assert_allclose(M.predictive_entropy(samples), [math.log(2)])
    np.testing.assert_allclose(M.expected_entropy(samples), [0.0])
    np.testing.assert_allclose(M.mutual_information(samples), [math.log(2)])
    np.testing.assert_allclose(M.max_probability([[0.2, 0.8]]), [0.8])
    rng = np.random.default_rng(13)
    pred = ClassificationPrediction(torch.softmax(torch.tensor(rng.normal(size=(6, 50, 4))), -1))
    np.testing.assert_allclose(M.predictive_entropy(pred), pred.predictive_entropy.numpy(), rtol=1e-12)
    np.testing.assert_allclose(M.mutual_information(pred), pred.mutual_information.numpy(), atol=1e-12)
    np.testing.assert_allclose(M.uncertainty_score(pred, kind="least_confidence"), 1 - pred.confidence.numpy())
    reg = _gaussian_mixture_pred(rng, 5, 20)
    np.testing.assert_allclose(M.predictive_std(reg), reg.std.numpy())
    np.testing.assert_allclose(M.uncertainty_score(reg, kind="epistemic_std"), reg.epistemic_std.numpy())


# ------------------------------------------------------------------------------------- OOD


def test_ood_scores_hand_computed():
    assert M.ood_auroc([0.1, 0.4], [0.35, 0.8]) == 0.75
    assert M.ood_auroc([1.0, 1.0], [1.0, 2.0]) == 0.75  # ties count one half
    assert M.ood_auroc([0.0, 0.1], [0.5, 0.6]) == 1.0
    assert M.ood_auroc([0.5, 0.6], [0.0, 0.1]) == 0.0
    # ranking 0.8(out) 0.4(in) 0.35(out) 0.1(in): AP = 1/2 * 1 + 1/2 * 2/3
    assert M.ood_aupr([0.1, 0.4], [0.35, 0.8]) == pytest.approx(0.5 + 1 / 3)
    # OOD 1..20, in {0.5 x5, 2.5 x5}: TPR >= 0.95 first at t = 2, where the five 2.5s are above
    assert M.fpr_at_95_tpr([0.5] * 5 + [2.5] * 5, np.arange(1, 21)) == 0.5


@pytest.mark.parametrize("ties", [False, True])
def test_ood_scores_agree_with_sklearn(ties):
    rng = np.random.default_rng(14 + ties)
    s_in, s_out = rng.normal(size=700), rng.normal(0.7, 1.2, 400)
    if ties:
        s_in, s_out = np.round(s_in, 1), np.round(s_out, 1)
    y = np.r_[np.zeros(700), np.ones(400)]
    s = np.r_[s_in, s_out]
    assert M.ood_auroc(s_in, s_out) == pytest.approx(roc_auc_score(y, s), rel=1e-12)
    assert M.ood_aupr(s_in, s_out) == pytest.approx(average_precision_score(y, s), rel=1e-12)
    assert M.ood_aupr(s_in, s_out, positive="in") == pytest.approx(average_precision_score(1 - y, -s), rel=1e-12)
    fpr, tpr, _ = roc_curve(y, s)
    assert M.fpr_at_95_tpr(s_in, s_out) == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], rel=1e-12)
    # tensors and lists give the same
    assert M.ood_auroc(torch.tensor(s_in), list(s_out)) == M.ood_auroc(s_in, s_out)


# ---------------------------------------------------------------------- selective prediction


def test_accuracy_rejection_curve_hand_computed():
    probs = _rows([0.9, 0.8, 0.7, 0.6], [0, 0, 0, 0], 2)
    labels = [0, 0, 1, 1]  # correct, correct, wrong, wrong
    curve = M.accuracy_rejection_curve(probs, labels, rejection_rates=[0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve.accuracy[:4], [0.5, 2 / 3, 1.0, 1.0])
    assert np.isnan(curve.accuracy[4])
    np.testing.assert_array_equal(curve.num_retained, [4, 3, 2, 1, 0])
    # explicit uncertainty that ranks the wrong ones as most certain
    bad = M.accuracy_rejection_curve(probs, labels, uncertainty=[4, 3, 2, 1], rejection_rates=[0.5])
    np.testing.assert_allclose(bad.accuracy, [0.0])


def test_accuracy_rejection_curve_ties_and_order_invariance():
    rng = np.random.default_rng(16)
    probs = _rows(rng.uniform(0.5, 1, 200), rng.integers(0, 3, 200), 3)
    labels = rng.integers(0, 3, 200)
    tied = M.accuracy_rejection_curve(probs, labels, uncertainty=np.zeros(200))
    np.testing.assert_allclose(tied.accuracy, M.accuracy(probs, labels))  # all tied: base accuracy
    u = np.round(rng.uniform(size=200), 1)
    perm = rng.permutation(200)
    a = M.accuracy_rejection_curve(probs, labels, uncertainty=u)
    b = M.accuracy_rejection_curve(probs[perm], np.asarray(labels)[perm], uncertainty=u[perm])
    np.testing.assert_allclose(a.accuracy, b.accuracy, rtol=1e-12)


def test_aurc_hand_and_brute_force():
    assert M.aurc([[0.9, 0.1], [0.6, 0.4]], [0, 1]) == pytest.approx(0.25)
    rng = np.random.default_rng(17)
    probs = _rows(rng.uniform(0.34, 1, 300), rng.integers(0, 3, 300), 3)
    labels = rng.integers(0, 3, 300)
    order = np.argsort(-probs.max(1))
    wrong = (probs.argmax(1) != labels)[order]
    brute = np.mean([wrong[:k].mean() for k in range(1, 301)])
    assert M.aurc(probs, labels) == pytest.approx(brute, rel=1e-12)
    oracle_u = (probs.argmax(1) != labels).astype(float)  # wrong points refused first
    assert M.aurc(probs, labels, uncertainty=oracle_u, excess=True) == pytest.approx(0.0, abs=1e-15)


def test_class_thresholds_seed_rule():
    # class 0: correct validation confidences 0.6 .. 1.0 -> 10th percentile 0.64
    # class 1: correct 0.55, 0.75 -> 0.57 ; a wrong class-1 prediction at 0.99 is ignored
    val = _rows([0.6, 0.7, 0.8, 0.9, 1.0, 0.55, 0.75, 0.99], [0, 0, 0, 0, 0, 1, 1, 1], 2)
    val_labels = [0, 0, 0, 0, 0, 1, 1, 0]
    th = M.fit_class_thresholds(val, val_labels)
    np.testing.assert_allclose(th.thresholds, [0.64, 0.57])
    test = _rows([0.63, 0.65, 0.56, 0.58], [0, 0, 1, 1], 2)
    np.testing.assert_array_equal(th.refuse(test), [True, False, True, False])
    np.testing.assert_array_equal(M.class_threshold_rejection(val, val_labels, test), [True, False, True, False])
    # against np.percentile per class on random data
    rng = np.random.default_rng(18)
    probs = _rows(rng.uniform(0.3, 1, 500), rng.integers(0, 4, 500), 4)
    labels = rng.integers(0, 4, 500)
    pred = probs.argmax(1)
    ok = pred == labels
    th = M.fit_class_thresholds(probs, labels, percentile=25)
    expected = [np.percentile(probs.max(1)[ok & (pred == c)], 25) for c in range(4)]
    np.testing.assert_allclose(th.thresholds, expected, rtol=1e-15)


def test_class_thresholds_class_without_correct_predictions_refuses_all():
    val = _rows([0.9, 0.8], [0, 0], 3)
    with pytest.warns(UserWarning, match="no correct validation prediction"):
        th = M.fit_class_thresholds(val, [0, 0])
    assert np.isinf(th.thresholds[1]) and np.isinf(th.thresholds[2])
    assert th.refuse(_rows([0.99], [2], 3)).tolist() == [True]


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: M.expected_calibration_error([[0.5, 0.6]], [0]), "sum to 1"),
        (lambda: M.expected_calibration_error([[2.0, -1.0]], [0]), r"\[0, 1\]"),
        (lambda: M.expected_calibration_error([[0.5, 0.5]], [2]), r"\[0, 2\)"),
        (lambda: M.expected_calibration_error([[0.5, 0.5]], [-1]), "labels"),
        (lambda: M.expected_calibration_error([[0.5, 0.5]], [0, 1]), "shape"),
        (lambda: M.expected_calibration_error([[0.5, 0.5]], [0], n_bins=0), "n_bins"),
        (lambda: M.expected_calibration_error(np.zeros((0, 2)), []), "empty"),
        (lambda: M.expected_calibration_error([[np.nan, 1.0]], [0]), "NaN"),
        (lambda: M.expected_calibration_error([0.2, 0.7], [0, 1]), "binary"),
        (lambda: M.brier_score([[0.5, 0.5]], [np.nan]), "NaN"),
        (lambda: M.rmse([1.0, 2.0], [1.0]), "shape"),
        (lambda: M.rmse([1.0, np.nan], [1.0, 2.0]), "NaN"),
        (lambda: M.rmse([], []), "empty"),
        (lambda: M.nll([0.0], [0.0], [1.0]), "std"),
        (lambda: M.nll([0.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0]), "std"),
        (lambda: M.interval_coverage([0.0], [1.0], [0.0], level=1.5), "level"),
        (lambda: M.ood_auroc([], [1.0]), "scores_in"),
        (lambda: M.ood_auroc([0.1], [np.nan]), "scores_out"),
        (lambda: M.accuracy_rejection_curve([[0.5, 0.5]], [0], uncertainty=[0.1, 0.2]), "uncertainty"),
        (lambda: M.fit_class_thresholds([[0.5, 0.5]], [0], percentile=150), "percentile"),
        (lambda: M.mutual_information([[0.5, 0.5]]), r"\(S, N, C\)"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_types_raise_type_error():
    reg = RegressionPrediction(torch.zeros(2, 3), torch.ones(2, 3))
    cls = ClassificationPrediction(torch.full((2, 3, 2), 0.5))
    with pytest.raises(TypeError, match="classification"):
        M.expected_calibration_error(reg, [0, 1, 0])
    with pytest.raises(TypeError, match="regression"):
        M.rmse(cls, [0, 1, 0])
    with pytest.raises(TypeError, match="integer"):
        M.accuracy([[0.5, 0.5]], [0.5])
    with pytest.raises(TypeError, match="n_bins"):
        M.expected_calibration_error([[0.5, 0.5]], [0], n_bins=1.5)
    with pytest.raises(TypeError):
        M.crps([0.0], [1.0])  # a mean without a std is not a predictive distribution


def test_metrics_handle_100k_points_quickly():
    rng = np.random.default_rng(19)
    n = 100_000
    probs = _rows(rng.uniform(0.1, 1, n), rng.integers(0, 10, n), 10)
    labels = rng.integers(0, 10, n)
    mean, std = rng.normal(size=n), rng.uniform(0.5, 1.5, n)
    y = rng.normal(size=n)
    start = time.perf_counter()
    for f in (M.expected_calibration_error, M.maximum_calibration_error, M.brier_score, M.nll, M.aurc):
        assert isinstance(f(probs, labels), float)
    M.accuracy_rejection_curve(probs, labels)
    M.ood_auroc(rng.normal(size=n), rng.normal(size=n))
    M.ood_aupr(rng.normal(size=n), rng.normal(size=n))
    for f in (M.nll, M.crps, M.miscalibration_area):
        f(mean, std, y)
    # each of these is a few vectorised passes (~50 ms each on one core); 5 s is a generous ceiling
    assert time.perf_counter() - start < 5.0


def test_public_api_is_reexported_from_the_package():
    """pyrobdl.metrics keeps one public API while the code lives in modules by topic."""
    from pyrobdl.metrics import classification, distance, ood, regression, selective

    expected = {
        "CalibrationCurve", "ReliabilityCurve", "RejectionCurve", "ClassThresholds",
        "rmse", "mae", "nll", "crps", "crps_ensemble", "interval_coverage", "mean_interval_width",
        "calibration_curve", "miscalibration_area", "sharpness",
        "accuracy", "brier_score", "expected_calibration_error", "maximum_calibration_error", "reliability_curve",
        "predictive_std", "predictive_entropy", "expected_entropy", "mutual_information", "max_probability",
        "uncertainty_score", "ood_auroc", "ood_aupr", "fpr_at_95_tpr",
        "accuracy_rejection_curve", "aurc", "fit_class_thresholds", "class_threshold_rejection",
        "gaussian_w2", "gaussian_kl", "total_variation", "agreement",
    }
    assert set(M.__all__) == expected and len(M.__all__) == len(expected)
    topics = {mod.__name__ for mod in (regression, classification, ood, selective, distance)}
    for name in expected:
        assert getattr(M, name).__module__ in topics, name  # defined in a topic module
    assert M.PROB_ATOL == 1e-4

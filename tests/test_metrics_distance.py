"""Distances between predictives (pyrobdl.metrics.distance): closed forms, naive
implementations, the moment matching of mixtures, and bad input."""
import math

import numpy as np
import pytest
import torch

import pyrobdl.metrics as M
from pyrobdl.prediction import ClassificationPrediction, RegressionPrediction


def test_gaussian_w2_against_the_quantile_integral():
    # W2 between 1-D distributions = L2 distance of their quantile functions; for Gaussians that is
    # sqrt((m1 - m2)^2 + (s1 - s2)^2). Check the closed form with a quadrature of the quantiles.
    from scipy import stats

    m1, s1, m2, s2 = 0.3, 1.7, -1.1, 0.6
    u = (np.arange(200_000) + 0.5) / 200_000
    q = stats.norm.ppf(u, m1, s1) - stats.norm.ppf(u, m2, s2)
    numeric = math.sqrt(np.mean(q**2))
    assert M.gaussian_w2(([m1], [s1]), ([m2], [s2])) == pytest.approx(numeric, rel=1e-4)


def test_gaussian_w2_and_kl_use_the_mixture_moments():
    # two equal-weight samples N(-1, 1) and N(1, 1): mean 0, total variance 1 + 1 = 2
    mix = RegressionPrediction(torch.tensor([[-1.0], [1.0]]), torch.ones(2, 1))
    ref = RegressionPrediction(torch.zeros(1, 1), torch.ones(1, 1))
    assert M.gaussian_w2(mix, ref) == pytest.approx(math.sqrt(2) - 1, rel=1e-6)
    # KL(N(0, 1) || N(0, 2)) = log sqrt 2 + 1 / 4 - 1 / 2
    assert M.gaussian_kl(mix, ref) == pytest.approx(0.5 * math.log(2) - 0.25, rel=1e-6)
    assert M.gaussian_w2(ref, ref) == 0.0 and M.gaussian_kl(mix, mix) == pytest.approx(0.0, abs=1e-12)


def test_gaussian_kl_matches_torch_distributions_and_is_a_mean_over_points():
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=50), rng.normal(size=50)
    s1, s2 = rng.uniform(0.2, 2, 50), rng.uniform(0.2, 2, 50)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(torch.tensor(m2), torch.tensor(s2)),
        torch.distributions.Normal(torch.tensor(m1), torch.tensor(s1)),
    ).mean()
    assert M.gaussian_kl((m1, s1), (m2, s2)) == pytest.approx(float(expected), rel=1e-12)
    naive = np.mean([math.sqrt((a - b) ** 2 + (c - d) ** 2) for a, b, c, d in zip(m1, m2, s1, s2)])
    assert M.gaussian_w2((m1, s1), (m2, s2)) == pytest.approx(naive, rel=1e-12)


def test_multi_output_distances_sum_over_outputs_per_point():
    a = RegressionPrediction(torch.zeros(1, 3, 2), torch.ones(1, 3, 2))
    b = RegressionPrediction(torch.tensor([[[3.0, 4.0]] * 3]), torch.ones(1, 3, 2))
    assert M.gaussian_w2(a, b) == pytest.approx(5.0)  # sqrt(3^2 + 4^2) at every point
    assert M.gaussian_kl(a, b) == pytest.approx((9 + 16) / 2)


def test_total_variation_and_agreement():
    p = [[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4]]
    q = [[0.5, 0.5, 0.0], [0.2, 0.5, 0.3], [0.6, 0.2, 0.2]]
    # per point 0.4, 0, 0.3 -> mean 7/30; top classes (0, 1, 2) vs (0 tie -> 0, 1, 0)
    assert M.total_variation(p, q) == pytest.approx(7 / 30)
    assert M.agreement(p, q) == pytest.approx(2 / 3)
    pred = ClassificationPrediction(torch.tensor([[[0.8, 0.2]], [[0.2, 0.8]]]))  # mean (0.5, 0.5)
    assert M.total_variation(pred, [[0.5, 0.5]]) == pytest.approx(0.0, abs=1e-7)
    assert 0.0 <= M.total_variation(p, q) <= 1.0


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: M.gaussian_w2(([0.0, 1.0], [1.0, 1.0]), ([0.0], [1.0])), ValueError, "same inputs"),
        (lambda: M.gaussian_kl(([0.0], [0.0]), ([0.0], [1.0])), ValueError, "std > 0"),
        (lambda: M.gaussian_w2(([0.0], [-1.0]), ([0.0], [1.0])), ValueError, ">= 0"),
        (lambda: M.gaussian_w2([0.0], ([0.0], [1.0])), TypeError, r"\(mean, std\) pair"),
        (lambda: M.gaussian_w2(ClassificationPrediction(torch.full((1, 2, 2), 0.5)), ([0.0], [1.0])),
         TypeError, "regression distance"),
        (lambda: M.total_variation([[0.5, 0.5]], [[0.2, 0.3, 0.5]]), ValueError, "same classes"),
        (lambda: M.agreement([[1.5, -0.5]], [[0.5, 0.5]]), ValueError, "probabilities"),
        (lambda: M.agreement(RegressionPrediction(torch.zeros(1, 2), torch.ones(1, 2)), [[0.5, 0.5]]),
         TypeError, "classification distance"),
        (lambda: M.gaussian_w2(([float("nan")], [1.0]), ([0.0], [1.0])), ValueError, "NaN"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_compare_reference_distances_are_in_the_targets_units():
    from pyrobdl import datasets
    from pyrobdl.compare import reference_distances

    ds = datasets.load("boston")
    n = ds.n_test
    approx = RegressionPrediction(torch.zeros(1, n), torch.ones(1, n))
    ref = RegressionPrediction(torch.ones(1, n), torch.ones(1, n))  # one normalised unit apart in mean
    d = reference_distances(approx, ref, ds)
    assert d["ref_w2"] == pytest.approx(float(ds.y_std), rel=1e-6)  # W2 in the target's original units
    assert d["ref_kl"] == pytest.approx(0.5, rel=1e-6)  # KL is unit-free
    probs = ClassificationPrediction(torch.tensor([[[0.7, 0.3], [0.1, 0.9]]]))
    other = ClassificationPrediction(torch.tensor([[[0.4, 0.6], [0.1, 0.9]]]))
    d = reference_distances(probs, other, ds)
    assert d == {"ref_tv": pytest.approx(0.15), "ref_agreement": 0.5}

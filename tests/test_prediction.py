"""Prediction objects against closed forms and naive computations."""
import math

import torch

from pyrobdl.prediction import ClassificationPrediction, RegressionPrediction


def test_mixture_moments_and_log_prob():
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(7, 5, generator=g, dtype=torch.float64)
    scale = torch.rand(7, 5, generator=g, dtype=torch.float64) + 0.2
    p = RegressionPrediction(loc, scale)
    mu = loc.mean(0)
    assert torch.allclose(p.mean, mu)
    assert torch.allclose(p.variance, (scale**2 + loc**2).mean(0) - mu**2)  # sigma*^2 of the mixture
    assert torch.allclose(p.aleatoric_variance, (scale**2).mean(0))
    assert torch.allclose(p.epistemic_variance, ((loc - mu) ** 2).mean(0))
    y = torch.randn(5, generator=g, dtype=torch.float64)
    naive = torch.log(torch.stack([
        torch.exp(torch.distributions.Normal(loc[s], scale[s]).log_prob(y)) for s in range(7)]).mean(0))
    assert torch.allclose(p.log_prob(y), naive)
    # quantiles invert the mixture CDF; the central interval holds the stated mass
    for q in (0.05, 0.5, 0.93):
        assert torch.allclose(p.cdf(p.quantile(q)), torch.full((5,), q, dtype=torch.float64), atol=1e-9)
    lo, hi = p.interval(0.8)
    assert torch.allclose(p.cdf(hi) - p.cdf(lo), torch.full((5,), 0.8, dtype=torch.float64), atol=1e-9)


def test_log_prob_is_stable_far_in_the_tails():
    p = RegressionPrediction(torch.zeros(3, 2), torch.full((3, 2), 0.01))
    lp = p.log_prob(torch.tensor([5.0, -5.0]))
    assert torch.isfinite(lp).all() and lp.max() < -1e4  # logsumexp, not log(mean(exp))


def test_samples_are_independent_across_points():
    loc = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    p = RegressionPrediction(loc, torch.full_like(loc, 1e-3))
    draws = p.sample(4000, generator=torch.Generator().manual_seed(0))
    same = (draws[:, 0] > 5) == (draws[:, 1] > 5)
    # independent component choice per point: P(same) = 1/2; sd of the rate with 4000 draws ~0.008
    assert abs(float(same.float().mean()) - 0.5) < 0.04


def test_classification_decomposition():
    probs = torch.tensor([[[0.9, 0.1], [0.5, 0.5]], [[0.1, 0.9], [0.5, 0.5]]])  # S=2, N=2
    p = ClassificationPrediction(probs)
    assert torch.allclose(p.probs, torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    h = lambda q: -(q * q.log()).sum(-1)
    assert torch.allclose(p.predictive_entropy, torch.full((2,), math.log(2)))
    assert torch.allclose(p.expected_entropy, torch.stack([h(torch.tensor([0.9, 0.1])), torch.tensor(math.log(2))]))
    # disagreeing confident members -> epistemic; agreeing uncertain members -> aleatoric only
    assert p.mutual_information[0] > 0.3 and abs(float(p.mutual_information[1])) < 1e-6
    assert torch.allclose(p.log_prob(torch.tensor([0, 1])), torch.log(torch.tensor([0.5, 0.5])))

"""Continual learning: the posterior of task 1 as the prior of task 2 recovers the posterior on
both tasks (exact for a conjugate model whose posterior is diagonal, so mean-field is exact too)."""
import warnings

import pytest
import torch
import torch.nn as nn

import pyrobdl
from pyrobdl import BayesianNetwork, likelihoods, priors
from pyrobdl.inference import next_task_model, posterior_as_prior

SIGMA = 0.5


def _task(seed, w):
    """Rows of a 2-level full factorial design (+-1 in both features, each combination equally
    often): X^T X is diagonal, so the exact posterior of a no-bias linear model is diagonal."""
    g = torch.Generator().manual_seed(seed)
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]).repeat(10, 1)
    return x, x @ w + SIGMA * torch.randn(40, generator=g)


def _exact(x, y):
    """N(0, I) prior, noise SIGMA: precision I + X^T X / s^2, mean = cov X^T y / s^2."""
    prec = torch.eye(2) + x.T @ x / SIGMA**2
    cov = torch.linalg.inv(prec)
    return cov @ x.T @ y / SIGMA**2, cov.diagonal().sqrt()


def test_two_tasks_recover_the_posterior_on_both():
    w = torch.tensor([1.0, -0.5])
    x1, y1 = _task(0, w)
    x2, y2 = _task(1, w + torch.tensor([0.3, 0.2]))  # a shifted second task
    model = BayesianNetwork(nn.Linear(2, 1, bias=False), prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian(scale=SIGMA))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post1 = pyrobdl.fit(model, x1, y1, method="mean-field", num_steps=3000, lr=2e-2, progress=False, seed=0)
        nxt = next_task_model(post1)
        post2 = pyrobdl.fit(nxt, x2, y2, method="mean-field", num_steps=3000, lr=2e-2, progress=False)
    m1, s1 = _exact(x1, y1)
    prior = posterior_as_prior(post1)
    # task 1's posterior became the prior, and the weights start at its mean
    torch.testing.assert_close(prior.loc["weight"][0], m1, atol=0.01, rtol=0)
    torch.testing.assert_close(prior.scale["weight"][0], s1, atol=0.005, rtol=0.05)
    torch.testing.assert_close(nxt.net.weight.detach()[0], prior.loc["weight"][0])
    # after task 2: the exact posterior given both tasks (Bayes' rule task by task)
    m12, s12 = _exact(torch.cat([x1, x2]), torch.cat([y1, y2]))
    mean2, std2 = posterior_as_prior(post2).loc["weight"][0], posterior_as_prior(post2).scale["weight"][0]
    # tolerances: optimisation error of 3000 Adam steps (the exact stds are ~0.055)
    torch.testing.assert_close(mean2, m12, atol=0.01, rtol=0)
    torch.testing.assert_close(std2, s12, atol=0.004, rtol=0.05)
    # and it differs from what task 2 alone gives under the original prior
    m2_alone, _ = _exact(x2, y2)
    assert float((m2_alone - m12).abs().max()) > 0.02


def test_posterior_as_prior_from_an_ensemble_uses_its_members_and_errors():
    x, y = _task(0, torch.tensor([1.0, -0.5]))
    model = BayesianNetwork(nn.Linear(2, 1), likelihood=likelihoods.Gaussian(scale=SIGMA))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ens = pyrobdl.fit(model, x, y, method="ensemble", size=4, epochs=20, progress=False, seed=0)
        prior = posterior_as_prior(ens)
    torch.testing.assert_close(prior.loc["weight"], ens.params["weight"].detach().mean(0))
    torch.testing.assert_close(prior.scale["weight"], ens.params["weight"].detach().std(0).clamp_min(1e-4))
    with pytest.raises(TypeError, match="fitted pyrobdl posterior"):
        posterior_as_prior(model)

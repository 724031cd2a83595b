"""Examples people port from other Bayesian-deep-learning libraries, each small and fast and
each asserting a number (RMSE, accuracy, coverage, growth of the epistemic spread away from the
data), not only that it runs.

1. TyXe's 1-D regression example (two clusters of inputs, a 1->50->1 net, mean-field).
2. A small CNN on the bundled 8x8 digits (MC dropout, Categorical likelihood).
3. A Bayesian last layer on a feature extractor (mean-field, then NUTS on the head).
4. Kendall & Gal's heteroscedastic regression (``HeteroscedasticGaussian``).
5. Binary classification with a deep ensemble (Bernoulli); multi-output regression (mean-field).
6. blitz's Boston regression (the bundled UCI Boston split 0, a 13->50->1 net, mean-field).

Every threshold was set from a measured value (written beside it) with a margin. The measured
values are from this file's own runs, on one thread, on a shared 2-core VM.

Fits pass fewer ``num_steps`` than the library's defaults (5,000 for mean-field and MC dropout)
where the defaults would take 15-30 s per fit here; each such place says so. The deep ensemble
runs with its defaults (5 members, 40 epochs, batches of 32).
"""
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

import pyrobdl
from pyrobdl import BayesianNetwork, datasets, likelihoods


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These nets are tiny, so each training step is bound by per-op overhead, not arithmetic.
    # With 2 threads on a 2-core machine that something else also uses, a step was 10-20x
    # slower than with 1 thread (measured: mean-field on a 1->50->1 net, 100 points: 20-25
    # steps/s with 2 threads against 260-300 with 1, while another process held a core).
    # One thread keeps this file's run time predictable; the setting is restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rmse(a, b):
    return float((a - b).pow(2).mean().sqrt())


def _ranks(v):
    return v.argsort().argsort().to(torch.get_default_dtype())


def _spearman(a, b):
    return float(torch.corrcoef(torch.stack([_ranks(a), _ranks(b)]))[0, 1])


# --------------------------------------------------------------------------- 1. TyXe regression
def test_tyxe_regression_mean_field():
    # TyXe's README example: x in two clusters, U[-1, -0.7] and U[0.5, 1], y = cos(4x + 0.8)
    # plus noise of std 0.1, a 1->50->1 net, mean-field VI.
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(50, 1, generator=g) * 0.3 - 1, torch.rand(50, 1, generator=g) * 0.5 + 0.5])

    def f(t):
        return torch.cos(4 * t + 0.8)

    y = f(x[:, 0]) + 0.1 * torch.randn(100, generator=g)

    torch.manual_seed(0)
    # ReLU, not TyXe's tanh: a tanh net saturates outside the data, and its mean-field epistemic
    # std there was only 1.1-1.2x that at the data (measured, 1,000-3,000 steps); a ReLU net's
    # grows linearly with the distance, which is what this test checks.
    net = nn.Sequential(nn.Linear(1, 50), nn.ReLU(), nn.Linear(50, 1))
    # 1,000 steps instead of the default 5,000: the default takes about 15 s here, and the
    # RMSE at 3,000 steps (0.049) was no better than at 1,000 (0.046).
    post = pyrobdl.fit(BayesianNetwork(net), x, y, method="mean-field", seed=0, num_steps=1000, progress=False)

    at_data = post.predict(x, num_samples=300)
    outside = post.predict(torch.cat([torch.linspace(-2, -1.5, 25), torch.linspace(1.5, 2, 25)]).unsqueeze(-1), num_samples=300)

    rmse = _rmse(at_data.mean, f(x[:, 0]))
    assert rmse < 0.1, rmse  # measured 0.046 (the noise std is 0.1)

    ratio = float(outside.epistemic_std.mean() / at_data.epistemic_std.mean())
    assert ratio > 2.0, ratio  # measured 3.5
    # The gap between the clusters, x in [-0.6, 0.4], is not asserted: with mean-field and one
    # hidden layer its epistemic std stays at or below the one at the data (measured 0.041 against
    # 0.059 with ReLU; 1.2-1.4x with tanh), the known "in-between uncertainty" failure of
    # factorised Gaussian posteriors (Foong et al., 2019), not something pyrobdl can fix.


# --------------------------------------------------------------------------- 2. CNN on digits
@pytest.mark.slow  # 7.5 s on a quiet machine, 12 s under load
def test_digits_cnn_mc_dropout():
    ds = datasets.load("digits")  # stratified 80/20 split from seed 0: 1,438 train, 359 test images
    x_train = ds.x_train.reshape(-1, 1, 8, 8)
    x_test = ds.x_test.reshape(-1, 1, 8, 8)

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)
    )
    model = BayesianNetwork(net, likelihood=likelihoods.Categorical())
    # 100 full-batch steps instead of the default 5,000: with the default weight_decay="auto"
    # a fit trains three networks, and 500 steps of the conv net alone took 17 s here.
    post = pyrobdl.fit(model, x_train, ds.y_train, method="mc-dropout", seed=0, num_steps=100, progress=False)

    pred = post.predict(x_test, num_samples=100)
    acc = float((pred.predicted == ds.y_test).float().mean())
    assert acc > 0.9, acc  # measured 0.958

    g = torch.Generator().manual_seed(1)
    noise = torch.rand(200, 1, 8, 8, generator=g)  # uniform pixel noise, same [0, 1] range
    on_noise = post.predict(noise, num_samples=100)
    h_test = float(pred.predictive_entropy.mean())
    h_noise = float(on_noise.predictive_entropy.mean())
    assert h_noise > 2.0 * h_test, (h_noise, h_test)  # measured 1.07 against 0.35 nats (3.0x)


# --------------------------------------------------------------------------- 3. Bayesian last layer
def _bll_data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 1, generator=g) * 4 - 2
    y = torch.sin(2 * x[:, 0]) + 0.5 * x[:, 0] + 0.1 * torch.randn(200, generator=g)
    return x, y


def _bll_truth(x):
    return torch.sin(2 * x[:, 0]) + 0.5 * x[:, 0]


def _bll_net():
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(nn.Linear(1, 50), nn.Tanh(), nn.Linear(50, 10), nn.Tanh()),
            head=nn.Linear(10, 1),
        )
    )


@pytest.fixture(scope="module")
def bll_mean_field():
    x, y = _bll_data()
    net = _bll_net()
    init = {k: v.detach().clone() for k, v in net.state_dict().items()}
    model = BayesianNetwork(net, bayesian="last")
    # 1,000 steps instead of the default 5,000 (about 15 s here); the RMSE is already 0.046
    post = pyrobdl.fit(model, x, y, method="mean-field", seed=0, num_steps=1000, progress=False)
    return model, post, init, x, y


def test_bayesian_last_layer_mean_field(bll_mean_field):
    model, post, init, x, y = bll_mean_field
    # only the head is latent (plus the likelihood's learned noise); a glob on the head selects the same
    assert model.site_names == ["head.weight", "head.bias", "sigma"]
    assert BayesianNetwork(_bll_net(), bayesian="head.*").site_names == model.site_names
    assert set(post.model.site_names) == set(model.site_names)
    assert set(post.model.deterministic_parameters) == {
        "features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias",
    }
    # the deterministic feature extractor was trained jointly with the head's posterior
    trained = post.model.net.state_dict()
    moved = max(float((trained[k] - init[k]).abs().max()) for k in init if k.startswith("features."))
    assert moved > 0.05, moved  # measured 0.71

    pred = post.predict(x, num_samples=300)
    rmse = _rmse(pred.mean, _bll_truth(x))
    assert rmse < 0.1, rmse  # measured 0.046 (noise std 0.1)


@pytest.mark.slow  # 4.6 s on a quiet machine, 10.7 s under load
@pytest.mark.filterwarnings("ignore:bulk ESS")
@pytest.mark.filterwarnings("ignore:NUTS hit max_tree_depth")
def test_bayesian_last_layer_nuts_matches_mean_field(bll_mean_field):
    _, mf, _, x, y = bll_mean_field
    # NUTS samples only the Bayesian head and keeps the deterministic extractor at its values,
    # so the extractor is the one mean-field trained (posterior.model.net)
    model = BayesianNetwork(mf.model.net, bayesian="last")
    assert model.site_names == ["head.weight", "head.bias", "sigma"]
    # tiny on purpose (the defaults are 2 chains of 500 + 500 draws, max_tree_depth=8: minutes):
    # one chain of 50 + 50, and max_tree_depth=5, because the head's 10 collinear tanh features
    # make every trajectory hit the depth limit (depth 8: 34 s; depth 5: 7 s, same predictive mean)
    nuts = pyrobdl.fit(
        model, x, y, method="nuts", seed=0, num_samples=50, warmup_steps=50, num_chains=1,
        max_tree_depth=5, progress=False,
    )
    m_nuts = nuts.predict(x).mean
    m_mf = mf.predict(x, num_samples=300).mean
    diff = (m_nuts - m_mf).abs()
    # The head's posterior given fixed features is close to Gaussian, so the two predictive
    # means agree to well within the noise std (0.1):
    assert float(diff.max()) < 0.1, float(diff.max())  # measured 0.037
    assert float(diff.pow(2).mean().sqrt()) < 0.05  # measured 0.015
    assert _rmse(m_nuts, _bll_truth(x)) < 0.1  # measured 0.044


# --------------------------------------------------------------------------- 4. Kendall & Gal
def test_heteroscedastic_regression_kendall_gal():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 1, generator=g) * 2 - 1

    def noise_std(t):
        return 0.05 + 0.5 * t.abs()  # 0.05 at x = 0, 0.55 at |x| = 1

    y = torch.sin(3 * x[:, 0]) + noise_std(x[:, 0]) * torch.randn(400, generator=g)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 50), nn.ReLU(), nn.Linear(50, 2))  # [mean, log-variance]
    model = BayesianNetwork(net, likelihood=likelihoods.HeteroscedasticGaussian())
    # 1,000 steps instead of the default 5,000 (about 25 s here for 400 points); 2,000 steps
    # changed the numbers below by less than 10%
    post = pyrobdl.fit(model, x, y, method="mean-field", seed=0, num_steps=1000, progress=False)

    xs = torch.linspace(-1, 1, 201).unsqueeze(-1)
    pred = post.predict(xs, num_samples=200)
    rho = _spearman(pred.aleatoric_std, noise_std(xs[:, 0]))
    assert rho > 0.8, rho  # measured 0.988
    centre = float(pred.aleatoric_std[xs[:, 0].abs() < 0.2].mean())
    edges = float(pred.aleatoric_std[xs[:, 0].abs() > 0.8].mean())
    assert edges > 2.0 * centre, (edges, centre)  # measured 0.66 against 0.20 (3.4x; true 5.1x)
    assert _rmse(pred.mean, torch.sin(3 * xs[:, 0])) < 0.2  # measured 0.093

    outside = post.predict(torch.cat([torch.linspace(-3, -2, 50), torch.linspace(2, 3, 50)]).unsqueeze(-1), num_samples=200)
    ratio = float(outside.epistemic_std.mean() / pred.epistemic_std.mean())
    assert ratio > 3.0, ratio  # measured 7.4 (1.01 outside against 0.137 on [-1, 1])


# --------------------------------------------------------------------------- 5. binary / multi-output
def _two_moons(n, g):
    t = torch.rand(n, generator=g) * math.pi
    label = torch.randint(0, 2, (n,), generator=g)
    upper = torch.stack([torch.cos(t), torch.sin(t)], -1)
    lower = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], -1)
    x = torch.where(label[:, None] == 1, lower, upper)
    return x + 0.1 * torch.randn(n, 2, generator=g), label


def test_two_moons_bernoulli_ensemble():
    g = torch.Generator().manual_seed(0)
    x, y = _two_moons(400, g)
    x_test, y_test = _two_moons(400, g)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 50), nn.ReLU(), nn.Linear(50, 1))  # one logit
    # the ensemble's defaults (5 members, 40 epochs, batches of 32): about 3 s
    post = pyrobdl.fit(BayesianNetwork(net, likelihood=likelihoods.Bernoulli()), x, y, method="ensemble", seed=0, progress=False)
    pred = post.predict(x_test)

    assert pred.probs.shape == (400, 2)
    assert pred.probs_samples.shape == (5, 400, 2)  # one [p(y=0), p(y=1)] per member
    assert bool(((pred.probs_samples >= 0) & (pred.probs_samples <= 1)).all())
    assert torch.allclose(pred.probs.sum(-1), torch.ones(400), atol=1e-5)
    acc = float((pred.predicted == y_test).float().mean())
    assert acc > 0.95, acc  # measured 0.9975


def test_multi_output_regression_mean_field():
    g = torch.Generator().manual_seed(1)

    def f(t):
        return torch.stack([torch.sin(t[:, 0]) + 0.5 * t[:, 1], t[:, 0] * t[:, 1] / 2], -1)

    x = torch.rand(300, 2, generator=g) * 4 - 2
    y = f(x) + 0.1 * torch.randn(300, 2, generator=g)  # targets (N, 2)
    x_test = torch.rand(300, 2, generator=g) * 4 - 2

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 50), nn.ReLU(), nn.Linear(50, 2))
    # 1,000 steps instead of the default 5,000 (about 20 s here)
    post = pyrobdl.fit(BayesianNetwork(net), x, y, method="mean-field", seed=0, num_steps=1000, progress=False)
    pred = post.predict(x_test, num_samples=200)

    assert pred.mean.shape == (300, 2)
    assert pred.epistemic_std.shape == pred.aleatoric_std.shape == (300, 2)
    rmse = (pred.mean - f(x_test)).pow(2).mean(0).sqrt()
    # measured 0.031 and 0.044 (the targets' std: 0.91 and 0.60; the noise std 0.1)
    assert float(rmse[0]) < 0.1, rmse
    assert float(rmse[1]) < 0.1, rmse


# --------------------------------------------------------------------------- 6. blitz's Boston
def test_boston_mean_field_blitz():
    ds = datasets.load("boston", split=0)  # standard split 0: 455 train, 51 test rows, standardised
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(13, 50), nn.ReLU(), nn.Linear(50, 1))
    # 1,000 steps instead of the default 5,000 (30 s here): test RMSE 2.25 at 1,000 steps,
    # 2.12 at 2,000 and 2.16 at 5,000, so the shorter run loses little
    post = pyrobdl.fit(BayesianNetwork(net), ds.x_train, ds.y_train, method="mean-field", seed=0, num_steps=1000, progress=False)
    pred = post.predict(ds.x_test, num_samples=500)

    rmse = _rmse(ds.unnormalize_mean(pred.mean), ds.y_test_original)
    assert rmse < 2.93, rmse  # measured 2.254 (threshold: measured x 1.3), in thousands of dollars

    covered = pred.covers(ds.y_test, 0.9)
    coverage = float(covered.float().mean())
    # measured 50/51 = 0.980 (splits 0-4: 0.98, 0.98, 0.98, 0.96, 0.92; training rows: 0.97):
    # Boston's residuals are heavy-tailed, so a Gaussian whose std matches them covers more
    # than 90%. With 51 test rows coverage moves in steps of 1/51, so the upper bound is
    # 50/51 (at least one row outside), not 0.98, which 50/51 exceeds by 0.0004.
    assert 0.8 <= coverage <= 50 / 51 + 1e-6, coverage

"""The defaults are the product: ``pyrobdl.fit(model, x, y, method=m)`` with no options gives
a real fit and honest uncertainty, nothing collapses silently, and ``seed`` means the same
thing for every method."""
import warnings

import pytest
import torch
import torch.nn as nn

import pyrobdl
from pyrobdl import BayesianNetwork, datasets, likelihoods, priors
from pyrobdl.inference import get_method


def _deep_relu(width=100):
    return nn.Sequential(nn.Linear(1, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))


def _noisy_sine(n=300, noise=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 6 - 3
    return x, 2 * torch.sin(x[:, 0]) + noise * torch.randn(n, generator=g)


@pytest.mark.slow
def test_mc_dropout_defaults_do_not_collapse_on_the_toy():
    """The shipped 1-D toy with a 1->100->100->1 ReLU net and the library's default prior:
    MC dropout with no options used to return a constant predictor (epistemic std exactly 0,
    the weight decay of the tight default prior erased the weights). Its noise std is
    0.3..0.6 and the target's std 2.5, so an in-range RMSE below 0.8 means a real fit."""
    ds = datasets.toy_regression(n_train=300)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no collapse warning either
        post = pyrobdl.fit(BayesianNetwork(_deep_relu()), ds.x_train, ds.y_train, method="mc-dropout", progress=False, seed=0)
    inr = ds.in_train_range(ds.x_test)
    pred = post.predict(ds.x_test, num_samples=100)
    rmse = float((pred.mean - ds.y_test.reshape(-1))[inr].pow(2).mean().sqrt())
    assert rmse < 0.8
    assert float(pred.epistemic_std[inr].mean()) > 0.05
    # wider outside the training range than inside
    assert float(pred.epistemic_std[~inr].mean()) > float(pred.epistemic_std[inr].mean())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mean-field", "mc-dropout"])
def test_learned_noise_reaches_the_residual_scale_at_a_small_lr(method):
    """True noise 1.0; at ``lr=1e-3`` the learned noise used to stay near its start (mean-field:
    0.32 after 5000 steps, 95% coverage on the training data 0.55). With the noise at its own
    learning rate it reaches the residual scale: within 25% of 1.0 (the residual std of a
    300-point fit scatters by about 1/sqrt(2*300) = 4%), and 95% training coverage >= 0.9."""
    x, y = _noisy_sine()
    net = nn.Sequential(nn.Linear(1, 50), nn.ReLU(), nn.Linear(50, 1))
    post = pyrobdl.fit(BayesianNetwork(net), x, y, method=method, lr=1e-3, progress=False, seed=0)
    pred = post.predict(x, num_samples=50)
    noise = float(pred.aleatoric_std.mean())
    assert 0.75 < noise < 1.25
    coverage = float(((y - pred.mean).abs() < 1.96 * pred.std).float().mean())
    assert coverage >= 0.9


def test_zero_epistemic_spread_warns():
    """A weight decay that drives every weight to zero leaves no spread: the fit warns and says
    what to change."""
    x, y = _noisy_sine(n=100)
    net = nn.Sequential(nn.Linear(1, 20), nn.ReLU(), nn.Linear(20, 1))
    with pytest.warns(UserWarning, match="no epistemic spread.*weight_decay"):
        post = pyrobdl.fit(BayesianNetwork(net), x, y, method="mc-dropout", weight_decay=50.0, num_steps=400, lr_decay=1.0,
                          progress=False, seed=0)
    assert post.fit_info["checks"]["epistemic_spread"] == 0.0


def test_noise_far_below_the_residuals_warns():
    """Far too few steps at a tiny learning rate: the noise stays at its start (a tenth of the
    targets' std) while the residuals are of the targets' size."""
    x, y = _noisy_sine(n=100)
    net = nn.Sequential(nn.Linear(1, 20), nn.ReLU(), nn.Linear(20, 1))
    with pytest.warns(UserWarning, match="learned noise .* far below the training residual"):
        post = pyrobdl.fit(BayesianNetwork(net), x, y, method="mean-field", num_steps=20, lr=1e-4, progress=False, seed=0)
    checks = post.fit_info["checks"]
    assert checks["noise_std"] < checks["residual_std"] / 3


def test_a_good_fit_does_not_warn():
    x, y = _noisy_sine(n=200, noise=0.3)
    net = nn.Sequential(nn.Linear(1, 20), nn.Tanh(), nn.Linear(20, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        pyrobdl.fit(BayesianNetwork(net), x, y, method="mean-field", num_steps=1500, progress=False, seed=0)


def test_check_fit_leaves_the_random_state_alone():
    from pyrobdl.inference.base import Data, check_fit

    x, y = _noisy_sine(n=50)
    net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
    model = BayesianNetwork(net, prior=priors.Normal(), likelihood=likelihoods.Gaussian(scale=0.5))
    post = pyrobdl.fit(model, x, y, method="mean-field", num_steps=5, progress=False, seed=3)
    state = torch.get_rng_state()
    checks = check_fit(post, Data(post.model, x, y))
    assert torch.equal(state, torch.get_rng_state())
    assert checks["epistemic_spread"] > 0


FAST = {
    "mean-field": dict(num_steps=30),
    "low-rank": dict(num_steps=30),
    "full-rank": dict(num_steps=30),
    "mc-dropout": dict(num_steps=30),
    "mc-dropconnect": dict(num_steps=30),
    "ensemble": dict(size=2, epochs=2),
    "nuts": dict(num_samples=5, warmup_steps=5, num_chains=1, max_tree_depth=3),
    "hmc": dict(num_samples=5, warmup_steps=5, num_chains=1, num_steps=3),
}


@pytest.mark.parametrize("method", sorted(FAST))
def test_seed_rule_same_seed_same_result_whenever_the_model_was_built(method):
    """One rule for every method: a seeded fit depends on the seed, the architecture, the data
    and the settings, not on the network's weights as built (they are re-drawn from the seed)."""
    x, y = _noisy_sine(n=40)
    models = []
    for build_seed in (1, 2):
        torch.manual_seed(build_seed)  # two networks with different weights
        models.append(BayesianNetwork(nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 1))))
    assert not torch.equal(models[0].net[0].weight, models[1].net[0].weight)
    preds = []
    for m in models:
        post = pyrobdl.fit(m, x, y, method=method, seed=7, progress=False, **FAST[method])
        torch.manual_seed(0)
        preds.append(post.predict(x, num_samples=4).mean)
    torch.testing.assert_close(preds[0], preds[1])


@pytest.mark.parametrize("method", sorted(FAST))
@pytest.mark.parametrize("seed, error", [("a", TypeError), (1.5, TypeError), (True, TypeError), (-1, ValueError), (2**32, ValueError)])
def test_seed_is_checked_the_same_way_everywhere(method, seed, error):
    with pytest.raises(error, match="seed must be"):
        get_method(method)(seed=seed)


@pytest.mark.parametrize("method", sorted(FAST))
def test_progress_is_checked_the_same_way_everywhere(method):
    with pytest.raises(TypeError, match="progress must be True or False"):
        get_method(method)(progress="yes")

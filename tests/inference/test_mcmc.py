"""HMC / NUTS: correctness against a closed-form posterior, the flat potential
against Pyro's own, reproducibility, the posterior object and bad input."""
import math
import warnings

import numpy as np
import pyro
import pytest
import torch
import torch.nn as nn

import pyrobdl
from pyrobdl import BayesianNetwork, inference, likelihoods, priors
from pyrobdl.diagnostics import rhat_ess
from pyrobdl.inference.mcmc import FlatPotential, HMCPosterior, MCMCPosterior

NOISE = 0.5
FAST = dict(compile=False, progress=False, diagnose=False, chain_method="sequential")


def blr_data(N=40, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, d, generator=g)
    w = torch.tensor([1.0, -2.0, 0.5])[:d]
    y = X @ w + 0.3 + NOISE * torch.randn(N, generator=g)
    return X, y


def blr_model(d=3, prior_scale=1.0):
    return BayesianNetwork(
        nn.Linear(d, 1), prior=priors.Normal(0.0, prior_scale), likelihood=likelihoods.Gaussian(scale=NOISE)
    )


def closed_form(X, y, prior_scale=1.0):
    """Posterior of [w, b] for y = Xw + b + N(0, NOISE^2), w, b ~ N(0, prior_scale^2)."""
    Xa = torch.cat([X, torch.ones(X.shape[0], 1)], 1).double()
    prec = Xa.T @ Xa / NOISE**2 + torch.eye(Xa.shape[1], dtype=torch.float64) / prior_scale**2
    cov = torch.linalg.inv(prec)
    mean = cov @ Xa.T @ y.double() / NOISE**2
    return mean, cov.diagonal().sqrt()


def stacked(post, d=3):
    s = post.samples  # (C, S, ...)
    C, S = s["weight"].shape[:2]
    return torch.cat([s["weight"].reshape(C, S, d), s["bias"].reshape(C, S, 1)], -1).double()


def check_against_closed_form(post, X, y):
    mean, sd = closed_form(X, y)
    draws = stacked(post)
    ess = torch.as_tensor(rhat_ess(draws.numpy())["ess_bulk"])
    est_mean = draws.reshape(-1, draws.shape[-1]).mean(0)
    est_sd = draws.reshape(-1, draws.shape[-1]).std(0)
    # Monte Carlo standard errors from the effective sample size
    assert torch.all((est_mean - mean).abs() < 4 * sd / ess.sqrt()), (est_mean, mean, ess)
    assert torch.all((est_sd - sd).abs() < 4 * sd / (2 * ess).sqrt() + 0.02 * sd), (est_sd, sd, ess)
    return ess


# ----------------------------------------------------------------------------- correctness
@pytest.mark.slow
def test_nuts_recovers_closed_form_posterior():
    X, y = blr_data()
    model = blr_model()
    post = inference.NUTS(num_samples=400, warmup_steps=300, num_chains=2, seed=1, **FAST).fit(model, X, y)
    assert isinstance(post, MCMCPosterior) and post.method == "nuts"
    assert post.samples["weight"].shape == (2, 400, 1, 3)
    ess = check_against_closed_form(post, X, y)
    assert float(ess.min()) > 200  # NUTS on a Gaussian posterior is nearly independent
    assert post.num_divergences == 0
    st = post.sample_stats
    assert set(st) >= {"diverging", "energy", "tree_depth", "n_steps", "step_size", "acceptance_rate", "lp"}
    assert st["tree_depth"].shape == (2, 400)
    assert 0.6 < float(st["acceptance_rate"].mean()) <= 1.0


def test_hmc_recovers_closed_form_posterior():
    X, y = blr_data()
    model = blr_model()
    post = inference.HMC(num_steps=8, num_samples=300, warmup_steps=200, num_chains=1, seed=2, **FAST).fit(model, X, y)
    assert isinstance(post, HMCPosterior) and post.method == "hmc"
    check_against_closed_form(post, X, y)
    assert bool((post.sample_stats["n_steps"] == 8).all())


def test_flat_potential_matches_pyro_potential():
    """Our trace-free potential (with the exp transform's log-Jacobian for sigma)
    equals the one Pyro builds from the model trace, up to a constant."""
    from pyro.infer.mcmc.util import initialize_model

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    model = BayesianNetwork(net, prior=priors.FanInNormal(), likelihood=likelihoods.Gaussian())
    x, y = torch.randn(15, 2), torch.randn(15)
    x, y = model.check_data(x, y)
    pot = FlatPotential(model, x, y)
    _, pyro_pot, transforms, _ = initialize_model(model, (x, y))
    diffs = []
    for z in pot.sample_prior(3):
        cons = pot.unpack(z)
        unc = {k: (transforms[k](v) if k in transforms else v) for k, v in cons.items()}
        diffs.append(float(pot(z)) - float(pyro_pot(unc)))
        u, g = pot.value_and_grad(z)
        zz = z.clone().requires_grad_(True)
        (g_num,) = torch.autograd.grad(pot(zz), zz)
        assert torch.allclose(g, g_num)
    assert max(diffs) - min(diffs) < 1e-3


def test_same_seed_same_draws_and_parallel_equals_sequential():
    X, y = blr_data(N=20)
    kw = dict(num_samples=30, warmup_steps=30, num_chains=2, seed=7, compile=False, progress=False, diagnose=False)
    a = inference.NUTS(chain_method="sequential", **kw).fit(blr_model(), X, y)
    b = inference.NUTS(chain_method="sequential", **kw).fit(blr_model(), X, y)
    for k in a.samples:
        assert torch.equal(a.samples[k], b.samples[k])
    c = inference.NUTS(chain_method="parallel", **kw).fit(blr_model(), X, y)
    assert c.fit_info["chain_method"] == "parallel"
    for k in a.samples:
        assert torch.equal(a.samples[k], c.samples[k])
    d = inference.NUTS(chain_method="sequential", **{**kw, "seed": 8}).fit(blr_model(), X, y)
    assert not torch.equal(a.samples["weight"], d.samples["weight"])
    # pyro.set_rng_seed makes seedless runs reproducible too
    kw.pop("seed")
    pyro.set_rng_seed(3)
    e = inference.NUTS(chain_method="sequential", **kw).fit(blr_model(), X, y)
    pyro.set_rng_seed(3)
    f = inference.NUTS(chain_method="sequential", **kw).fit(blr_model(), X, y)
    assert torch.equal(e.samples["weight"], f.samples["weight"])


# ----------------------------------------------------------------------------- the posterior object
@pytest.fixture(scope="module")
def small_bnn_post():
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 16).unsqueeze(-1)
    y = torch.sin(2 * x).squeeze(-1) + 0.3 * torch.randn(16)
    net = nn.Sequential(nn.Linear(1, 3), nn.Tanh(), nn.Linear(3, 1))
    model = BayesianNetwork(net, prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian())
    post = inference.NUTS(num_samples=40, warmup_steps=40, num_chains=2, max_tree_depth=5, seed=0, **FAST).fit(model, x, y)
    return post, x, y


def test_predict_uses_all_draws_or_thins(small_bnn_post):
    post, x, y = small_bnn_post
    pred = post.predict(x)
    assert pred.num_samples == 2 * 40
    assert pred.mean.shape == (16,)
    assert torch.all(pred.aleatoric_variance > 0) and torch.all(pred.epistemic_variance >= 0)
    sub = post.sample_latents(7)
    full = post.sample_latents()
    idx = torch.linspace(0, 79, 7).round().long()
    assert torch.equal(sub["sigma"], full["sigma"][idx])
    assert post.predict(x, num_samples=7).num_samples == 7
    # more than the 80 draws: every draw twice, the same mixture (one meaning of num_samples)
    with pytest.warns(UserWarning, match="each is used 2 times"):
        twice = post.predict(x, num_samples=160)
    assert twice.num_samples == 160
    torch.testing.assert_close(twice.mean, pred.mean)
    torch.testing.assert_close(twice.variance, pred.variance)


def test_draws_keep_the_chains_and_thin_within_each(small_bnn_post):
    post, x, y = small_bnn_post
    assert type(post).markov_chains and post.training_data[0] is post.x
    d = post.draws()
    assert d.markov_chains and d.num_chains == 2 and d.num_draws == 40
    assert d.values["0.weight"].shape == (2, 40, 3, 1) and d.values["sigma"].shape == (2, 40)
    assert set(d.sample_stats) >= {"diverging", "energy", "tree_depth"}
    assert all(v.shape == (2, 40) for v in d.sample_stats.values())
    thin = post.draws(21)  # 10 per chain, evenly spaced within each chain
    idx = torch.linspace(0, 39, 10).round().long()
    assert thin.num_draws == 10 and thin.values["2.weight"].shape == (2, 10, 1, 3)
    for k, v in post.samples.items():
        assert torch.equal(thin.values[k], v[:, idx])
    for k, v in post.sample_stats.items():
        assert torch.equal(thin.sample_stats[k], v[:, idx])
    assert post.draws(1).num_draws == 1 and post.draws(10_000).num_draws == 40
    assert thin.flat()["sigma"].shape == (20,)


def test_nuts_defaults():
    nuts, hmc = inference.NUTS(), inference.HMC()
    assert (nuts.num_samples, nuts.warmup_steps, nuts.num_chains, nuts.max_tree_depth) == (500, 500, 2, 8)
    assert (hmc.num_samples, hmc.warmup_steps, hmc.num_chains, hmc.num_steps) == (500, 500, 2, 20)
    assert inference.NUTS.max_weights == inference.HMC.max_weights == 2000
    assert not inference.NUTS.variance_head and inference.NUTS.family == "mcmc"


def test_save_load_roundtrip(small_bnn_post, tmp_path):
    post, x, y = small_bnn_post
    path = tmp_path / "nuts.pt"
    post.save(path)
    back = pyrobdl.load(path)
    assert isinstance(back, MCMCPosterior)
    for k in post.samples:
        assert torch.equal(back.samples[k], post.samples[k])
    assert torch.equal(back.sample_stats["diverging"], post.sample_stats["diverging"])
    assert torch.allclose(back.predict(x).mean, post.predict(x).mean)
    assert torch.equal(back.x, post.x)  # small training data are kept for to_arviz
    assert back.fit_info["settings"]["max_tree_depth"] == 5


def test_fit_entry_point_and_registry():
    X, y = blr_data(N=15)
    assert {"nuts", "hmc"} <= set(pyrobdl.available_methods())
    p = pyrobdl.fit(blr_model(), X, y, method="nuts", num_samples=10, warmup_steps=10, num_chains=1, **FAST)
    assert isinstance(p, MCMCPosterior)
    h = pyrobdl.fit(blr_model(), X, y, method="hmc", num_steps=3, num_samples=10, warmup_steps=10, num_chains=1, **FAST)
    assert isinstance(h, HMCPosterior)
    assert not torch.isfinite(h.sample_stats["tree_depth"]).any()


def test_init_map_and_vi():
    X, y = blr_data(N=30)
    model = blr_model()
    mean, _ = closed_form(X, y)
    post = inference.NUTS(num_samples=5, warmup_steps=0, num_chains=2, init="map", init_steps=300, seed=0, **FAST).fit(model, X, y)
    assert post.fit_info["init"] == "map"
    first = stacked(post)[:, 0]
    assert torch.allclose(first, mean.expand_as(first), atol=0.5)
    svi = inference.MeanField(num_steps=50, lr=0.05, progress=False, seed=0).fit(model, X, y)
    post = inference.NUTS(num_samples=5, warmup_steps=5, num_chains=2, init=svi, seed=0, **FAST).fit(model, X, y)
    assert post.fit_info["init"] == "vi"
    vals = {"weight": torch.zeros(1, 3), "bias": torch.zeros(1)}
    post = inference.NUTS(num_samples=3, warmup_steps=0, num_chains=1, init=vals, seed=0, **FAST).fit(model, X, y)
    assert post.fit_info["init"] == "values"


def test_learned_noise_and_classification_run():
    torch.manual_seed(1)
    x = torch.randn(30, 2)
    y = (x[:, 0] > 0).long()
    model = BayesianNetwork(nn.Linear(2, 2), prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Categorical())
    post = inference.NUTS(num_samples=20, warmup_steps=20, num_chains=1, seed=0, **FAST).fit(model, x, y)
    pred = post.predict(x)
    assert pred.probs.shape == (30, 2)
    assert float((pred.predicted == y).float().mean()) > 0.8


# ----------------------------------------------------------------------------- warnings
def test_large_network_warns_pointing_to_vi():
    net = nn.Sequential(nn.Linear(10, 300), nn.Tanh(), nn.Linear(300, 10))  # 6610 weights
    model = BayesianNetwork(net, likelihood=likelihoods.Gaussian(scale=1.0))
    x, y = torch.randn(8, 10), torch.randn(8, 10)
    with pytest.warns(UserWarning, match="MeanField"):
        inference.NUTS(num_samples=1, warmup_steps=0, num_chains=1, max_tree_depth=1, seed=0, **FAST).fit(model, x, y)


@pytest.mark.filterwarnings("ignore:bulk ESS")
def test_divergences_warn_after_sampling():
    X, y = blr_data(N=30)
    with pytest.warns(UserWarning, match="target_accept"):
        post = inference.NUTS(
            num_samples=20, warmup_steps=0, num_chains=1, step_size=5.0, adapt_step_size=False,
            seed=0, compile=False, progress=False, chain_method="sequential",
        ).fit(blr_model(), X, y)
    assert post.num_divergences > 0


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_samples=0), "num_samples"),
        (dict(num_chains=0), "num_chains"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(target_accept=1.5), "target_accept"),
        (dict(max_tree_depth=0), "max_tree_depth"),
        (dict(init="median"), "init"),
        (dict(chain_method="threads"), "chain_method"),
        (dict(step_size=-0.1), "step_size"),
    ],
)
def test_bad_settings_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        inference.NUTS(**kwargs)


def test_bad_hmc_settings():
    with pytest.raises(ValueError, match="num_steps"):
        inference.HMC(num_steps=0)
    with pytest.raises(ValueError, match="not both"):
        inference.HMC(num_steps=5, trajectory_length=1.0)


def test_bad_data_raise_value_error():
    X, y = blr_data(N=20)
    algo = inference.NUTS(num_samples=2, warmup_steps=0, num_chains=1, **FAST)
    with pytest.raises(ValueError, match="rows"):
        algo.fit(blr_model(), X, y[:10])
    with pytest.raises(ValueError, match="output"):
        algo.fit(blr_model(), X, torch.randn(20, 2))  # 2 targets per row, 1 network output
    with pytest.raises(ValueError, match="DataLoader"):
        ds = torch.utils.data.TensorDataset(X, y)
        algo.fit(blr_model(), torch.utils.data.DataLoader(ds, batch_size=5))
    with pytest.raises(ValueError):
        algo.fit(blr_model(), X, None)


def test_predict_before_fit_is_a_clear_error():
    post = MCMCPosterior(blr_model())
    with pytest.raises((RuntimeError, ValueError), match="not been fitted"):
        post.predict(torch.randn(3, 3))
    with pytest.raises((RuntimeError, ValueError), match="not been fitted"):
        post.to_arviz()


# ----------------------------------------------------------------------------- compiled path
@pytest.mark.slow
def test_compiled_leapfrog_matches_eager():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 5), nn.Tanh(), nn.Linear(5, 1))
    model = BayesianNetwork(net, likelihood=likelihoods.Gaussian())
    x, y = model.check_data(torch.randn(20, 1), torch.randn(20))
    eager = FlatPotential(model, x, y, compile=False).leapfrog_fn(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed compilation would warn
        cpot = FlatPotential(model, x, y, compile=True)
        comp = cpot.leapfrog_fn(False)
    assert cpot.compiled
    z = cpot.sample_prior(1)[0]
    r = torch.randn(cpot.dim)
    _, g = cpot.value_and_grad(z)
    args = (z, r, g, torch.tensor(0.01), torch.ones(cpot.dim))
    with pyro.validation_enabled(False):
        for a, b in zip(eager(*args), comp(*args)):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)

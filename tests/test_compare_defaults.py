"""The defaults behind the UCI quality numbers: the learned noise starts small, KL warm-up
ends at the true ELBO, and compare's model and settings are the measured ones."""
import math

import pytest
import torch
from torch import nn

from pyrobdl import BayesianNetwork, compare, datasets, inference, likelihoods, priors


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x[:, :1] - 0.5 * x[:, 1:2] + 0.3 * torch.randn(n, 1, generator=g)
    return x, y.squeeze(-1)


def _model(likelihood=None):
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    return BayesianNetwork(net, prior=priors.FanInNormal(), likelihood=likelihood or likelihoods.Gaussian())


@pytest.mark.parametrize("init", [None, 0.5])
def test_learned_noise_starts_at_its_init(init):
    x, y = _data()
    lik = likelihoods.Gaussian() if init is None else likelihoods.Gaussian(init=init)
    post = inference.MeanField(num_steps=1, lr=1e-9, progress=False, seed=0).fit(_model(lik), x, y)
    sigma = float(post.mean_latents()["sigma"])
    assert sigma == pytest.approx(0.1 if init is None else init, rel=1e-4)


def test_noise_init_round_trips_and_is_checked():
    lik = likelihoods.Gaussian(init=0.2)
    assert lik.latent_init() == {"sigma": 0.2}
    again = likelihoods.get_likelihood(lik.to_config())
    assert again.init == 0.2 and again.to_config() == lik.to_config()
    assert likelihoods.Gaussian(scale=0.3).latent_init() == {}
    with pytest.raises(ValueError):
        likelihoods.Gaussian(init=0.0)


def test_kl_warmup_ends_at_the_true_elbo():
    """The recorded loss is -(ll + beta (lp + ent)); warm-up is capped at half the run, so even
    with kl_warmup > num_steps the last half optimises the true ELBO (beta = 1)."""
    x, y = _data()
    num_steps = 40
    algo = inference.MeanField(num_steps=num_steps, kl_warmup=10_000, progress=False, seed=0)
    terms = []
    orig = algo.elbo_terms

    def recording(*args, **kwargs):
        ll, lp, ent = orig(*args, **kwargs)
        terms.append((float(ll.detach()), float(lp.detach()), float(ent.detach())))
        return ll, lp, ent

    algo.elbo_terms = recording
    post = algo.fit(_model(), x, y)
    losses = post.fit_info["losses"]
    assert len(terms) == len(losses) == num_steps
    for step in range(num_steps // 2, num_steps):
        ll, lp, ent = terms[step]
        assert float(losses[step]) == pytest.approx(-(ll + lp + ent), rel=1e-5, abs=1e-4)
    ll, lp, ent = terms[0]  # annealed at the start: beta = 1 / (num_steps // 2)
    assert float(losses[0]) == pytest.approx(-(ll + (lp + ent) / (num_steps // 2)), rel=1e-5, abs=1e-4)
    assert not math.isclose(float(losses[0]), -(ll + lp + ent), rel_tol=1e-3)


def test_compare_uci_defaults():
    ds = datasets.load("boston")
    model = compare.build_model(ds)
    assert isinstance(model.prior, priors.FanInNormal) and model.prior.gain == 3.0
    assert model.likelihood.latent_init() == {"sigma": 0.1}
    mf = compare.method_options("mean-field")
    assert mf["estimator"] == "local" and 0 < mf["kl_warmup"] <= mf["num_steps"] // 2
    do = compare.method_options("mc-dropout")
    assert do["layers"] == "all" and do["p"] == 0.015 and do["weight_decay"] == "prior"
    assert compare.method_options("ensemble")["lr"] == 2e-2
    nuts = compare.method_options("nuts")
    assert nuts["max_tree_depth"] == 8 and nuts["num_samples"] == nuts["warmup_steps"] == 500


def test_toy_and_quick_profiles_keep_their_settings():
    for kw in ({"toy": True}, {"quick": True}, {"toy": True, "quick": True}):
        mf = compare.method_options("mean-field", **kw)
        assert mf["kl_warmup"] == 0 and mf["estimator"] == "reparam"
    do = compare.method_options("mc-dropout", toy=True)
    assert do["layers"] is None and do["weight_decay"] == "prior"
    toy = compare.build_model(datasets.load("toy-regression"))
    assert isinstance(toy.prior, priors.Normal)


@pytest.mark.parametrize("method", ["mean-field", "low-rank", "mc-dropout", "ensemble"])
def test_heteroscedastic_methods_on_uci_regression(method):
    ds = datasets.load("boston")
    model = compare.build_model(ds, method=method)
    assert isinstance(model.likelihood, likelihoods.HeteroscedasticGaussian)
    assert model.net[-1].out_features == 2
    assert isinstance(model.prior, priors.FanInNormal) and model.prior.gain == 3.0
    toy = compare.build_model(datasets.load("toy-regression"), method=method)
    assert isinstance(toy.likelihood, likelihoods.Gaussian) and toy.net[-1].out_features == 1


@pytest.mark.parametrize("method", ["nuts", "hmc", "full-rank", "mc-dropconnect", None])
def test_other_methods_keep_one_noise(method):
    model = compare.build_model(datasets.load("boston"), method=method)
    assert isinstance(model.likelihood, likelihoods.Gaussian) and model.net[-1].out_features == 1
    digits = compare.build_model(datasets.load("digits"), method="mean-field", hidden=8)
    assert isinstance(digits.likelihood, likelihoods.Categorical)


def test_report_names_the_heteroscedastic_models(tmp_path):
    """A compare run on UCI data records the variance-head model of the heteroscedastic methods
    per split, and report.md lists it beside the shared model."""
    res = compare.compare("boston", methods=["mean-field", "low-rank", "mc-dropout", "ensemble", "mc-dropconnect"], splits=1,
                          quick=True, out=tmp_path, progress=False)
    for m in ("mean-field", "low-rank", "mc-dropout", "ensemble"):
        rec = res["methods"][m]["splits"][0]
        assert rec["status"] == "ok", rec
        assert rec["model"]["likelihood"]["type"] == "HeteroscedasticGaussian"
        assert rec["model"]["network"].endswith("Linear(20, 2)")
    assert "model" not in res["methods"]["mc-dropconnect"]["splits"][0]
    assert res["settings"]["model"]["likelihood"]["type"] == "Gaussian"
    md = (tmp_path / "report.md").read_text()
    line = next(l for l in md.splitlines() if l.startswith("- **other models**"))
    assert "mean-field, low-rank, mc-dropout, ensemble: Linear(13, 20) → ReLU → Linear(20, 2)" in line
    assert "HeteroscedasticGaussian" in line and "mc-dropconnect" not in line

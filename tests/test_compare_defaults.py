"""The defaults behind the UCI quality numbers: the learned noise starts small, KL warm-up
ends at the true ELBO, compare's model and settings are the measured ones, and compare
learns what it needs about a method from the method's class."""
import math

import pytest
import torch
from torch import nn

import pyrobdl
from pyrobdl import BayesianNetwork, compare, datasets, inference, likelihoods, priors
from pyrobdl.compare import profiles
from pyrobdl.compare.profiles import effective_options
from pyrobdl.inference import registry as inference_registry


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x[:, :1] - 0.5 * x[:, 1:2] + 0.3 * torch.randn(n, 1, generator=g)
    return x, y.squeeze(-1)


def _model(likelihood=None):
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    return BayesianNetwork(net, prior=priors.FanInNormal(), likelihood=likelihood or likelihoods.Gaussian())


@pytest.mark.parametrize("init", [None, 0.5])
@pytest.mark.filterwarnings("ignore:the fitted")
def test_learned_noise_starts_at_its_init(init):
    x, y = _data()
    lik = likelihoods.Gaussian() if init is None else likelihoods.Gaussian(init=init)
    post = inference.MeanField(num_steps=1, lr=1e-9, progress=False, seed=0).fit(_model(lik), x, y)
    sigma = float(post.mean_latents()["sigma"])
    # init is a fraction of the targets' standard deviation (units-free start)
    assert sigma == pytest.approx((0.1 if init is None else init) * float(y.std()), rel=1e-4)


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
    """On benchmark data compare adds nothing to the class defaults, and those are the
    measured ones (docs/defaults.rst)."""
    ds = datasets.load("boston")
    model = compare.build_model(ds)
    shared = BayesianNetwork(nn.Sequential(nn.Linear(13, 50), nn.ReLU(), nn.Linear(50, 1)),
                             likelihood=likelihoods.Gaussian())
    assert model.prior.to_config() == shared.prior.to_config()  # the network's own default prior
    assert isinstance(model.prior, priors.FanInNormal) and model.prior.gain == 3.0
    assert model.likelihood.latent_init() == {"sigma": 0.1}
    for name in pyrobdl.available_methods():
        assert compare.method_options(name) == {}
    mf = effective_options("mean-field", {})
    # "auto": local reparameterisation wherever the network allows it; None: warm-up over half the run
    assert mf["estimator"] == "auto" and mf["kl_warmup"] is None
    do = effective_options("mc-dropout", {})
    algo = inference.MCDropout()
    assert (algo.p or algo.default_p) == 0.015 and (algo.layers or algo.default_layers) == "all"
    assert do["weight_decay"] == "auto"
    assert effective_options("ensemble", {})["lr"] == 2e-2
    nuts = effective_options("nuts", {})
    assert nuts["max_tree_depth"] == 8 and nuts["num_samples"] == nuts["warmup_steps"] == 500


def test_measured_choices_are_declared_by_the_method_classes():
    heads = {cls.name for cls in inference.methods() if cls.variance_head}
    assert heads == {"mean-field", "low-rank", "mc-dropout", "ensemble", "sub-ensemble"}
    limits = {cls.name: cls.max_weights for cls in inference.methods() if cls.max_weights is not None}
    assert limits == {"nuts": 2000, "hmc": 2000, "chees-hmc": 2000, "full-rank": 5000}
    assert inference.MCMCPosterior.markov_chains and not inference.SVIPosterior.markov_chains


def test_toy_and_quick_profiles_keep_their_settings():
    for kw in ({"toy": True}, {"quick": True}, {"toy": True, "quick": True}):
        mf = compare.method_options("mean-field", **kw)
        assert mf["kl_warmup"] == 0 and mf["estimator"] == "reparam"
    do = compare.method_options("mc-dropout", toy=True)
    assert do["layers"] is None and do["weight_decay"] == "prior"
    toy = compare.build_model(datasets.load("toy-regression"))
    assert isinstance(toy.prior, priors.Normal) and toy.prior.to_config() == profiles.TOY_PRIOR


@pytest.mark.parametrize("method", [cls.name for cls in inference.methods()] + [None])
def test_variance_head_follows_the_method_class(method):
    ds = datasets.load("boston")
    model = compare.build_model(ds, method=method)
    head = method is not None and inference.get_method(method).variance_head
    if head:
        assert isinstance(model.likelihood, likelihoods.HeteroscedasticGaussian)
        assert model.net[-1].out_features == 2
    else:
        assert isinstance(model.likelihood, likelihoods.Gaussian) and model.net[-1].out_features == 1
    assert model.prior.to_config() == compare.build_model(ds).prior.to_config()
    toy = compare.build_model(datasets.load("toy-regression"), method=method)
    assert isinstance(toy.likelihood, likelihoods.Gaussian) and toy.net[-1].out_features == 1
    digits = compare.build_model(datasets.load("digits"), method=method, hidden=8)
    assert isinstance(digits.likelihood, likelihoods.Categorical)


class _Dummy(inference.Inference):
    """A method that compare knows only by what its class declares."""

    name = "dummy-head"
    max_weights = 10
    variance_head = True

    def fit(self, model, x=None, y=None):  # pragma: no cover - never fitted here
        raise NotImplementedError


@pytest.fixture
def dummy_registered(monkeypatch):
    """Register _Dummy for one test; the registry is restored afterwards."""
    monkeypatch.setattr(inference_registry, "_METHODS", dict(inference_registry._METHODS))
    monkeypatch.setattr(inference_registry, "_ORDER", list(inference_registry._ORDER))
    inference.register_method(_Dummy)
    return _Dummy


def test_compare_reads_max_weights_and_variance_head_from_the_class(dummy_registered):
    boston = datasets.load("boston")
    small = compare.build_model(datasets.load("toy-regression"), hidden=4)
    assert small.num_bayesian_parameters > _Dummy.max_weights
    assert "dummy-head" not in compare.default_methods(small)
    assert "mean-field" in compare.default_methods(small)
    headed = compare.build_model(boston, method="dummy-head")
    assert isinstance(headed.likelihood, likelihoods.HeteroscedasticGaussian)
    assert headed.net[-1].out_features == 2
    # a method no profile names gets its class defaults; its config is still checked
    assert compare.method_options("dummy-head", toy=True, quick=True) == {}
    assert compare.method_options("dummy-head", config={"dummy-head": {"seed": 3}}) == {"seed": 3}
    with pytest.raises(ValueError, match="unknown option.*nmu_steps.*dummy-head"):
        compare.method_options("dummy-head", config={"dummy-head": {"nmu_steps": 3}})


def test_unknown_config_option_is_an_error():
    with pytest.raises(ValueError, match=r"unknown option\(s\) nmu_steps for method 'mean-field'; it accepts: .*num_steps"):
        compare.method_options("mean-field", config={"mean-field": {"nmu_steps": 10}})
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        compare.load_config({"magic": {"num_steps": 10}})


def test_results_record_every_setting(tmp_path):
    res = compare.compare("toy-regression", methods="ensemble", quick=True, out=tmp_path, progress=False,
                          config={"ensemble": {"size": 2}})
    opts = res["methods"]["ensemble"]["options"]
    assert opts["size"] == 2 and opts["num_steps"] == profiles.QUICK_OPTIONS["ensemble"]["num_steps"]
    assert "weight_decay" in opts and "progress" not in opts  # class defaults recorded too


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

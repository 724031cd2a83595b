"""pyrobdl.from_pyro: a Pyro model plus a fitted guide or posterior draws as a pyrobdl posterior."""
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn as nn
from pyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal
from pyro.infer.autoguide.initialization import init_to_sample
from pyro.nn import PyroModule, PyroSample

import pyrobdl
from pyrobdl import BayesianNetwork, likelihoods, metrics
from pyrobdl.inference.pyro_bridge import PyroMCMCPosterior, PyroPosterior
from pyrobdl.prediction import ClassificationPrediction, RegressionPrediction


# ----------------------------------------------------------------------------- models
class BNN(PyroModule):
    """Pyro's BNN tutorial model (PyroModule layers with PyroSample priors), with ReLU units so
    that the epistemic spread grows away from the data, and the mean exposed as a deterministic
    site for the comparison with Predictive."""

    def __init__(self, hidden: int = 10, prior_scale: float = 1.0):
        super().__init__()
        self.act = nn.ReLU()
        self.layer1 = PyroModule[nn.Linear](1, hidden)
        self.layer2 = PyroModule[nn.Linear](hidden, 1)
        self.layer1.weight = PyroSample(dist.Normal(0.0, prior_scale).expand([hidden, 1]).to_event(2))
        self.layer1.bias = PyroSample(dist.Normal(0.0, prior_scale).expand([hidden]).to_event(1))
        self.layer2.weight = PyroSample(dist.Normal(0.0, prior_scale).expand([1, hidden]).to_event(2))
        self.layer2.bias = PyroSample(dist.Normal(0.0, prior_scale).expand([1]).to_event(1))

    def forward(self, x, y=None):
        mu = pyro.deterministic("mu", self.layer2(self.act(self.layer1(x))).squeeze(-1))
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(mu, sigma), obs=y)


ALPHA, SIGMA = 1.0, 0.3  # prior std of the weights and the known noise of the linear model


def features(x):
    return torch.cat([torch.ones_like(x[:, :1]), x[:, :1]], -1)  # (N, 2): [1, x]


def linreg(x, y=None):
    """Bayesian linear regression with known noise, written for a batch of draws."""
    w = pyro.sample("w", dist.Normal(0.0, ALPHA).expand([2]).to_event(1))
    mu = (features(x) * w).sum(-1)  # w: (2,), or (S, 1, 2) under the draws' plate
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("obs", dist.Normal(mu, SIGMA), obs=y)


def exact_posterior(x, y):
    """Posterior N(m, Sigma) of w: Sigma = (Phi^T Phi / s^2 + I / a^2)^-1, m = Sigma Phi^T y / s^2."""
    phi = features(x).double()
    prec = phi.T @ phi / SIGMA**2 + torch.eye(2, dtype=torch.float64) / ALPHA**2
    cov = torch.linalg.inv(prec)
    return cov @ phi.T @ y.double() / SIGMA**2, cov


def softmax_model(x, y=None):
    """Linear softmax classifier with 3 classes, written for a batch of draws."""
    W = pyro.sample("W", dist.Normal(0.0, 1.0).expand([2, 3]).to_event(2))
    logits = (x.unsqueeze(-1) * W).sum(-2)  # W: (2, 3), or (S, 1, 2, 3) under the draws' plate
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("obs", dist.Categorical(logits=logits), obs=y)


@pytest.fixture(scope="module")
def linreg_data():
    g = torch.Generator().manual_seed(1)
    x = torch.linspace(-1, 1, 30).unsqueeze(-1)
    y = 0.5 - 1.5 * x[:, 0] + SIGMA * torch.randn(30, generator=g)
    return x, y


@pytest.fixture(scope="module")
def fitted_bnn():
    """The BNN tutorial fitted with AutoDiagonalNormal and plain SVI on 100 points of sin(2x)."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    x = torch.linspace(-2, 2, 100).unsqueeze(-1)
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(100)
    model = BNN()
    guide = AutoDiagonalNormal(model, init_scale=0.01)
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 0.04, "lrd": 0.1 ** (1 / 300)}), Trace_ELBO())
    for _ in range(300):
        svi.step(x, y)
    return model, guide, x, y


# ----------------------------------------------------------------------------- (1) the BNN tutorial
def test_bnn_tutorial_guide_predicts_and_grows_uncertainty_away_from_data(fitted_bnn):
    model, guide, x, y = fitted_bnn
    post = pyrobdl.from_pyro(model, guide=guide)
    assert isinstance(post, PyroPosterior) and post.default_num_samples == 100
    x_test = torch.linspace(-6, 6, 61).unsqueeze(-1)
    with pytest.warns(UserWarning, match="once per draw"):  # nn.Linear cannot take a batch of weights
        pred = post.predict(x_test, num_samples=200)
    assert post.vectorised is False
    assert isinstance(pred, RegressionPrediction) and pred.loc_samples.shape == (200, 61)
    inside, far = x_test[:, 0].abs() <= 2, x_test[:, 0].abs() >= 4
    rmse = float((pred.mean[inside] - torch.sin(2 * x_test[inside, 0])).pow(2).mean().sqrt())
    assert rmse < 0.25  # noise std 0.1; 300 steps of mean-field SVI reach 0.08
    # ReLU units extrapolate linearly with uncertain slopes: measured ratio about 4
    assert float(pred.epistemic_std[far].mean()) > 2 * float(pred.epistemic_std[inside].mean())
    # the aleatoric part is the learned sigma of the Uniform(0, 1) site, the same at every input
    assert torch.allclose(pred.aleatoric_std, pred.aleatoric_std[0].expand(61))
    assert 0.05 < float(pred.aleatoric_std[0]) < 0.4
    # the whole interface: metrics and intervals on the prediction object
    pred_train = post.predict(x, num_samples=100)
    assert metrics.rmse(pred_train, y) < 0.25
    lo, hi = pred_train.interval(0.9)
    assert 0.7 < float(((y >= lo) & (y <= hi)).double().mean()) <= 1.0
    assert torch.isfinite(pred_train.log_prob(y)).all()
    # the loop path is remembered: the second predict does not warn again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        post.predict(x_test[:3], num_samples=5)


# ----------------------------------------------------------------------------- (2) agreement with Predictive
def test_guide_and_samples_agree_with_predictive_on_the_same_draws(fitted_bnn):
    model, guide, x, _ = fitted_bnn
    x_test = torch.linspace(-3, 3, 13).unsqueeze(-1)
    post_g = pyrobdl.from_pyro(model, guide=guide)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pyro.set_rng_seed(5)
        pred_g = post_g.predict(x_test, num_samples=40)
        pyro.set_rng_seed(5)
        draws = post_g.sample_latents(40, x=x_test)  # the same draws as that predict
        assert sorted(draws) == ["layer1.bias", "layer1.weight", "layer2.bias", "layer2.weight", "sigma"]
        assert draws["layer1.weight"].shape == (40, 10, 1)
        pred_s = pyrobdl.from_pyro(model, samples=draws).predict(x_test)
    assert torch.equal(pred_g.loc_samples, pred_s.loc_samples)
    assert torch.equal(pred_g.scale_samples, pred_s.scale_samples)
    # Pyro's own Predictive on those draws: its deterministic "mu" is the obs site's mean per draw
    mu = Predictive(model, posterior_samples=draws, return_sites=["mu"])(x_test)["mu"]
    assert mu.shape == (40, 1, 13)  # Predictive keeps the data plate's batch layout
    mu = mu.squeeze(1)
    torch.testing.assert_close(pred_s.loc_samples, mu, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pred_s.mean, mu.mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pred_s.scale_samples, draws["sigma"].unsqueeze(-1).expand(40, 13))
    # Predictive's own output (with the obs and deterministic sites) is accepted as samples
    pyro.set_rng_seed(6)
    out = Predictive(model, guide=guide, num_samples=30)(x_test)
    assert {"obs", "mu"} <= set(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred_p = pyrobdl.from_pyro(model, samples=out).predict(x_test)
    torch.testing.assert_close(pred_p.mean, out["mu"].reshape(30, 13).mean(0), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- (3) conjugate check
def test_exact_posterior_samples_give_the_closed_form_epistemic_variance(linreg_data):
    x, y = linreg_data
    m, cov = exact_posterior(x, y)
    S = 4000
    w = dist.MultivariateNormal(m, covariance_matrix=cov).sample(torch.Size([S])).float()
    post = pyrobdl.from_pyro(linreg, samples={"w": w})
    x_test = torch.tensor([[-3.0], [-1.0], [0.0], [0.5], [3.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # linreg is written for a batch of draws: no fallback warning
        pred = post.predict(x_test)
    assert post.vectorised is True and pred.num_samples == S
    phi = features(x_test).double()
    exact_var = ((phi @ cov) * phi).sum(-1)  # x^T Sigma x
    # the sample variance of S Gaussian draws has relative std sqrt(2 / (S - 1)) = 0.022 for S = 4000;
    # rtol 0.1 is about 4.5 of those (the seed is fixed, so the test is deterministic anyway)
    torch.testing.assert_close(pred.epistemic_variance.double(), exact_var, rtol=0.1, atol=0.0)
    # the mean's Monte-Carlo error has std sqrt(var / S); allow 5 of those
    tol = 5 * (exact_var / S).sqrt()
    assert ((pred.mean.double() - phi @ m).abs() <= tol).all()
    torch.testing.assert_close(pred.aleatoric_variance, torch.full((5,), SIGMA**2))
    # the loop over draws gives the same numbers as the vectorised run
    post.vectorised = False
    pred_loop = post.predict(x_test, num_samples=50)
    post.vectorised = True
    torch.testing.assert_close(pred_loop.loc_samples, post.predict(x_test, num_samples=50).loc_samples)
    # Predictive(parallel=True)-shaped draws (S, 1, 2) give the same prediction
    pred_p = pyrobdl.from_pyro(linreg, samples={"w": w[:100].unsqueeze(1)}).predict(x_test)
    torch.testing.assert_close(pred_p.loc_samples, pred.loc_samples[:100])


def test_model_that_only_looks_batched_is_caught():
    """A model that returns the right shapes on a batch but uses only the first draw."""

    def first_only(x, y=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        mu = x[:, 0] * w.reshape(-1)[0]
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(mu, 0.1), obs=y)

    post = pyrobdl.from_pyro(first_only, samples={"w": torch.tensor([1.0, 2.0, 3.0])})
    with pytest.warns(UserWarning, match="disagrees"):
        pred = post.predict(torch.ones(2, 1))
    torch.testing.assert_close(pred.loc_samples, torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]))


# ----------------------------------------------------------------------------- (4) MCMC
def test_mcmc_object_keeps_chains_for_arviz(linreg_data, monkeypatch):
    x, y = linreg_data
    # two chains drawn one after the other in this process (Pyro would otherwise spawn processes)
    monkeypatch.setattr("pyro.infer.mcmc.api.mp.cpu_count", lambda: 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Chains will be drawn sequentially"
        mcmc = MCMC(NUTS(linreg), num_samples=50, warmup_steps=50, num_chains=2, disable_progbar=True)
        mcmc.run(x, y)
    post = pyrobdl.from_pyro(linreg, samples=mcmc)
    assert isinstance(post, PyroMCMCPosterior) and post.markov_chains
    assert (post.num_chains, post.num_draws) == (2, 50)
    assert post.sample_stats["diverging"].shape == (2, 50)
    d = post.draws()
    assert d.values["w"].shape == (2, 50, 2) and d.markov_chains
    torch.testing.assert_close(d.values["w"], mcmc.get_samples(group_by_chain=True)["w"])
    assert post.draws(20).values["w"].shape == (2, 10, 2)
    idata = post.to_arviz()  # the data the sampler was run on
    assert idata.posterior.sizes["chain"] == 2 and idata.posterior.sizes["draw"] == 50
    assert idata.log_likelihood["obs"].shape == (2, 50, 30)
    assert "diverging" in idata.sample_stats
    # the pointwise log-likelihood is log N(y | phi w, sigma^2) per draw
    w = mcmc.get_samples()["w"][:3]
    ll = dist.Normal((features(x) @ w.T).T, SIGMA).log_prob(y)
    torch.testing.assert_close(torch.as_tensor(idata.log_likelihood["obs"].values[0, :3]), ll, rtol=1e-5, atol=1e-5)
    # the posterior mean is near the exact one (100 NUTS draws of a 2-d Gaussian posterior)
    m, cov = exact_posterior(x, y)
    assert ((mcmc.get_samples()["w"].mean(0).double() - m).abs() < 4 * cov.diagonal().sqrt()).all()
    pred = post.predict(x)
    assert pred.num_samples == 100
    assert post.predict(x, num_samples=10).num_samples == 10
    with pytest.warns(UserWarning, match="each is used 2 times"):  # one meaning of num_samples
        twice = post.predict(x, num_samples=200)
    assert twice.num_samples == 200
    torch.testing.assert_close(twice.mean, pred.mean)


# ----------------------------------------------------------------------------- (5) classification
def test_categorical_and_bernoulli_observations_give_classification_predictions():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(25, 2, 3, generator=g)
    x = torch.randn(7, 2, generator=g)
    post = pyrobdl.from_pyro(softmax_model, samples={"W": W})
    pred = post.predict(x)
    assert isinstance(pred, ClassificationPrediction) and pred.probs_samples.shape == (25, 7, 3)
    expected = torch.softmax(torch.einsum("nd,sdc->snc", x, W), -1)
    torch.testing.assert_close(pred.probs_samples, expected)
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(7))
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    torch.testing.assert_close(pred.log_prob(labels), expected[:, torch.arange(7), labels].mean(0).log())
    assert (pred.mutual_information >= 0).all() and (pred.expected_entropy > 0).all()
    assert 0.0 <= metrics.accuracy(pred, labels) <= 1.0
    idata = post.to_arviz(x, labels)
    assert idata.log_likelihood["obs"].shape == (1, 25, 7)

    def logistic(x, y=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Bernoulli(logits=(x * w).sum(-1)), obs=y)

    w = torch.randn(10, 2, generator=g)
    pred_b = pyrobdl.from_pyro(logistic, samples={"w": w}).predict(x)
    p1 = torch.sigmoid(x @ w.T).T
    torch.testing.assert_close(pred_b.probs_samples, torch.stack([1 - p1, p1], -1))
    # as pyrobdl's own Bernoulli likelihood predicts
    torch.testing.assert_close(pred_b.probs, likelihoods.Bernoulli().prediction((x @ w.T).T.unsqueeze(-1), {}).probs)


def test_moment_matched_student_t_and_masked_independent_obs():
    def robust(x, y=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            d = dist.StudentT(5.0, w.unsqueeze(-1) * x, 0.5).to_event(1).mask(torch.tensor(True))
            return pyro.sample("obs", d, obs=y)

    w = torch.tensor([1.0, -1.0])
    post = pyrobdl.from_pyro(robust, samples={"w": w})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pred = post.predict(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert pred.loc_samples.shape == (2, 2, 2)  # (S, N, event)
    torch.testing.assert_close(pred.aleatoric_variance, torch.full((2, 2), 0.25 * 5 / 3))
    torch.testing.assert_close(pred.epistemic_variance, torch.tensor([[1.0, 4.0], [9.0, 16.0]]))


# ----------------------------------------------------------------------------- (6) BayesianNetwork
@pytest.fixture(scope="module")
def network_with_guide():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    x = torch.linspace(-2, 2, 50).unsqueeze(-1)
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(50)
    net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))
    model = BayesianNetwork(net, likelihood=likelihoods.Gaussian())
    guide = AutoNormal(model, init_scale=0.05, init_loc_fn=init_to_sample)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.03}), Trace_ELBO())
    for _ in range(400):
        svi.step(x, y)
    return model, guide, x, y


def test_bayesian_network_with_user_guide_runs_on_the_batched_engine(network_with_guide, monkeypatch):
    model, guide, x, y = network_with_guide
    post = pyrobdl.from_pyro(model, guide=guide)
    assert post.on_network
    calls = []
    original = type(model).outputs_from_samples

    def spy(self, xx, samples, **kw):
        calls.append({k: tuple(v.shape) for k, v in samples.items()})
        return original(self, xx, samples, **kw)

    monkeypatch.setattr(type(model), "outputs_from_samples", spy)
    pyro.set_rng_seed(3)
    pred = post.predict(x, num_samples=64)
    assert calls and calls[0]["0.weight"] == (64, 16, 1) and calls[0]["sigma"] == (64,)
    pyro.set_rng_seed(3)
    draws = post.sample_latents(64, x=x)
    torch.testing.assert_close(pred.loc_samples, model.predict_from_samples(x, draws).loc_samples)
    assert metrics.rmse(pred, y) < 0.3  # noise std 0.1; measured 0.16 after 400 steps
    # Predictive(parallel=True) gives (S, 1, *shape) for the global sites (and the obs site): accepted
    out = Predictive(model, guide=guide, num_samples=20, parallel=True, return_sites=model.site_names + ["obs"])(x)
    assert out["0.weight"].shape == (20, 1, 16, 1)
    post_s = pyrobdl.from_pyro(model, samples=out)
    assert post_s.samples["0.weight"].shape == (1, 20, 16, 1)
    dropped = {k: out[k].reshape((20,) + tuple(s.shape)) for k, s in model.latent_sites().items()}
    torch.testing.assert_close(post_s.predict(x).loc_samples, model.predict_from_samples(x, dropped).loc_samples)
    idata = post_s.to_arviz(x, y)
    assert idata.posterior.sizes["draw"] == 20 and idata.log_likelihood["obs"].shape == (1, 20, 50)


# ----------------------------------------------------------------------------- (7) save / load
def test_save_and_load_round_trips_posteriors_of_draws(tmp_path, linreg_data, network_with_guide, fitted_bnn):
    x, y = linreg_data
    w = torch.randn(40, 2)
    post = pyrobdl.from_pyro(linreg, samples={"w": w})
    post.save(tmp_path / "lin.pt")
    with pytest.raises(ValueError, match="model=model"):
        pyrobdl.load(tmp_path / "lin.pt")
    loaded = pyrobdl.load(tmp_path / "lin.pt", model=linreg)
    assert type(loaded) is PyroPosterior
    torch.testing.assert_close(loaded.predict(x).loc_samples, post.predict(x).loc_samples)
    # recalibrated (split conformal) too: the recalibrator is saved with the draws
    from pyrobdl.calibration import recalibrate

    cal = recalibrate(post, x, y, method="conformal", level=0.9)
    cal.save(tmp_path / "cal.pt")
    cal_back = pyrobdl.load(tmp_path / "cal.pt", model=linreg)
    torch.testing.assert_close(cal_back.predict(x).interval(0.9)[0], cal.predict(x).interval(0.9)[0])
    # a PyroModule model: its state dict travels with the draws; an MCMC posterior stays Markov
    model, guide, xb, yb = fitted_bnn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        draws = pyrobdl.from_pyro(model, guide=guide).sample_latents(20, x=xb)
        mc = PyroMCMCPosterior(model, samples={k: v.reshape((2, 10) + v.shape[1:]) for k, v in draws.items()},
                               training_data=(xb, yb))
        mc.save(tmp_path / "bnn.pt")
        back = pyrobdl.load(tmp_path / "bnn.pt", model=BNN())
        assert type(back) is PyroMCMCPosterior and (back.num_chains, back.num_draws) == (2, 10)
        torch.testing.assert_close(back.predict(xb).loc_samples, mc.predict(xb).loc_samples)
        assert back.to_arviz().posterior.sizes["chain"] == 2  # the training data were saved too
    # a BayesianNetwork of standard layers: loaded without the model
    net_model, net_guide, xn, _ = network_with_guide
    draws = pyrobdl.from_pyro(net_model, guide=net_guide).sample_latents(30, x=xn)
    post_n = pyrobdl.from_pyro(net_model, samples=draws)
    post_n.save(tmp_path / "net.pt")
    back_n = pyrobdl.load(tmp_path / "net.pt")
    assert isinstance(back_n, PyroPosterior) and back_n.on_network
    torch.testing.assert_close(back_n.predict(xn).loc_samples, post_n.predict(xn).loc_samples)
    # guide-based: not saved, and the message says how
    with pytest.raises(NotImplementedError, match="sample_latents"):
        pyrobdl.from_pyro(net_model, guide=net_guide).save(tmp_path / "g.pt")
    with pytest.raises(NotImplementedError, match=r"from_pyro\(model, samples="):
        pyrobdl.from_pyro(linreg, guide=_fitted_linreg_guide(x)).save(tmp_path / "g2.pt")


# ----------------------------------------------------------------------------- (8) errors
def test_bad_arguments_raise_clear_errors():
    w = {"w": torch.randn(5, 2)}
    with pytest.raises(ValueError, match="not both"):
        pyrobdl.from_pyro(linreg, guide=lambda x: None, samples=w)
    with pytest.raises(ValueError, match="guide= .* or samples="):
        pyrobdl.from_pyro(linreg)
    with pytest.raises(TypeError, match="model must be"):
        pyrobdl.from_pyro("linreg", samples=w)
    with pytest.raises(TypeError, match="guide must be"):
        pyrobdl.from_pyro(linreg, guide=3)
    with pytest.raises(TypeError, match="samples must be a dict"):
        pyrobdl.from_pyro(linreg, samples=[torch.randn(5, 2)])
    with pytest.raises(TypeError, match=r"samples\['w'\] must be a torch.Tensor"):
        pyrobdl.from_pyro(linreg, samples={"w": "abc"})
    with pytest.raises(ValueError, match="empty dict"):
        pyrobdl.from_pyro(linreg, samples={})
    with pytest.raises(ValueError, match="same number of draws"):
        pyrobdl.from_pyro(linreg, samples={"w": torch.randn(5, 2), "v": torch.randn(4)})
    with pytest.raises(TypeError, match="obs_site"):
        pyrobdl.from_pyro(linreg, samples=w, obs_site=3)
    with pytest.raises(ValueError, match="never been run"):
        pyrobdl.from_pyro(linreg, guide=AutoNormal(linreg))
    with pytest.raises(ValueError, match="has not been run"):
        pyrobdl.from_pyro(linreg, samples=MCMC(NUTS(linreg), num_samples=5))
    net = BayesianNetwork(nn.Linear(1, 1))
    with pytest.raises(ValueError, match="observed site is 'obs'"):
        pyrobdl.from_pyro(net, samples={"weight": torch.randn(3, 1, 1)}, obs_site="y")
    with pytest.raises(ValueError, match=r"no values for the site\(s\) \['bias', 'sigma'\]"):
        pyrobdl.from_pyro(net, samples={"weight": torch.randn(3, 1, 1)})


def test_model_problems_raise_clear_errors():
    x = torch.randn(4, 1)
    post = pyrobdl.from_pyro(linreg, samples={"w": torch.randn(5, 2)}, obs_site="y")
    with pytest.raises(ValueError, match=r"no sample site 'y' \(its sample sites: 'w', 'obs'\)"):
        post.predict(x)
    with pytest.raises(ValueError, match=r"no values for the latent site\(s\) \['w'\]"):
        pyrobdl.from_pyro(linreg, samples={"v": torch.randn(5, 2)}).predict(x)
    with pytest.raises(ValueError, match=r"samples\['w'\] has shape \(5, 3\)"):
        pyrobdl.from_pyro(linreg, samples={"w": torch.randn(5, 3)}).predict(x)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        pyrobdl.from_pyro(linreg, samples={"w": torch.randn(5, 2)}).predict(x, num_samples=0)

    def poisson(x, y=None):
        r = pyro.sample("r", dist.Gamma(1.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("count", dist.Poisson(r * x[:, 0].exp()), obs=y)

    with pytest.raises(ValueError, match=r"'count' has a Poisson distribution.*supported: Normal"):
        pyrobdl.from_pyro(poisson, samples={"r": torch.rand(5)}, obs_site="count").predict(x)

    def heavy(x, y=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.StudentT(2.0, w * x[:, 0], 1.0), obs=y)

    with pytest.raises(ValueError, match="infinite variance"):
        pyrobdl.from_pyro(heavy, samples={"w": torch.randn(5)}).predict(x)
    guide_post = pyrobdl.from_pyro(linreg, guide=_fitted_linreg_guide(x))
    guide_post._example_args = None
    with pytest.raises(ValueError, match="pass x"):
        guide_post.draws()


def _fitted_linreg_guide(x):
    guide = AutoNormal(linreg)
    svi = SVI(linreg, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    svi.step(x, torch.zeros(x.shape[0]))
    return guide


def test_hand_written_guide_vectorised_and_not():
    x = torch.linspace(-1, 1, 6).unsqueeze(-1)

    def guide(x, y=None):  # writes its draws with an event dim: fine under an outer plate
        loc = pyro.param("w_loc", torch.tensor([0.5, -1.0]))
        pyro.sample("w", dist.Normal(loc, 0.1).to_event(1))

    post = pyrobdl.from_pyro(linreg, guide=guide)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pred = post.predict(x, num_samples=2000)
    assert post._guide_vectorised and pred.num_samples == 2000
    phi = features(x)
    torch.testing.assert_close(pred.mean, phi @ torch.tensor([0.5, -1.0]), atol=0.02, rtol=0.0)
    # exact epistemic variance 0.01 * |phi|^2 (independent draws with std 0.1): MC rtol 0.15 at S=2000
    torch.testing.assert_close(pred.epistemic_variance, 0.01 * phi.pow(2).sum(-1), rtol=0.15, atol=0.0)

    def scalar_guide(x, y=None):  # one draw at a time only: stacking a batched draw with a scalar fails
        a = pyro.sample("a", dist.Delta(torch.tensor(0.5)))
        pyro.sample("w", dist.Delta(torch.stack([a, torch.tensor(-1.0)])).to_event(1))

    post2 = pyrobdl.from_pyro(linreg, guide=scalar_guide)
    with pytest.warns(UserWarning, match="guide scalar_guide failed on a batch"):
        pred2 = post2.predict(x, num_samples=4)
    torch.testing.assert_close(pred2.loc_samples, (phi @ torch.tensor([0.5, -1.0])).expand(4, 6))
    assert math.isclose(float(pred2.epistemic_variance.max()), 0.0, abs_tol=1e-12)

"""The point-estimate methods (MC dropout, MC DropConnect, deep ensembles) behind the common
predictive interface, and the pieces they share (pyrobdl.inference.point)."""
import copy

import pytest
import torch
from torch import nn

import pyrobdl
from point_helpers import FAST, METHODS, mlp, regression_model
from pyrobdl import BayesianNetwork, likelihoods, priors
from pyrobdl.datasets import toy_regression
from pyrobdl.inference import DeepEnsemble, MCDropConnect, MCDropout
from pyrobdl.inference.optim import LIKELIHOOD_LR
from pyrobdl.inference.point import init_latents, weight_penalty
from pyrobdl.prediction import ClassificationPrediction, RegressionPrediction

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:the fitted .*:UserWarning")]


# ----------------------------------------------------------------------------- one interface
def test_same_model_same_prediction_object_for_every_method(small_data):
    """The issue's loop: one model object, one word per method, one prediction type."""
    x, y = small_data
    model = regression_model()
    user_state = copy.deepcopy(model.net.state_dict())
    for method in ["mean-field", *METHODS]:
        posterior = pyrobdl.fit(model, x, y, method=method, **FAST)
        pred = posterior.predict(x[:7], num_samples=100)
        assert isinstance(pred, RegressionPrediction), method
        assert pred.mean.shape == (7,) and torch.isfinite(pred.variance).all()
        assert posterior.method == (method if method in METHODS else "svi")
    # every method trained a copy: the user's network is untouched, with no inserted layers
    assert all(torch.equal(v, model.net.state_dict()[k]) for k, v in user_state.items())
    assert [type(m) for m in model.net] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]


def test_method_names_and_aliases():
    assert {"mc-dropout", "mc-dropconnect", "ensemble"} <= set(pyrobdl.available_methods())
    assert pyrobdl.inference.get_method("MC_Dropout") is MCDropout
    assert pyrobdl.inference.get_method("dropconnect") is MCDropConnect
    assert pyrobdl.inference.get_method("deep-ensemble") is DeepEnsemble


# ----------------------------------------------------------------------------- shared pieces
def test_weight_decay_from_prior_formula():
    """lambda_j = keep_j / (2 s^2 N) on the sum of squares; a float replaces it."""
    model = BayesianNetwork(mlp(h=4), prior=priors.Normal(0.0, 2.0))
    params = dict(model.net.named_parameters())
    keep = {"2.weight": 0.9, "4.weight": 0.9}
    got = weight_penalty(model, "prior", 100, keep)(params)
    want = sum((keep.get(n, 1.0) / (2 * 4.0 * 100)) * p.pow(2).sum() for n, p in params.items())
    torch.testing.assert_close(got, want)
    got = weight_penalty(model, 0.01, 100, keep)(params)
    torch.testing.assert_close(got, 0.01 * sum(p.pow(2).sum() for p in params.values()))
    assert weight_penalty(model, 0.0, 100, keep) is None


def test_learned_noise_starts_at_the_likelihoods_init_and_has_its_own_lr(small_data):
    """The noise starts at likelihood.latent_init(y) (init * std(y)), not at the prior median,
    and trains at the learning rate max(lr, LIKELIHOOD_LR): Adam's first step moves every
    parameter by its learning rate, so after one step at lr=1e-6 the weights have hardly
    moved and the log-noise has moved by LIKELIHOOD_LR."""
    x, y = (t.double() for t in small_data)  # float64: the tiny step is resolved exactly
    model = BayesianNetwork(mlp().double(), likelihood=likelihoods.Gaussian(init=0.25))
    raw = init_latents(model, "test", y, (3,))
    start = raw["sigma"].detach().exp()  # the positive bijection of torch.distributions
    torch.testing.assert_close(start, torch.full((3,), 0.25 * float(y.std()), dtype=torch.float64))
    for method in METHODS:
        kw = dict(size=2, batch_size=None) if method == "ensemble" else {}
        post = pyrobdl.fit(model, x, y, method=method, lr=1e-6, num_steps=1, progress=False, **kw)
        moved = (post._raw["sigma"] - start[0].log()).abs()
        torch.testing.assert_close(moved, torch.full_like(moved, LIKELIHOOD_LR), rtol=1e-6, atol=0)
        w0 = post.params["0.weight"][0] if method == "ensemble" else post.model.net[0].weight
        assert float((w0 - model.net[0].weight).detach().abs().max()) <= 1.01e-6


@pytest.mark.parametrize("method", METHODS)
def test_save_load_gives_identical_predictions(small_data, method, tmp_path):
    x, y = small_data
    post = pyrobdl.fit(regression_model(), x, y, method=method, **FAST)
    post.save(tmp_path / "post.pt")
    loaded = pyrobdl.load(tmp_path / "post.pt")
    assert type(loaded) is type(post)
    torch.manual_seed(3)
    a = post.predict(x, num_samples=10)
    torch.manual_seed(3)
    b = loaded.predict(x, num_samples=10)
    assert torch.equal(a.loc_samples, b.loc_samples) and torch.equal(a.scale_samples, b.scale_samples)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("lik,k", [(likelihoods.Categorical(), 3), (likelihoods.Bernoulli(), 1),
                                   (likelihoods.CategoricalLogitNoise(num_draws=8), 6)])
def test_classification_likelihoods(method, lik, k):
    x = torch.randn(30, 2)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long() * (k > 1)
    post = pyrobdl.fit(BayesianNetwork(mlp(2, k, 8), likelihood=lik), x, y, method=method, **FAST)
    pred = post.predict(x, num_samples=10)
    assert isinstance(pred, ClassificationPrediction)
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(30))
    assert (pred.mutual_information >= 0).all() and torch.isfinite(pred.log_prob(y)).all()


def test_fixed_scale_gaussian_and_heteroscedastic_work(small_data):
    x, y = small_data
    for lik, d in [(likelihoods.Gaussian(scale=0.3), 1), (likelihoods.HeteroscedasticGaussian(), 2)]:
        for method in METHODS:
            pred = pyrobdl.fit(regression_model(lik, d_out=d), x, y, method=method, **FAST).predict(x)
            assert pred.mean.shape == (40,) and torch.isfinite(pred.aleatoric_variance).all()
            if d == 1:
                torch.testing.assert_close(pred.aleatoric_std, torch.full((40,), 0.3))


@pytest.mark.parametrize("method", METHODS)
def test_batchnorm_networks_predict_repeatably(small_data, method):
    """BatchNorm statistics are trained with the net and frozen at prediction (eval mode)."""
    x, y = small_data
    net = nn.Sequential(nn.Linear(1, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    post = pyrobdl.fit(BayesianNetwork(net), x, y, method=method, **FAST)
    torch.manual_seed(0)
    a = post.predict(x, num_samples=5)
    torch.manual_seed(0)
    b = post.predict(x[:1], num_samples=5)  # one row: would fail (or move the statistics) in train mode
    torch.testing.assert_close(a.loc_samples[:, :1], b.loc_samples)
    if method == "ensemble":  # each member keeps its own running statistics
        rm = post.buffers["1.running_mean"]
        assert rm.shape == (post.size, 8) and not torch.allclose(rm[0], rm[1])


# ----------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors(small_data):
    x, y = small_data
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"p must lie in \[0, 1\)"):
            MCDropout(p=p)
        with pytest.raises(ValueError, match=r"p must lie in \[0, 1\)"):
            MCDropConnect(p=p)
    with pytest.raises(TypeError, match="p must be a number"):
        MCDropout(p="0.1")
    with pytest.raises(ValueError, match="size must be at least 1"):
        DeepEnsemble(size=0)
    with pytest.raises(TypeError, match="size must be an integer"):
        DeepEnsemble(size=2.5)
    with pytest.raises(ValueError, match="weight_decay must be 'prior'"):
        MCDropout(weight_decay="l2")
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        MCDropout(weight_decay=-1.0)
    with pytest.raises(ValueError, match="layers must be 'hidden', 'all'"):
        MCDropout(layers="first")
    # no layer that dropout can precede: one Linear, fed by the raw input
    with pytest.raises(ValueError, match="no layer to put dropout before.*layers='all'"):
        MCDropout(layers="hidden", **FAST).fit(BayesianNetwork(nn.Sequential(nn.Linear(1, 1))), x, y)
    with pytest.raises(ValueError, match="not Linear/Conv modules"):
        MCDropout(layers=["1"], **FAST).fit(regression_model(), x, y)
    with pytest.raises(TypeError, match="model must be a pyrobdl.BayesianNetwork"):
        MCDropout(**FAST).fit(mlp(), x, y)
    with pytest.raises(ValueError, match="warm_start has 2 members but size=3"):
        DeepEnsemble(size=3, warm_start=DeepEnsemble(size=2, **FAST).fit(regression_model(), x, y))


class _NoLogProb(likelihoods.Likelihood):
    def check_target(self, y, out=None):
        return y


class _DiscreteNoise(likelihoods.Gaussian):
    def latent_supports(self):
        return {"sigma": torch.distributions.constraints.nonnegative_integer}

    def latent_priors(self, *, dtype, device):
        return {"sigma": pyrobdl.likelihoods.dist.Poisson(torch.tensor(1.0, dtype=dtype, device=device))}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("lik,match", [(_NoLogProb(), "does not implement log_prob"), (_DiscreteNoise(), "no point estimate")])
def test_likelihood_the_method_cannot_use(small_data, method, lik, match):
    x, y = small_data
    with pytest.raises(ValueError, match=f"cannot use likelihood .*{match}"):
        pyrobdl.fit(BayesianNetwork(mlp(), likelihood=lik), x, y, method=method, **FAST)


@pytest.mark.parametrize("lik,k", [(likelihoods.Gaussian(), 1), (likelihoods.Gaussian(scale=0.3), 1),
                                   (likelihoods.Gaussian(), 2), (likelihoods.HeteroscedasticGaussian(), 2),
                                   (likelihoods.HeteroscedasticGaussian(), 4)])
def test_training_log_prob_equals_the_likelihoods(lik, k):
    """The closed-form Gaussian log-density (``likelihood.log_prob``, used by the training
    loops) is that of torch's ``Normal`` (``likelihood.dist(...).log_prob``): values and gradients."""
    torch.manual_seed(0)
    out = torch.randn(3, 7, k, dtype=torch.float64, requires_grad=True)
    d = k // 2 if isinstance(lik, likelihoods.HeteroscedasticGaussian) else k
    y = torch.randn((3, 7) if d == 1 else (3, 7, d), dtype=torch.float64)
    lats = {"sigma": torch.rand(3, dtype=torch.float64) + 0.5} if lik.latent_supports() else {}
    got = lik.log_prob(out, y, lats)
    want = lik.dist(out, lats).log_prob(y)
    assert type(lik).log_prob is not likelihoods.Likelihood.log_prob  # the closed form is used ...
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)  # ... and is the same function
    g1, = torch.autograd.grad(got.sum(), out)
    g2, = torch.autograd.grad(want.sum(), out)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)
    other = likelihoods.Categorical()
    logits = torch.randn(3, 7, 4, dtype=torch.float64)
    labels = torch.randint(0, 4, (7,))
    torch.testing.assert_close(other.log_prob(logits, labels, {}), other.dist(logits, {}).log_prob(labels))


@pytest.mark.cuda
@pytest.mark.parametrize("method", METHODS)
def test_chain_paths_follow_the_input_device(small_data, method):
    from pyrobdl._fast import general_path

    x, y = (t.cuda() for t in small_data)
    post = pyrobdl.fit(regression_model(), x, y, method=method, **FAST)
    assert post.model._chain() is not None and post.device.type == "cuda"
    torch.manual_seed(0)
    a = post.predict(x, num_samples=10)
    with general_path():
        torch.manual_seed(0)
        b = post.predict(x, num_samples=10)
    assert a.loc_samples.device.type == "cuda"
    torch.testing.assert_close(a.loc_samples, b.loc_samples, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- statistical behaviour
@pytest.fixture(scope="module")
def toy():
    return toy_regression(n_train=200, n_test=201, n_ood=0, normalize=True, seed=0)


TOY_SETTINGS = {
    "mc-dropout": dict(p=0.1, layers="hidden", num_steps=600),
    "mc-dropconnect": dict(p=0.1, num_steps=600),
    "ensemble": dict(size=5, num_steps=400, batch_size=None),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_toy_epistemic_grows_outside_training_range(toy, method):
    torch.manual_seed(0)
    model = BayesianNetwork(mlp(), prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian())
    post = pyrobdl.fit(model, toy.x_train, toy.y_train, method=method, lr=1e-2, progress=False, seed=0, **TOY_SETTINGS[method])
    pred = post.predict(toy.x_test, num_samples=200)
    x_raw = toy.x_test[:, 0] * toy.x_std + toy.x_mean
    inside, outside = x_raw.abs() <= 7, x_raw.abs() > 7.5
    epi = pred.epistemic_std
    # a fit: the training data are explained (std of y is 1 after normalisation; RMSE 0.15-0.44 over 5 seeds)
    assert float((post.predict(toy.x_train).mean - toy.y_train).pow(2).mean().sqrt()) < 0.6
    # epistemic std is clearly larger outside [-7, 7] than inside (ratios 3.5-45x over 5 seeds)
    assert float(epi[outside].mean()) > 1.5 * float(epi[inside].mean())
    # aleatoric (the homoscedastic noise model's sigma) stays constant in x
    ale = pred.aleatoric_std
    assert float(ale.max() / ale.min()) < 1.01
    assert float(ale[outside].mean()) < 1.1 * float(ale[inside].mean())


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_heteroscedastic_model_learns_input_dependent_noise(method):
    """Noise std 0.05 + 0.5 x on x in [0, 1]: the learned aleatoric std follows it."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 1, generator=g)
    true_std = 0.05 + 0.5 * x[:, 0]
    y = torch.sin(3 * x[:, 0]) + true_std * torch.randn(300, generator=g)
    model = BayesianNetwork(mlp(d_out=2), likelihood=likelihoods.HeteroscedasticGaussian())
    kw = dict(size=5, batch_size=None) if method == "ensemble" else dict(p=0.05, layers="hidden") if method == "mc-dropout" else dict(p=0.05)
    post = pyrobdl.fit(model, x, y, method=method, num_steps=800, lr=1e-2, progress=False, seed=0, **kw)
    xt = torch.linspace(0.05, 0.95, 19).unsqueeze(-1)
    ale = post.predict(xt, num_samples=50).aleatoric_std
    want = 0.05 + 0.5 * xt[:, 0]
    # over 5 seeds: correlation >= 0.966, growth ratio >= 2.4 (true 3.8), size within 0.9-1.9x of the truth
    # (DropConnect's training-time weight noise inflates the smallest noise level the most)
    corr = torch.corrcoef(torch.stack([ale, want]))[0, 1]
    assert corr > 0.9  # grows with the true noise ...
    assert ale[16] / ale[2] > 2.0  # ... by a clear factor ...
    for i in (2, 16):  # ... and is of the right size
        assert want[i] / 2.5 < ale[i] < want[i] * 2.5, (i, float(ale[i]), float(want[i]))

"""MC dropout, MC DropConnect and deep ensembles behind the common predictive interface."""
import copy
import math

import pytest
import torch
from torch import nn

import pyrobdl
from pyrobdl import BayesianNetwork, likelihoods, priors
from pyrobdl.datasets import toy_regression
from pyrobdl.inference import DeepEnsemble, EnsemblePosterior, MCDropConnect, MCDropout
from pyrobdl.inference.baselines import _input_mask, _penalty
from pyrobdl.prediction import ClassificationPrediction, RegressionPrediction

METHODS = ["mc-dropout", "mc-dropconnect", "ensemble"]
FAST = dict(num_steps=5, progress=False)


def mlp(d_in=1, d_out=1, h=32):
    return nn.Sequential(nn.Linear(d_in, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, d_out))


def regression_model(likelihood=None, d_out=1, prior=None):
    return BayesianNetwork(mlp(d_out=d_out), prior=prior or priors.Normal(0.0, 1.0), likelihood=likelihood or likelihoods.Gaussian())


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The networks here are tiny: one intra-op thread is faster than two, and
    it does not suffer OpenMP synchronisation stalls when the machine is busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def small_data():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 1, generator=g) * 4 - 2
    return x, torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(40, generator=g)


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


# ----------------------------------------------------------------------------- ensembles: vectorised == loop
def _member_nll(model, net, sigma, x, y):
    return -model.likelihood.log_prob(net(x), y, {"sigma": sigma}).mean()


def test_ensemble_outputs_match_loop_over_members(small_data):
    x, y = small_data
    post = DeepEnsemble(size=4, num_steps=20, progress=False, seed=0).fit(regression_model(), x, y)
    assert isinstance(post, EnsemblePosterior) and post.size == 4
    pred = post.predict(x)
    loop = torch.stack([post.member(i)(x)[:, 0] for i in range(4)])
    # same weights, same float32 arithmetic up to the batched matmul's summation order
    torch.testing.assert_close(pred.loc_samples, loop, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pred.scale_samples, post.latents["sigma"][:, None].expand(4, 40))
    # members start from independent initialisations
    w = post.params["0.weight"]
    assert all(not torch.allclose(w[i], w[j]) for i in range(4) for j in range(i))


@pytest.mark.parametrize("adversarial", [False, True])
def test_ensemble_gradients_and_training_step_match_loop(small_data, adversarial):
    x, y = small_data
    model = regression_model()
    algo = DeepEnsemble(size=3, num_steps=1, lr=1e-2, progress=False, seed=0, adversarial=adversarial, epsilon=0.05)
    post = algo.fit(model, x, y)
    members = post.members
    sigmas = post.latents["sigma"]

    # gradients of the vectorised objective == per-member gradients
    loss, per_member = algo.loss(post, x.expand(3, 40, 1), y.expand(3, 40), epsilon=0.05)
    grads = torch.autograd.grad(loss, list(post.params.values()))
    for i, net in enumerate(members):
        xi = x.clone().requires_grad_(adversarial)
        nll = _member_nll(post.model, net, sigmas[i], xi, y)
        if adversarial:  # fast gradient sign example of this member only
            (gx,) = torch.autograd.grad(nll, xi, retain_graph=True)
            nll = nll + _member_nll(post.model, net, sigmas[i], (x + 0.05 * gx.sign()).detach(), y)
        torch.testing.assert_close(per_member[i], nll.detach(), rtol=1e-5, atol=1e-6)
        g_loop = torch.autograd.grad(nll, list(net.parameters()))
        for (name, _), g_vec, g_l in zip(net.named_parameters(), grads, g_loop):
            torch.testing.assert_close(g_vec[i], g_l, rtol=1e-4, atol=1e-6, msg=name)

    # one full-batch Adam step of the vectorised trainer == one step per member with its own Adam
    nxt = DeepEnsemble(size=3, num_steps=1, lr=1e-2, progress=False, adversarial=adversarial, epsilon=0.05, warm_start=post).fit(model, x, y)
    for i, net in enumerate(members):
        log_sigma = post._raw["sigma"][i].clone().requires_grad_(True)  # the latent's unconstrained value
        opt = torch.optim.Adam(list(net.parameters()) + [log_sigma], lr=1e-2)
        xi = x.clone().requires_grad_(adversarial)
        sigma = torch.distributions.biject_to(torch.distributions.constraints.positive)(log_sigma)
        nll = _member_nll(post.model, net, sigma, xi, y)
        if adversarial:
            (gx,) = torch.autograd.grad(nll, xi, retain_graph=True)
            nll = nll + _member_nll(post.model, net, sigma, (x + 0.05 * gx.sign()).detach(), y)
        opt.zero_grad()
        nll.backward()
        opt.step()
        stepped = nxt.member(i)
        for (name, p_loop), p_vec in zip(net.named_parameters(), stepped.parameters()):
            # fused vs for-loop Adam: same update up to float rounding
            torch.testing.assert_close(p_vec, p_loop, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(nxt._raw["sigma"][i], log_sigma.detach(), rtol=1e-5, atol=1e-6)


def test_mixture_formula_on_hand_made_members(small_data):
    """Members with constant outputs (mu_i, log sigma_i^2): the prediction is the closed-form mixture."""
    x, y = small_data
    net = nn.Sequential(nn.Linear(1, 2))
    model = BayesianNetwork(net, likelihood=likelihoods.HeteroscedasticGaussian())
    post = DeepEnsemble(size=3, **FAST).fit(model, x, y)
    mu = torch.tensor([1.0, 2.0, 4.0])
    var = torch.tensor([0.5, 1.0, 2.0])
    with torch.no_grad():
        post.params["0.weight"].zero_()
        post.params["0.bias"].copy_(torch.stack([mu, var.log()], -1))
    pred = post.predict(torch.zeros(5, 1), num_samples=17)  # num_samples is ignored: one component per member
    mu_star = mu.mean()
    total = (var + mu**2).mean() - mu_star**2
    torch.testing.assert_close(pred.mean, mu_star.expand(5))
    torch.testing.assert_close(pred.variance, total.expand(5))
    torch.testing.assert_close(pred.aleatoric_variance, var.mean().expand(5))
    torch.testing.assert_close(pred.epistemic_variance, mu.var(unbiased=False).expand(5))
    # log predictive density of the mixture
    y0 = torch.full((5,), 2.5)
    dens = torch.exp(-0.5 * (2.5 - mu) ** 2 / var) / torch.sqrt(2 * math.pi * var)
    torch.testing.assert_close(pred.log_prob(y0), dens.mean().log().expand(5))


def test_ensemble_classification_is_mean_of_member_probabilities():
    x = torch.randn(30, 2)
    y = (x[:, 0] > 0).long()
    post = DeepEnsemble(size=3, **FAST).fit(BayesianNetwork(mlp(2, 2, 8), likelihood=likelihoods.Categorical()), x, y)
    pred = post.predict(x)
    assert isinstance(pred, ClassificationPrediction)
    probs = torch.stack([torch.softmax(post.member(i)(x), -1) for i in range(3)]).mean(0)
    torch.testing.assert_close(pred.probs, probs, rtol=1e-5, atol=1e-6)


def test_ensemble_sample_latents_are_members_by_site(small_data):
    x, y = small_data
    post = DeepEnsemble(size=4, **FAST).fit(regression_model(), x, y)
    draws = post.sample_latents()
    assert set(draws) == set(post.model.site_names) and draws["2.weight"].shape == (4, 32, 32)
    a, b = post.predict(x), post.model.predict_from_samples(x, draws)
    torch.testing.assert_close(a.loc_samples, b.loc_samples)
    assert post.sample_latents(9)["sigma"].shape == (9,)


def test_ensemble_minibatches_epochs_and_dataloader(small_data):
    x, y = small_data
    post = DeepEnsemble(size=2, epochs=3, batch_size=16, progress=False).fit(regression_model(), x, y)
    assert post.fit_info["num_steps"] == 3 * (40 // 16) and post.fit_info["losses"].shape == (6, 2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=10)
    post = pyrobdl.fit(regression_model(), loader, method="ensemble", size=2, epochs=2, progress=False)
    assert post.fit_info["num_steps"] == 8 and torch.isfinite(post.predict(x).mean).all()


# ----------------------------------------------------------------------------- dropout and DropConnect
def test_dropout_goes_before_hidden_layers_and_respects_existing_dropout(small_data):
    x, y = small_data
    post = MCDropout(**FAST).fit(regression_model(), x, y)
    assert [(e["module"], e["where"], e["p"]) for e in post.plan] == [("2", "input", 0.1), ("4", "input", 0.1)]
    assert MCDropout(layers="all", **FAST).fit(regression_model(), x, y).plan[0]["module"] == "0"
    # a network with its own dropout keeps it (and its rate) and gets nothing inserted
    net = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    post = MCDropout(**FAST).fit(BayesianNetwork(net), x, y)
    assert [(e["module"], e["where"], e["p"], e["fold"]) for e in post.plan] == [("2", "replace", 0.3, "3")]
    assert MCDropout(p=0.2, **FAST).fit(BayesianNetwork(net), x, y).plan[0]["p"] == 0.2
    # with a Bayesian head only, dropout goes into the head
    head_net = nn.Sequential(mlp(1, 8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    post = MCDropout(**FAST).fit(BayesianNetwork(head_net, bayesian=["2.*", "4.*"]), x, y)
    assert [e["module"] for e in post.plan] == ["2", "4"]


def test_dropout_on_at_prediction_off_in_eval_path(small_data):
    x, y = small_data
    post = MCDropout(p=0.3, **FAST).fit(regression_model(), x, y)
    pred = post.predict(x, num_samples=50)
    assert (pred.epistemic_variance > 0).all()  # samples differ: dropout is on
    net = post.net
    net.eval()
    torch.testing.assert_close(net(x), net(x))  # eval path: deterministic ...
    torch.testing.assert_close(net(x), post.model.net(x))  # ... and equal to the plain trained net
    net.train()
    assert not torch.equal(net(x), net(x))  # training path: dropout on
    net.eval()
    # each sample is one mask shared by all inputs: splitting the inputs into row chunks
    # (tiny max_memory) gives the same samples under the same seed
    torch.manual_seed(5)
    a = post.predict(x, num_samples=8)
    torch.manual_seed(5)
    b = post.predict(x, num_samples=8, chunk_size=8, max_memory=4096)
    torch.testing.assert_close(a.loc_samples, b.loc_samples)


@pytest.mark.parametrize("cls", [MCDropout, MCDropConnect])
def test_p_zero_gives_identical_samples(small_data, cls):
    x, y = small_data
    post = cls(p=0.0, **FAST).fit(regression_model(), x, y)
    pred = post.predict(x, num_samples=10)
    assert torch.equal(pred.loc_samples, pred.loc_samples[:1].expand_as(pred.loc_samples))
    torch.testing.assert_close(pred.loc_samples[0], post.net.eval()(x)[:, 0])


def test_dropout_activation_path_when_masks_are_not_on_weights(small_data):
    """A Dropout that is not right before a Linear masks activations: still one vmap pass, no weight samples."""
    x, y = small_data
    net = nn.Sequential(nn.Linear(1, 16), nn.Dropout(0.3), nn.Tanh(), nn.Linear(16, 1))
    post = MCDropout(**FAST).fit(BayesianNetwork(net), x, y)
    assert not post.in_weight_space
    assert (post.predict(x, num_samples=20).epistemic_variance > 0).all()
    with pytest.raises(TypeError, match="no weight-space samples"):
        post.sample_latents(3)


@pytest.mark.parametrize("cls", [MCDropout, MCDropConnect])
def test_masked_weight_samples(small_data, cls):
    x, y = small_data
    post = cls(p=0.25, **FAST).fit(regression_model(), x, y)
    draws = post.sample_latents(400)
    w = post.model.net[2].weight
    zero = draws["2.weight"] == 0
    if cls is MCDropout:  # whole input columns dropped, the others scaled by 1/(1-p)
        assert (zero.all(1) | ~zero.any(1)).all()
        frac = zero[:, 0, :].float().mean()
    else:
        frac = zero.float().mean()
    # 400*32 (dropout) or 400*1024 Bernoulli(0.25) draws: 5 standard errors ~ 0.017
    assert abs(float(frac) - 0.25) < 0.02
    kept = draws["2.weight"][~zero]
    torch.testing.assert_close(kept, (w.detach().expand_as(zero)[~zero] / 0.75))
    assert draws["0.weight"].shape == (400, 32, 1)


def test_input_masks_fold_into_weights():
    """Dropping inputs = masking weight columns / the kernel slices reading a channel (grouped, transposed)."""
    torch.manual_seed(0)
    cases = [(nn.Linear(6, 3), torch.randn(5, 6)), (nn.Conv2d(4, 6, 3, groups=2), torch.randn(5, 4, 7, 7)),
             (nn.ConvTranspose1d(4, 2, 3), torch.randn(5, 4, 9))]
    for layer, x in cases:
        n_in = x.shape[1]
        z = torch.bernoulli(torch.full((1, n_in), 0.5)) / 0.5
        masked_input = x * z.reshape((1, n_in) + (1,) * (x.dim() - 2))
        w = layer.weight * _input_mask(layer, z)[0]
        out = torch.func.functional_call(layer, {"weight": w}, (x,))
        torch.testing.assert_close(out, layer(masked_input), rtol=1e-5, atol=1e-5)


def test_weight_decay_from_prior_formula():
    """lambda_j = keep_j / (2 s^2 N) on the sum of squares; a float replaces it."""
    model = BayesianNetwork(mlp(h=4), prior=priors.Normal(0.0, 2.0))
    params = dict(model.net.named_parameters())
    keep = {"2.weight": 0.9, "4.weight": 0.9}
    got = _penalty(model, "prior", 100, keep)(params)
    want = sum((keep.get(n, 1.0) / (2 * 4.0 * 100)) * p.pow(2).sum() for n, p in params.items())
    torch.testing.assert_close(got, want)
    got = _penalty(model, 0.01, 100, keep)(params)
    torch.testing.assert_close(got, 0.01 * sum(p.pow(2).sum() for p in params.values()))
    assert _penalty(model, 0.0, 100, keep) is None


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
        MCDropout(**FAST).fit(BayesianNetwork(nn.Sequential(nn.Linear(1, 1))), x, y)
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


# ----------------------------------------------------------------------------- statistical behaviour
@pytest.fixture(scope="module")
def toy():
    return toy_regression(n_train=200, n_test=201, n_ood=0, normalize=True, seed=0)


TOY_SETTINGS = {
    "mc-dropout": dict(p=0.1, num_steps=600),
    "mc-dropconnect": dict(p=0.1, num_steps=600),
    "ensemble": dict(size=5, num_steps=400),
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
    kw = dict(size=5) if method == "ensemble" else dict(p=0.05)
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


# ----------------------------------------------------------------------------- hand-batched chains == general vmap path
from pyrobdl.inference import baselines as _bl  # noqa: E402
from pyrobdl.network import _chain_plan  # noqa: E402


@pytest.fixture
def general_path(monkeypatch):
    """Returns a context switching pyrobdl to its general vmap/functional_call path."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        monkeypatch.setattr(_bl, "_USE_CHAIN_PATH", False)
        try:
            yield
        finally:
            monkeypatch.setattr(_bl, "_USE_CHAIN_PATH", True)

    return ctx


class _Scale(nn.Module):
    """A custom module: the chain path cannot know what it does."""

    def __init__(self):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(1.5))

    def reset_parameters(self):
        nn.init.uniform_(self.s, 1.0, 2.0)

    def forward(self, x):
        return self.s * x


class _MyReLU(nn.ReLU):
    def forward(self, x):
        return super().forward(x) - 0.1


def test_chain_detection_accepts_linear_chains_only():
    chain = _chain_plan(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Sequential(nn.Linear(4, 4, bias=False), nn.GELU()), nn.Linear(4, 1)))
    assert [(s[0], s[2], s[3]) if s[0] == "linear" else (s[0], type(s[1]).__name__, None) for s in chain.steps] == [
        ("linear", "0.weight", "0.bias"), ("act", "Tanh", None), ("linear", "2.0.weight", None),
        ("act", "GELU", None), ("linear", "3.weight", "3.bias"),
    ]
    rejected = [
        nn.Linear(2, 1),  # not a Sequential (a plain module: its forward is its own)
        nn.Sequential(nn.Linear(2, 4), _Scale(), nn.Linear(4, 1)),  # custom module
        nn.Sequential(nn.Linear(2, 4), _MyReLU(), nn.Linear(4, 1)),  # subclass overriding forward
        nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)),  # buffers, mode-dependent
        nn.Sequential(nn.Linear(2, 4), nn.Dropout(0.1), nn.Linear(4, 1)),  # random in train mode
        nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(4, 1)),
        nn.Sequential(nn.Tanh()),  # no Linear layer
        nn.Sequential(nn.ReLU(inplace=True), nn.Linear(2, 1)),  # would modify the caller's input
    ]
    for net in rejected:
        assert _chain_plan(net) is None, net
    hooked = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    hooked[2].register_forward_hook(lambda m, a, out: out * 2)
    assert _bl._usable_chain(_chain_plan(hooked)) is None
    # in eval mode (prediction), dropout modules are the identity
    assert _chain_plan(rejected[4], dropout_is_identity=True) is not None
    # in-place activations after the first layer act on fresh activations, as in the net
    inplace = nn.Sequential(nn.Linear(2, 4), nn.ReLU(inplace=True), nn.Linear(4, 1))
    chain = _chain_plan(inplace)
    x = torch.randn(5, 2)
    torch.testing.assert_close(_bl._chain_forward_samples(chain, dict(inplace.named_parameters()), x, 3), inplace(x).expand(3, 5, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chain_forward_equals_vmap_functional_call(dtype):
    """Every mix of shared and per-sample weights, shared or per-sample inputs."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ELU(), nn.Sequential(nn.Linear(8, 8, bias=False), nn.Tanh()), nn.Linear(8, 2)).to(dtype)
    chain = _chain_plan(net)
    named = {k: v.detach() for k, v in net.named_parameters()}
    S, N = 4, 6
    stacked = {k: v + 0.1 * torch.randn((S,) + v.shape, dtype=dtype) for k, v in named.items()}
    x = torch.randn(N, 3, dtype=dtype)
    xs = torch.randn(S, N, 3, dtype=dtype)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    for batched in [set(), {"2.0.weight"}, {"0.weight", "3.bias"}, set(named)]:
        params = {k: stacked[k] if k in batched else v for k, v in named.items()}
        per = {k: stacked[k] for k in batched}
        for inp, in_dim in [(x, None), (xs, 0)]:
            got = _bl._chain_forward_samples(chain, params, inp, S)
            if per:
                want = torch.func.vmap(lambda w, xi: torch.func.functional_call(net, w, (xi,), strict=False),
                                       in_dims=(0, in_dim))(per, inp)
            else:
                want = net(inp).expand(S, N, 2) if in_dim is None else net(inp)
            assert got.shape == (S, N, 2) and got.dtype == dtype
            torch.testing.assert_close(got, want, **tol)


def test_ensemble_chain_path_equals_vmap_path(small_data, general_path):
    """Outputs, the per-member loss, its gradients and one Adam step: the same on both paths."""
    x, y = small_data
    model = regression_model()
    algo = DeepEnsemble(size=3, num_steps=3, lr=1e-2, progress=False, seed=0)
    post = algo.fit(model, x, y)
    assert post._chain is not None
    xs = x[torch.randperm(40)[:24]].reshape(3, 8, 1)
    ys = torch.randn(3, 8)

    def evaluate():
        params = {k: v.detach().clone().requires_grad_(True) for k, v in post.params.items()}
        lats = _bl._constrain(post.model, post._raw)
        out_shared = post.forward(x, params)
        loss, nll = algo._loss(post, params, lats, xs, ys, None, None)
        grads = torch.autograd.grad(loss, list(params.values()))
        return out_shared.detach(), nll, grads

    fast = evaluate()
    with general_path():
        slow = evaluate()
    torch.testing.assert_close(fast[0], slow[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[1], slow[1], rtol=1e-5, atol=1e-6)
    for g_fast, g_slow in zip(fast[2], slow[2]):
        torch.testing.assert_close(g_fast, g_slow, rtol=1e-4, atol=1e-6)
    # a few full-batch training steps from the same weights: the same trained members
    a = DeepEnsemble(size=3, num_steps=3, progress=False, warm_start=post).fit(model, x, y)
    with general_path():
        b = DeepEnsemble(size=3, num_steps=3, progress=False, warm_start=post).fit(model, x, y)
    for k in a.params:
        torch.testing.assert_close(a.params[k], b.params[k], rtol=1e-5, atol=1e-6, msg=k)
    torch.testing.assert_close(a._raw["sigma"], b._raw["sigma"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.fit_info["losses"], b.fit_info["losses"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["cnn", "custom module"])
def test_ensemble_fallback_for_nets_the_chain_path_cannot_take(kind):
    """A small CNN and a net with a custom module train and predict on the general
    vmap path, and still match a loop over the members."""
    torch.manual_seed(0)
    if kind == "cnn":
        net = nn.Sequential(nn.Conv1d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6, 1))
        x = torch.randn(30, 1, 8)
    else:
        net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), _Scale(), nn.Linear(8, 1))
        x = torch.randn(30, 2)
    y = x.flatten(1).sum(1)
    post = DeepEnsemble(size=3, num_steps=20, progress=False, seed=0).fit(BayesianNetwork(net), x, y)
    assert post._chain is None
    pred = post.predict(x)
    loop = torch.stack([post.member(i)(x)[:, 0] for i in range(3)])
    torch.testing.assert_close(pred.loc_samples, loop, rtol=1e-5, atol=1e-5)
    # trained: the loss went down
    losses = post.fit_info["losses"]
    assert (losses[-1] < losses[0]).all()


def test_ensemble_frozen_parameters_stay_fixed(small_data):
    """Frozen parameters are outside the flat trained buffer and keep their values."""
    x, y = small_data
    net = mlp()
    net[0].bias.requires_grad_(False)
    post = DeepEnsemble(size=3, num_steps=10, progress=False, seed=0).fit(BayesianNetwork(net), x, y)
    init = DeepEnsemble._init_members(BayesianNetwork(net), post.seeds)
    for i in range(3):
        torch.testing.assert_close(post.params["0.bias"][i], init[i][0].bias.detach())
        assert not torch.allclose(post.params["0.weight"][i], init[i][0].weight.detach())
    assert not post.params["0.bias"].requires_grad and post.params["0.weight"].requires_grad


@pytest.mark.parametrize("cls", [MCDropout, MCDropConnect])
def test_masked_prediction_chain_path_equals_vmap_path(small_data, cls, general_path):
    """Same seed -> same masks -> the same samples on both paths, chunked or not."""
    x, y = small_data
    post = cls(p=0.3, **FAST).fit(regression_model(), x, y)
    assert post._chain is not None
    for kw in [{}, dict(chunk_size=7, max_memory=4096)]:
        torch.manual_seed(11)
        fast = post.predict(x, num_samples=20, **kw)
        with general_path():
            torch.manual_seed(11)
            slow = post.predict(x, num_samples=20, **kw)
        torch.testing.assert_close(fast.loc_samples, slow.loc_samples, rtol=1e-5, atol=1e-6)
    # and each sample is the network run with that sample's masked weights (a loop, for reference)
    torch.manual_seed(11)
    draws = post.sample_latents(20)
    torch.manual_seed(11)
    fast = post.predict(x, num_samples=20)
    names = {post.model.parameter_site(n): n for n in post.model.bayesian_parameters}
    for s in (0, 7, 19):
        w = {names[site]: v[s] for site, v in draws.items() if site in names}
        ref = torch.func.functional_call(post.model.net, w, (x,))[:, 0]
        torch.testing.assert_close(fast.loc_samples[s], ref, rtol=1e-5, atol=1e-6)


def test_dropout_masks_are_independent_across_samples(small_data):
    """p = 0.5: each sample's column mask is Bernoulli(0.5), independent of the other samples'."""
    x, y = small_data
    post = MCDropout(p=0.5, **FAST).fit(regression_model(), x, y)
    torch.manual_seed(0)
    z = (post._masked_weights(2000)["2.weight"][:, 0, :] != 0).float()  # (S, 32) kept columns
    # 2000*32 draws: 5 standard errors of the keep rate ~ 0.0063
    assert abs(float(z.mean()) - 0.5) < 0.01
    # agreement of two different samples' masks: 1/2 when independent; 1999*32 pairs, 5 s.e. ~ 0.014
    agree = (z[1:] == z[:-1]).float().mean()
    assert abs(float(agree) - 0.5) < 0.02
    # sample correlation between samples (32 columns each): the mean over 2000 pairs is ~0
    zc = z - z.mean(1, keepdim=True)
    corr = (zc[1:] * zc[:-1]).sum(1) / (zc[1:].norm(dim=1) * zc[:-1].norm(dim=1)).clamp_min(1e-9)
    assert abs(float(corr.mean())) < 0.03  # s.e. of the mean ~ 0.18 / sqrt(2000) = 0.004
    # and the predictive samples differ from one another (no repeated masks)
    out = post.predict(x, num_samples=50).loc_samples
    assert torch.unique(out, dim=0).shape[0] == 50


@pytest.mark.cuda
@pytest.mark.parametrize("method", METHODS)
def test_chain_paths_follow_the_input_device(small_data, method, general_path):
    x, y = (t.cuda() for t in small_data)
    post = pyrobdl.fit(regression_model(), x, y, method=method, **FAST)
    assert post._chain is not None and post.device.type == "cuda"
    torch.manual_seed(0)
    a = post.predict(x, num_samples=10)
    with general_path():
        torch.manual_seed(0)
        b = post.predict(x, num_samples=10)
    assert a.loc_samples.device.type == "cuda"
    torch.testing.assert_close(a.loc_samples, b.loc_samples, rtol=1e-4, atol=1e-5)


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


def test_ensemble_epoch_gather_equals_per_step_indexing(small_data, monkeypatch):
    """Gathering each epoch's shuffles at once or indexing per step: the same batches, the same fit."""
    x, y = small_data
    fits = []
    for limit in (_bl._PERMUTED_BYTES, 0):
        monkeypatch.setattr(_bl, "_PERMUTED_BYTES", limit)
        fits.append(DeepEnsemble(size=3, epochs=3, batch_size=8, progress=False, seed=4).fit(regression_model(), x, y))
    a, b = fits
    assert a.fit_info["num_steps"] == 15
    torch.testing.assert_close(a.fit_info["losses"], b.fit_info["losses"], rtol=0, atol=0)
    for n in a.params:
        assert torch.equal(a.params[n], b.params[n])


@pytest.mark.parametrize("options", [dict(weight_decay="prior"), dict(adversarial=True, epsilon=0.05),
                                     dict(batch_size=8, epochs=2, weight_decay=0.01)])
def test_ensemble_training_chain_path_equals_vmap_path(small_data, general_path, options):
    """Training on the hand-batched path (weights stored transposed in one flat leaf) and on
    the general path give the same members, with weight decay, FGSM and minibatches too;
    a frozen layer stays frozen on both."""
    x, y = small_data
    net = mlp()
    net[4].bias.requires_grad_(False)
    model = BayesianNetwork(net)
    fits = []
    for general in (False, True):
        kw = dict(size=3, num_steps=4, lr=1e-2, progress=False, seed=2, **options)
        if general:
            with general_path():
                fits.append(DeepEnsemble(**kw).fit(model, x, y))
        else:
            fits.append(DeepEnsemble(**kw).fit(model, x, y))
    a, b = fits
    for k in a.params:
        assert a.params[k].shape == b.params[k].shape and a.params[k].is_contiguous()
        torch.testing.assert_close(a.params[k], b.params[k], rtol=1e-5, atol=1e-6, msg=k)
    torch.testing.assert_close(a.fit_info["losses"], b.fit_info["losses"], rtol=1e-5, atol=1e-6)
    assert torch.equal(a.params["4.bias"], b.params["4.bias"]) and not a.params["4.bias"].requires_grad

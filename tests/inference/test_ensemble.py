"""Deep ensembles: the vectorised members equal a loop over members, the mixture formula,
training on the fast path equals the general path, and the seed rule."""
import math

import pyro
import pytest
import torch
from torch import nn

import pyrobdl
from point_helpers import FAST, Scale, mlp, regression_model
from pyrobdl import BayesianNetwork, likelihoods
from pyrobdl._fast import general_path
from pyrobdl.inference import DeepEnsemble, EnsemblePosterior
from pyrobdl.inference import ensemble as _ens
from pyrobdl.inference.optim import LIKELIHOOD_LR
from pyrobdl.prediction import ClassificationPrediction

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:the fitted .*:UserWarning")]
FULL_BATCH = dict(batch_size=None)


# ----------------------------------------------------------------------------- vectorised == loop
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
    algo = DeepEnsemble(size=3, num_steps=1, lr=1e-2, progress=False, seed=0, adversarial=adversarial, epsilon=0.05, **FULL_BATCH)
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
    # (the noise's latent at its own learning rate, max(lr, LIKELIHOOD_LR))
    nxt = DeepEnsemble(size=3, num_steps=1, lr=1e-2, progress=False, adversarial=adversarial, epsilon=0.05, warm_start=post, **FULL_BATCH).fit(model, x, y)
    for i, net in enumerate(members):
        log_sigma = post._raw["sigma"][i].clone().requires_grad_(True)  # the latent's unconstrained value
        opt = torch.optim.Adam([{"params": list(net.parameters()), "lr": 1e-2},
                                {"params": [log_sigma], "lr": max(1e-2, LIKELIHOOD_LR)}])
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
    pred = post.predict(torch.zeros(5, 1))  # every member once
    assert pred.num_samples == 3
    with pytest.warns(UserWarning, match="each is used 2 times"):  # a multiple of M: the same mixture
        twice = post.predict(torch.zeros(5, 1), num_samples=6)
    assert twice.num_samples == 6
    torch.testing.assert_close(twice.mean, pred.mean)
    torch.testing.assert_close(twice.variance, pred.variance)
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
    # ArviZ export: each member once (one chain of M draws)
    d = post.draws()
    assert d.num_chains == 1 and d.num_draws == 4 and not d.markov_chains


def test_ensemble_minibatches_epochs_and_dataloader(small_data):
    x, y = small_data
    post = DeepEnsemble(size=2, epochs=3, batch_size=16, progress=False).fit(regression_model(), x, y)
    assert post.fit_info["num_steps"] == 3 * (40 // 16) and post.fit_info["losses"].shape == (6, 2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=10)
    post = pyrobdl.fit(regression_model(), loader, method="ensemble", size=2, epochs=2, progress=False)
    assert post.fit_info["num_steps"] == 8 and torch.isfinite(post.predict(x).mean).all()


def test_defaults_are_the_measured_ones(small_data):
    """5 members, epochs chosen on held-out rows, minibatches of 32, lr 2e-2; num_steps or
    epochs replace the choice; below AUTO_MIN_DATA rows "auto" trains AUTO_FALLBACK_EPOCHS."""
    from pyrobdl.inference.point import AUTO_FALLBACK_EPOCHS, AUTO_MIN_DATA

    algo = DeepEnsemble()
    assert (algo.size, algo.epochs, algo.batch_size, algo.lr, algo.weight_decay) == (5, "auto", 32, 2e-2, 0.0)
    assert DeepEnsemble.variance_head and DeepEnsemble.family == "ensemble"
    x, y = small_data  # 40 rows < AUTO_MIN_DATA: no held-out split; one minibatch of 32 per epoch
    assert len(x) < AUTO_MIN_DATA
    post = DeepEnsemble(size=2, progress=False).fit(regression_model(), x, y)
    assert post.fit_info["num_steps"] == AUTO_FALLBACK_EPOCHS and post.fit_info["epoch_scores"] is None
    assert DeepEnsemble(size=2, num_steps=7, progress=False).fit(regression_model(), x, y).fit_info["num_steps"] == 7
    assert DeepEnsemble(size=2, epochs=3, progress=False).fit(regression_model(), x, y).fit_info["num_steps"] == 3


def test_epochs_option_is_checked():
    with pytest.raises(ValueError, match="epochs must be a positive integer or 'auto'"):
        DeepEnsemble(epochs="best")
    with pytest.raises(ValueError, match="epochs"):
        DeepEnsemble(epochs=0)
    from pyrobdl.inference import MCDropout  # no "auto" epochs there: the message does not offer it

    with pytest.raises(ValueError, match=r"epochs must be a positive integer, got 'auto'"):
        MCDropout(epochs="auto")


def test_epoch_selector_stops_once_the_best_epoch_is_in_the_first_half():
    """Scores rise to epoch 7 and fall after: the run stops at epoch max(2*7, min_epochs);
    with a trailing mean over 3 epochs the best is epoch 8 (scores at 6, 7, 8: -1, 0, -1)."""
    from pyrobdl.inference.point import EpochSelector

    curve = {e: -abs(e - 7) for e in range(1, 100)}

    class FakePred:
        def __init__(self, v):
            self.v = v

        def log_prob(self, y):
            return torch.full_like(y, float(self.v))

    class FakePost:
        def __init__(self, e):
            self.e = e

        def predict(self, x, num_samples=None):
            return FakePred(curve[self.e])

    class Progress:
        def __init__(self, e):
            self.epoch, self.posterior = float(e), FakePost(e)

    sel = EpochSelector(torch.zeros(3, 1), torch.zeros(3), min_epochs=5, smoothing=1)
    stops = [e for e in range(1, 100) if sel(Progress(e))]
    assert stops[0] == 14 and sel.best_epoch == 7 and sel.scores[7] == 0.0
    sel = EpochSelector(torch.zeros(3, 1), torch.zeros(3), min_epochs=20, smoothing=1)
    assert [e for e in range(1, 100) if sel(Progress(e))][0] == 20
    # smoothing over 3 epochs: the trailing mean peaks at epoch 8 (scores 6..8 -> -2/3)
    sel = EpochSelector(torch.zeros(3, 1), torch.zeros(3), min_epochs=5, smoothing=3)
    assert [e for e in range(1, 100) if sel(Progress(e))][0] == 16 and sel.best_epoch == 8


def test_auto_epochs_train_longer_on_a_smooth_noiseless_function_than_on_noise():
    """The held-out choice follows the data: a noiseless function keeps improving (many epochs),
    pure noise is fitted best early (few). Seeded; measured 901 against 98 epochs on these 200
    rows, so a factor of 4 leaves room for another platform's arithmetic."""
    from pyrobdl.inference.point import auto_epoch_budget

    torch.manual_seed(0)
    x = torch.randn(200, 4)
    smooth = torch.sin(2 * x[:, 0])
    noise = torch.randn(200)

    def chosen(y):
        model = BayesianNetwork(mlp(d_in=4), prior=pyrobdl.priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian())
        post = DeepEnsemble(size=2, seed=0, progress=False).fit(model, x, y)
        info = post.fit_info
        assert info["num_steps"] == info["epochs"] * (200 // 32)
        ran = max(info["epoch_scores"])  # the trial stops at twice the best epoch or at its budget
        assert ran >= 2 * info["epochs"] or ran == auto_epoch_budget(160 // 32)
        return info["epochs"]

    e_smooth, e_noise = chosen(smooth), chosen(noise)
    assert e_smooth >= 4 * e_noise, (e_smooth, e_noise)


# ----------------------------------------------------------------------------- the seed rule
def test_seed_rule_member_zero_is_the_given_network_the_others_fresh_draws(small_data):
    x, y = small_data
    model = regression_model()
    # without a seed, member 0 starts from the network as built: with lr tiny it stays there
    post = DeepEnsemble(size=3, num_steps=1, lr=1e-12, progress=False).fit(model, x, y)
    for n, p in model.net.named_parameters():
        torch.testing.assert_close(post.params[n][0], p.detach(), rtol=0, atol=1e-9)
        assert not torch.allclose(post.params[n][1], p.detach())
    # with a seed: the same ensemble whenever the model was built
    preds = []
    for build_seed in (3, 4):
        torch.manual_seed(build_seed)
        m = regression_model()
        pyro.set_rng_seed(100 + build_seed)  # and whatever the random state before the fit
        post = DeepEnsemble(size=3, epochs=2, batch_size=8, progress=False, seed=11).fit(m, x, y)
        preds.append(post.predict(x).loc_samples)
    torch.testing.assert_close(preds[0], preds[1], rtol=0, atol=0)


@pytest.mark.parametrize("seed, error", [("a", TypeError), (-1, ValueError)])
def test_seed_errors_are_the_template_rule(seed, error):
    with pytest.raises(error, match="seed must be"):
        DeepEnsemble(seed=seed)


# ----------------------------------------------------------------------------- fast path == general path
def test_ensemble_chain_path_equals_vmap_path(small_data):
    """Outputs, the per-member loss, its gradients and one Adam step: the same on both paths."""
    x, y = small_data
    model = regression_model()
    algo = DeepEnsemble(size=3, num_steps=3, lr=1e-2, progress=False, seed=0, **FULL_BATCH)
    post = algo.fit(model, x, y)
    assert post.model._chain() is not None
    xs = x[torch.randperm(40)[:24]].reshape(3, 8, 1)
    ys = torch.randn(3, 8)

    def evaluate():
        params = {k: v.detach().clone().requires_grad_(True) for k, v in post.params.items()}
        lats = post._constrain(post._raw)
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
    a = DeepEnsemble(size=3, num_steps=3, progress=False, warm_start=post, **FULL_BATCH).fit(model, x, y)
    with general_path():
        b = DeepEnsemble(size=3, num_steps=3, progress=False, warm_start=post, **FULL_BATCH).fit(model, x, y)
    for k in a.params:
        torch.testing.assert_close(a.params[k], b.params[k], rtol=1e-5, atol=1e-6, msg=k)
    torch.testing.assert_close(a._raw["sigma"], b._raw["sigma"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.fit_info["losses"], b.fit_info["losses"], rtol=1e-5, atol=1e-6)


def test_switch_forces_the_general_path_in_training_and_prediction_float64(small_data, monkeypatch):
    """With the one switch off, no chain pass runs anywhere; float64 fits and predictions agree."""
    from pyrobdl._fast import chain

    x, y = (t.double() for t in small_data)
    calls = []
    real = chain.run
    monkeypatch.setattr(chain, "run", lambda *a, **k: calls.append(1) or real(*a, **k))
    fits = []
    for general in (False, True):
        model = BayesianNetwork(mlp().double())
        kw = dict(size=3, epochs=2, batch_size=8, progress=False, seed=5, weight_decay="prior")
        calls.clear()
        if general:
            with general_path():
                post = DeepEnsemble(**kw).fit(model, x, y)
                pred = post.predict(x, chunk_size=2, max_memory=2000)
            assert not calls
        else:
            post = DeepEnsemble(**kw).fit(model, x, y)
            pred = post.predict(x, chunk_size=2, max_memory=2000)
            assert calls
        fits.append((post, pred))
    (a, pa), (b, pb) = fits
    for k in a.params:
        torch.testing.assert_close(a.params[k], b.params[k], rtol=1e-10, atol=1e-12, msg=k)
    torch.testing.assert_close(pa.loc_samples, pb.loc_samples, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["cnn", "custom module"])
def test_ensemble_fallback_for_nets_the_chain_path_cannot_take(kind):
    """A small CNN and a net with a custom module train and predict on the general
    vmap path, and still match a loop over the members."""
    torch.manual_seed(0)
    if kind == "cnn":
        net = nn.Sequential(nn.Conv1d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6, 1))
        x = torch.randn(30, 1, 8)
    else:
        net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), Scale(), nn.Linear(8, 1))
        x = torch.randn(30, 2)
    y = x.flatten(1).sum(1)
    post = DeepEnsemble(size=3, num_steps=20, progress=False, seed=0).fit(BayesianNetwork(net), x, y)
    assert post.model._chain() is None
    pred = post.predict(x)
    loop = torch.stack([post.member(i)(x)[:, 0] for i in range(3)])
    torch.testing.assert_close(pred.loc_samples, loop, rtol=1e-5, atol=1e-5)
    # trained: the loss went down
    losses = post.fit_info["losses"]
    assert (losses[-1] < losses[0]).all()


def test_ensemble_frozen_parameters_stay_fixed(small_data):
    """Frozen parameters are outside the flat trained buffer and keep their values: member 0's
    those of the given network, the others' their fresh draws."""
    x, y = small_data
    net = mlp()
    net[0].bias.requires_grad_(False)
    post = DeepEnsemble(size=3, num_steps=10, progress=False).fit(BayesianNetwork(net), x, y)
    torch.testing.assert_close(post.params["0.bias"][0], net[0].bias.detach())
    assert not torch.allclose(post.params["0.bias"][1], net[0].bias.detach())
    assert not post.params["0.bias"].requires_grad and post.params["0.weight"].requires_grad
    nxt = DeepEnsemble(size=3, num_steps=10, progress=False, warm_start=post).fit(BayesianNetwork(net), x, y)
    for i in range(3):
        torch.testing.assert_close(nxt.params["0.bias"][i], post.params["0.bias"][i])
        assert not torch.allclose(nxt.params["0.weight"][i], post.params["0.weight"][i])


def test_ensemble_epoch_gather_equals_per_step_indexing(small_data, monkeypatch):
    """Gathering each epoch's shuffles at once or indexing per step: the same batches, the same fit."""
    x, y = small_data
    fits = []
    for limit in (_ens._PERMUTED_BYTES, 0):
        monkeypatch.setattr(_ens, "_PERMUTED_BYTES", limit)
        fits.append(DeepEnsemble(size=3, epochs=3, batch_size=8, progress=False, seed=4).fit(regression_model(), x, y))
    a, b = fits
    assert a.fit_info["num_steps"] == 15
    torch.testing.assert_close(a.fit_info["losses"], b.fit_info["losses"], rtol=0, atol=0)
    for n in a.params:
        assert torch.equal(a.params[n], b.params[n])


@pytest.mark.parametrize("options", [dict(weight_decay="prior", batch_size=None), dict(adversarial=True, epsilon=0.05, batch_size=None),
                                     dict(batch_size=8, epochs=2, weight_decay=0.01)])
def test_ensemble_training_chain_path_equals_vmap_path(small_data, options):
    """Training on the chain path and on the general path give the same members, with weight
    decay, FGSM and minibatches too; a frozen layer stays frozen on both."""
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

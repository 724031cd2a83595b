"""CategoricalLogitNoise: classification with learned logit noise (Kendall & Gal, 2017)."""
import math

import pyro
import pytest
import torch
from torch import nn

import pyrobdl
from pyrobdl import BayesianNetwork, likelihoods
from pyrobdl.likelihoods import CategoricalLogitNoise, HeteroscedasticCategorical, get_likelihood
from pyrobdl.prediction import ClassificationPrediction


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny networks: one intra-op thread is faster and immune to OpenMP stalls on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def outputs(logits, log_var):
    return torch.cat([logits, log_var], -1)


def test_output_widths_and_bad_input():
    lik = CategoricalLogitNoise()
    out = torch.randn(5, 6)  # 3 classes: 3 logits + 3 log-variances
    assert lik.num_classes(out) == 3
    assert lik.log_probs(out).shape == (5, 3)
    shared = CategoricalLogitNoise(shared_variance=True)
    assert shared.num_classes(torch.randn(5, 4)) == 3
    with pytest.raises(ValueError, match="2\\*C outputs"):
        lik.check_output(torch.randn(5, 5))
    with pytest.raises(ValueError, match="C \\+ 1 outputs"):
        shared.check_output(torch.randn(5, 2))
    with pytest.raises(ValueError, match="labels must lie in \\[0, 3\\)"):
        lik.check_target(torch.tensor([0, 3]), out[:2])
    with pytest.raises(TypeError, match="integer class labels"):
        lik.check_target(torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="num_draws must be >= 1"):
        CategoricalLogitNoise(num_draws=0)
    with pytest.raises(ValueError, match="min_log_variance"):
        CategoricalLogitNoise(min_log_variance=1.0, max_log_variance=0.0)


def test_log_prob_is_log_of_mean_softmax_over_draws():
    torch.manual_seed(0)
    lik = CategoricalLogitNoise(num_draws=20, noise_seed=3)
    logits, log_var = torch.randn(4, 3), torch.randn(4, 3)
    y = torch.tensor([0, 2, 1, 1])
    g = torch.Generator().manual_seed(3)
    eps = torch.randn((20, 4, 3), generator=g, dtype=torch.float64).float()  # the fixed noise: seeded, (T, N, C)
    probs = torch.softmax(logits + (0.5 * log_var).exp() * eps, -1).mean(0)
    lp = lik.log_prob(outputs(logits, log_var), y, {})
    torch.testing.assert_close(lp, probs[torch.arange(4), y].log())
    torch.testing.assert_close(lik.dist(outputs(logits, log_var), {}).log_prob(y), lp)
    # common random numbers: a deterministic function of the output (what HMC needs)
    assert lik.deterministic and torch.equal(lp, lik.log_prob(outputs(logits, log_var), y, {}))
    fresh = CategoricalLogitNoise(num_draws=20, fixed_noise=False)
    assert not fresh.deterministic
    assert not torch.equal(fresh.log_prob(outputs(logits, log_var), y, {}), fresh.log_prob(outputs(logits, log_var), y, {}))


def test_no_noise_is_plain_softmax_and_noise_flattens_probabilities():
    logits = torch.tensor([[3.0, 0.0, -1.0]])
    lik = CategoricalLogitNoise(num_draws=200)
    quiet = lik.log_probs(outputs(logits, torch.full((1, 3), -20.0)))
    torch.testing.assert_close(quiet, torch.log_softmax(logits, -1), rtol=1e-5, atol=1e-5)
    noisy = lik.log_probs(outputs(logits, torch.full((1, 3), 2.0))).exp()
    ent = lambda p: -(p * p.log()).sum(-1)  # noqa: E731
    assert ent(noisy) > ent(quiet.exp()) + 0.2  # averaging over noisy logits adds aleatoric entropy
    # the shared-variance form equals the per-logit form with equal variances
    shared = CategoricalLogitNoise(num_draws=200, shared_variance=True)
    torch.testing.assert_close(shared.log_probs(outputs(logits, torch.full((1, 1), 2.0))), noisy.log())


def test_variance_gradient_follows_kendall_and_gal():
    """More variance lowers the loss of a confidently wrong prediction and raises that of a confidently right one."""
    lik = CategoricalLogitNoise(num_draws=500)
    logits = torch.tensor([[4.0, 0.0], [4.0, 0.0]])
    log_var = torch.zeros(2, 2, requires_grad=True)
    nll = -lik.log_prob(outputs(logits, log_var), torch.tensor([1, 0]), {})
    (g,) = torch.autograd.grad(nll.sum(), log_var)
    assert g[0].sum() < 0  # wrong label: variance helps
    assert g[1].sum() > 0  # right label: variance hurts


def test_chunked_and_batched_evaluation_agree():
    lik = CategoricalLogitNoise(num_draws=7)
    out = torch.randn(5, 4, 6)  # 5 posterior samples, 4 points, 3 classes
    full = lik.log_probs(out)
    lik._chunk_elements = 7 * 4 * 3  # one sample per chunk
    torch.testing.assert_close(lik.log_probs(out), full)
    pred = lik.prediction(out, {})
    assert isinstance(pred, ClassificationPrediction) and pred.probs_samples.shape == (5, 4, 3)
    torch.testing.assert_close(pred.probs_samples.sum(-1), torch.ones(5, 4))


def test_registered_saved_config_and_alias():
    lik = CategoricalLogitNoise(num_draws=11, shared_variance=True, fixed_noise=False, noise_seed=4)
    again = get_likelihood(lik.to_config())
    assert type(again) is CategoricalLogitNoise and again.to_config() == lik.to_config()
    assert HeteroscedasticCategorical is CategoricalLogitNoise
    assert "CategoricalLogitNoise" in likelihoods.__all__


def test_pyro_model_and_deterministic_log_likelihood():
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 4))
    model = BayesianNetwork(net, likelihood=CategoricalLogitNoise(num_draws=16))
    x, y = torch.randn(10, 2), torch.randint(0, 2, (10,))
    tr = pyro.poutine.trace(model).get_trace(x, y)
    obs = tr.nodes["obs"]
    torch.testing.assert_close(obs["fn"].log_prob(obs["value"]), model.likelihood.log_prob(tr.nodes["_RETURN"]["value"], y, {}))
    values = {k: v.detach().unsqueeze(0) for k, v in ((n, tr.nodes[n]["value"]) for n in model.site_names)}
    # the potential HMC sees is deterministic with the default fixed noise
    assert torch.equal(model.log_likelihood(values, x, y), model.log_likelihood(values, x, y))


def test_works_with_variational_inference():
    x = torch.randn(40, 2)
    y = (x[:, 0] > 0).long()
    model = BayesianNetwork(nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 4)), likelihood=CategoricalLogitNoise(num_draws=8))
    pred = pyrobdl.fit(model, x, y, method="mean-field", num_steps=20, progress=False).predict(x, num_samples=10)
    assert isinstance(pred, ClassificationPrediction) and pred.probs.shape == (40, 2)


def test_works_with_nuts():
    """HMC needs a deterministic potential: the default fixed noise gives one."""
    x = torch.randn(30, 2)
    y = (x[:, 0] > 0).long()
    model = BayesianNetwork(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 4)), likelihood=CategoricalLogitNoise(num_draws=8))
    post = pyrobdl.fit(
        model, x, y, method="nuts", num_samples=20, warmup_steps=20, num_chains=1, compile=False,
        diagnose=False, progress=False, seed=0,
    )
    pred = post.predict(x)
    assert isinstance(pred, ClassificationPrediction) and pred.num_samples == 20


@pytest.mark.slow
def test_ensemble_learns_where_labels_are_noisy():
    """Labels are a clean function of x for x < 0 and coin flips for x > 0: the aleatoric part
    (expected entropy) is high where the labels are noisy, the epistemic part (mutual information) is not."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(400, 1, generator=g) * 2 - 1
    clean = (x[:, 0] < -0.5).long()
    y = torch.where(x[:, 0] < 0, clean, torch.randint(0, 2, (400,), generator=g))
    net = nn.Sequential(nn.Linear(1, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    model = BayesianNetwork(net, likelihood=CategoricalLogitNoise(num_draws=16))
    post = pyrobdl.fit(model, x, y, method="ensemble", size=3, num_steps=400, progress=False, seed=0)
    xt = torch.linspace(-0.95, 0.95, 39).unsqueeze(-1)
    pred = post.predict(xt)
    # the member probabilities are the noise-averaged softmax of each member's outputs
    member0 = model.likelihood.log_probs(post.member(0)(xt)).exp()
    torch.testing.assert_close(pred.probs_samples[0], member0, rtol=1e-5, atol=1e-6)
    noisy, tidy = xt[:, 0] > 0.1, (xt[:, 0] < -0.1) & ((xt[:, 0] + 0.5).abs() > 0.15)
    ale = pred.expected_entropy
    # coin flips: expected entropy near log 2 = 0.69; clean labels away from the boundary: near 0
    # (over 5 seeds: noisy 0.66-0.69, tidy 0.000, mutual information in the noisy part <= 0.013)
    assert float(ale[noisy].mean()) > 0.5 and float(ale[tidy].mean()) < 0.2
    assert float(pred.mutual_information[noisy].mean()) < 0.5 * float(ale[noisy].mean())
    assert math.isclose(float(pred.probs.sum(-1).mean()), 1.0, rel_tol=1e-5)

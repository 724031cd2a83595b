"""The Laplace approximation (pyrobdl.inference.laplace): exact on Bayesian linear regression,
GGN = Hessian for a linear-Gaussian model, K-FAC factors against the full GGN, marginal-
likelihood tuning against the closed form, the probit predictive against MC over the
linearised model, the defaults on the 1-D toy, save/load."""
import math
import warnings

import pytest
import torch
import torch.nn as nn

import pyrobdl
from pyrobdl import BayesianNetwork, datasets, likelihoods, priors
from pyrobdl.inference import get_method
from pyrobdl.inference.laplace import HESSIANS, Laplace, LaplacePosterior

D = torch.float64


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny networks: one intra-op thread (see conftest)."""


# ----------------------------------------------------------------------------- closed forms
def _design(n=40, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=D)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=D)[:d] + 0.3 + 0.5 * torch.randn(n, generator=g, dtype=D)
    return x, y


def _blr(x, y, sigma, s):
    """Bayesian linear regression with features [x, 1], prior N(0, s^2 I), noise sigma: the
    posterior mean and covariance and the log evidence, in closed form."""
    phi = torch.cat([x, torch.ones(x.shape[0], 1, dtype=D)], 1)
    prec = phi.T @ phi / sigma**2 + torch.eye(phi.shape[1], dtype=D) / s**2
    cov = torch.linalg.inv(prec)
    mean = cov @ phi.T @ y / sigma**2
    K = sigma**2 * torch.eye(x.shape[0], dtype=D) + s**2 * phi @ phi.T
    lml = torch.distributions.MultivariateNormal(torch.zeros(x.shape[0], dtype=D), K).log_prob(y)
    return phi, mean, cov, float(lml)


def _linear_model(mean, d, sigma, s):
    net = nn.Linear(d, 1).double()
    with torch.no_grad():
        net.weight.copy_(mean[:d].unsqueeze(0))
        net.bias.copy_(mean[d:])
    return BayesianNetwork(net, prior=priors.Normal(0.0, s), likelihood=likelihoods.Gaussian(scale=sigma))


@pytest.mark.parametrize("hessian", ["full", "kron", "low-rank"])
def test_bayesian_linear_regression_is_exact(hessian):
    """For f = w.x + b with Gaussian noise and a Gaussian prior, the Laplace approximation at the
    posterior mean IS the posterior: covariance, log evidence and the GLM predictive equal the
    closed form to round-off (float64; 1e-10). K-FAC is exact here because the one output has
    G = 1/sigma^2 for every point; low-rank with rank = P is the full GGN."""
    x, y = _design()
    sigma, s = 0.5, 2.0
    phi, mean, cov, lml = _blr(x, y, sigma, s)
    post = Laplace(hessian=hessian, rank=4, train=False, prior_precision="prior", progress=False).fit(
        _linear_model(mean, 3, sigma, s), x, y
    )
    assert isinstance(post, LaplacePosterior) and post.hessian == hessian
    torch.testing.assert_close(post.theta_map, mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(post.posterior_covariance, cov, rtol=1e-10, atol=1e-12)
    assert abs(float(post.log_marginal_likelihood()) - lml) < 1e-8
    xt = torch.randn(7, 3, dtype=D, generator=torch.Generator().manual_seed(5))
    pt = torch.cat([xt, torch.ones(7, 1, dtype=D)], 1)
    f_mean, f_var = pt @ mean, (pt @ cov * pt).sum(1)
    m, c = post.glm_moments(xt)
    torch.testing.assert_close(m[:, 0], f_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(c[:, 0, 0], f_var, rtol=1e-10, atol=1e-14)
    # the prediction object: mean and epistemic variance exact (moment-matched draws), noise sigma^2
    pred = post.predict(xt, num_samples=64)
    torch.testing.assert_close(pred.mean, f_mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(pred.epistemic_variance, f_var, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(pred.aleatoric_variance, torch.full_like(f_var, sigma**2))


def test_weight_draws_have_the_posterior_moments():
    """sample_latents draws N(mean, cov): with 40,000 draws the sample covariance is within
    5 standard errors (entry-wise, se = sqrt((C_ii C_jj + C_ij^2)/S)) of the closed form."""
    x, y = _design()
    _, mean, cov, _ = _blr(x, y, 0.5, 2.0)
    for hessian in ("full", "kron"):
        post = Laplace(hessian=hessian, train=False, prior_precision="prior", progress=False, seed=0).fit(
            _linear_model(mean, 3, 0.5, 2.0), x, y
        )
        draws = post.sample_latents(40000)
        th = torch.cat([draws["weight"][:, 0], draws["bias"]], 1)
        se = ((cov.diagonal().outer(cov.diagonal()) + cov**2) / 40000).sqrt()
        assert bool(((torch.cov(th.T) - cov).abs() < 5 * se).all())
        assert bool(((th.mean(0) - mean).abs() < 5 * (cov.diagonal() / 40000).sqrt()).all())


def test_diag_is_exact_on_an_orthogonal_design():
    """With orthogonal, zero-mean feature columns (orthogonal to the bias column too) the GGN
    Phi^T Phi / sigma^2 is diagonal, so the diagonal Laplace is exact as well."""
    n = 16
    h = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=D)
    had = torch.kron(torch.kron(torch.kron(h, h), h), h)  # 16 x 16, orthogonal columns
    x = had[:, 1:4] * torch.tensor([1.0, 2.0, 0.5], dtype=D)
    y = x @ torch.tensor([0.7, -0.3, 1.1], dtype=D) + 0.2 + 0.1 * torch.randn(n, dtype=D, generator=torch.Generator().manual_seed(0))
    _, mean, cov, lml = _blr(x, y, 0.4, 1.5)
    assert torch.count_nonzero(cov - torch.diag(cov.diagonal())) == 0 or float((cov - torch.diag(cov.diagonal())).abs().max()) < 1e-15
    post = Laplace(hessian="diag", train=False, prior_precision="prior", progress=False).fit(_linear_model(mean, 3, 0.4, 1.5), x, y)
    torch.testing.assert_close(post.posterior_covariance, cov, rtol=1e-10, atol=1e-14)
    assert abs(float(post.log_marginal_likelihood()) - lml) < 1e-8


def test_ggn_equals_the_hessian_for_a_linear_gaussian_model():
    """The GGN drops the second derivatives of the network, which are zero for a linear model:
    it equals the autograd Hessian of the negative log-likelihood in the weights."""
    x, y = _design(n=25, d=3, seed=2)
    model = _linear_model(torch.tensor([0.3, 0.1, -0.2, 0.05], dtype=D), 3, 0.7, 1.0)
    post = Laplace(hessian="full", train=False, prior_precision=3.0, progress=False).fit(model, x, y)

    def nll(theta):
        out = x @ theta[:3] + theta[3]
        return -model.likelihood.log_prob(out.unsqueeze(-1), y, {}).sum()

    hess = torch.autograd.functional.hessian(nll, post.theta_map.clone())
    torch.testing.assert_close(post.likelihood_hessian(), hess, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(post.posterior_precision, hess + 3.0 * torch.eye(4, dtype=D), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- K-FAC
def _tiny_net(seed=0, out=2):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, out)).double()


@pytest.mark.parametrize("lik", ["gaussian", "categorical"])
def test_kfac_is_the_full_ggn_block_for_one_data_point(lik):
    """For a single data point the GGN block of a Linear layer is exactly G kron A (A = a a^T,
    G = sum_c g_c g_c^T): every layer's K-FAC block equals the full GGN's block."""
    net = _tiny_net(out=3)
    x = torch.randn(1, 3, dtype=D, generator=torch.Generator().manual_seed(1))
    if lik == "gaussian":
        model, y = BayesianNetwork(net, likelihood=likelihoods.Gaussian(scale=0.3)), torch.randn(1, 3, dtype=D)
    else:
        model, y = BayesianNetwork(net, likelihood=likelihoods.Categorical()), torch.tensor([2])
    kw = dict(train=False, prior_precision=1.0, progress=False)
    full = Laplace(hessian="full", **kw).fit(model, x, y).likelihood_hessian()
    kron = Laplace(hessian="kron", **kw).fit(model, x, y).likelihood_hessian()
    # the full GGN has cross-layer blocks; K-FAC is block-diagonal: compare the layer blocks
    for block in (slice(0, 16), slice(16, 31)):  # layer 0: 4x3 + 4, layer 2: 3x4 + 3
        torch.testing.assert_close(kron[block, block], full[block, block], rtol=1e-10, atol=1e-12)
    assert float(kron[0:16, 16:31].abs().max()) == 0.0


def test_kfac_with_many_points():
    """With N = 50 points: the last layer of a single-output Gaussian net is still exact
    (g = 1/sigma for every point, so the sum over points factorises); the first layer's
    block is an approximation, measured at a relative Frobenius error of 0.24 here (bound 0.3;
    a misplaced 1/N in G gives about 0.98 or 49)."""
    net = _tiny_net(out=1)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, 3, dtype=D, generator=g)
    model = BayesianNetwork(net, likelihood=likelihoods.Gaussian(scale=0.5))
    y = torch.randn(50, dtype=D, generator=g)
    kw = dict(train=False, prior_precision=1.0, progress=False)
    full = Laplace(hessian="full", **kw).fit(model, x, y).likelihood_hessian()
    kron = Laplace(hessian="kron", **kw).fit(model, x, y).likelihood_hessian()
    last = slice(16, 21)
    torch.testing.assert_close(kron[last, last], full[last, last], rtol=1e-10, atol=1e-12)
    first = slice(0, 16)
    err = float(torch.linalg.norm(kron[first, first] - full[first, first]) / torch.linalg.norm(full[first, first]))
    assert err < 0.3


# ----------------------------------------------------------------------------- marginal likelihood
def _posthoc_lml(phi, y, theta, sigma, delta):
    """The Laplace objective at fixed theta (closed form for the linear model)."""
    P = phi.shape[1]
    r = y - phi @ theta
    ll = -0.5 * r.pow(2).sum() / sigma**2 - len(y) * math.log(sigma) - 0.5 * len(y) * math.log(2 * math.pi)
    prec = phi.T @ phi / sigma**2 + delta * torch.eye(P, dtype=D)
    return float(ll - 0.5 * delta * theta.pow(2).sum() + 0.5 * P * math.log(delta) - 0.5 * torch.logdet(prec))


def test_marglik_tuning_matches_the_closed_form_maximiser():
    """Tuning one prior precision by the marginal likelihood (known noise): the tuned value is the
    maximiser of the closed-form Laplace objective at the MAP (golden-section search, 0.5%), and it
    is within 3% of the maximiser of the exact evidence (which refits the mean for each precision;
    the two differ only through the shift of the mean, small for N = 200 points and 4 weights)."""
    x, y = _design(n=200, seed=4)
    sigma, s = 0.5, 1.0
    phi, mean, _, _ = _blr(x, y, sigma, s)
    post = Laplace(hessian="full", train=False, prior_structure="scalar", progress=False).fit(_linear_model(mean, 3, sigma, s), x, y)
    tuned = float(post.prior_precision["weight"])

    def argmax(fn, lo=-6.0, hi=6.0):
        phi_g = (math.sqrt(5) - 1) / 2
        a, b = lo, hi
        for _ in range(80):
            c, d = b - phi_g * (b - a), a + phi_g * (b - a)
            if fn(math.exp(c)) > fn(math.exp(d)):
                b = d
            else:
                a = c
        return math.exp(0.5 * (a + b))

    posthoc = argmax(lambda dl: _posthoc_lml(phi, y, mean, sigma, dl))
    exact = argmax(lambda dl: _blr(x, y, sigma, dl**-0.5)[3])
    assert abs(tuned / posthoc - 1) < 5e-3
    assert abs(tuned / exact - 1) < 0.03
    # the tuned value maximises the posterior's own objective too
    assert float(post.log_marginal_likelihood()) >= float(post.log_marginal_likelihood(prior_precision=tuned * 1.1))
    assert float(post.log_marginal_likelihood()) >= float(post.log_marginal_likelihood(prior_precision=tuned / 1.1))


def test_marglik_tunes_the_noise_to_the_stationary_point():
    """With a learned Gaussian noise both the precision and the noise are tuned; the optimum of
    the Laplace objective at fixed theta satisfies MacKay's (1992) fixed-point equations
    delta = gamma / |theta|^2 and sigma^2 = |y - Phi theta|^2 / (N - gamma),
    gamma = P - delta tr(Sigma), solved here independently by iteration (1%)."""
    x, y = _design(n=120, seed=6)
    phi, mean, _, _ = _blr(x, y, 0.5, 1.0)
    net = nn.Linear(3, 1).double()
    with torch.no_grad():
        net.weight.copy_(mean[:3].unsqueeze(0))
        net.bias.copy_(mean[3:])
    model = BayesianNetwork(net, prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian())
    post = Laplace(hessian="full", train=False, prior_structure="scalar", progress=False).fit(model, x, y)
    delta, sigma2 = 1.0, 0.25
    sse, P = float((y - phi @ mean).pow(2).sum()), 4
    for _ in range(500):
        cov = torch.linalg.inv(phi.T @ phi / sigma2 + delta * torch.eye(P, dtype=D))
        gamma = P - delta * float(cov.trace())
        delta, sigma2 = gamma / float(mean.pow(2).sum()), sse / (len(y) - gamma)
    assert abs(float(post.prior_precision["weight"]) / delta - 1) < 0.01
    assert abs(float(post.latents["sigma"]) ** 2 / sigma2 - 1) < 0.01


# ----------------------------------------------------------------------------- classification
def test_probit_predictive_matches_mc_over_the_linearised_model():
    """Categorical, 3 classes: the probit probabilities sum to 1 and agree with the softmax
    averaged over 20,000 draws of the linearised logits within 0.04 (the pairwise probit's own
    approximation error, measured 0.028; the MC error is < 0.004 here)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 2, generator=g, dtype=D)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    model = BayesianNetwork(net, likelihood=likelihoods.Categorical(), prior=priors.Normal(0.0, 1.0))
    post = Laplace(hessian="full", num_steps=300, batch_size=None, link_approx="probit", progress=False, seed=0).fit(model, x, y)
    xt = torch.randn(20, 2, generator=g, dtype=D) * 2
    pred = post.predict(xt)
    assert pred.num_samples == 1
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(20, dtype=D))
    mean, cov = post.glm_moments(xt)
    assert float(cov.diagonal(dim1=-2, dim2=-1).max()) > 0.05  # a real spread to integrate over
    # MC over the linearised model, from the closed-form moments (independent of the draws' code)
    eps = torch.randn(20000, *mean.shape, generator=g, dtype=D)
    f = mean + torch.einsum("nkl,snl->snk", torch.linalg.cholesky(cov + 1e-12 * torch.eye(3, dtype=D)), eps)
    mc = torch.softmax(f, -1).mean(0)
    assert float((pred.probs - mc).abs().max()) < 0.04  # measured 0.028; the diagonal probit gives 0.073
    # the library's own MC link (moment-matched draws of the linearised logits) agrees as well
    post.settings["link_approx"] = "mc"
    mc_pred = post.predict(xt, num_samples=4000)
    assert float((mc_pred.probs - mc).abs().max()) < 0.02
    assert float(mc_pred.mutual_information.mean()) > 0


# ----------------------------------------------------------------------------- fits and defaults
def test_map_training_reaches_the_closed_form_posterior_mean():
    """train=True: the MAP training (Adam on the NLL + prior penalty) lands on the closed-form
    posterior mean of Bayesian linear regression (within 2e-3: Adam's final lr is 1e-3)."""
    x, y = _design(n=64, seed=1)
    _, mean, _, _ = _blr(x, y, 0.5, 1.0)
    model = BayesianNetwork(nn.Linear(3, 1).double(), prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian(scale=0.5))
    post = Laplace(hessian="full", num_steps=1500, batch_size=None, lr=0.05, prior_precision="prior", progress=False, seed=0).fit(model, x, y)
    assert float((post.theta_map - mean).abs().max()) < 2e-3


def test_fit_with_defaults_on_the_toy_grows_uncertainty_outside_the_data():
    """pyrobdl.fit(method="laplace") with no options on the shipped 1-D toy: a real fit and an
    epistemic std that grows outside the training range (measured ratio about 4)."""
    ds = datasets.toy_regression()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 50), nn.ReLU(), nn.Linear(50, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fit-check warning either
        post = pyrobdl.fit(BayesianNetwork(net), ds.x_train, ds.y_train, method="laplace", progress=False, seed=0)
    assert post.fit_info["method"] == "laplace" and post.hessian == "full"
    pred = post.predict(ds.x_test)
    inr = ds.in_train_range(ds.x_test)
    rmse = float((pred.mean - ds.y_test.reshape(-1))[inr].pow(2).mean().sqrt())
    assert rmse < 0.8 * float(ds.y_test.std())
    assert float(pred.epistemic_std[~inr].mean()) > 2 * float(pred.epistemic_std[inr].mean())


@pytest.mark.parametrize("hessian", HESSIANS)
def test_save_load_round_trip(hessian, tmp_path):
    """Every structure saves tensors only and loads back to the same predictive (GLM moments
    identical; the same seed gives the same weight draws)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, generator=g)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(30, generator=g)
    torch.manual_seed(0)
    model = BayesianNetwork(nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1)))
    post = Laplace(hessian=hessian, rank=5, num_steps=50, batch_size=None, progress=False, seed=0).fit(model, x, y)
    post.save(tmp_path / "la.pt")
    back = pyrobdl.load(tmp_path / "la.pt")
    assert isinstance(back, LaplacePosterior) and back.hessian == hessian and back.subset == post.subset
    for a, b in zip(post.glm_moments(x), back.glm_moments(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(back.latents["sigma"], post.latents["sigma"], rtol=0, atol=0)
    assert float(back.log_marginal_likelihood()) == pytest.approx(float(post.log_marginal_likelihood()), rel=1e-6)
    torch.manual_seed(1)
    a = post.sample_latents(5)
    torch.manual_seed(1)
    b = back.sample_latents(5)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_last_layer_subset_and_pretrained_network():
    """subset="last-layer" varies only the last Linear; train=False keeps a pretrained network's
    weights even with a seed (which re-draws a network's weights for every other method)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=g)
    y = x[:, 0] - x[:, 1] ** 2
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1))
    model = BayesianNetwork(net)
    w0 = net[0].weight.detach().clone()
    post = Laplace(subset="last-layer", train=False, progress=False, seed=3).fit(model, x, y)
    assert post.subset == ["2.weight", "2.bias"] and post.hessian == "full"
    torch.testing.assert_close(post.model.net[0].weight, w0, rtol=0, atol=0)
    draws = post.sample_latents(10)
    assert float(draws["0.weight"].std(0).max()) == 0.0 and float(draws["2.weight"].std(0).min()) > 0
    # a selector like BayesianNetwork's bayesian= picks any subset
    sel = Laplace(subset="0.*", hessian="diag", train=False, progress=False).fit(model, x, y)
    assert sel.subset == ["0.weight", "0.bias"]


def test_mc_predictive_pushes_weight_draws_through_the_network():
    """predictive="mc" on a linear model is the same Gaussian as the GLM: mean and epistemic
    variance agree within MC error (4,000 draws: 5 standard errors)."""
    x, y = _design()
    _, mean, cov, _ = _blr(x, y, 0.5, 2.0)
    post = Laplace(hessian="full", predictive="mc", train=False, prior_precision="prior", progress=False, seed=0).fit(
        _linear_model(mean, 3, 0.5, 2.0), x, y
    )
    xt = torch.randn(5, 3, dtype=D)
    _, c = post.glm_moments(xt)
    pred = post.predict(xt, num_samples=4000)
    v = c[:, 0, 0]
    assert bool(((pred.epistemic_variance - v).abs() < 5 * v * math.sqrt(2 / 4000)).all())


def test_low_rank_keeps_the_top_eigenpairs():
    """hessian="low-rank" with rank r: the top r eigenvalues of its curvature are those of the full
    GGN, and its diagonal is the GGN's diagonal (the residual diagonal restores it)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    x = torch.randn(40, 2, dtype=D)
    y = torch.randn(40, dtype=D)
    model = BayesianNetwork(net, likelihood=likelihoods.Gaussian(scale=0.5))
    kw = dict(train=False, prior_precision=1.0, progress=False)
    full = Laplace(hessian="full", **kw).fit(model, x, y).likelihood_hessian()
    low = Laplace(hessian="low-rank", rank=4, **kw).fit(model, x, y).likelihood_hessian()
    torch.testing.assert_close(low.diagonal(), full.diagonal(), rtol=1e-8, atol=1e-10)
    ev_full = torch.linalg.eigvalsh(full)[-4:]
    lam = Laplace(hessian="low-rank", rank=4, **kw).fit(model, x, y).curvature.lam
    torch.testing.assert_close(lam, ev_full, rtol=1e-8, atol=1e-10)


def test_registry_and_bad_input():
    assert get_method("laplace") is Laplace and get_method("LA") is Laplace and Laplace.family == "laplace"
    with pytest.raises(ValueError, match="hessian"):
        Laplace(hessian="kfac")
    with pytest.raises(ValueError, match="predictive"):
        Laplace(predictive="sample")
    with pytest.raises(ValueError, match="prior_precision"):
        Laplace(prior_precision="auto")
    with pytest.raises(ValueError, match="prior_precision"):
        Laplace(prior_precision=-1.0)
    with pytest.raises(TypeError, match="subset"):
        Laplace(subset=3)
    model = BayesianNetwork(nn.Linear(2, 1))
    with pytest.raises(ValueError, match="subset"):
        Laplace(subset="nothing.*", train=False, progress=False).fit(model, torch.randn(5, 2), torch.randn(5))


@pytest.mark.parametrize("hessian", ["kron", "diag"])
def test_dataloader_gives_the_same_curvature_as_tensors(hessian):
    """The curvature is a sum over the data: passing a DataLoader (batches of 7) instead of
    tensors gives the same matrix to round-off (float64)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, generator=g, dtype=D)
    y = torch.randn(30, generator=g, dtype=D)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    model = BayesianNetwork(net, likelihood=likelihoods.Gaussian(scale=0.5))
    kw = dict(hessian=hessian, train=False, prior_precision=1.0, progress=False)
    a = Laplace(**kw).fit(model, x, y).likelihood_hessian()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7)
    b = Laplace(**kw).fit(model, loader).likelihood_hessian()
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_ggn_equals_the_hessian_for_softmax_regression():
    """Logits linear in the weights: the GGN sum_n J^T (diag(p) - p p^T) J is the Hessian of the
    softmax cross-entropy (checks the closed-form factor of Lambda for Categorical)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, generator=g, dtype=D)
    y = torch.randint(0, 3, (30,), generator=g)
    torch.manual_seed(0)
    model = BayesianNetwork(nn.Linear(2, 3).double(), likelihood=likelihoods.Categorical())
    post = Laplace(hessian="full", train=False, prior_precision=1.0, progress=False).fit(model, x, y)

    def nll(theta):
        out = x @ theta[:6].reshape(3, 2).T + theta[6:]
        return -torch.log_softmax(out, -1).gather(-1, y.unsqueeze(-1)).sum()

    hess = torch.autograd.functional.hessian(nll, post.theta_map.clone())
    torch.testing.assert_close(post.likelihood_hessian(), hess, rtol=1e-10, atol=1e-10)


def test_output_curvature_of_other_likelihoods_is_the_projected_hessian():
    """A likelihood without a closed form (HeteroscedasticGaussian, outputs mu and s = log var)
    gets Lambda from torch.func: the Hessian of -log p in the outputs,
    [[e^-s, r e^-s], [r e^-s, r^2 e^-s / 2]] with r = y - mu, projected onto the PSD cone."""
    from pyrobdl.inference.laplace import _lambda_sqrt

    out = torch.tensor([[0.3, -0.5], [1.0, 0.2]], dtype=D)
    y = torch.tensor([1.1, 0.4], dtype=D)
    L = _lambda_sqrt(likelihoods.HeteroscedasticGaussian(), out, y, {})
    r, e = y - out[:, 0], (-out[:, 1]).exp()
    hess = torch.stack([torch.stack([e, r * e], -1), torch.stack([r * e, r * r * e / 2], -1)], -2)
    lam, Q = torch.linalg.eigh(hess)
    torch.testing.assert_close(L @ L.mT, (Q * lam.clamp_min(0).unsqueeze(-2)) @ Q.mT, rtol=1e-10, atol=1e-12)

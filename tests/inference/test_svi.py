"""SVI against closed forms: Bayesian linear regression has an exact Gaussian posterior."""
import math

import pyro
import pyro.infer
import pytest
import torch
from torch import nn

import pyrobdl
from pyrobdl import BayesianNetwork, inference, likelihoods, priors

SIGMA = 0.5  # known noise
S0 = 1.0  # prior scale


def blr_data(n=40, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.tensor([1.0, -0.5])[:d]
    y = x @ w + 0.3 + SIGMA * torch.randn(n, generator=g)
    return x, y


def blr_posterior(x, y):
    """Exact posterior over (weight, bias) for y = x w + b + N(0, SIGMA^2), prior N(0, S0^2 I)."""
    X = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    prec = X.T @ X / SIGMA**2 + torch.eye(X.shape[1], dtype=torch.double) / S0**2
    cov = torch.linalg.inv(prec)
    mean = cov @ X.T @ y.double() / SIGMA**2
    return mean, cov


def blr_model(d=2):
    return BayesianNetwork(nn.Linear(d, 1), prior=priors.Normal(0.0, S0), likelihood=likelihoods.Gaussian(scale=SIGMA))


def flat_latents(post, S):
    s = post.sample_latents(S)
    return torch.cat([s["weight"].reshape(S, -1), s["bias"].reshape(S, -1)], 1).double()


@pytest.mark.parametrize("method", ["full-rank", "mean-field", "low-rank"])
def test_blr_recovers_closed_form(method):
    x, y = blr_data()
    mean, cov = blr_posterior(x, y)
    sd = cov.diag().sqrt()
    opts = dict(num_steps=1500, lr=0.03, lr_decay=0.01, num_particles=16, progress=False, seed=1)
    if method == "low-rank":
        opts["rank"] = 2
    post = pyrobdl.fit(blr_model(), x, y, method=method, **opts)
    S = 20000
    draws = flat_latents(post, S)
    # Posterior mean: the optimum is exact for every family on a Gaussian target; Adam with a
    # decayed rate and 16 particles leaves a stationary jitter of a few percent of a posterior sd
    # (measured: < 0.1 sd over seeds), and the Monte Carlo error of the S=20,000-draw average is
    # sd/sqrt(S) < 0.01 sd. A tolerance of 0.2 sd still fails for a mis-scaled likelihood or KL,
    # which move the mean by more than one sd here.
    assert torch.all((draws.mean(0) - mean).abs() < 0.2 * sd), (draws.mean(0), mean)
    emp_cov = torch.cov(draws.T)
    if method in ("full-rank", "low-rank"):
        # full covariance recovered (rank 2 + diagonal can represent a 3x3 covariance exactly);
        # sampling error of a covariance entry with S=20,000 is ~1.4% of sd_i sd_j, tolerance 10%.
        assert torch.allclose(emp_cov, cov, atol=0.1 * float(sd.max() ** 2), rtol=0.1), (emp_cov, cov)
    else:
        # mean field: the variances are the inverse diagonal precisions (Bishop 2006, 10.1.2)
        prec = torch.linalg.inv(cov)
        assert torch.allclose(emp_cov.diag(), 1 / prec.diag(), rtol=0.1)
    # predictive moments against the analytic predictive N(x*' m, x*' C x* + sigma^2)
    xt = torch.linspace(-2, 2, 7).unsqueeze(-1).repeat(1, 2) * torch.tensor([1.0, -1.0])
    Xt = torch.cat([xt, torch.ones(len(xt), 1)], 1).double()
    pred = post.predict(xt, num_samples=S)
    exact_mean = Xt @ mean
    exact_epi = (Xt @ cov * Xt).sum(1)
    assert torch.allclose(pred.mean.double(), exact_mean, atol=0.2 * float(exact_epi.sqrt().max()))
    assert torch.allclose(pred.aleatoric_variance.double(), torch.full_like(exact_mean, SIGMA**2))
    if method != "mean-field":
        assert torch.allclose(pred.epistemic_variance.double(), exact_epi, rtol=0.15)
        assert torch.allclose(pred.variance.double(), exact_epi + SIGMA**2, rtol=0.05)


def _fixed_guide_posterior(method, model, x, y, init_scale=0.1):
    post = pyrobdl.fit(model, x, y, method=method, num_steps=1, lr=1e-4, progress=False, init_scale=init_scale)
    return post


@pytest.mark.parametrize("method", ["mean-field", "low-rank", "full-rank"])
@pytest.mark.parametrize("kl", ["analytic", "mc"])
def test_fast_elbo_matches_pyro_trace_elbo(method, kl):
    """Our trace-free ELBO has the same expectation as Pyro's Trace_ELBO on the same guide."""
    torch.manual_seed(0)
    x = torch.randn(30, 2)
    y = torch.randn(30)
    net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))
    model = BayesianNetwork(net, likelihood=likelihoods.Gaussian())  # learned noise: a constrained latent
    post = _fixed_guide_posterior(method, model, x, y)
    algo = inference.get_method(method)(kl=kl, progress=False)
    K = 20000
    with torch.no_grad():
        ll, lp, ent = algo.elbo_terms(post, x, y, 30, num_particles=K)
        ours = float(ll + lp + ent)
        loss = pyro.infer.Trace_ELBO(num_particles=K, vectorize_particles=True, max_plate_nesting=1)
        theirs = -loss.loss(model, post.guide, x, y)
        # per-particle spread, to set the tolerance: 5 standard errors of the difference
        single = torch.stack([sum(algo.elbo_terms(post, x, y, 30, num_particles=1)) for _ in range(200)])
    se = float(single.std()) / math.sqrt(K)
    assert abs(ours - theirs) < 5 * math.sqrt(2) * se + 1e-3, (ours, theirs, se)


def test_minibatch_elbo_is_unbiased():
    """The plate of size num_data scales a minibatch's likelihood by N/B: averaged over random
    minibatches, Pyro's Trace_ELBO on minibatches equals the full-data ELBO."""
    torch.manual_seed(0)
    N, B = 60, 10
    x = torch.randn(N, 1)
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(N)
    model = BayesianNetwork(nn.Sequential(nn.Linear(1, 5), nn.Tanh(), nn.Linear(5, 1)), likelihood=likelihoods.Gaussian(scale=0.3))
    post = _fixed_guide_posterior("mean-field", model, x, y, init_scale=0.3)
    elbo = pyro.infer.Trace_ELBO(num_particles=50, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        full = torch.tensor([-elbo.loss(model, post.guide, x, y) for _ in range(20)])
        mini = []
        for _ in range(400):
            idx = torch.randperm(N)[:B]
            mini.append(-elbo.loss(model, post.guide, x[idx], y[idx], num_data=N))
        mini = torch.tensor(mini)
        # and without num_data the minibatch ELBO is not scaled: a check that can fail
        unscaled = torch.tensor([-elbo.loss(model, post.guide, x[:B], y[:B]) for _ in range(5)]).mean()
    se = math.sqrt(float(mini.var()) / len(mini) + float(full.var()) / len(full))
    assert abs(float(mini.mean() - full.mean())) < 4 * se
    assert abs(float(unscaled - full.mean())) > 10 * se


def test_fast_minibatch_training_and_loader():
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 200).unsqueeze(-1)
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(200)
    model = BayesianNetwork(nn.Sequential(nn.Linear(1, 20), nn.Tanh(), nn.Linear(20, 1)))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=50, shuffle=True)
    post = inference.MeanField(epochs=200, lr=2e-2, progress=False).fit(model, loader)
    assert post.fit_info["num_steps"] == 800
    pred = post.predict(x, num_samples=50)
    rmse = float((pred.mean - y).pow(2).mean().sqrt())
    assert rmse < 0.3  # the noise sd is 0.1; an unfitted net has rmse ~0.7
    post2 = inference.MeanField(num_steps=800, batch_size=50, lr=2e-2, progress=False).fit(model, x, y)
    assert float((post2.predict(x).mean - y).pow(2).mean().sqrt()) < 0.3


@pytest.mark.parametrize("estimator", ["local", "flipout"])
def test_lrt_and_flipout_are_unbiased(estimator):
    """Local reparameterisation and flipout change the variance, not the expectation, of the
    expected log-likelihood."""
    torch.manual_seed(0)
    x = torch.randn(40, 3)
    y = torch.randn(40)
    model = BayesianNetwork(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)), likelihood=likelihoods.Gaussian(scale=1.0))
    post = _fixed_guide_posterior("mean-field", model, x, y)
    base = inference.MeanField(progress=False, estimator="reparam")
    alt = inference.MeanField(progress=False, estimator=estimator)
    with torch.no_grad():
        a = torch.stack([base.elbo_terms(post, x, y, 40)[0] for _ in range(600)])
        b = torch.stack([alt.elbo_terms(post, x, y, 40)[0] for _ in range(600)])
    # 4 standard errors of the difference of two independent 600-sample means.
    se = math.sqrt(float(a.var() + b.var()) / 600)
    assert abs(float(a.mean() - b.mean())) < 4 * se
    # (the gradient-variance reduction is measured in benchmarks/bench_svi.py, not asserted)


def test_lrt_trains():
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 200).unsqueeze(-1)
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(200)
    model = BayesianNetwork(nn.Sequential(nn.Linear(1, 20), nn.Tanh(), nn.Linear(20, 1)))
    for est in ("local", "flipout"):
        post = inference.MeanField(num_steps=1500, lr=2e-2, batch_size=50, estimator=est, progress=False).fit(model, x, y)
        assert float((post.predict(x).mean - y).pow(2).mean().sqrt()) < 0.3


def test_estimator_needs_linear_layers():
    model = BayesianNetwork(nn.Sequential(nn.Linear(1, 4), nn.LayerNorm(4), nn.Linear(4, 1)), bayesian=nn.LayerNorm)
    with pytest.raises(ValueError, match="estimator"):
        inference.MeanField(num_steps=2, estimator="local", progress=False).fit(model, torch.randn(5, 1), torch.randn(5))


def test_empirical_bayes_prior_scale():
    """The fitted prior scale per weight tensor is the closed-form maximiser of the ELBO,
    s^2 = mean(mu^2 + sigma^2), and the fitted ELBO is at least the fixed-prior ELBO there."""
    torch.manual_seed(0)
    x = torch.randn(50, 2)
    y = x[:, 0] + 0.1 * torch.randn(50)
    model = BayesianNetwork(nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1)), prior=priors.Normal(0.0, 1.0))
    algo = inference.MeanField(num_steps=200, prior_scale="empirical-bayes", progress=False)
    post = algo.fit(model, x, y)
    loc, scale = post.site_loc_scale("2.weight")
    expect = float((loc.pow(2) + scale.pow(2)).mean().sqrt().detach())
    assert abs(post.fit_info["prior_scales"]["2.weight"] - expect) < 1e-5
    assert post.model.latent_sites()["2.weight"].gaussian[1] == pytest.approx(expect)
    assert model.latent_sites()["2.weight"].gaussian[1] == 1.0  # the user's model is untouched
    fixed = inference.MeanField(progress=False)
    torch.manual_seed(1)
    eb_terms = algo.elbo_terms(post, x, y, 50)
    torch.manual_seed(1)
    post.model.prior = priors.Normal(0.0, 1.0)
    post.model._prior_cache = {}  # the posterior's layout follows the model's priors
    fx_terms = fixed.elbo_terms(post, x, y, 50)
    assert float(eb_terms[1].detach()) >= float(fx_terms[1].detach()) - 1e-4


# ----------------------------------------------------------------------------- the fast training path
def _reference_elbo_mc(model, post, x, y, num_data, eps):
    """The single-sample ELBO (kl='mc') evaluated the general way, from the guide's flat
    loc and scale: z = loc + scale * eps, cut into sites by Pyro's own unpacking of the
    guide's latent vector, then Pyro's trace of the model conditioned on z (functional_call
    forward, Pyro's likelihood and validated priors, plate scaling), plus log|det J| of the
    constraining transforms, plus the analytic Gaussian entropy."""
    from torch.distributions import biject_to

    model.__dict__["_chain_cache"] = None  # force the general functional_call/vmap forward
    try:
        loc, scale = post.guide.loc, post.guide.scale  # through Pyro's own attribute access
        total = 0.0
        for p in range(eps.shape[0]):
            z = loc + scale * eps[p]
            values, logdet = {}, 0.0
            for site, u in post.guide._unpack_latent(z):
                tr = biject_to(site["fn"].support)
                values[site["name"]] = tr(u)
                logdet = logdet + tr.log_abs_det_jacobian(u, values[site["name"]]).sum()
            cond = pyro.poutine.condition(model, data=values)
            trace = pyro.poutine.trace(cond).get_trace(x, y, num_data=num_data)
            total = total + trace.log_prob_sum() + logdet
        entropy = scale.log().sum() + 0.5 * loc.numel() * (1 + math.log(2 * math.pi))
        return total / eps.shape[0] + entropy
    finally:
        model.__dict__.pop("_chain_cache", None)


@pytest.mark.parametrize("likelihood", [likelihoods.Gaussian(), likelihoods.Gaussian(scale=0.7)])
@pytest.mark.parametrize("P", [1, 3])
def test_flat_fast_elbo_equals_general_path(likelihood, P):
    """Same weights (same eps) -> the fast path (the guide's flat leaves read directly, chain
    forward, direct Gaussian log-density, closed-form Gaussian priors) gives the same ELBO
    value and the same gradients w.r.t. the guide's parameters as the general per-site path
    through Pyro's trace."""
    torch.manual_seed(0)
    x = torch.randn(25, 2, dtype=torch.double)
    y = torch.randn(25, dtype=torch.double)
    net = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 1)).double()
    model = BayesianNetwork(net, likelihood=likelihood)
    post = _fixed_guide_posterior("mean-field", model, x, y, init_scale=0.2)
    model = post.model
    assert model._chain() is not None
    assert type(post.guide).__name__ == "AutoDiagonalNormal"
    algo = inference.MeanField(kl="mc", num_particles=P, estimator="reparam", progress=False)
    leaves = [post.guide.loc, post.guide.scale_unconstrained]
    D = post.layout.dim
    torch.manual_seed(7)  # the estimator draws its eps with one randn((P, D)) call, first
    eps = torch.randn(P, D, dtype=torch.double)
    ref = _reference_elbo_mc(model, post, x, y, 100, eps)
    g_ref = torch.autograd.grad(ref, leaves)
    torch.manual_seed(7)
    ours = sum(algo.elbo_terms(post, x, y, 100))
    g_ours = torch.autograd.grad(ours, leaves)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g_ours[0], g_ref[0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(g_ours[1], g_ref[1], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("P", [1, 4])
def test_flat_analytic_elbo_equals_per_site_closed_form(P):
    """kl='analytic': the flat closed-form terms give the same ELBO and gradients as the
    per-site computation ll - KL(q_site || prior_site) with torch's own Normal KL (the
    learned noise's half-normal prior by the same Monte Carlo draw)."""
    from torch.distributions import Normal, kl_divergence

    torch.manual_seed(0)
    x, y = torch.randn(30, 1, dtype=torch.double), torch.randn(30, dtype=torch.double)
    net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    model = BayesianNetwork(net, prior=priors.Normal(0.0, 1.0))
    post = _fixed_guide_posterior("mean-field", model, x, y, init_scale=0.3)
    algo = inference.MeanField(num_particles=P, estimator="reparam", progress=False)
    leaves = [post.guide.loc, post.guide.scale_unconstrained]
    torch.manual_seed(5)
    ll, lp, ent = algo.elbo_terms(post, x, y, 30)
    fast = ll + lp + ent
    g_fast = torch.autograd.grad(fast, leaves, retain_graph=True)
    # per site, from the same leaves and the same draws
    torch.manual_seed(5)
    loc, scale = post.guide.loc, post.guide.scale
    z = loc + scale * torch.randn(P, loc.numel(), dtype=torch.double)
    kl = 0.0
    layout = post.layout
    for site in layout.sites:
        q = Normal(layout.view(loc, site.name), layout.view(scale, site.name))
        if site.gaussian is not None:
            kl = kl + kl_divergence(q, Normal(*site.gaussian)).sum()
        else:  # sigma: half-normal prior by Monte Carlo on the same draw, Gaussian entropy exactly
            u = layout.view(z, site.name)
            v = site.transform(u)
            log_p = site.prior.log_prob(v) + site.transform.log_abs_det_jacobian(u, v)
            kl = kl - q.entropy().sum() - log_p.mean()
    ref = ll - kl  # the expected log-likelihood is shared: the rest is compared exactly
    g_ref = torch.autograd.grad(ref, leaves)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g_fast[0], g_ref[0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(g_fast[1], g_ref[1], rtol=1e-9, atol=1e-10)


def test_fit_trains_the_pyro_guide():
    """After fit (which trains flat copies), the Pyro guide itself holds the fitted values:
    Pyro's Predictive with posterior.guide agrees with posterior.predict."""
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 100).unsqueeze(-1)
    y = torch.sin(2 * x[:, 0]) + 0.05 * torch.randn(100)
    model = BayesianNetwork(nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1)))
    post = inference.MeanField(num_steps=1500, lr=2e-2, progress=False, seed=0).fit(model, x, y)
    ours = post.predict(x, num_samples=200).mean
    assert float((ours - y).pow(2).mean().sqrt()) < 0.2  # trained (an untrained net: ~0.7)
    pyro_pred = pyro.infer.Predictive(post.model, guide=post.guide, num_samples=200, return_sites=["_RETURN"])(x)
    theirs = pyro_pred["_RETURN"].squeeze(-1).mean(0)
    # both average 200 draws of the same posterior; the draws' sd of the mean is ~0.01 here
    assert float((ours - theirs).abs().max()) < 0.1


@pytest.mark.parametrize(
    "lik, out_shape, y_fn",
    [
        (likelihoods.Gaussian(), (3, 20, 1), lambda: torch.randn(20)),
        (likelihoods.Gaussian(scale=0.3), (3, 20, 1), lambda: torch.randn(20)),
        (likelihoods.Gaussian(), (20, 1), lambda: torch.randn(20)),
        (likelihoods.Gaussian(), (2, 20, 3), lambda: torch.randn(20, 3)),
        (likelihoods.Categorical(), (2, 20, 4), lambda: torch.randint(0, 4, (20,))),
    ],
)
def test_direct_loglik_equals_likelihood_log_prob(lik, out_shape, y_fn):
    torch.manual_seed(0)
    out = torch.randn(out_shape, dtype=torch.double)
    y = lik.check_target(y_fn(), out)
    if y.is_floating_point():
        y = y.double()
    P = out_shape[0] if len(out_shape) == 3 else 1
    lats = {"sigma": torch.rand(P, dtype=torch.double) + 0.5} if getattr(lik, "learned", False) else {}
    ref = lik.dist(out, lats).log_prob(y).sum(-1)  # through torch's distribution
    with pyro.validation_enabled(False):  # as in the training loop
        ours = lik.log_prob(out, y, lats).sum(-1)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-10)


# ----------------------------------------------------------------------------- defaults and guides
@pytest.mark.slow
def test_learned_noise_reaches_the_residual_scale_at_a_small_lr():
    """The likelihood's noise trains at max(lr, LIKELIHOOD_LR): at lr=1e-3 the noise of a 1-D
    problem with true noise 1.0 still moves from its start (0.1 of the targets' spread) to
    about 1. At the network's lr (LIKELIHOOD_LR = 0) it would end near 0.3."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 1, generator=g) * 4 - 2
    y = 0.5 * x[:, 0] + torch.randn(200, generator=g)
    model = BayesianNetwork(nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1)), likelihood=likelihoods.Gaussian())
    post = inference.MeanField(lr=1e-3, num_steps=3000, progress=False, seed=0).fit(model, x, y)
    sigma = float(post.mean_latents()["sigma"])
    assert 0.85 < sigma < 1.2, sigma
    assert post.fit_info["checks"]["noise_std"] > 0.8


@pytest.mark.filterwarnings("ignore:the fitted SVIPosterior's learned noise")
def test_mean_field_defaults_and_the_estimator_choice():
    algo = inference.MeanField(progress=False)
    assert (algo.num_steps, algo.lr, algo.lr_decay, algo.kl_warmup, algo.estimator) == (5000, 1e-2, 0.1, None, "auto")
    for cls in (inference.LowRank, inference.FullRank):
        a = cls(progress=False)
        assert (a.num_steps, a.lr, a.lr_decay, a.kl_warmup) == (5000, 1e-2, 0.1, 0)
    x, y = torch.randn(20, 2), torch.randn(20)
    mlp = BayesianNetwork(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)))
    post = inference.MeanField(num_steps=10, progress=False).fit(mlp, x, y)
    assert post.fit_info["estimator"] == "local" and post.fit_info["kl_warmup"] == 5  # half of the steps
    post = inference.MeanField(num_steps=10, num_particles=2, kl_warmup=3, progress=False).fit(mlp, x, y)
    assert post.fit_info["estimator"] == "reparam" and post.fit_info["kl_warmup"] == 3
    post = inference.MeanField(num_steps=10, kl_warmup=0, progress=False).fit(mlp, x, y)
    assert post.fit_info["kl_warmup"] == 0
    # only a Bayesian LayerNorm: nothing for local reparameterisation to sample
    norm = BayesianNetwork(nn.Sequential(nn.Linear(2, 4), nn.LayerNorm(4), nn.Linear(4, 1)), bayesian=nn.LayerNorm)
    assert inference.MeanField(num_steps=2, progress=False).fit(norm, x, y).fit_info["estimator"] == "reparam"
    with pytest.raises(ValueError, match="num_particles"):
        inference.MeanField(estimator="local", num_particles=2)
    with pytest.raises(ValueError, match="estimator"):
        inference.MeanField(estimator="magic")


def test_svi_posterior_around_a_users_autodiagonalnormal(tmp_path):
    """A guide fitted with Pyro's own SVI loop becomes a posterior: same draws as the guide,
    Predictive-compatible, saved and loaded."""
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 40).unsqueeze(-1)
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(40)
    model = BayesianNetwork(nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)))
    guide = pyro.infer.autoguide.AutoDiagonalNormal(model, init_scale=0.05)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), pyro.infer.Trace_ELBO())
    for _ in range(200):
        svi.step(x, y)
    post = inference.SVIPosterior(model, guide)
    assert post.family == "mean-field" and post.input_shape == (1,)
    median = guide.median()
    for k, v in post.mean_latents().items():
        torch.testing.assert_close(v, median[k])
    loc, scale = post.site_loc_scale("2.weight")
    torch.testing.assert_close(loc.reshape(-1), guide.loc.detach()[post.layout.site("2.weight").index])
    pred = post.predict(x, num_samples=50)
    assert pred.mean.shape == (40,) and bool((pred.epistemic_variance > 0).all())
    path = tmp_path / "user.pt"
    post.save(path)
    back = pyrobdl.load(path)
    for k, v in back.mean_latents().items():
        torch.testing.assert_close(v, median[k])
    with pytest.raises(TypeError, match="AutoDiagonalNormal"):
        inference.SVIPosterior(model, pyro.infer.autoguide.AutoNormal(model))


def test_mean_field_state_saved_from_an_autonormal_guide_loads():
    """Mean-field posteriors were saved from an AutoNormal guide before they moved onto
    AutoDiagonalNormal: such a state still loads, into the same means and scales."""
    torch.manual_seed(0)
    x, y = torch.randn(10, 2), torch.randn(10)
    model = BayesianNetwork(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)))
    old = pyro.infer.autoguide.AutoNormal(model, init_scale=0.07)
    old(x, y)
    with torch.no_grad():
        for p in old.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = {
        "family": "mean-field", "guide_options": {"init_scale": 0.01},
        "guide_state": old.state_dict(), "input_shape": [2], "target_info": {"shape": [], "dtype": "float"},
    }
    post = inference.SVIPosterior.from_state(model, state)
    for name in post.layout.names:
        loc, scale = old._get_loc_and_scale(name)
        got_loc, got_scale = post.site_loc_scale(name)
        torch.testing.assert_close(got_loc, loc.detach())
        torch.testing.assert_close(got_scale, scale.detach())

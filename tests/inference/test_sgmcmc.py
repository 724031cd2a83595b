"""Stochastic-gradient MCMC (SGLD, SGHMC, cyclical SG-MCMC): the closed-form Bayesian
linear-regression posterior within ESS-based tolerances (plus the exactly computed
step-size bias), the cyclical schedule of Zhang et al. (2020), batched chains against
chains run one at a time, the defaults on the 1-D toy, save/load, ArviZ and bad input."""
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import pyrobdl
from pyrobdl import BayesianNetwork, likelihoods, priors
from pyrobdl.diagnostics import rhat_ess
from pyrobdl.inference.sgmcmc import (
    SGHMC,
    SGLD,
    CyclicalSGMCMC,
    CyclicalSGMCMCPosterior,
    MinibatchPotential,
    SGHMCPosterior,
    SGLDPosterior,
    cycle_positions,
    cyclical_step_sizes,
    sgmcmc_sample,
)

NOISE = 0.5
QUIET = dict(progress=False)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks: one intra-op thread is faster and immune to a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def blr_data(N=40, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, d, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5])[:d] + 0.3 + NOISE * torch.randn(N, generator=g)
    return X, y


def blr_model(d=3):
    return BayesianNetwork(nn.Linear(d, 1), prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian(scale=NOISE))


def blr_posterior(X, y):
    """Mean and covariance of [w, b] (float64), and the Hessian H of the potential U."""
    Xa = torch.cat([X, torch.ones(X.shape[0], 1)], 1).double()
    H = Xa.T @ Xa / NOISE**2 + torch.eye(Xa.shape[1], dtype=torch.float64)
    cov = torch.linalg.inv(H)
    return cov @ Xa.T @ y.double() / NOISE**2, cov, H


def stationary_cov(H, eta, P, sampler, friction=0.1):
    r"""The exact stationary covariance of the position under the *discretised* full-batch
    update on the Gaussian potential with Hessian ``H`` (diagonal preconditioner ``P``):
    the solution of the discrete Lyapunov equation :math:`\Sigma = B\Sigma B^\top + Q` of the
    linear recursion. Its difference from :math:`H^{-1}` is the step-size bias."""
    D = H.shape[0]
    P = torch.diag(P.double())
    I = torch.eye(D, dtype=torch.float64)
    if sampler == "sgld":  # z' = z - eta/2 P H z + sqrt(eta P) xi
        B, Q = I - 0.5 * eta * P @ H, eta * P
    else:  # v' = (1-a) v - eta P H z + w, z' = z + v', w ~ N(0, 2 a eta P)
        a = friction
        W = 2 * a * eta * P
        B = torch.cat([torch.cat([I - eta * P @ H, (1 - a) * I], 1), torch.cat([-eta * P @ H, (1 - a) * I], 1)], 0)
        Q = torch.cat([torch.cat([W, W], 1), torch.cat([W, W], 1)], 0)
    n = B.shape[0]
    vec = torch.linalg.solve(torch.eye(n * n, dtype=torch.float64) - torch.kron(B, B), Q.reshape(-1))
    return vec.reshape(n, n)[:D, :D]


def stacked(post):
    s = post.samples
    C, S = s["weight"].shape[:2]
    return torch.cat([s["weight"].reshape(C, S, 3), s["bias"].reshape(C, S, 1)], -1).double()


def check_blr(post, X, y, sampler, friction=0.1):
    """Posterior mean and sd within 4 Monte Carlo standard errors (from the bulk ESS of each
    coordinate: sd/sqrt(ESS) for the mean, sd/sqrt(2 ESS) for the sd) of the closed form,
    plus the step-size bias of the sd computed exactly for the frozen preconditioner of each
    chain (the discretised chain's stationary sd minus the true one; the mean is unbiased on
    a Gaussian). The bias is required to be small, so the check is about the sampler, not
    the allowance."""
    mean, cov, H = blr_posterior(X, y)
    sd = cov.diagonal().sqrt()
    draws = stacked(post)
    ess = torch.as_tensor(rhat_ess(draws.numpy())["ess_bulk"])
    N = X.shape[0]
    eta = post.fit_info["settings"]["step_size"] / N
    bias = torch.zeros_like(sd)
    for P in post.fit_info["preconditioner"]:
        disc = stationary_cov(H, eta, P, sampler, friction).diagonal().sqrt()
        bias = torch.maximum(bias, (disc - sd).abs())
    assert torch.all(bias < 0.05 * sd), bias / sd  # a small step: at most 5% bias in the sd
    flat = draws.reshape(-1, 4)
    est_mean, est_sd = flat.mean(0), flat.std(0)
    assert float(ess.min()) > 100, ess
    assert torch.all((est_mean - mean).abs() < 4 * sd / ess.sqrt()), (est_mean, mean, ess)
    assert torch.all((est_sd - sd).abs() < 4 * sd / (2 * ess).sqrt() + bias), (est_sd, sd, ess, bias)
    # the correlations too (the posterior of [w, b] is correlated): MCSE (1 - rho^2)/sqrt(ESS)
    rho = cov / torch.outer(sd, sd)
    est_rho = torch.corrcoef(flat.T)
    assert torch.all((est_rho - rho).abs() <= 4 * (1 - rho**2) / ess.min().sqrt() + 0.05), (est_rho, rho)


# ----------------------------------------------------------------------------- correctness
def test_sgld_recovers_the_closed_form_blr_posterior():
    """Plain SGLD (Welling & Teh, no preconditioner), full batch. eta * lambda_max(H) is
    about 0.1 here, so the sd is biased by about 2.5% (computed exactly in check_blr)."""
    X, y = blr_data()
    post = SGLD(num_samples=1000, thin=2, warmup_steps=300, step_size=0.025, batch_size=None, precondition=False,
                num_chains=4, init_steps=200, seed=0, **QUIET).fit(blr_model(), X, y)
    assert isinstance(post, SGLDPosterior) and post.samples["weight"].shape == (4, 1000, 1, 3)
    check_blr(post, X, y, "sgld")


def test_preconditioned_sghmc_recovers_the_closed_form_blr_posterior():
    """SGHMC with friction 0.1 and the preconditioner frozen after burn-in (a constant mass
    matrix leaves the posterior invariant), full batch."""
    X, y = blr_data()
    post = SGHMC(num_samples=1000, thin=3, warmup_steps=500, step_size=5e-4, batch_size=None, friction=0.1,
                 num_chains=4, init_steps=200, seed=1, **QUIET).fit(blr_model(), X, y)
    assert isinstance(post, SGHMCPosterior)
    P = torch.stack(post.fit_info["preconditioner"])
    assert P.shape == (4, 4) and float(P.std() / P.mean()) > 0.01  # a real, non-constant preconditioner
    check_blr(post, X, y, "sghmc")


def test_wrong_data_scaling_would_be_caught():
    """The check can fail: a potential whose likelihood is not scaled by N/B (here N/B = 4 on
    batches of 10) puts the sd off by about a factor 2."""
    X, y = blr_data()
    mean, cov, _ = blr_posterior(X, y)
    model = blr_model()
    pot = MinibatchPotential(model, num_data=10)  # wrong: the data set has 40 points
    xc, yc = model.check_data(X, y)
    z0 = mean.float().unsqueeze(0).expand(4, -1).clone()
    out = sgmcmc_sample(pot.value_and_grad, z0, itertools.repeat((xc, yc)), step_sizes=[0.025 / 40] * 3000,
                        keep=[k >= 500 for k in range(3000)], precondition=False,
                        generator=torch.Generator().manual_seed(0))
    est_sd = out["z"].reshape(-1, 4).double().std(0)
    assert torch.all(est_sd > 1.5 * cov.diagonal().sqrt())


def test_cyclical_step_sizes_follow_the_paper_formula():
    """Zhang et al. (2020), eq. 1: alpha_k = alpha_0/2 [cos(pi mod(k-1, ceil(K/M)) / ceil(K/M)) + 1],
    with K not a multiple of M."""
    K, M, a0 = 100, 3, 0.7
    L = math.ceil(K / M)
    want = [a0 / 2 * (math.cos(math.pi * ((k - 1) % L) / L) + 1) for k in range(1, K + 1)]
    got = cyclical_step_sizes(K, num_cycles=M, step_size=a0)
    assert got.shape == (K,) and np.allclose(got.numpy(), want, rtol=0, atol=1e-12)
    assert got[0] == a0 and got[L] == a0 and float(got.min()) > 0
    assert np.allclose(cycle_positions(K, M).numpy(), [((k - 1) % L) / L for k in range(1, K + 1)])


def test_cyclical_plan_explores_then_samples_at_the_end_of_each_cycle():
    algo = CyclicalSGMCMC(num_cycles=3, cycle_length=50, samples_per_cycle=4, exploration=0.8, **QUIET)
    plan = algo.schedule(steps_per_epoch=7)
    K = 150
    r = cycle_positions(K, 3).tolist()
    assert plan["noisy"][:K] == [ri >= 0.8 for ri in r]  # noise only in the sampling stage
    keep = [k for k, b in enumerate(plan["keep"]) if b]
    assert len(keep) == 12 and plan["fit_info"]["cycle"] == [0] * 4 + [1] * 4 + [2] * 4
    # the state after the last update of each cycle is kept; every kept state follows a noisy step
    assert {50, 100, 150} <= set(keep)
    assert all(plan["noisy"][k - 1] for k in keep)
    assert np.allclose(plan["step_sizes"][:K], cyclical_step_sizes(K, num_cycles=3, step_size=algo.step_size).numpy())


def test_vectorised_chains_equal_chains_run_one_by_one():
    """Three SGHMC chains (preconditioner adapting for half the run, then frozen) in one
    batched pass equal each chain run alone with the same noise and minibatches: nothing is
    shared between chains but the minibatch (a gradient of the mean over chains, a pooled
    preconditioner or momentum would break this)."""
    torch.manual_seed(0)
    model = BayesianNetwork(nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)), likelihood=likelihoods.Gaussian())
    model = model.double()
    x = torch.randn(30, 2, dtype=torch.float64)
    x, y = model.check_data(x, x.sum(-1).sin())
    pot = MinibatchPotential(model, num_data=120)
    C, K = 3, 200
    z0 = 0.3 * torch.randn(C, pot.dim, dtype=torch.float64)
    noise = torch.randn(K, C, pot.dim, dtype=torch.float64)
    common = dict(step_sizes=[1e-3 / 120] * K, keep=[k % 20 == 19 for k in range(K)], adapt=[k < 100 for k in range(K)],
                  sampler="sghmc", num_data=120)
    together = sgmcmc_sample(pot.value_and_grad, z0, itertools.repeat((x, y)), noise=lambda k: noise[k], **common)
    for c in range(C):
        alone = sgmcmc_sample(pot.value_and_grad, z0[c : c + 1], itertools.repeat((x, y)),
                              noise=lambda k, c=c: noise[k, c : c + 1], **common)
        assert torch.allclose(alone["z"][0], together["z"][c], atol=1e-10, rtol=1e-8)
        assert torch.allclose(alone["preconditioner"][0], together["preconditioner"][c], rtol=1e-8)
    assert not torch.allclose(together["z"][0], together["z"][1])


# ----------------------------------------------------------------------------- interfaces
def _tiny(method, **extra):
    x = torch.linspace(-2, 2, 40).unsqueeze(-1)
    y = torch.sin(2 * x[:, 0])
    model = BayesianNetwork(nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)), likelihood=likelihoods.Gaussian())
    opts = dict(num_chains=2, batch_size=10, init_steps=100, seed=0, progress=False)
    if method == "cyclical-sgmcmc":
        opts.update(num_cycles=2, cycle_length=40, samples_per_cycle=5)
    else:
        opts.update(num_samples=10, warmup_steps=50)
    opts.update(extra)
    return pyrobdl.fit(model, x, y, method=method, **opts), x, y


@pytest.mark.parametrize("method,cls", [("sgld", SGLDPosterior), ("sghmc", SGHMCPosterior),
                                        ("cyclical-sgmcmc", CyclicalSGMCMCPosterior)])
def test_save_load_round_trip_and_arviz(method, cls, tmp_path):
    post, x, y = _tiny(method)
    assert type(post) is cls and post.method == method and method in pyrobdl.available_methods()
    assert post.num_chains == 2 and post.num_draws == 10 and "sigma" in post.samples  # the noise is sampled
    path = tmp_path / "post.pt"
    post.save(path)
    loaded = pyrobdl.load(path)
    assert type(loaded) is cls
    for k, v in post.samples.items():
        assert torch.equal(loaded.samples[k], v)
    assert torch.allclose(loaded.predict(x).mean, post.predict(x).mean)
    assert loaded.fit_info["settings"] == post.fit_info["settings"]
    idata = loaded.to_arviz()  # the training data were saved with it
    assert idata.posterior["0.weight"].dims[:2] == ("chain", "draw")
    assert idata.posterior.sizes["chain"] == 2 and idata.posterior.sizes["draw"] == 10
    assert set(idata.sample_stats.data_vars) == {"lp", "step_size"}
    assert idata.log_likelihood["obs"].shape == (2, 10, 40)


def test_summary_and_function_space_diagnostics_work_unchanged():
    post, x, _ = _tiny("sgld")
    s = pyrobdl.diagnostics.summary(post)
    assert s.num_chains == 2 and s.num_draws == 10 and s.function_rhat_max is not None
    assert math.isfinite(s.step_size_mean)
    fs = pyrobdl.diagnostics.function_space_diagnostics(post, x[:5])
    assert fs.rhat.shape == (5,) and np.isfinite(fs.ess_bulk).all()


def test_dataloader_minibatches():
    """A DataLoader brings its own minibatches (the thinning defaults to one epoch of them)."""
    x = torch.randn(64, 2)
    y = x[:, 0] - x[:, 1]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True)
    model = BayesianNetwork(nn.Linear(2, 1), likelihood=likelihoods.Gaussian(scale=0.3))
    post = SGLD(num_samples=20, warmup_steps=100, init_steps=300, num_chains=3, seed=0, **QUIET).fit(model, loader)
    assert post.samples["weight"].shape == (3, 20, 1, 2) and post.x is None
    assert post.fit_info["thin"] == 4  # one epoch: 64 / 16 batches
    w = post.samples["weight"].reshape(-1, 2).mean(0)
    assert torch.allclose(w, torch.tensor([1.0, -1.0]), atol=0.2)


@pytest.mark.filterwarnings("ignore:the fitted SGLDPosterior has no epistemic spread")  # one state, 3 equal chains
def test_network_init_starts_every_chain_at_the_networks_weights():
    x = torch.randn(20, 2)
    model = BayesianNetwork(nn.Linear(2, 1), likelihood=likelihoods.Gaussian(scale=0.3))
    post = SGLD(num_samples=1, thin=1, warmup_steps=0, init="network", init_jitter=0.0, num_chains=3, **QUIET).fit(
        model, x, x.sum(-1)
    )
    first = post.samples["weight"][:, 0].reshape(3, 2)  # the state entering the first step
    assert torch.equal(first, model.net.weight.detach().expand(3, 2))


def test_seed_reproduces_the_draws():
    a, _, _ = _tiny("sghmc")
    b, _, _ = _tiny("sghmc")
    assert torch.equal(a.samples["0.weight"], b.samples["0.weight"])


def test_divergence_names_the_fix():
    with pytest.raises(FloatingPointError, match="step_size"):
        _tiny("sgld", step_size=1e4, precondition=False)


@pytest.mark.parametrize(
    "cls,kwargs,err,match",
    [
        (SGLD, dict(step_size=0.0), ValueError, "step_size"),
        (SGLD, dict(num_chains=0), ValueError, "num_chains"),
        (SGLD, dict(thin=1.5), TypeError, "thin"),
        (SGLD, dict(init="prior"), ValueError, "init must be 'map'"),
        (SGLD, dict(precondition="yes"), TypeError, "precondition"),
        (SGHMC, dict(friction=1.5), ValueError, "friction"),
        (CyclicalSGMCMC, dict(exploration=1.0), ValueError, "exploration"),
        (CyclicalSGMCMC, dict(sampler="nuts"), ValueError, "sampler"),
    ],
)
def test_bad_settings_name_the_argument(cls, kwargs, err, match):
    with pytest.raises(err, match=match):
        cls(**kwargs)


def test_too_many_samples_per_cycle_is_refused():
    with pytest.raises(ValueError, match="samples_per_cycle"):
        CyclicalSGMCMC(cycle_length=20, samples_per_cycle=10, exploration=0.8).schedule(1)


# ----------------------------------------------------------------------------- defaults
@pytest.mark.slow
@pytest.mark.parametrize("method", ["sgld", "sghmc", "cyclical-sgmcmc"])
def test_defaults_on_the_toy_grow_the_epistemic_std_outside_the_data(method):
    """pyrobdl.fit with no options on the shipped 1-D toy (300 points, 1-100-100-1 ReLU, the
    default prior and learned noise): a real fit (in-range RMSE below 0.8 against targets of
    std 2.5 and noise 0.3-0.6) whose epistemic std outside the training range is well above
    the one inside (measured 3-6x; asked: 1.5x)."""
    from pyrobdl import datasets

    ds = datasets.toy_regression(n_train=300)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        post = pyrobdl.fit(BayesianNetwork(net), ds.x_train, ds.y_train, method=method, progress=False, seed=0)
    inr = ds.in_train_range(ds.x_test)
    pred = post.predict(ds.x_test)
    rmse = float((pred.mean - ds.y_test.reshape(-1))[inr].pow(2).mean().sqrt())
    assert rmse < 0.8
    assert float(pred.epistemic_std[~inr].mean()) > 1.5 * float(pred.epistemic_std[inr].mean())

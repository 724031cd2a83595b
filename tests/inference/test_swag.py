"""SWAG and MultiSWAG (pyrobdl.inference.swag): the moment collection against numpy on the
same iterates, convergence on a quadratic with a known optimum and a known stationary
iterate covariance, sampling against the stored moments, vectorised MultiSWAG against SWAG
models trained one by one, the cyclic schedule against the constant one, the defaults on the
1-D toy, save/load."""
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import pyrobdl
from pyrobdl import BayesianNetwork, datasets, likelihoods, priors
from pyrobdl.inference import get_method
from pyrobdl.inference.ensemble import EnsemblePosterior
from pyrobdl.inference.point import init_latents
from pyrobdl.inference.swag import MultiSWAG, MultiSWAGPosterior, SWAG, SWAGMoments, SWAGPosterior, cyclic_lr_factor


def _tiny(h=8, dtype=torch.float64, seed=0, likelihood=None):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(1, h), nn.Tanh(), nn.Linear(h, 1)).to(dtype)
    return BayesianNetwork(net, prior=priors.Normal(0.0, 1.0), likelihood=likelihood or likelihoods.Gaussian())


def _data(n=40, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(n, 1, generator=g) * 4 - 2).to(dtype)
    return x, torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(n, generator=g, dtype=dtype)


# the fits here are a few dozen steps (mechanics, not quality): the noise has not reached the
# residual scale, which check_fit rightly reports
pytestmark = pytest.mark.filterwarnings("ignore:the fitted .*learned noise")


# ----------------------------------------------------------------------------- moments
@pytest.mark.parametrize("T,rank,batch", [(30, 8, ()), (5, 8, (2,)), (17, 4, (3,))])
def test_moments_equal_numpy_on_the_same_iterates(T, rank, batch):
    """Mean, second moment, diagonal variance, the last K deviations (theta_t minus the
    running mean including theta_t) and the SWAG covariance 1/2 (diag + D^T D / (K-1)),
    computed by hand in numpy float64 on the same iterates. The accumulators are float64
    (agreement to ~1e-12); the deviations are stored in float32 (relative 1e-6)."""
    rng = np.random.default_rng(0)
    d = 5
    its = rng.normal(size=(T,) + batch + (d,)) * rng.uniform(0.1, 2, size=d) + 3.0
    m = SWAGMoments(d, rank=rank, batch_shape=batch)
    for t in range(T):
        m.update(torch.as_tensor(its[t], dtype=torch.float32))
    its = its.astype(np.float32).astype(np.float64)  # what was passed in
    mean = its.mean(0)
    running = np.cumsum(its, 0) / np.arange(1, T + 1).reshape((-1,) + (1,) * (its.ndim - 1))
    devs = np.moveaxis((its - running)[-min(T, rank):], 0, -2)  # (*batch, K', d), oldest first
    var = (its ** 2).mean(0) - mean ** 2
    k = devs.shape[-2]
    cov = 0.5 * (np.einsum("...i,ij->...ij", var, np.eye(d)) + np.swapaxes(devs, -1, -2) @ devs / (k - 1))
    assert m.count == T and m.num_deviations == min(T, rank)
    np.testing.assert_allclose(m.mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(m.sq_mean.numpy(), (its ** 2).mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.diag_var.numpy(), var, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m.deviations.numpy(), devs, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m.covariance().numpy(), cov, rtol=1e-5, atol=1e-6)
    # the sample covariance of the iterates is the diagonal variance (biased, 1/T)
    np.testing.assert_allclose(np.diagonal(np.cov(np.moveaxis(its, 0, -1).reshape(-1, d, T)[0], bias=True)),
                               var.reshape(-1, d)[0], rtol=1e-9)


def test_moments_bad_input():
    m = SWAGMoments(3, rank=2)
    with pytest.raises(ValueError, match="no iterate collected"):
        m.mean
    with pytest.raises(ValueError, match=r"expected \(3,\)"):
        m.update(torch.zeros(4))
    with pytest.raises(TypeError, match="theta must be a tensor"):
        m.update([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="non-finite"):
        m.update(torch.tensor([0.0, float("nan"), 0.0]))
    with pytest.raises(ValueError, match="rank must be >= 1"):
        SWAGMoments(3, rank=0)


def test_swag_mean_and_variance_converge_on_a_quadratic():
    """SGD with Gaussian gradient noise on L = 1/2 sum_i a_i (theta_i - theta*_i)^2: each
    coordinate is an AR(1) process, theta' - theta* = rho (theta - theta*) - eta eps with
    rho = 1 - eta a_i, whose stationary variance is eta^2 c / (1 - rho^2). The SWAG mean
    must converge to theta* and the diagonal variance to that variance. Tolerances are 5
    standard errors of the estimates over T correlated iterates: the mean's variance is
    v (1 + rho) / ((1 - rho) T), the variance estimate's relative sd is
    sqrt(2 (1 + rho^2) / ((1 - rho^2) T))."""
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([1.0, 4.0, 0.5], dtype=torch.float64)
    opt = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    eta, c, T = 0.1, 1.0, 20000
    theta = torch.zeros(3, dtype=torch.float64)
    m = SWAGMoments(3, rank=20, dtype=torch.float64)
    for t in range(200 + T):
        theta = theta - eta * (a * (theta - opt) + math.sqrt(c) * torch.randn(3, generator=g, dtype=torch.float64))
        if t >= 200:  # after burn-in (rho^200 < 1e-4 for the slowest coordinate)
            m.update(theta)
    rho = 1 - eta * a
    v = eta ** 2 * c / (1 - rho ** 2)
    se_mean = (v * (1 + rho) / ((1 - rho) * T)).sqrt()
    assert bool(((m.mean - opt).abs() < 5 * se_mean).all()), (m.mean, opt, se_mean)
    rel_sd = (2 * (1 + rho ** 2) / ((1 - rho ** 2) * T)).sqrt()
    assert bool(((m.diag_var / v - 1).abs() < 5 * rel_sd).all()), (m.diag_var, v)
    # and the mean is far closer to the optimum than the iterates are (the point of averaging)
    assert bool(((m.mean - opt).abs() < 0.1 * v.sqrt()).all())


@pytest.mark.parametrize("batch", [(), (2,)])
def test_sampling_reproduces_the_stored_moments(batch):
    """The mean and covariance of S = 200000 draws match the SWAG mean and covariance (the
    low-rank part included: correlated iterates). Per entry, the MC standard error of the
    sample mean is sqrt(C_ii / S) and of the sample covariance sqrt((C_ii C_jj + C_ij^2) / S)
    (Gaussian draws); we allow 5 of them."""
    d, S = 4, 200_000
    g = torch.Generator().manual_seed(0)
    m = SWAGMoments(d, rank=5, batch_shape=batch, dtype=torch.float64)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    for _ in range(12):
        m.update(torch.randn(batch + (d,), generator=g, dtype=torch.float64) @ mix + 2.0)
    torch.manual_seed(1)
    draws = m.sample(S)
    assert draws.shape == (S,) + batch + (d,)
    C = m.covariance()
    mean_se = (torch.diagonal(C, dim1=-2, dim2=-1) / S).sqrt()
    assert bool(((draws.mean(0) - m.mean).abs() < 5 * mean_se).all())
    centred = draws - m.mean
    emp = torch.einsum("s...i,s...j->...ij", centred, centred) / S
    diag = torch.diagonal(C, dim1=-2, dim2=-1)
    cov_se = ((diag.unsqueeze(-1) * diag.unsqueeze(-2) + C ** 2) / S).sqrt()
    assert bool(((emp - C).abs() < 5 * cov_se).all())
    # the low-rank part matters here: the covariance is far from diagonal
    off = C - torch.diag_embed(diag)
    assert float(off.abs().max()) > 10 * float(cov_se.max())


def test_cyclic_lr_factor():
    """Izmailov et al.'s schedule: t = (i mod c + 1) / c, factor (1 - t) + t rho."""
    assert [cyclic_lr_factor(i, 5, 0.0) for i in range(6)] == pytest.approx([0.8, 0.6, 0.4, 0.2, 0.0, 0.8])
    assert cyclic_lr_factor(3, 4, 0.1) == pytest.approx(0.1)


# ----------------------------------------------------------------------------- training
FAST = dict(epochs=30, swag_epochs=12, batch_size=None, progress=False)


def test_multiswag_vectorised_equals_swag_models_trained_one_by_one():
    """M = 3 models trained at once (stacked parameters, one batched pass, one fused Adam on the
    (M, P) leaf) against three SWAG fits from the same initial weights and noise, one by one.
    Full-batch data: with minibatches the members' shuffles come from one (M, N) random draw
    per epoch, which single fits cannot reproduce, so the iterates would differ by design.
    Float64 networks; Adam's steps agree to rounding, so the moments agree to 1e-8."""
    x, y = _data()
    nets = [_tiny(seed=s).net for s in range(3)]
    from torch.func import stack_module_state

    params, buffers = stack_module_state(nets)
    model = BayesianNetwork(_tiny().net, prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian())
    raw = init_latents(model, "test", y, (3,))
    ens = EnsemblePosterior(model, params, buffers, raw, settings={})
    multi = MultiSWAG(size=3, warm_start=ens, rank=5, **FAST).fit(model, x, y)
    assert isinstance(multi, MultiSWAGPosterior) and multi.size == 3
    for i, net in enumerate(nets):
        single = SWAG(rank=5, **FAST).fit(BayesianNetwork(net, prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian()), x, y)
        assert single.moments.count == multi.moments.count == 12
        torch.testing.assert_close(single.moments.mean[0], multi.moments.mean[i], rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(single.moments.sq_mean[0], multi.moments.sq_mean[i], rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(single.moments.deviations[0], multi.moments.deviations[i], rtol=1e-6, atol=1e-10)
        torch.testing.assert_close(single.latents["sigma"][0], multi.latents["sigma"][i], rtol=1e-8, atol=1e-10)
    # the models differ from each other (different initialisations)
    assert float((multi.moments.mean[0] - multi.moments.mean[1]).abs().max()) > 1e-2


def test_cyclic_schedule_is_adam_at_the_scheduled_rate():
    """With a cycle of one step the cyclic factor is always swa_lr_min / swa_lr, so the cyclic
    run must equal a constant run at swa_lr_min (Adam's update is linear in its rate). A fixed
    noise scale, so no latent trains at its own rate. Float64: equal to 1e-9."""
    x, y = _data()
    lik = likelihoods.Gaussian(scale=0.1)
    kw = dict(pretrained=True, batch_size=None, swag_epochs=15, collect_every=1, rank=4, progress=False)
    cyc = SWAG(swa_lr=0.05, schedule="cyclic", swa_lr_min=0.01, **kw).fit(_tiny(likelihood=lik), x, y)
    const = SWAG(swa_lr=0.01, **kw).fit(_tiny(likelihood=lik), x, y)
    torch.testing.assert_close(cyc.moments.mean, const.moments.mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(cyc.moments.deviations, const.moments.deviations, rtol=1e-7, atol=1e-12)
    # and a real cycle differs from both
    cyc3 = SWAG(swa_lr=0.05, schedule="cyclic", swa_lr_min=0.01, **dict(kw, collect_every=3)).fit(_tiny(likelihood=lik), x, y)
    assert float((cyc3.moments.mean - const.moments.mean).abs().max()) > 1e-4


def test_pretrained_starts_from_the_given_weights_even_with_a_seed():
    """pretrained=True: no pretraining, and the seed does not re-draw the weights: with a tiny
    SWA rate the SWA mean stays at the given weights."""
    x, y = _data()
    model = _tiny()
    w = torch.cat([p.detach().reshape(-1) for p in model.net.parameters()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the spread is tiny by design
        post = SWAG(pretrained=True, swa_lr=1e-6, swag_epochs=4, batch_size=None, progress=False, seed=3).fit(model, x, y)
    assert post.fit_info["num_steps"] == 4
    torch.testing.assert_close(post.moments.mean[0], w, atol=1e-5, rtol=0)


def test_defaults_on_the_toy_give_epistemic_std_growing_outside_the_data():
    """pyrobdl.fit(method="swag") with no options on the 1-D toy (train on [-7, 7], 1-50-1 ReLU,
    the comparison's model): a real fit inside the data (the noise std is 0.3..0.6 and the
    targets' std about 3, so an in-range RMSE below 1.5 means the shape is learned; measured
    1.08) and epistemic std at least twice as large outside [-7, 7] as inside (measured 4.6x)."""
    torch.set_num_threads(1)
    ds = datasets.toy_regression()
    net = nn.Sequential(nn.Linear(1, 50), nn.ReLU(), nn.Linear(50, 1))
    model = BayesianNetwork(net, prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian())
    post = pyrobdl.fit(model, ds.x_train, ds.y_train, method="swag", progress=False, seed=0)
    assert isinstance(post, SWAGPosterior) and post.moments.count == 40
    pred = post.predict(ds.x_test, num_samples=100)
    inr = ds.in_train_range(ds.x_test)
    rmse = float((pred.mean - ds.y_test)[inr].pow(2).mean().sqrt())
    assert rmse < 1.5
    assert float(pred.epistemic_std[~inr].mean()) > 2 * float(pred.epistemic_std[inr].mean())


def test_save_load_round_trip(tmp_path):
    """The loaded posterior has the same moments, latents and, for the same seed, the same
    predictive (MultiSWAG: 3 models, 7 draws, uneven blocks 3/2/2)."""
    x, y = _data(dtype=torch.float32)
    model = _tiny(dtype=torch.float32)
    post = MultiSWAG(size=3, epochs=5, swag_epochs=5, batch_size=16, progress=False, seed=0).fit(model, x, y)
    path = tmp_path / "multiswag.pt"
    post.save(path)
    back = pyrobdl.load(path, model=_tiny(dtype=torch.float32))
    assert type(back) is MultiSWAGPosterior and back.size == 3
    for k in ("mean", "sq_mean", "deviations"):
        torch.testing.assert_close(getattr(back.moments, k), getattr(post.moments, k), rtol=0, atol=0)
    torch.testing.assert_close(back.latents["sigma"], post.latents["sigma"])
    torch.manual_seed(5)
    a = post.predict(x, num_samples=7)
    torch.manual_seed(5)
    b = back.predict(x, num_samples=7)
    torch.testing.assert_close(a.mean, b.mean)
    torch.testing.assert_close(a.epistemic_variance, b.epistemic_variance)
    # the ring buffer keeps the deviations' order after a reload: one more update agrees
    theta = post.moments.mean + 0.1
    post.moments.update(theta)
    back.moments.update(theta)
    torch.testing.assert_close(back.moments.deviations, post.moments.deviations)


def test_registry_and_sample_latents_layout():
    assert get_method("swag") is SWAG and get_method("multi-swag") is MultiSWAG and get_method("MultiSWAG") is MultiSWAG
    x, y = _data(dtype=torch.float32)
    post = MultiSWAG(size=2, epochs=3, swag_epochs=3, batch_size=16, progress=False, seed=0).fit(_tiny(dtype=torch.float32), x, y)
    s = post.sample_latents(5)
    assert s["0.weight"].shape == (5, 8, 1) and s["sigma"].shape == (5,)
    # draw s comes from model s * M // S: draws 0..2 from model 0, 3..4 from model 1
    assert torch.equal(s["sigma"], post.latents["sigma"][torch.tensor([0, 0, 0, 1, 1])])
    # and each block of weight draws comes from its own model's Gaussian: with 2000 draws the
    # block means sit within 5 MC standard errors (sqrt(diag cov / 1000)) of their model's mean,
    # while the two models' means differ by far more
    torch.manual_seed(0)
    w = torch.cat([v.reshape(2000, -1) for k, v in post.sample_latents(2000).items() if k != "sigma"], 1)
    mean = post.moments.mean.float()
    se = (torch.diagonal(post.moments.covariance(), dim1=-2, dim2=-1).float() / 1000).sqrt()
    for m, block in enumerate((w[:1000], w[1000:])):
        assert bool(((block.mean(0) - mean[m]).abs() < 5 * se[m] + 1e-6).all())
    assert float((mean[0] - mean[1]).abs().max()) > 100 * float(se.max())


def test_bad_settings_name_the_argument():
    with pytest.raises(ValueError, match="schedule"):
        SWAG(schedule="linear")
    with pytest.raises(ValueError, match="swa_lr_min.*schedule='cyclic'"):
        SWAG(swa_lr_min=1e-3)
    with pytest.raises(ValueError, match="swa_lr_min=.*above swa_lr"):
        SWAG(schedule="cyclic", swa_lr=1e-3, swa_lr_min=1e-2)
    with pytest.raises(TypeError, match="MultiSWAG"):
        SWAG(size=2)
    with pytest.raises(TypeError, match="pretrained"):
        SWAG(pretrained="yes")
    with pytest.raises(TypeError, match="warm_start"):
        MultiSWAG(warm_start=object())
    x, y = _data(dtype=torch.float32)
    with pytest.raises(ValueError, match="fewer than 2 iterates"):
        SWAG(epochs=2, swag_epochs=1, batch_size=None, progress=False).fit(_tiny(dtype=torch.float32), x, y)
    with pytest.raises(ValueError, match="warm_start"):
        MultiSWAG(size=2, pretrained=True, progress=False).fit(_tiny(dtype=torch.float32), x, y)

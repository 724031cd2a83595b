"""ChEES-HMC: known posteriors (Bayesian linear regression in closed form, a correlated
2-D Gaussian, a banana), batched chains against chains run one at a time, the method in
the library's interfaces, and bad input."""
import math
import warnings

import numpy as np
import pyro
import pytest
import torch
import torch.nn as nn
from test_mcmc import blr_data, blr_model, check_against_closed_form, closed_form, stacked

import pyrobdl
from pyrobdl import BayesianNetwork, inference, likelihoods, priors
from pyrobdl.diagnostics import rhat_ess
from pyrobdl.inference.mcmc import ChEESPosterior, FlatPotential
from pyrobdl.inference.mcmc.chees import _Trajectory, chees_sample, halton

QUIET = dict(progress=False, diagnose=False, compile=False)


def moments_within_mcse(draws: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, k: float = 4.0):
    """Check the draws' mean, standard deviations and correlations against the truth with
    tolerances of ``k`` Monte Carlo standard errors from the bulk ESS of each coordinate:
    mean sd/sqrt(ESS), sd sd/sqrt(2 ESS), correlation (1-rho^2)/sqrt(ESS)."""
    d = rhat_ess(draws.double().numpy())
    ess = torch.as_tensor(d["ess_bulk"])
    flat = draws.reshape(-1, draws.shape[-1]).double()
    sd = cov.diagonal().sqrt()
    est_mean, est_cov = flat.mean(0), torch.cov(flat.T)
    est_sd = est_cov.diagonal().sqrt()
    assert torch.all((est_mean - mean).abs() < k * sd / ess.sqrt()), (est_mean, mean, ess)
    assert torch.all((est_sd - sd).abs() < k * sd / (2 * ess).sqrt() + 0.02 * sd), (est_sd, sd, ess)
    rho = cov / torch.outer(sd, sd)
    est_rho = est_cov / torch.outer(est_sd, est_sd)
    tol = k * (1 - rho**2) / ess.min().sqrt() + 0.02
    assert torch.all((est_rho - rho).abs() <= tol), (est_rho, rho, ess)
    return d


def small_bnn_potential() -> FlatPotential:
    """The flat potential of a 3-8-1 tanh network with a learned noise on 30 points."""
    X, y = blr_data(N=30)
    model = BayesianNetwork(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)),
                            prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian())
    xc, yc = model.check_data(X, y)
    return FlatPotential(model, xc, yc)


def test_halton_is_the_base_2_van_der_corput_sequence():
    assert [halton(n) for n in range(1, 8)] == [0.5, 0.25, 0.75, 0.125, 0.625, 0.375, 0.875]
    assert halton(1, base=3) == pytest.approx(1 / 3)


def test_recovers_the_closed_form_blr_posterior_mean_and_covariance():
    X, y = blr_data()
    post = inference.ChEESHMC(num_chains=16, num_samples=150, warmup_steps=200, init="prior", seed=0, **QUIET).fit(
        blr_model(), X, y
    )
    assert isinstance(post, ChEESPosterior) and post.method == "chees-hmc"
    assert post.samples["weight"].shape == (16, 150, 1, 3)
    ess = check_against_closed_form(post, X, y)
    assert float(ess.min()) > 600  # 2,400 draws of a Gaussian posterior
    # the full covariance, not only the marginal sds
    Xa = torch.cat([X, torch.ones(X.shape[0], 1)], 1).double()
    prec = Xa.T @ Xa / 0.5**2 + torch.eye(4, dtype=torch.float64)
    mean, _ = closed_form(X, y)
    moments_within_mcse(stacked(post), mean, torch.linalg.inv(prec))
    assert post.num_divergences == 0
    assert set(post.sample_stats) >= {"diverging", "energy", "n_steps", "step_size", "acceptance_rate", "lp"}
    assert post.sample_stats["acceptance_rate"].shape == (16, 150)


def test_correlated_gaussian_with_different_scales():
    # sds 1 and 10, correlation 0.95: the mass matrix must find the scales, the
    # trajectory length the long direction
    cov = torch.tensor([[1.0, 9.5], [9.5, 100.0]], dtype=torch.float64)
    prec = torch.linalg.inv(cov).float()

    def potential(z):
        return 0.5 * ((z @ prec) * z).sum(-1)

    gen = torch.Generator().manual_seed(1)
    out = chees_sample(potential, 3 * torch.randn(32, 2, generator=gen),
                       num_samples=200, warmup_steps=300, generator=gen)
    d = moments_within_mcse(out["z"], torch.zeros(2, dtype=torch.float64), cov)
    assert float(np.max(d["rhat"])) < 1.02
    inv_mass = out["inverse_mass_matrix"]
    assert 50 < float(inv_mass[1] / inv_mass[0]) < 200  # the variances' ratio, 100
    assert not bool(out["stats"]["diverging"].any())


def test_banana_target():
    # x1 ~ N(0, 1), x2 | x1 ~ N(x1^2 - 1, 0.5^2): E = (0, 0), Var x2 = 2 + 0.25, Cov = 0
    def potential(z):
        a, b = z[..., 0], z[..., 1]
        return 0.5 * a * a + 0.5 * ((b - (a * a - 1.0)) / 0.5) ** 2

    gen = torch.Generator().manual_seed(2)
    out = chees_sample(potential, torch.randn(32, 2, generator=gen),
                       num_samples=250, warmup_steps=300, generator=gen)
    cov = torch.tensor([[1.0, 0.0], [0.0, 2.25]], dtype=torch.float64)
    d = moments_within_mcse(out["z"], torch.zeros(2, dtype=torch.float64), cov)
    assert float(np.max(d["rhat"])) < 1.02
    # E[x2 - x1^2] = -1 exactly: a nonlinear moment the adaptation must not bias
    z = out["z"].reshape(-1, 2).double()
    resid = z[:, 1] - z[:, 0] ** 2
    assert abs(float(resid.mean()) + 1.0) < 4 * float(resid.std()) / math.sqrt(float(np.min(d["ess_bulk"])))


def test_batched_chains_equal_chains_run_one_at_a_time():
    pot = small_bnn_potential()
    gen = torch.Generator().manual_seed(0)
    C, D = 6, pot.dim
    z = 0.5 * torch.randn(C, D, generator=gen)
    r0 = torch.randn(C, D, generator=gen)
    uniform = torch.rand(C, generator=gen)
    inv_mass = torch.rand(D, generator=gen) + 0.5
    traj = _Trajectory(pot.function, None)
    with pyro.validation_enabled(False):
        u, g = traj.vg(z)
        batched = traj.transition(z, u, g, 0.02, 25, inv_mass, r0=r0, uniform=uniform)
        alone = []
        for c in range(C):
            uc, gc = traj.vg(z[c:c + 1])
            alone.append(traj.transition(z[c:c + 1], uc, gc, 0.02, 25, inv_mass, r0=r0[c:c + 1], uniform=uniform[c:c + 1]))
    assert bool(batched[-3].lt(1).any() and batched[-3].gt(0).any()), "the case should mix accepts and rejects"
    for c in range(C):
        for b, a in zip(batched, alone[c]):
            if b.dtype == torch.bool:
                assert bool((b[c] == a[0]).all())
            else:
                torch.testing.assert_close(b[c], a[0], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_compiled_trajectory_equals_the_eager_one():
    pot = small_bnn_potential()
    gen = torch.Generator().manual_seed(0)
    z = 0.5 * torch.randn(8, pot.dim, generator=gen)
    r = torch.randn(8, pot.dim, generator=gen)
    inv_mass = torch.rand(pot.dim, generator=gen) + 0.5
    eager, compiled = _Trajectory(pot.function, None), _Trajectory(pot.function, None, compile=True)
    with pyro.validation_enabled(False):
        u, g = eager.vg(z)
        want = eager.run(z, u, g, r, 0.01, 19, inv_mass)  # 2 compiled calls of 8 steps, 3 single steps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = compiled.run(z, u, g, r, 0.01, 19, inv_mass)
    if not compiled.compiled:
        pytest.skip("torch.compile does not work on this machine (the sampler falls back to eager, tested above)")
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_same_seed_same_draws_and_the_method_in_every_interface(tmp_path):
    X, y = blr_data(N=20)
    kw = dict(num_chains=8, num_samples=20, warmup_steps=40, seed=3, **QUIET)
    a = pyrobdl.fit(blr_model(), X, y, method="chees-hmc", **kw)
    b = inference.ChEESHMC(**kw).fit(blr_model(), X, y)
    assert torch.equal(a.samples["weight"], b.samples["weight"])
    assert type(pyrobdl.inference.get_method("chees")) is type(inference.ChEESHMC)
    pred = a.predict(X)
    assert pred.num_samples == 160  # every draw: fewer than default_num_samples
    assert a.fit_info["trajectory_length"] > 0 and a.fit_info["settings"]["num_chains"] == 8
    path = tmp_path / "chees.pt"
    a.save(path)
    c = pyrobdl.load(path)
    assert isinstance(c, ChEESPosterior) and torch.equal(c.samples["weight"], a.samples["weight"])
    idata = a.to_arviz()
    assert idata.posterior.sizes["chain"] == 8 and "acceptance_rate" in idata.sample_stats


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_chains=0), "num_chains"),
        (dict(num_samples=0), "num_samples"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(max_leapfrog_steps=0), "max_leapfrog_steps"),
        (dict(target_accept=1.5), "target_accept"),
        (dict(init="nowhere"), "init"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        inference.ChEESHMC(**kwargs)


def test_non_finite_initial_point_is_a_clear_error():
    X, y = blr_data(N=20)
    init = {"weight": torch.tensor([[float("nan"), 0.0, 0.0]]), "bias": torch.zeros(1)}
    with pytest.raises(ValueError, match="not finite at the initial point"):
        inference.ChEESHMC(num_chains=2, num_samples=5, warmup_steps=5, init=init, **QUIET).fit(blr_model(), X, y)
    with pytest.raises(ValueError, match="z0 must have shape"):
        chees_sample(lambda z: z.sum(-1), torch.zeros(3), num_samples=1, warmup_steps=0)


def _mixture_potential(centres, log_weights, scale=1.0):
    centres = torch.as_tensor(centres, dtype=torch.float32)
    log_w = torch.as_tensor(log_weights, dtype=torch.float32)

    def potential(z):
        d2 = ((z.unsqueeze(-2) - centres) ** 2).sum(-1) / scale**2  # (C, modes)
        return -torch.logsumexp(log_w - 0.5 * d2, -1)

    return potential


def test_stragglers_in_a_negligible_mode_are_moved_during_warmup(monkeypatch):
    """Mode A = N(0, I) holds all the mass; mode B at (40, 40) has weight e^-50 behind a
    barrier of about 375 nats. Two of eight superchains start in B: without the restart they
    stay there (a quarter of the draws 57 units off); with it every draw is in A."""
    import pyrobdl.inference.mcmc.chees as chees

    pot = _mixture_potential([[0.0, 0.0], [40.0, 40.0]], [0.0, -50.0])
    starts = torch.tensor([[0.5, -0.5]] * 6 + [[40.0, 40.0]] * 2).repeat_interleave(4, 0)  # 8 superchains of 4
    kw = dict(num_samples=100, warmup_steps=200, generator=torch.Generator().manual_seed(0), num_superchains=8)
    out = chees_sample(pot, starts, **kw)
    assert out["restarted_chains"] == 8
    assert float(out["z"].norm(dim=-1).max()) < 6.0  # every draw in mode A (|z| of N(0, I_2) < 6 w.p. 1 - 1e-8)
    monkeypatch.setattr(chees, "STRAGGLER_SD", math.inf)
    stuck = chees_sample(pot, starts, **kw)
    assert stuck["restarted_chains"] == 0
    assert float((stuck["z"].norm(dim=-1) > 40).float().mean()) == pytest.approx(0.25)


def test_restart_moves_whole_superchains_to_donor_states():
    from pyrobdl.inference.mcmc.chees import _restart_stragglers

    z = torch.arange(12.0).reshape(6, 2)
    u = torch.tensor([1.0, 1.2, 50.0, 51.0, 0.8, 1.1])  # superchain 1 (rows 2-3) straggles
    g = -z
    z2, u2, g2, moved = _restart_stragglers(z, u, g, 3, torch.Generator().manual_seed(0))
    assert moved == 2
    assert torch.equal(z2[[0, 1, 4, 5]], z[[0, 1, 4, 5]]) and torch.equal(u2[[0, 1, 4, 5]], u[[0, 1, 4, 5]])
    donors = {tuple(r) for r in z[[0, 1, 4, 5]].tolist()}
    assert all(tuple(r) in donors for r in z2[2:4].tolist())  # moved to donor states, with their u and g
    assert torch.equal(g2, -z2) and bool((u2[2:4] < 2).all())
    same = _restart_stragglers(z, torch.tensor([1.0, 1.2, 3.0, 3.1, 0.8, 1.1]), g, 3, None)
    assert same[3] == 0 and same[0] is z  # within 4 sqrt(D/2) + 5 = 9 nats of the median: nothing moves


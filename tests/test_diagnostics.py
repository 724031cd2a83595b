"""Diagnostics: ArviZ export (loo/waic work), R-hat/ESS agree with pyro.ops.stats,
function-space diagnostics, post-sampling warnings and plots."""
import math
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from pyro.ops.stats import effective_sample_size, split_gelman_rubin  # noqa: E402

from pyrobdl import BayesianNetwork, diagnostics, inference, likelihoods, priors  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::matplotlib.MatplotlibDeprecationWarning")

FAST = dict(compile=False, progress=False, diagnose=False, chain_method="sequential")


def data(N=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-2, 2, N).unsqueeze(-1)
    y = torch.sin(2 * x).squeeze(-1) + 0.3 * torch.randn(N, generator=g)
    return x, y


def bnn(H=3):
    net = nn.Sequential(nn.Linear(1, H), nn.Tanh(), nn.Linear(H, 1))
    return BayesianNetwork(net, prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian())


@pytest.fixture(scope="module")
def mcmc_post():
    torch.manual_seed(0)
    x, y = data()
    post = inference.NUTS(num_samples=50, warmup_steps=50, num_chains=2, max_tree_depth=5, seed=0, **FAST).fit(bnn(), x, y)
    return post, x, y


@pytest.fixture(scope="module")
def svi_post():
    torch.manual_seed(0)
    x, y = data()
    post = inference.MeanField(num_steps=300, lr=0.03, progress=False, seed=0).fit(bnn(), x, y)
    return post, x, y


# ----------------------------------------------------------------------------- R-hat / ESS
def _ar1(C, S, phi, shifts, seed=0):
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(C, S))
    x = np.zeros((C, S))
    for t in range(1, S):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    return x + np.asarray(shifts)[:, None]


# converged chains: ESS estimators agree within 10%; chains that disagree: R-hat still exactly,
# ESS only roughly (the two truncate the autocorrelation sum differently)
@pytest.mark.parametrize(
    "phi, shifts, ess_rel", [(0.0, [0, 0, 0, 0], 0.1), (0.7, [0, 0, 0, 0], 0.1), (0.9, [0, 0, 0.5, 1.0], 0.4)]
)
def test_arviz_rhat_ess_agree_with_pyro(phi, shifts, ess_rel):
    x = _ar1(4, 400, phi, shifts)
    t = torch.tensor(x)
    assert az.rhat(x, method="split") == pytest.approx(float(split_gelman_rubin(t)), rel=1e-6)
    assert az.ess(x, method="mean") == pytest.approx(float(effective_sample_size(t)), rel=ess_rel)
    # our helper is ArviZ's rank-normalised R-hat and bulk/tail ESS, column by column
    d = diagnostics.rhat_ess(np.stack([x, 2 * x + 1], -1))
    assert d["rhat"][0] == pytest.approx(az.rhat(x), rel=1e-9)
    assert d["ess_bulk"][1] == pytest.approx(az.ess(x, method="bulk"), rel=1e-6)
    assert d["ess_tail"][0] == pytest.approx(az.ess(x, method="tail"), rel=1e-6)
    assert abs(d["rhat"][0] - float(split_gelman_rubin(t))) < 0.02


def test_rhat_detects_disagreeing_chains():
    x = _ar1(4, 300, 0.5, [0, 0, 3, 3])
    assert diagnostics.rhat_ess(x)["rhat"][0] > 1.1


# ----------------------------------------------------------------------------- summary
def test_summary_of_mcmc_posterior(mcmc_post):
    post, x, y = mcmc_post
    s = diagnostics.summary(post)
    assert s.num_chains == 2 and s.num_draws == 50
    assert s.rhat_max >= 1.0 and s.ess_bulk_min > 0 and s.ess_tail_min > 0
    # function-space diagnostics on the stored training inputs are reported beside the weight-space ones
    assert s.function_rhat_max is not None and math.isfinite(s.function_rhat_max)
    assert 0 < s.function_ess_bulk_min <= s.function_ess_bulk_median
    assert s.num_divergences == int(post.sample_stats["diverging"].sum())
    assert s.step_size_mean > 0 and 1 <= s.tree_depth_mean <= 5 and 0 < s.acceptance_rate_mean <= 1
    assert 0 <= s.max_tree_depth_fraction <= 1 and s.bfmi_min > 0
    d = s.to_dict()
    assert set(d["per_site"]) == set(post.model.site_names)
    assert "function space" in str(s) and "divergences" in str(s)
    assert post.summary().rhat_max == s.rhat_max


def test_function_space_diagnostics(mcmc_post, svi_post):
    post, x, y = mcmc_post
    grid = torch.linspace(-3, 3, 7).unsqueeze(-1)
    fs = diagnostics.function_space_diagnostics(post, grid)
    assert fs.rhat.shape == (7,) and fs.num_points == 7 and fs.quantity == "mean"
    vals = diagnostics.function_values(post, grid)
    assert vals.shape == (2, 50, 7)
    ref = diagnostics.rhat_ess(vals)
    assert np.allclose(fs.ess_bulk, ref["ess_bulk"])
    assert fs.ess_bulk_median == pytest.approx(float(np.median(ref["ess_bulk"])))
    # variational posteriors: draws as one chain; they store no data, so a grid is needed
    spost = svi_post[0]
    with pytest.raises(ValueError, match="x_grid"):
        diagnostics.function_space_diagnostics(spost)
    fs = diagnostics.function_space_diagnostics(spost, grid, num_samples=200)
    assert fs.ess_bulk_median > 100  # independent draws
    s = diagnostics.summary(spost, num_samples=200)
    assert s.num_chains == 1 and s.function_rhat_max is None and s.num_divergences is None


def test_warn_if_problematic_says_what_to_try(mcmc_post):
    base = diagnostics.summary(mcmc_post[0])
    good = diagnostics.Summary(**{**base.to_dict(), "function_rhat_max": 1.0, "function_ess_bulk_min": 1e4,
                                  "num_divergences": 0, "max_tree_depth_fraction": 0.0, "bfmi_min": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert diagnostics.warn_if_problematic(good) == []
    bad = diagnostics.Summary(**{**good.to_dict(), "function_rhat_max": 1.2, "function_ess_bulk_min": 30.0,
                                 "num_divergences": 5, "max_tree_depth_fraction": 0.5, "bfmi_min": 0.1})
    with pytest.warns(UserWarning) as rec:
        msgs = diagnostics.warn_if_problematic(bad)
    assert len(msgs) == 5 and len(rec) == 5
    text = " ".join(msgs)
    for hint in ("warmup_steps", "num_samples", "target_accept", "max_tree_depth", "weight-space"):
        assert hint in text


# ----------------------------------------------------------------------------- ArviZ export
def test_to_arviz_mcmc_groups(mcmc_post):
    post, x, y = mcmc_post
    idata = post.to_arviz()
    assert {"posterior", "sample_stats", "log_likelihood", "posterior_predictive", "observed_data"} <= set(idata.groups())
    w = idata.posterior["0.weight"]
    assert w.dims == ("chain", "draw", "0_out", "0_in") and w.shape == (2, 50, 3, 1)
    assert idata.posterior["0.bias"].dims == ("chain", "draw", "0_out")
    assert idata.posterior["sigma"].dims == ("chain", "draw")
    assert np.allclose(idata.posterior["sigma"].values, post.samples["sigma"].numpy())
    ss = idata.sample_stats
    for k in ("diverging", "energy", "tree_depth", "n_steps", "step_size", "acceptance_rate", "lp"):
        assert ss[k].shape == (2, 50)
    assert ss["diverging"].dtype == bool
    ll = idata.log_likelihood["obs"]
    assert ll.shape == (2, 50, 20)
    assert idata.observed_data["obs"].shape == (20,)
    assert idata.posterior_predictive["obs"].shape == (2, 50, 20)
    # the pointwise log-likelihood is the model's, draw by draw
    flat = post.sample_latents()
    ref = post.model.log_likelihood({k: v[:3] for k, v in flat.items()}, x, y, pointwise=True)
    assert np.allclose(ll.values.reshape(100, 20)[:3], ref.numpy(), atol=1e-5)


def test_loo_and_waic_work_for_mcmc_and_svi(mcmc_post, svi_post):
    post = mcmc_post[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = az.loo(post.to_arviz())
        assert np.isfinite(res.elpd_loo)
        assert np.isfinite(az.waic(post.to_arviz()).elpd_waic)
        spost, x, y = svi_post
        idata = spost.to_arviz(x, y, num_samples=300)
        assert idata.posterior["sigma"].shape == (1, 300)
        assert "sample_stats" not in idata.groups()
        res_svi = az.loo(idata)
    assert np.isfinite(res_svi.elpd_loo)
    # same data, comparable predictive quality: the two elpds are close-ish
    assert abs(res.elpd_loo - res_svi.elpd_loo) < 20


def test_to_arviz_bad_input(svi_post, mcmc_post):
    spost, x, y = svi_post
    with pytest.raises(ValueError, match="both x and y"):
        spost.to_arviz(x)
    with pytest.raises(ValueError):
        mcmc_post[0].to_arviz(x[:5], y)
    idata = spost.to_arviz(num_samples=10)  # no data: posterior group only
    assert set(idata.groups()) == {"posterior"}


# ----------------------------------------------------------------------------- plots
def test_plots_return_matplotlib_objects(mcmc_post):
    post, x, y = mcmc_post
    try:
        axes = diagnostics.plot_trace(post, var_names=["sigma", "2.bias"])
        assert isinstance(np.ravel(axes)[0], matplotlib.axes.Axes)
        axes = diagnostics.plot_trace(post, x_grid=x[:3])  # function values
        assert isinstance(np.ravel(axes)[0], matplotlib.axes.Axes)
        axes = diagnostics.plot_rank(post, var_names=["sigma"])
        assert isinstance(np.ravel(axes)[0], matplotlib.axes.Axes)
        axes = diagnostics.plot_forest(post, var_names=["sigma", "2.bias"], r_hat=True)
        assert isinstance(np.ravel(axes)[0], matplotlib.axes.Axes)
        ax = diagnostics.plot_energy(post)
        assert isinstance(np.ravel(ax)[0], matplotlib.axes.Axes)
    finally:
        plt.close("all")


def test_plot_energy_needs_mcmc(svi_post):
    with pytest.raises(ValueError, match="MCMC"):
        diagnostics.plot_energy(svi_post[0])

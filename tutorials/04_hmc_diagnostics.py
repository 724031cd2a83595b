# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial 4: HMC and diagnostics with ArviZ
#
# Markov chain Monte Carlo is exact only in the limit; in practice we must
# check that the chains have mixed. This tutorial samples a small Bayesian
# network with the No-U-Turn Sampler and goes through the standard checks:
#
# 1. **R-hat** and **effective sample size** (rank-normalised, Vehtari et al.,
#    2021), and why, for neural networks, they must be read on *function
#    values* rather than on weights;
# 2. **trace** and **rank plots**;
# 3. **divergences** and the **energy** plot (E-BFMI; Betancourt, 2017);
# 4. **PSIS-LOO**, the leave-one-out predictive accuracy estimated from the
#    posterior draws (Vehtari, Gelman & Gabry, 2017), to compare NUTS with a
#    variational fit.
#
# pyrobdl's `inference.NUTS` runs Pyro's NUTS kernel (with its warm-up
# adaptation) on a flat, compiled version of the model;
# `pyrobdl.diagnostics` computes everything with ArviZ, and
# `posterior.to_arviz()` hands the draws to ArviZ for anything else.
#
# **Papers.** R. M. Neal, *MCMC Using Hamiltonian Dynamics* (Handbook of
# MCMC, 2011); M. D. Hoffman and A. Gelman, *The No-U-Turn Sampler* (JMLR
# 2014); M. Betancourt, *A Conceptual Introduction to Hamiltonian Monte Carlo*
# (arXiv:1701.02434, 2017); A. Vehtari, A. Gelman, D. Simpson, B. Carpenter
# and P.-C. Bürkner, *Rank-Normalization, Folding, and Localization: An
# Improved R-hat* (Bayesian Analysis 2021); A. Vehtari, A. Gelman and J.
# Gabry, *Practical Bayesian Model Evaluation Using Leave-One-Out
# Cross-Validation and WAIC* (Statistics and Computing 2017); R. Kumar, C.
# Carroll, A. Hartikainen and O. Martin, *ArviZ* (JOSS 2019).

# %%
import os

smoke_test = "CI" in os.environ or os.environ.get("PYROBDL_SMOKE") == "1"

import matplotlib

if smoke_test:
    matplotlib.use("Agg")
import warnings

import arviz as az
import matplotlib.pyplot as plt
import pyro
import torch
import torch.nn as nn

import pyrobdl
from pyrobdl import BayesianNetwork, datasets, diagnostics, inference, likelihoods, plots, priors

HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
OUT = os.environ.get("PYROBDL_TUTORIAL_OUT", os.path.join(HERE, "_figures"))
os.makedirs(OUT, exist_ok=True)


def savefig(fig, name):
    """Save a figure as OUT/name.png (the docs show these files) and show it when interactive."""
    fig.savefig(os.path.join(OUT, name + ".png"), dpi=110, bbox_inches="tight")
    if not smoke_test and matplotlib.get_backend().lower() != "agg":
        plt.show()
    plt.close(fig)


pyro.set_rng_seed(0)
N_TRAIN = 40 if smoke_test else 100
if smoke_test:
    NUTS_OPTIONS = dict(num_samples=15, warmup_steps=15, num_chains=2, max_tree_depth=4, compile=False)
    BAD_HMC_OPTIONS = dict(num_samples=10, warmup_steps=0, num_steps=5)
    VI_STEPS = 100
else:
    NUTS_OPTIONS = dict(num_samples=250, warmup_steps=250, num_chains=4)
    BAD_HMC_OPTIONS = dict(num_samples=100, warmup_steps=0, num_steps=20)
    VI_STEPS = 4000

# %% [markdown]
# ## The model and the sampler
#
# The data and network of tutorial 3: 100 points of the toy problem and one
# hidden layer of 20 ReLU units. We run four chains from four different
# prior draws (`init="prior"`, the default): dispersed starting points are
# what lets R-hat detect chains that have not found the same distribution.

# %%
ds = datasets.load("toy-regression", normalize=True, n_train=N_TRAIN, n_test=200)
x, y = ds.x_train, ds.y_train
net = nn.Sequential(nn.Linear(1, 20), nn.ReLU(), nn.Linear(20, 1))
model = BayesianNetwork(net, prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian())
print(model.site_names)

posterior = inference.NUTS(**NUTS_OPTIONS, chain_method="sequential", progress=False, seed=0).fit(model, x, y)
print(posterior)
print(f"sampling took {posterior.fit_info['seconds']:.1f} s")

# %% [markdown]
# `fit` already checks the run (`diagnose=True`) and warns when R-hat, the
# effective sample size or the divergences look bad. Read the warnings: in our
# full run, function-space R-hat came out just above the 1.01 threshold and
# every iteration used the maximum tree depth (1023 leapfrog steps), which is
# typical of the ridges and funnels of a network posterior. The chains agree
# roughly but not to the standard; the remedy is more draws (or more chains),
# at proportionally more time. The full summary:

# %%
summary = diagnostics.summary(posterior)
print(summary)

# %% [markdown]
# ## Why weight-space R-hat is misleading for neural networks
#
# Permuting the hidden units of a layer (with their incoming and outgoing
# weights) gives exactly the same function. A layer of 20 units therefore has
# $20!$ equivalent posterior modes, and two chains that settle in two
# *equivalent* modes describe the same predictions while their weights
# disagree completely. Weight-space R-hat is then far above 1 even when the
# sampler has done its job.
#
# The quantity we care about is the function: the network's output at a set
# of inputs, draw by draw. Its R-hat and ESS (the `function space` lines
# above) are the ones to trust. Per site, the weight-space numbers are:

# %%
for site, d in summary.per_site.items():
    print(f"{site:10s} R-hat max {d['rhat_max']:6.2f}   bulk ESS min {d['ess_bulk_min']:7.1f}")

# %% [markdown]
# The noise scale `sigma` has no permutation symmetry, so its R-hat is
# meaningful; the weights' are not.
#
# ## Trace and rank plots
#
# `diagnostics.plot_trace` with `x_grid=` draws the trace of the function
# values at a few inputs: left the density of each chain, right the draws in
# order. Well-mixed chains overlap on the left and look like noise on the
# right, without trends or long flat stretches.

# %%
x_grid = ds.normalize_x(torch.tensor([[-9.0], [-5.0], [0.0], [5.0]]))  # two inside, two outside [-7, 7]
axes = diagnostics.plot_trace(posterior, x_grid=x_grid)
fig = axes.flat[0].figure
fig.suptitle("function values f(x) at x = -9, -5, 0, 5 (original units)")
savefig(fig, "04_trace_function")

axes = diagnostics.plot_trace(posterior, var_names=["sigma", "2.bias"])
savefig(axes.flat[0].figure, "04_trace_weights")

# %% [markdown]
# The noise scale's chains overlap. The output bias `2.bias` can behave
# differently from chain to chain, because a ReLU network can move an offset
# between the output bias and the hidden units.
#
# A rank plot (Vehtari et al., 2021) ranks all draws together and shows, per
# chain, the histogram of its ranks: for chains sampling the same
# distribution every histogram is flat.

# %%
axes = diagnostics.plot_rank(posterior, x_grid=x_grid)
savefig(axes.flat[0].figure, "04_rank_function")

# %% [markdown]
# ## Divergences and the energy plot
#
# A divergence is a leapfrog trajectory whose energy error blew up: the step
# size was too large for the curvature there. Divergent transitions mean the
# sampler cannot reach part of the posterior and the draws are biased. To see
# them, run plain HMC with a step size that is far too large and no
# adaptation:

# %%
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # fit would warn loudly about this run, rightly
    bad = inference.HMC(step_size=0.1, adapt_step_size=False, adapt_mass_matrix=False, num_chains=1,
                        chain_method="sequential", compile=False, progress=False, seed=0,
                        **BAD_HMC_OPTIONS).fit(model, x, y)
bad_summary = diagnostics.summary(bad)
print(f"bad HMC: {bad.num_divergences} divergences in {bad.num_draws} iterations, "
      f"mean acceptance {bad_summary.acceptance_rate_mean:.2f}")
print(f"NUTS:    {posterior.num_divergences} divergences in {posterior.num_chains * posterior.num_draws} iterations, "
      f"mean acceptance {summary.acceptance_rate_mean:.2f}")

# %% [markdown]
# Nearly every iteration diverges and the chain barely moves. NUTS avoids this
# by adapting the step size during warm-up until the average acceptance
# probability reaches `target_accept` (0.8); if divergences remain, raise it
# (0.9 to 0.99: smaller steps, slower, more robust).
#
# The energy plot compares the distribution of the Hamiltonian's energy with
# that of its changes between iterations. When the second is much narrower
# than the first (E-BFMI below about 0.3), the momentum resampling cannot move
# the chain through the energy levels quickly and the sampler explores slowly.

# %%
ax = diagnostics.plot_energy(posterior)
savefig(ax.figure, "04_energy")
print(f"E-BFMI (min over chains): {summary.bfmi_min:.2f}")

# %% [markdown]
# ## PSIS-LOO: comparing NUTS with variational inference
#
# `posterior.to_arviz()` exports the draws with the pointwise log-likelihood
# of every training point, so ArviZ's `az.loo` estimates the expected log
# predictive density of a *new* point by Pareto-smoothed importance sampling
# (Vehtari et al., 2017). A variational posterior exports draws too (as one
# chain; pass the data), so the two can be compared on the same scale.

# %%
idata_nuts = posterior.to_arviz()  # MCMC posteriors remember their training data
mean_field = inference.MeanField(num_steps=VI_STEPS, progress=False, seed=0).fit(model, x, y)
idata_vi = mean_field.to_arviz(x, y, num_samples=4 * 250 if not smoke_test else 30)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # ArviZ warns when some Pareto k are high; we look at them below
    loo_nuts = az.loo(idata_nuts, pointwise=True)
    loo_vi = az.loo(idata_vi, pointwise=True)
    comparison = az.compare({"nuts": idata_nuts, "mean-field": idata_vi})
print(loo_nuts)
print(comparison[["rank", "elpd_loo", "p_loo", "elpd_diff", "dse"]])

fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), sharey=True)
for ax, (name, loo) in zip(axes, [("NUTS", loo_nuts), ("mean-field VI", loo_vi)]):
    az.plot_khat(loo, ax=ax, show_bins=True)
    ax.set_title(f"{name}: Pareto k per training point")
savefig(fig, "04_pareto_k")

# %% [markdown]
# `elpd_loo` is the estimated sum of the log predictive densities of
# left-out points (higher is better), `p_loo` the effective number of
# parameters, and `elpd_diff`, `dse` the difference to the best model and its
# standard error. The Pareto $k$ values check the estimate itself: points
# above the threshold ArviZ prints (0.7 with many draws, lower with few) are too
# influential for importance sampling, and their LOO terms are unreliable
# (refit without them, or use K-fold cross-validation).
#
# ## The predictive
#
# Finally, the NUTS predictive on the test grid, as in tutorial 1:

# %%
pred = posterior.predict(ds.x_test)
ax = plots.plot_predictive_1d(
    ds.unnormalize_x(ds.x_test)[:, 0], ds.unnormalize_mean(pred.mean), ds.unnormalize_std(pred.epistemic_std),
    ds.unnormalize_std(pred.aleatoric_std), x_train=ds.unnormalize_x(x)[:, 0], y_train=ds.y_train_original,
    train_range=ds.train_range, title=f"NUTS, {posterior.num_chains} chains x {posterior.num_draws} draws",
)
savefig(ax.figure, "04_nuts_predictive")

# %% [markdown]
# **Checklist for an MCMC run on a Bayesian network:** function-space R-hat
# below 1.01; function-space bulk and tail ESS above about 100 per chain; no
# divergences; E-BFMI above 0.3; trace and rank plots without trends. If the
# tree depth keeps hitting `max_tree_depth`, the posterior is badly scaled:
# standardise the data, try `dense_mass=True`, or start from a MAP estimate
# with `init="map"` (then keep at least two dispersed chains).

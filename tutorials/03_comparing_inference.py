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
# # Tutorial 3: Comparing inference algorithms
#
# Which approximation should you use? This tutorial fits one Bayesian network
# with six methods on one dataset and compares them on equal terms, because
# they all return the same prediction object:
#
# - **mean-field VI**: a factorised Gaussian over the weights (Blundell et al., 2015);
# - **low-rank VI**: a Gaussian with low-rank-plus-diagonal covariance;
# - **full-rank VI**: a Gaussian with full covariance (small networks only);
# - **NUTS**: Hamiltonian Monte Carlo with automatic trajectory lengths
#   (Hoffman & Gelman, 2014), asymptotically exact, our *reference*;
# - **MC dropout** (Gal & Ghahramani, 2016);
# - **deep ensemble** (Lakshminarayanan et al., 2017).
#
# We report accuracy and calibration metrics, the time each method takes,
# and how far each predictive distribution is from the NUTS one.
#
# The network is deliberately small (one hidden layer of 20 ReLU units, 61
# weights) and the dataset short (100 training points from the toy problem of
# tutorial 1), so that NUTS can run to convergence in a couple of minutes on a
# laptop CPU. The same comparison on any dataset is one command:
# `pyrobdl compare --dataset boston --methods mean-field,low-rank,full-rank,nuts,mc-dropout,ensemble`.
# (On UCI data its defaults give mean-field and low-rank VI, MC dropout and
# the ensemble members a variance head, `HeteroscedasticGaussian`, and keep one noise for the
# others; the report's "other models" line says which method fitted which.)
#
# **Papers.** C. Blundell et al., *Weight Uncertainty in Neural Networks* (ICML
# 2015); V. M.-H. Ong, D. J. Nott and M. S. Smith, *Gaussian Variational
# Approximation with a Factor Covariance Structure* (JCGS 2018); M. D. Hoffman
# and A. Gelman, *The No-U-Turn Sampler* (JMLR 2014); Y. Gal and Z.
# Ghahramani, *Dropout as a Bayesian Approximation* (ICML 2016); B.
# Lakshminarayanan, A. Pritzel and C. Blundell, *Simple and Scalable Predictive
# Uncertainty Estimation using Deep Ensembles* (NeurIPS 2017); P. Izmailov et
# al., *What Are Bayesian Neural Network Posteriors Really Like?* (ICML 2021;
# HMC as the reference for approximate inference); A. Y. K. Foong, D. R. Burt,
# Y. Li and R. E. Turner, *On the Expressiveness of Approximate Inference in
# Bayesian Neural Networks* (NeurIPS 2020); B. Coker, W. P. Bruinsma, D. R.
# Burt, W. Pan and F. Doshi-Velez, *Wide Mean-Field Bayesian Neural Networks
# Ignore the Data* (AISTATS 2022); Y. Ovadia et al., *Can You Trust Your
# Model's Uncertainty?* (NeurIPS 2019).

# %%
import os
import time

smoke_test = "CI" in os.environ or os.environ.get("PYROBDL_SMOKE") == "1"

import matplotlib

if smoke_test:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pyro
import torch
import torch.nn as nn

import pyrobdl
from pyrobdl import BayesianNetwork, datasets, likelihoods, metrics, plots, priors

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
NUM_SAMPLES = 20 if smoke_test else 200

# %% [markdown]
# ## The settings
#
# Each method gets its own options (the names are those of the classes in
# `pyrobdl.inference`). NUTS runs two chains; it compiles its leapfrog step
# with `torch.compile` for longer runs, and `chain_method="sequential"` keeps
# both chains in this process (`"parallel"` runs them in worker processes).

# %%
if smoke_test:
    SETTINGS = {
        "mean-field": dict(num_steps=100),
        "low-rank": dict(num_steps=100),
        "full-rank": dict(num_steps=100),
        "nuts": dict(num_samples=10, warmup_steps=10, num_chains=1, max_tree_depth=3, compile=False,
                     chain_method="sequential", diagnose=False),
        "mc-dropout": dict(num_steps=100),
        "ensemble": dict(num_steps=100, size=3),
    }
else:
    SETTINGS = {
        "mean-field": dict(num_steps=4000, lr=1e-2),
        "low-rank": dict(num_steps=4000, lr=1e-2, rank=10),
        "full-rank": dict(num_steps=4000, lr=1e-2),
        "nuts": dict(num_samples=300, warmup_steps=300, num_chains=2, chain_method="sequential"),
        "mc-dropout": dict(num_steps=3000, p=0.1),
        "ensemble": dict(num_steps=2000, size=5),
    }

ds = datasets.load("toy-regression", normalize=True, n_train=N_TRAIN, n_test=200)
x, y, x_test, y_test = ds.x_train, ds.y_train, ds.x_test, ds.y_test
inside = ds.in_train_range(x_test)
print(ds)


def make_model():
    net = nn.Sequential(nn.Linear(1, 20), nn.ReLU(), nn.Linear(20, 1))
    return BayesianNetwork(net, prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian())


model = make_model()
print(f"{model.num_bayesian_parameters} weights + the noise scale")

# %% [markdown]
# ## Fit everything
#
# `fit_info["seconds"]` is the training time each method measures itself; we
# also time one `predict` call on the test grid.

# %%
posteriors, preds, fit_seconds, predict_seconds = {}, {}, {}, {}
for method, options in SETTINGS.items():
    posteriors[method] = pyrobdl.fit(model, x, y, method=method, progress=False, seed=0, **options)
    fit_seconds[method] = posteriors[method].fit_info["seconds"]
    t0 = time.perf_counter()
    # NUTS predicts with all its draws; the others draw NUM_SAMPLES (an ensemble always uses its members)
    preds[method] = posteriors[method].predict(x_test, num_samples=None if method == "nuts" else NUM_SAMPLES)
    predict_seconds[method] = time.perf_counter() - t0
    print(f"{method:11s} fit {fit_seconds[method]:7.1f} s   predict {predict_seconds[method]:.3f} s")

# %% [markdown]
# ## What the predictions look like

# %%
x_orig = ds.unnormalize_x(x_test)[:, 0]
fig, axes = plt.subplots(2, 3, figsize=(16, 8), sharex=True, sharey=True)
for ax, (method, pred) in zip(axes.flat, preds.items()):
    plots.plot_predictive_1d(
        x_orig, ds.unnormalize_mean(pred.mean), ds.unnormalize_std(pred.epistemic_std),
        ds.unnormalize_std(pred.aleatoric_std), x_train=ds.unnormalize_x(x)[:, 0], y_train=ds.y_train_original,
        train_range=ds.train_range, ax=ax, title=method,
    )
    ax.set_ylim(-15, 15)
    if ax is not axes.flat[0]:
        ax.get_legend().remove()
fig.tight_layout()
savefig(fig, "03_bands")

# %% [markdown]
# ## The metrics table
#
# On the test grid, in the target's original units: RMSE, negative
# log-likelihood, CRPS (continuous ranked probability score, lower is better),
# and the coverage of the central 90% interval (ideal 0.90), all on the test
# inputs *inside* the training range, where the targets are predictable; and
# the OOD AUROC of the epistemic standard deviation for telling test inputs
# outside $[-7, 7]$ from those inside.

# %%
header = f"{'method':11s} {'RMSE':>6s} {'NLL':>6s} {'CRPS':>6s} {'cov90':>6s} {'AUROC':>6s} {'fit s':>7s}"
print(header)
table = {}
for method, post in posteriors.items():
    pred_in = post.predict(x_test[inside], num_samples=None if method == "nuts" else NUM_SAMPLES)
    y_in = y_test[inside]
    epi = preds[method].epistemic_std.numpy()
    row = dict(
        rmse=metrics.rmse(pred_in, y_in) * ds.y_std,
        nll=metrics.nll(pred_in, y_in) - ds.log_likelihood_offset,
        crps=metrics.crps(pred_in, y_in) * ds.y_std,
        cov90=metrics.interval_coverage(pred_in, y_in, level=0.9),
        auroc=metrics.ood_auroc(epi[inside.numpy()], epi[~inside.numpy()]),
    )
    table[method] = row
    print(f"{method:11s} {row['rmse']:6.3f} {row['nll']:6.3f} {row['crps']:6.3f} {row['cov90']:6.3f} "
          f"{row['auroc']:6.3f} {fit_seconds[method]:7.1f}")

# %% [markdown]
# ## How far is each method from NUTS?
#
# With NUTS as the reference, we compare the predictive *distributions* point by
# point. At each test input both predictives have a mean and a standard
# deviation; for Gaussians the squared 2-Wasserstein distance is
# $W_2^2 = (\mu - \mu_{\text{NUTS}})^2 + (\sigma - \sigma_{\text{NUTS}})^2$.
# We report its root mean over the test inputs inside and outside the
# training range, and the ratio of the epistemic standard deviations (1 means
# the same amount of model uncertainty as NUTS; below 1, over-confident).

# %%
ref = preds["nuts"]


def w2(pred, mask):
    d2 = (pred.mean - ref.mean) ** 2 + (pred.std - ref.std) ** 2
    return float(ds.unnormalize_std(d2[mask].mean().sqrt()))


print(f"{'method':11s} {'W2 inside':>9s} {'W2 outside':>10s} {'epi/epi_NUTS in':>16s} {'out':>6s}")
distance = {}
for method, pred in preds.items():
    if method == "nuts":
        continue
    ratio_in = float(pred.epistemic_std[inside].mean() / ref.epistemic_std[inside].mean())
    ratio_out = float(pred.epistemic_std[~inside].mean() / ref.epistemic_std[~inside].mean())
    distance[method] = w2(pred, inside)
    print(f"{method:11s} {w2(pred, inside):9.3f} {w2(pred, ~inside):10.3f} {ratio_in:16.2f} {ratio_out:6.2f}")

fig, axes = plt.subplots(1, 2, figsize=(13, 4))
for method, pred in preds.items():
    style = dict(color="k", lw=2.5) if method == "nuts" else dict(lw=1.2)
    axes[0].plot(x_orig, ds.unnormalize_std(pred.epistemic_std), label=method, **style)
axes[0].axvspan(*ds.train_range, color="0.5", alpha=0.1)
axes[0].set_xlabel("x")
axes[0].set_ylabel("epistemic std")
axes[0].set_title("epistemic uncertainty (NUTS in black)")
axes[0].legend(fontsize="small")
plots.plot_metric_comparison(distance, metric="W2 to NUTS inside the training range", lower_is_better=True,
                             ax=axes[1])
savefig(fig, "03_distance_to_nuts")

# %% [markdown]
# ## Cost against quality

# %%
fig, ax = plt.subplots(figsize=(6.5, 4.2))
for method in posteriors:
    ax.scatter(fit_seconds[method], table[method]["nll"], s=50)
    ax.annotate(method, (fit_seconds[method], table[method]["nll"]), xytext=(5, 3), textcoords="offset points")
ax.set_xscale("log")
ax.set_xlabel("fit time (s, log scale)")
ax.set_ylabel("test NLL inside the training range")
savefig(fig, "03_cost_vs_nll")

# %% [markdown]
# How to read the results of a full run (the numbers above; ours came from
# one CPU core):
#
# - **NUTS** follows the data closely, its 90% intervals cover close to 90% of
#   the test targets, and its epistemic band is thin inside the training range
#   and opens outside. It is also the slowest by one to two orders of
#   magnitude, and it needs full-batch gradients.
# - **Mean-field and low-rank VI** *underfit* here: their mean is much smoother
#   than the data and their bands are wide everywhere, several times NUTS's
#   epistemic uncertainty. On a small network with little data, the KL term of
#   the ELBO pulls a factorised Gaussian towards the prior, and such a Gaussian
#   cannot represent the strongly correlated posterior (Foong et al., 2020;
#   Coker et al., 2022). **Full-rank VI** captures the correlations and comes
#   closer; on larger datasets the data term dominates and all three fit much
#   better (tutorial 1).
# - **MC dropout** and **deep ensembles** are not posteriors of this model's
#   prior, but they give the same kind of predictive. The ensemble is the
#   closest to NUTS here at a tiny fraction of its cost, a common finding
#   (Ovadia et al., 2019; Izmailov et al., 2021); its members extrapolate
#   differently outside the data, so its epistemic band there can be much
#   wider or narrower than NUTS's.
#
# Timings depend on the machine (and, for small networks, on the CPU thread
# settings); compare them within one run only. `pyrobdl compare` repeats this
# comparison over several train/test splits and writes the table, the plots
# and the NUTS diagnostics into a report. Tutorial 4 looks inside the NUTS run.

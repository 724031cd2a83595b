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
# # Tutorial 1: Uncertainty in regression
#
# A network trained on inputs in $[-7, 7]$ is asked about inputs in $[-10, 10]$.
# A plain network answers everywhere with the same confidence. A Bayesian one
# should say two different things:
#
# - **aleatoric** uncertainty: the noise in the data itself, which more data
#   would *not* remove (here it grows with $|x|$);
# - **epistemic** uncertainty: what the model does not know because it has not
#   seen data there, which more data *would* remove. It should be small inside
#   $[-7, 7]$ and grow outside.
#
# We fit three methods to the same data, get the same prediction object from
# each, and compare their confidence bands:
#
# 1. a Bayesian neural network with a mean-field Gaussian posterior
#    (Bayes by Backprop; Blundell et al., 2015),
# 2. MC dropout (Gal & Ghahramani, 2016),
# 3. a deep ensemble (Lakshminarayanan et al., 2017).
#
# Every method gives $S$ predictive samples (weight draws, dropout masks or
# ensemble members), each a Gaussian $\mathcal N(\mu_s(x), \sigma_s^2(x))$. The
# predictive is their mixture, and its variance splits by the law of total
# variance (Kendall & Gal, 2017):
#
# $$
# \sigma^{*2}(x) = \underbrace{\tfrac1S\textstyle\sum_s \sigma_s^2(x)}_{\text{aleatoric}}
#   + \underbrace{\tfrac1S\textstyle\sum_s (\mu_s(x) - \mu^*(x))^2}_{\text{epistemic}} .
# $$
#
# The problem is the one of the DeepFindr "Uncertainty in Deep Learning"
# videos: $y = x \sin x + \varepsilon$ with noise standard deviation
# $\sigma(x) = 0.3 + 0.3\,|x|/7$.
#
# **Papers.** C. Blundell et al., *Weight Uncertainty in Neural Networks*
# (ICML 2015); Y. Gal and Z. Ghahramani, *Dropout as a Bayesian Approximation*
# (ICML 2016); B. Lakshminarayanan, A. Pritzel and C. Blundell, *Simple and
# Scalable Predictive Uncertainty Estimation using Deep Ensembles* (NeurIPS
# 2017); A. Kendall and Y. Gal, *What Uncertainties Do We Need in Bayesian Deep
# Learning for Computer Vision?* (NeurIPS 2017); Y. Ovadia et al., *Can You Trust
# Your Model's Uncertainty?* (NeurIPS 2019).

# %%
import os

smoke_test = "CI" in os.environ or os.environ.get("PYROBDL_SMOKE") == "1"

import matplotlib

if smoke_test:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
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
# In smoke mode (CI) everything is tiny: the code runs, the pictures are rough.
N_TRAIN = 100 if smoke_test else 500
N_TEST = 100 if smoke_test else 500
STEPS = {"mean-field": 150, "mc-dropout": 150, "ensemble": 150} if smoke_test else {
    "mean-field": 4000, "mc-dropout": 3000, "ensemble": 2000}
NUM_SAMPLES = 20 if smoke_test else 200

# %% [markdown]
# ## The data
#
# `pyrobdl.datasets.load("toy-regression")` returns training inputs drawn
# uniformly from $[-7, 7]$ and an evenly spaced test grid on $[-10, 10]$. With
# `normalize=True` inputs and targets are standardised with the training
# split's statistics, which keeps the optimisation well conditioned; we convert
# back to the original units for the plots with the dataset's helpers
# (`unnormalize_x`, `unnormalize_mean`, `unnormalize_std`).

# %%
ds = datasets.load("toy-regression", normalize=True, n_train=N_TRAIN, n_test=N_TEST)
print(ds)
x_train, y_train, x_test, y_test = ds.x_train, ds.y_train, ds.x_test, ds.y_test

x_train_orig = ds.unnormalize_x(x_train)[:, 0]
x_test_orig = ds.unnormalize_x(x_test)[:, 0]
inside = ds.in_train_range(x_test)  # True for test inputs in [-7, 7]

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.scatter(x_train_orig, ds.y_train_original, s=8, color="k", alpha=0.6, label="training data")
ax.plot(x_test_orig, x_test_orig * torch.sin(x_test_orig), color="C2", label=r"$x \sin x$")
ax.axvspan(*ds.train_range, color="0.5", alpha=0.1, label="training range")
ax.set_xlabel("x")
ax.set_ylabel("y")
ax.legend(fontsize="small")
savefig(fig, "01_data")

# %% [markdown]
# The noise grows with $|x|$, so a good model needs an input-dependent noise
# level. We give the network two outputs, a mean and a log-variance, and use
# the `HeteroscedasticGaussian` likelihood:
# $-\log p(y\mid x) = \frac{(y-\mu(x))^2}{2\sigma^2(x)} + \frac12 \log\sigma^2(x) + \text{const}$.
#
# The same `BayesianNetwork` (network + prior + likelihood) is handed to all
# three methods; each trains its own copy.

# %%
def make_model():
    net = nn.Sequential(
        nn.Linear(1, 50), nn.ReLU(),
        nn.Linear(50, 50), nn.ReLU(),
        nn.Linear(50, 2),  # mean and log-variance
    )
    return BayesianNetwork(net, prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.HeteroscedasticGaussian())


model = make_model()
print(model)

# %% [markdown]
# ## Fit three methods
#
# `pyrobdl.fit(model, x, y, method=...)` picks the algorithm by name; the
# options are those of the classes in `pyrobdl.inference` (`MeanField`,
# `MCDropout`, `DeepEnsemble`). Every posterior answers `predict(x)` with a
# `RegressionPrediction`.

# %%
options = {
    "mean-field": dict(lr=1e-2),  # Bayes by Backprop, Pyro's AutoNormal guide
    "mc-dropout": dict(p=0.1, lr=1e-2),  # dropout on the hidden layers, kept on at test time
    "ensemble": dict(size=5, lr=1e-2),  # 5 networks trained at once
}
posteriors, predictions = {}, {}
for method, opts in options.items():
    posteriors[method] = pyrobdl.fit(
        model, x_train, y_train, method=method, num_steps=STEPS[method], progress=False, seed=0, **opts
    )
    predictions[method] = posteriors[method].predict(x_test, num_samples=NUM_SAMPLES)
    print(f"{method:11s} fitted in {posteriors[method].fit_info['seconds']:.1f} s")

# %% [markdown]
# ## Confidence bands
#
# `plots.plot_predictive_1d` draws the predictive mean, a dark band of
# $\pm 2$ epistemic standard deviations and a light band of $\pm 2$ total
# standard deviations. We pass it the mean and the two standard deviations in
# the original units.

# %%
titles = {"mean-field": "Bayesian NN (mean-field VI)", "mc-dropout": "MC dropout", "ensemble": "deep ensemble (5)"}
fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), sharey=True)
for ax, (method, pred) in zip(axes, predictions.items()):
    plots.plot_predictive_1d(
        x_test_orig,
        ds.unnormalize_mean(pred.mean),
        ds.unnormalize_std(pred.epistemic_std),
        ds.unnormalize_std(pred.aleatoric_std),
        x_train=x_train_orig,
        y_train=ds.y_train_original,
        train_range=ds.train_range,
        ax=ax,
        title=titles[method],
    )
    ax.set_ylim(-15, 20)
    if ax is not axes[0]:
        ax.get_legend().remove()  # one legend is enough
savefig(fig, "01_bands")

# %% [markdown]
# What to look for:
#
# - Inside the shaded training range the dark (epistemic) band is thin: the
#   data pin the function down. The light band around it is the noise, and it
#   widens towards $\pm 7$ as $\sigma(x)$ does.
# - Outside $[-7, 7]$ the dark band opens up: the samples disagree about a
#   function they have never seen. How fast it opens differs: the ensemble is
#   the most confident right up to the edge of the data and then opens
#   quickly; mean-field VI and MC dropout are wider everywhere.
#
# ## Epistemic and aleatoric, separately
#
# The prediction object gives both parts directly: `pred.epistemic_std` and
# `pred.aleatoric_std`. The dataset knows the true noise
# (`ds.test_noise_std`), so we can check the aleatoric part against it.

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
for method, pred in predictions.items():
    axes[0].plot(x_test_orig, ds.unnormalize_std(pred.epistemic_std), label=titles[method])
    axes[1].plot(x_test_orig, ds.unnormalize_std(pred.aleatoric_std), label=titles[method])
axes[1].plot(x_test_orig, ds.unnormalize_std(ds.test_noise_std), "k--", label=r"true $\sigma(x)$")
for ax, name in zip(axes, ["epistemic std", "aleatoric std"]):
    ax.axvspan(*ds.train_range, color="0.5", alpha=0.1)
    ax.set_xlabel("x")
    ax.set_ylabel(name)
    ax.legend(fontsize="small")
axes[1].set_ylim(0, 3)  # the noise heads' extrapolation far outside [-7, 7] goes off this scale
savefig(fig, "01_decomposition")

# %% [markdown]
# Left: the epistemic standard deviation is low where there was data and
# climbs outside $[-7, 7]$ for every method. Right: in the middle of the
# training range the aleatoric part of every method follows the true noise
# level. Towards the edges and beyond them the network's noise head is
# extrapolating too. For the Bayesian network this shows most: its aleatoric
# part is the *average* of $\sigma_s^2(x)$ over weight draws, and where the
# noise head is uncertain a few draws with a large $\sigma_s$ dominate that
# average. The noise estimate is only as good as the data behind it, which is
# why the epistemic part is needed as well.
#
# ## Numbers
#
# `pyrobdl.metrics` scores any prediction object. We report, on the test grid,
# the RMSE and negative log-likelihood inside the training range, the coverage
# of the central 90% predictive interval (ideal: 0.90), and the mean epistemic
# standard deviation inside and outside the training range.

# %%
rows = []
for method, pred in predictions.items():
    y_in = y_test[inside]
    pred_in = posteriors[method].predict(x_test[inside], num_samples=NUM_SAMPLES)
    rows.append((
        method,
        metrics.rmse(pred_in, y_in) * ds.y_std,
        metrics.nll(pred_in, y_in) - ds.log_likelihood_offset,
        metrics.interval_coverage(pred_in, y_in, level=0.9),
        float(ds.unnormalize_std(pred.epistemic_std[inside]).mean()),
        float(ds.unnormalize_std(pred.epistemic_std[~inside]).mean()),
    ))
print(f"{'method':12s} {'RMSE':>6s} {'NLL':>6s} {'cov90':>6s} {'epi in':>7s} {'epi out':>7s}")
for r in rows:
    print(f"{r[0]:12s} {r[1]:6.3f} {r[2]:6.3f} {r[3]:6.3f} {r[4]:7.3f} {r[5]:7.3f}")

# %% [markdown]
# In a full run (not the CI smoke run) every method's epistemic standard
# deviation is several times larger outside the training range than inside.
# The 90% intervals of the Bayesian network and of MC dropout cover more than
# 90% of the test targets inside the range (they are cautious), the
# ensemble's somewhat less (it is a little over-confident). The deep ensemble
# has the lowest RMSE and NLL here, a common finding (Ovadia et al., 2019).
#
# ## Where to go next
#
# - Tutorial 2 writes the model by hand in Pyro and uses `Predictive` on it.
# - Tutorial 3 adds low-rank and full-rank VI and NUTS to this comparison and
#   measures how far each approximation is from the NUTS reference.
# - Tutorial 6 looks closer at the aleatoric part and at what happens with
#   less data.

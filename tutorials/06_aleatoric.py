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
# # Tutorial 6: Aleatoric uncertainty
#
# Aleatoric uncertainty is the noise in the data: a blurry image, an
# ambiguous label, a sensor that is less precise at some inputs. Unlike
# epistemic uncertainty it does not shrink with more data. Kendall & Gal
# (2017) model it by letting the network predict the noise as well:
#
# - **regression**: the network outputs a mean $\mu(x)$ and a log-variance
#   $s(x) = \log\sigma^2(x)$, and the loss is the Gaussian negative
#   log-likelihood $\frac{(y - \mu(x))^2}{2\sigma^2(x)} + \frac12 \log \sigma^2(x)$
#   (predicting the log-variance keeps it positive and training stable);
# - **classification**: the network outputs logits $f(x)$ and their variances
#   $\sigma^2(x)$; the logits are distorted by Gaussian noise,
#   $\hat f_t = f(x) + \sigma(x)\,\varepsilon_t$, and the likelihood is the
#   softmax averaged over $T$ Monte Carlo draws,
#   $p(y\mid x) \approx \frac1T \sum_t \mathrm{softmax}(\hat f_t)_y$.
#
# We check the two claims of their paper on small problems:
#
# 1. the predicted noise follows the true noise of the data;
# 2. with less training data the **epistemic** uncertainty grows while the
#    **aleatoric** uncertainty stays about the same;
#
# and, for classification, find the images with the highest aleatoric and the
# highest epistemic uncertainty.
#
# **Papers.** A. Kendall and Y. Gal, *What Uncertainties Do We Need in
# Bayesian Deep Learning for Computer Vision?* (NeurIPS 2017); D. A. Nix and
# A. S. Weigend, *Estimating the Mean and Variance of the Target Probability
# Distribution* (ICNN 1994); B. Lakshminarayanan, A. Pritzel and C. Blundell,
# *Simple and Scalable Predictive Uncertainty Estimation using Deep Ensembles*
# (NeurIPS 2017); C. Blundell et al., *Weight Uncertainty in Neural Networks*
# (ICML 2015).

# %%
import os

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
from pyrobdl import BayesianNetwork, datasets, likelihoods, metrics, priors

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
N_TRAIN = 120 if smoke_test else 1000
STEPS = 100 if smoke_test else 2000
CLS_STEPS = 60 if smoke_test else 3000
NUM_SAMPLES = 10 if smoke_test else 100
ENSEMBLE = 3 if smoke_test else 5
FRACTIONS = [0.25, 1.0] if smoke_test else [0.05, 0.1, 0.25, 0.5, 1.0]
REPEATS = 1 if smoke_test else 2

# %% [markdown]
# ## 1. Heteroscedastic regression
#
# The toy problem of tutorial 1 has noise standard deviation
# $\sigma(x) = 0.3 + 0.3|x|/7$. We fit two deep ensembles: one with
# `likelihoods.Gaussian()` (one learned noise level for all inputs,
# *homoscedastic*) and one with `likelihoods.HeteroscedasticGaussian()` (a
# second network output for $\log\sigma^2(x)$). A deep ensemble is used here
# because it is quick and its members each fit the noise by maximum
# likelihood, as in Lakshminarayanan et al.; every other method works the
# same way.

# %%
ds = datasets.load("toy-regression", normalize=True, n_train=N_TRAIN, n_test=300)
inside = ds.in_train_range(ds.x_test)
x_orig = ds.unnormalize_x(ds.x_test)[:, 0]


def make_regression_model(likelihood):
    outputs = 2 if isinstance(likelihood, likelihoods.HeteroscedasticGaussian) else 1
    net = nn.Sequential(nn.Linear(1, 50), nn.ReLU(), nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, outputs))
    return BayesianNetwork(net, prior=priors.Normal(0.0, 1.0), likelihood=likelihood)


fits = {}
for name, lik in [("homoscedastic", likelihoods.Gaussian()), ("heteroscedastic", likelihoods.HeteroscedasticGaussian())]:
    posterior = pyrobdl.fit(make_regression_model(lik), ds.x_train, ds.y_train, method="ensemble",
                            size=ENSEMBLE, num_steps=STEPS, progress=False, seed=0)
    fits[name] = posterior.predict(ds.x_test)
    # test NLL in the original units, on the test inputs inside the training range
    nll = metrics.nll(posterior.predict(ds.x_test[inside]), ds.y_test[inside]) - ds.log_likelihood_offset
    print(f"{name:16s} test NLL inside the training range: {nll:.3f}")

fig, ax = plt.subplots(figsize=(7, 4))
for name, pred in fits.items():
    ax.plot(x_orig, ds.unnormalize_std(pred.aleatoric_std), label=f"{name}: aleatoric std")
ax.plot(x_orig, ds.unnormalize_std(ds.test_noise_std), "k--", label=r"true $\sigma(x)$")
ax.axvspan(*ds.train_range, color="0.5", alpha=0.1, label="training range")
ax.set_xlabel("x")
ax.set_ylabel("noise std")
ax.set_ylim(bottom=0)
ax.legend(fontsize="small")
savefig(fig, "06_heteroscedastic")


# %% [markdown]
# The homoscedastic model can only draw a flat line, at the average noise
# level; the heteroscedastic one follows the V shape of the true $\sigma(x)$
# inside the training range and has the better test log-likelihood. Outside
# the range the noise head extrapolates, without data to check it.
#
# ## 2. Less data: more epistemic, the same aleatoric
#
# Kendall & Gal's Table 3 trains on fractions of the data and reports both
# parts of the uncertainty. We do the same on the toy problem: ensembles on
# 5%, 10%, 25%, 50% and 100% of the 1000 training points, each scored on the
# same test inputs inside the training range. A single small run is noisy, so
# every fraction is repeated on two random subsets. With little data an
# ensemble member can fit the noise exactly, so here the members get the
# prior's weight decay (`weight_decay="prior"`), the maximum a posteriori
# version of the same model.

# %%
rows = []
for fraction in FRACTIONS:
    for repeat in range(REPEATS):
        perm = torch.randperm(ds.n_train, generator=torch.Generator().manual_seed(repeat))
        idx = perm[: int(fraction * ds.n_train)]
        posterior = pyrobdl.fit(make_regression_model(likelihoods.HeteroscedasticGaussian()), ds.x_train[idx],
                                ds.y_train[idx], method="ensemble", size=ENSEMBLE, num_steps=STEPS,
                                weight_decay="prior", progress=False, seed=repeat)
        pred = posterior.predict(ds.x_test[inside])
        rows.append((fraction, len(idx), float(ds.unnormalize_std(pred.epistemic_std).mean()),
                     float(ds.unnormalize_std(pred.aleatoric_std).mean())))

true_noise = float(ds.unnormalize_std(ds.test_noise_std[inside]).mean())
print(f"{'fraction':>8s} {'n':>5s} {'epistemic std':>14s} {'aleatoric std':>14s}")
for fraction in FRACTIONS:
    sel = [r for r in rows if r[0] == fraction]
    epi, ale = np.mean([r[2] for r in sel]), np.mean([r[3] for r in sel])
    print(f"{fraction:8.2f} {sel[0][1]:5d} {epi:14.3f} {ale:14.3f}")
print(f"true noise std, averaged over the same inputs: {true_noise:.3f}")

fig, ax = plt.subplots(figsize=(6, 3.8))
ns = np.array([r[1] for r in rows])
ax.plot(ns, [r[2] for r in rows], "o", color="C0", alpha=0.6)
ax.plot(ns, [r[3] for r in rows], "s", color="C1", alpha=0.6)
n_unique = sorted(set(ns.tolist()))
ax.plot(n_unique, [np.mean([r[2] for r in rows if r[1] == n]) for n in n_unique], "-", color="C0",
        label="epistemic std (mean of repeats)")
ax.plot(n_unique, [np.mean([r[3] for r in rows if r[1] == n]) for n in n_unique], "-", color="C1",
        label="aleatoric std (mean of repeats)")
ax.axhline(true_noise, color="k", ls="--", lw=1, label="true noise std")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("training points")
ax.set_ylabel("mean std inside the training range")
ax.legend(fontsize="small")
savefig(fig, "06_less_data")

# %% [markdown]
# The epistemic part falls, overall, as the data grow: with more points the
# ensemble members agree (the dots show that single runs scatter around that
# trend). The aleatoric part settles at the true noise level once there are
# enough points to estimate it, and more data only make that estimate more
# precise: it does not shrink towards zero. This is the pattern of Kendall &
# Gal's table, where training on a quarter of the data raised the epistemic
# but not the aleatoric uncertainty.
#
# ## 3. Aleatoric uncertainty in classification: noisy labels
#
# To give the digits a known source of aleatoric noise we corrupt labels:
# training images of the digits 3 and 8 get a random label 40% of the time.
# The test labels stay clean. A network with the `CategoricalLogitNoise`
# likelihood outputs $2C$ numbers (logits and their log-variances) and should
# learn large logit noise for 3s and 8s.
#
# For out-of-distribution images we use `digits-rotated`: the test images
# turned by 90 degrees, unlike anything in training.

# %%
dig = datasets.load("digits-rotated")
C = dig.num_classes
noisy_classes = [3, 8]
g = torch.Generator().manual_seed(1)
y_noisy = dig.y_train.clone()
corrupt = torch.isin(y_noisy, torch.tensor(noisy_classes)) & (torch.rand(len(y_noisy), generator=g) < 0.4)
y_noisy[corrupt] = torch.randint(0, C, (int(corrupt.sum()),), generator=g)
print(f"corrupted {int(corrupt.sum())} of {len(y_noisy)} training labels")

net = nn.Sequential(nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 2 * C))  # logits and log-variances
model = BayesianNetwork(net, prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.CategoricalLogitNoise(num_draws=20))
posterior = pyrobdl.fit(model, dig.x_train, y_noisy, method="mean-field", num_steps=CLS_STEPS, progress=False,
                        seed=0)
pred_test = posterior.predict(dig.x_test, num_samples=NUM_SAMPLES)
pred_ood = posterior.predict(dig.x_ood, num_samples=NUM_SAMPLES)
print(f"test accuracy (clean labels): {metrics.accuracy(pred_test, dig.y_test):.3f}")

# %% [markdown]
# We fit it with mean-field VI. Each weight draw's probabilities already
# average over the logit noise, so for this model the *expected entropy* over
# weight draws holds the aleatoric part and the *mutual information* between
# label and weights the epistemic part. Per class of the clean test set:

# %%
aleatoric = metrics.expected_entropy(pred_test)
epistemic = metrics.mutual_information(pred_test)
classes = np.arange(C)
y_np = dig.y_test.numpy()
mean_ale = [aleatoric[y_np == c].mean() for c in classes]
mean_epi = [epistemic[y_np == c].mean() for c in classes]

fig, ax = plt.subplots(figsize=(8, 3.6))
ax.bar(classes - 0.2, mean_ale, width=0.4, label="expected entropy (aleatoric)")
ax.bar(classes + 0.2, mean_epi, width=0.4, label="mutual information (epistemic)")
ax.set_xticks(classes)
ax.set_xlabel("true digit (test set)")
ax.set_ylabel("mean uncertainty (nats)")
ax.set_title("labels of 3 and 8 were noisy in training")
ax.legend(fontsize="small")
savefig(fig, "06_per_class")

print(f"mean mutual information: test {epistemic.mean():.4f}, rotated (OOD) {metrics.mutual_information(pred_ood).mean():.4f}")
print(f"OOD AUROC of the mutual information: "
      f"{metrics.ood_auroc(epistemic, metrics.mutual_information(pred_ood)):.3f}")

# %% [markdown]
# The aleatoric bars stand out for 3 and 8, the classes whose labels were
# noisy, although their test labels are clean: the model has learned that
# images like these come with unreliable labels. The epistemic part rises far
# less there (ambiguous data also leave the weights less certain), and it is
# largest on the rotated digits: that is the epistemic part at work.
#
# ## The most uncertain images
#
# The test images with the highest aleatoric uncertainty, and the images
# (upright or rotated) with the highest epistemic uncertainty:

# %%
x_all = torch.cat([dig.x_test, dig.x_ood])
epi_all = np.concatenate([epistemic, metrics.mutual_information(pred_ood)])
rotated = np.r_[np.zeros(len(dig.x_test), bool), np.ones(len(dig.x_ood), bool)]
top_ale = np.argsort(-aleatoric)[:8]
top_epi = np.argsort(-epi_all)[:8]

fig, axes = plt.subplots(2, 8, figsize=(11, 3.4))
for ax, i in zip(axes[0], top_ale):
    ax.imshow(dig.x_test[i].reshape(8, 8), cmap="gray_r")
    ax.set_title(f"digit {y_np[i]}\nH={aleatoric[i]:.2f}", fontsize=8)
for ax, i in zip(axes[1], top_epi):
    ax.imshow(x_all[i].reshape(8, 8), cmap="gray_r")
    ax.set_title(("rotated" if rotated[i] else "upright") + f"\nMI={epi_all[i]:.2f}", fontsize=8)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
axes[0, 0].set_ylabel("aleatoric", fontsize=9)
axes[1, 0].set_ylabel("epistemic", fontsize=9)
savefig(fig, "06_top_uncertain")

# %% [markdown]
# Top row: mostly 3s and 8s, the noisy-label classes (aleatoric). Bottom row:
# mostly rotated digits (epistemic). The two kinds of uncertainty point at
# different images, which is why a model should report both: more data of the
# same kind would fix the bottom row, not the top one.

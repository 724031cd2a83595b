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
# # Tutorial 7: A Bayesian last layer on a frozen feature extractor
#
# Making a whole large network Bayesian is expensive. A cheap and popular
# compromise keeps a trained feature extractor fixed and puts the posterior
# only on the last layer (the *head*). The seed blog post does this with the
# frozen convolutional layers of an ImageNet ResNet-50; here a small
# convolutional network, trained in the tutorial on the 8x8 digits 0-4,
# stands in for the pretrained model (nothing is downloaded).
#
# `BayesianNetwork(net, bayesian="head.*")` gives priors only to the
# parameters whose names match `head.*`; every other parameter stays a
# deterministic point estimate, and with `requires_grad=False` it is not
# trained at all. Every inference method then works on the head alone:
#
# - mean-field and full-rank Gaussian VI over the head's weights (a last layer
#   is small enough for a full covariance),
# - MC dropout on the head's input (the features),
# - a deep ensemble of heads on the shared features.
#
# We compare them with the deterministic network on calibration and on
# detecting the digits 5-9 the network never saw.
#
# **Papers.** J. Snoek et al., *Scalable Bayesian Optimization Using Deep
# Neural Networks* (ICML 2015; Bayesian last layer); A. Kendall and Y. Gal,
# *What Uncertainties Do We Need in Bayesian Deep Learning for Computer
# Vision?* (NeurIPS 2017); C. Riquelme, G. Tucker and J. Snoek, *Deep Bayesian
# Bandits Showdown* (ICLR 2018; neural-linear models); A. Kristiadi, M. Hein and
# P. Hennig, *Being Bayesian, Even Just a Bit, Fixes Overconfidence in ReLU
# Networks* (ICML 2020); Y. Gal and Z. Ghahramani (ICML 2016); B.
# Lakshminarayanan et al. (NeurIPS 2017).

# %%
import os
from collections import OrderedDict

smoke_test = "CI" in os.environ or os.environ.get("PYROBDL_SMOKE") == "1"

import matplotlib

if smoke_test:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pyro
import torch
import torch.nn as nn
import torch.nn.functional as F

import pyrobdl
from pyrobdl import BayesianNetwork, ClassificationPrediction, datasets, likelihoods, metrics, plots, priors


HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
OUT = os.environ.get("PYROBDL_TUTORIAL_OUT", os.path.join(HERE, "_figures"))
os.makedirs(OUT, exist_ok=True)


def savefig(fig, name):
    """Save a figure as OUT/name.png (the docs show these files) and show it when interactive."""
    fig.savefig(os.path.join(OUT, name + ".png"), dpi=110, bbox_inches="tight")
    if not smoke_test and matplotlib.get_backend().lower() != "agg":
        plt.show()
    plt.close(fig)


torch.manual_seed(0)
pyro.set_rng_seed(0)
CNN_EPOCHS = 2 if smoke_test else 15
STEPS = {"mean-field": 60, "full-rank": 60, "mc-dropout": 60, "ensemble": 40} if smoke_test else {
    "mean-field": 2000, "full-rank": 2000, "mc-dropout": 1000, "ensemble": 1000}
NUM_SAMPLES = 20 if smoke_test else 100

# %% [markdown]
# ## Data: digits 0-4 as images
#
# The digits come flattened to 64 pixels; the convolutional network wants
# images of shape `(1, 8, 8)`. Any input shape works with pyrobdl: the inputs
# only need a leading batch dimension.

# %%
ds = datasets.load("digits-0-4")
print(ds)
x_train = ds.x_train.reshape(-1, 1, 8, 8)
x_test = ds.x_test.reshape(-1, 1, 8, 8)
x_ood = ds.x_ood.reshape(-1, 1, 8, 8)  # digits 5-9
y_train, y_test = ds.y_train, ds.y_test

# %% [markdown]
# ## The "pretrained" feature extractor
#
# Two convolutions, a max-pool and a dense layer give 64 features; a linear
# head maps them to the 5 classes. We train it the ordinary PyTorch way, by
# minimising the cross-entropy, as if someone else had done it for us.

# %%
features = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
    nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
    nn.MaxPool2d(2), nn.Flatten(),
    nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
)
head = nn.Linear(64, 5)
cnn = nn.Sequential(OrderedDict(features=features, head=head))

optimizer = torch.optim.Adam(cnn.parameters(), lr=1e-3)
for epoch in range(CNN_EPOCHS):
    for idx in torch.randperm(len(x_train)).split(64):
        loss = F.cross_entropy(cnn(x_train[idx]), y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
cnn.eval()

# The deterministic network's softmax, wrapped as a prediction with a single sample
# so that the same metrics and plots apply to it.
with torch.no_grad():
    deterministic = {
        "test": ClassificationPrediction(cnn(x_test).softmax(-1).unsqueeze(0)),
        "ood": ClassificationPrediction(cnn(x_ood).softmax(-1).unsqueeze(0)),
    }
print(f"deterministic CNN test accuracy: {metrics.accuracy(deterministic['test'], y_test):.3f}")

# %% [markdown]
# ## Freeze the features, make the head Bayesian
#
# `requires_grad_(False)` freezes the feature extractor; `bayesian="head.*"`
# puts the prior on the head's weight and bias only (325 numbers).

# %%
for p in features.parameters():
    p.requires_grad_(False)

model = BayesianNetwork(cnn, prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Categorical(), bayesian="head.*")
print("Bayesian:", model.bayesian_parameters, f"({model.num_bayesian_parameters} weights)")
print("deterministic:", model.deterministic_parameters)

# %% [markdown]
# Variational methods start from the network's current values, i.e. from the
# trained head, and MC dropout and the ensemble train copies; the features are
# never changed. Minibatches of 128 keep each step cheap (the frozen
# convolutions still run in every step).
#
# Because the features are frozen, an equivalent and faster route is to
# compute them once, `phi = features(x)`, and fit a `BayesianNetwork` around
# `nn.Linear(64, 5)` on `phi`. Keeping the whole network has the advantage that
# `posterior.predict` takes images directly.

# %%
methods = {
    "mean-field": dict(lr=1e-2),
    "full-rank": dict(lr=1e-2),
    "mc-dropout": dict(p=0.3, layers="all"),  # dropout on the head's input, the 64 features
    "ensemble": dict(size=5),  # 5 heads from fresh initialisations, on the same features
}
preds = {"deterministic CNN": deterministic}
for method, opts in methods.items():
    posterior = pyrobdl.fit(model, x_train, y_train, method=method, num_steps=STEPS[method], batch_size=128,
                            progress=False, seed=0, **opts)
    preds[method] = {
        "test": posterior.predict(x_test, num_samples=NUM_SAMPLES),
        "ood": posterior.predict(x_ood, num_samples=NUM_SAMPLES),
    }
    print(f"{method:11s} fitted in {posterior.fit_info['seconds']:.1f} s")

# %% [markdown]
# ## Calibration and OOD detection

# %%
print(f"{'method':18s} {'acc':>6s} {'NLL':>7s} {'ECE':>6s} {'AUROC entropy':>14s} {'AUROC MI':>9s}")
for name, p in preds.items():
    t, o = p["test"], p["ood"]
    auroc_h = metrics.ood_auroc(metrics.predictive_entropy(t), metrics.predictive_entropy(o))
    auroc_mi = metrics.ood_auroc(metrics.mutual_information(t), metrics.mutual_information(o))
    print(f"{name:18s} {metrics.accuracy(t, y_test):6.3f} {metrics.nll(t, y_test):7.3f} "
          f"{metrics.expected_calibration_error(t, y_test):6.3f} {auroc_h:14.3f} {auroc_mi:9.3f}")

fig, axes = plt.subplots(1, len(preds), figsize=(4.2 * len(preds), 4))
for ax, (name, p) in zip(axes, preds.items()):
    plots.plot_uncertainty_histogram(
        metrics.predictive_entropy(p["test"]), metrics.predictive_entropy(p["ood"]), ax=ax,
        score_name="predictive entropy (nats)", labels=("digits 0-4", "digits 5-9 (OOD)"))
    ax.set_title(f"{name}\n{ax.get_title()}", fontsize=10)
fig.tight_layout()
savefig(fig, "07_ood_entropy")

# %% [markdown]
# What to look for in a full run:
#
# - The variational heads (mean-field and full-rank) have a clearly lower test
#   NLL and ECE than the deterministic network: averaging over plausible heads
#   softens the over-confident predictions a single maximum-likelihood head
#   makes (Kristiadi et al., 2020). MC dropout and the ensemble of heads,
#   trained by maximum likelihood, gain less here.
# - OOD detection is bounded by the features. The frozen features were trained
#   to separate 0-4 only, and an unseen 5 or 9 may land close to a known digit
#   in feature space; a head, however Bayesian, cannot tell what the features
#   do not show, and the deterministic network's entropy is already a strong
#   score here. What the Bayesian heads add is a second score, the mutual
#   information, which the deterministic network does not have.
#
# ## The most uncertain unseen digits
#
# The OOD images with the highest and lowest mutual information under the
# ensemble of heads:

# %%
p = preds["ensemble"]
mi_ood = metrics.mutual_information(p["ood"])
order = np.argsort(-mi_ood)
picked = list(order[:6]) + list(order[-6:])
fig, axes = plt.subplots(2, 6, figsize=(9, 3.6))
for ax, i in zip(axes.flat, picked):
    ax.imshow(x_ood[i, 0], cmap="gray_r")
    ax.set_title(f"says {int(p['ood'].predicted[i])}\nMI={mi_ood[i]:.2f}", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
axes[0, 0].set_ylabel("highest MI", fontsize=9)
axes[1, 0].set_ylabel("lowest MI", fontsize=9)
savefig(fig, "07_ood_examples")

# %% [markdown]
# Top row: unseen digits on which the heads disagree; bottom row: unseen
# digits every head confidently maps to a known class (often a 5 read as a
# 3, or a 7 read as a 1). Those confident mistakes are the limit of a
# Bayesian *last layer*: the uncertainty in the features themselves is not
# modelled. Making more layers Bayesian (`bayesian=` accepts patterns, module
# types and lists) moves along the line between this and tutorial 5's fully
# Bayesian networks.

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
# # Tutorial 5: Classification, calibration and out-of-distribution digits
#
# A classifier's softmax output looks like a probability, but is it one? And
# what does the classifier say about an input unlike anything it was trained
# on? This tutorial trains classifiers on the handwritten digits 0-4 and
#
# 1. checks their **calibration** with reliability diagrams and the expected
#    calibration error (Guo et al., 2017);
# 2. splits their uncertainty into **expected entropy** (aleatoric) and
#    **mutual information** (epistemic; Houlsby et al., 2011) and uses both to
#    detect the digits 5-9 they never saw (**OOD detection**, scored by AUROC;
#    Hendrycks & Gimpel, 2017);
# 3. **refuses to predict** when unsure: per-class thresholds fitted on
#    validation data (the rule of the seed blog post) and accuracy-rejection
#    curves (Nadeem et al., 2009).
#
# With $S$ predictive samples $p_s = p(y\mid x, \theta_s)$ and their mean
# $\bar p$:
#
# $$
# \underbrace{H[\bar p]}_{\text{predictive entropy}}
# = \underbrace{\tfrac1S \textstyle\sum_s H[p_s]}_{\text{expected entropy (aleatoric)}}
# + \underbrace{I[y, \theta]}_{\text{mutual information (epistemic)}} .
# $$
#
# The mutual information is large only when the samples *disagree*: every
# sample can be unsure (high expected entropy) about an ambiguous but familiar
# digit, while on an unfamiliar one the samples tend to be confident about
# different classes.
#
# **Papers.** C. Guo, G. Pleiss, Y. Sun and K. Q. Weinberger, *On Calibration
# of Modern Neural Networks* (ICML 2017); N. Houlsby, F. Huszár, Z. Ghahramani
# and M. Lengyel, *Bayesian Active Learning for Classification and Preference
# Learning* (2011); D. Hendrycks and K. Gimpel, *A Baseline for Detecting
# Misclassified and Out-of-Distribution Examples in Neural Networks* (ICLR
# 2017); M. S. A. Nadeem, J.-D. Zucker and B. Hanczar, *Accuracy-Rejection
# Curves (ARCs) for Comparing Classification Methods with a Reject Option*
# (MLSB 2009); Y. Ovadia et al., *Can You Trust Your Model's Uncertainty?
# Evaluating Predictive Uncertainty Under Dataset Shift* (NeurIPS 2019); Y. Gal and Z. Ghahramani (ICML 2016); B. Lakshminarayanan et
# al. (NeurIPS 2017); C. Blundell et al. (ICML 2015).

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
STEPS = {"plain network": 100, "mean-field": 100, "mc-dropout": 100, "ensemble": 100} if smoke_test else {
    "plain network": 1000, "mean-field": 2500, "mc-dropout": 2000, "ensemble": 1000}
NUM_SAMPLES = 20 if smoke_test else 100

# %% [markdown]
# ## The data
#
# `datasets.load("digits-0-4")` keeps scikit-learn's 8x8 digits 0-4 for
# training and testing (pixels in $[0, 1]$, flattened to 64 features) and puts
# the test images of the digits 5-9 in `x_ood`. We hold out a fifth of the
# training set as validation data for the refusal thresholds.

# %%
ds = datasets.load("digits-0-4")
print(ds)
n_val = ds.n_train // 5
x_train, y_train = ds.x_train[n_val:], ds.y_train[n_val:]
x_val, y_val = ds.x_train[:n_val], ds.y_train[:n_val]
x_test, y_test, x_ood = ds.x_test, ds.y_test, ds.x_ood
# the same test digits with pixel noise: a distribution shift with known labels
noise = torch.randn(x_test.shape, generator=torch.Generator().manual_seed(0))
x_shift = (x_test + 0.4 * noise).clamp(0.0, 1.0)

fig, axes = plt.subplots(2, 8, figsize=(10, 2.8))
for i, ax in enumerate(axes[0]):
    ax.imshow(x_test[i].reshape(8, 8), cmap="gray_r")
    ax.set_title(f"{int(y_test[i])}", fontsize=9)
for i, ax in enumerate(axes[1]):
    ax.imshow(x_ood[i].reshape(8, 8), cmap="gray_r")
    ax.set_title("OOD", fontsize=9)
for ax in axes.flat:
    ax.axis("off")
savefig(fig, "05_digits")

# %% [markdown]
# ## Four classifiers, one interface
#
# One small network, `64 -> 100 -> 5`, with a `Categorical` (softmax)
# likelihood. A deep ensemble of size 1 is a *plain network* trained by
# maximum likelihood: our non-Bayesian baseline. Its single "sample" cannot
# disagree with itself, so its mutual information is zero everywhere.

# %%
def make_model():
    net = nn.Sequential(nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 5))
    return BayesianNetwork(net, prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Categorical())


methods = {
    "plain network": dict(method="ensemble", size=1),
    "mean-field": dict(method="mean-field", lr=1e-2),
    "mc-dropout": dict(method="mc-dropout", p=0.25),
    "ensemble": dict(method="ensemble", size=5),
}
preds = {}
for name, opts in methods.items():
    posterior = pyrobdl.fit(make_model(), x_train, y_train, num_steps=STEPS[name], progress=False, seed=0, **opts)
    preds[name] = {
        "val": posterior.predict(x_val, num_samples=NUM_SAMPLES),
        "test": posterior.predict(x_test, num_samples=NUM_SAMPLES),
        "ood": posterior.predict(x_ood, num_samples=NUM_SAMPLES),
        "shift": posterior.predict(x_shift, num_samples=NUM_SAMPLES),
    }
    print(f"{name:14s} fitted in {posterior.fit_info['seconds']:.1f} s")

# %% [markdown]
# ## Accuracy and calibration
#
# The expected calibration error bins the test points by confidence (top-label
# probability) into 15 equal-width bins and averages the gap between accuracy
# and confidence, $\mathrm{ECE} = \sum_b \frac{|B_b|}{N}\,|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)|$.

# %%
print(f"{'method':14s} {'accuracy':>8s} {'NLL':>7s} {'Brier':>7s} {'ECE':>7s} | noisy: {'accuracy':>8s} {'ECE':>7s}")
for name, p in preds.items():
    t, sh = p["test"], p["shift"]
    print(f"{name:14s} {metrics.accuracy(t, y_test):8.3f} {metrics.nll(t, y_test):7.3f} "
          f"{metrics.brier_score(t, y_test):7.3f} {metrics.expected_calibration_error(t, y_test):7.3f} | "
          f"       {metrics.accuracy(sh, y_test):8.3f} {metrics.expected_calibration_error(sh, y_test):7.3f}")

fig, axes = plt.subplots(2, 4, figsize=(18, 8.8))
for col, (name, p) in enumerate(preds.items()):
    plots.reliability_diagram(p["test"], y_test, ax=axes[0, col], title=f"{name}: test digits")
    plots.reliability_diagram(p["shift"], y_test, ax=axes[1, col], title=f"{name}: noisy test digits")
fig.tight_layout()
savefig(fig, "05_reliability")

# %% [markdown]
# Read a reliability diagram bar by bar: the blue bar is the accuracy of the
# test points whose confidence fell in that bin, the hatched red bar the gap to
# their mean confidence (above the blue bar: over-confident; below its top:
# under-confident); the numbers are the points per bin. On the clean test
# digits almost every point sits in the last bin and all four models are
# well calibrated; with so few points in the other bins, single images make
# their bars jump between 0 and 1.
#
# The second row adds pixel noise to the same test digits, a distribution
# shift the models were not trained for (Ovadia et al., 2019). Accuracy drops
# for everyone; what differs is whether the confidence drops with it. In our
# full run the plain network and the ensemble stayed confident and became
# over-confident (red gaps above the blue bars, ECE around 0.2), mean-field VI
# became somewhat under-confident (blue bars above the diagonal), and MC
# dropout stayed close to the diagonal. A model whose bars stay near the
# diagonal under shift knows that it has become less reliable; which model
# does is an empirical question to check on shifts you care about.
#
# ## Entropy versus mutual information on unseen digits
#
# The histograms show the predictive entropy (total uncertainty) and the
# mutual information (epistemic part) for test digits 0-4 and for the unseen
# digits 5-9. The AUROC in each title is the probability that a random OOD
# image gets a higher score than a random in-distribution one.

# %%
fig, axes = plt.subplots(2, 4, figsize=(18, 7))
for col, (name, p) in enumerate(preds.items()):
    for row, kind in enumerate(["predictive_entropy", "mutual_information"]):
        plots.plot_uncertainty_histogram(
            metrics.uncertainty_score(p["test"], kind=kind),
            metrics.uncertainty_score(p["ood"], kind=kind),
            ax=axes[row, col],
            score_name=kind.replace("_", " ") + " (nats)",
            labels=("digits 0-4 (test)", "digits 5-9 (OOD)"),
        )
        axes[row, col].set_title(f"{name}\n" + axes[row, col].get_title(), fontsize=10)
fig.tight_layout()
savefig(fig, "05_ood_histograms")

print(f"{'method':14s} {'AUROC entropy':>14s} {'AUROC MI':>9s} {'AUPR entropy':>13s}")
for name, p in preds.items():
    h_in, h_out = metrics.predictive_entropy(p["test"]), metrics.predictive_entropy(p["ood"])
    mi_in, mi_out = metrics.mutual_information(p["test"]), metrics.mutual_information(p["ood"])
    print(f"{name:14s} {metrics.ood_auroc(h_in, h_out):14.3f} {metrics.ood_auroc(mi_in, mi_out):9.3f} "
          f"{metrics.ood_aupr(h_in, h_out):13.3f}")

# %% [markdown]
# In-distribution entropy is low, OOD entropy high, for every method: even a
# plain network's softmax says *something* (Hendrycks & Gimpel's baseline).
# The mutual information is zero for the plain network (AUROC 0.5, no
# information), and for the Bayesian methods it separates seen from unseen
# digits on its own, because it measures disagreement, not ambiguity.
#
# Plotting the two parts against each other for one model shows where each
# image sits:

# %%
p = preds["ensemble"]
fig, ax = plt.subplots(figsize=(6, 4.5))
for split, color, label in [("test", "C0", "digits 0-4 (test)"), ("ood", "C3", "digits 5-9 (OOD)")]:
    ax.scatter(metrics.expected_entropy(p[split]), metrics.mutual_information(p[split]), s=10, alpha=0.6,
               color=color, label=label)
ax.set_xlabel("expected entropy (aleatoric, nats)")
ax.set_ylabel("mutual information (epistemic, nats)")
ax.set_title("deep ensemble")
ax.legend(fontsize="small")
savefig(fig, "05_entropy_vs_mi")

# %% [markdown]
# ## Refusing to predict
#
# The seed blog post's rule: for each class $c$, take the validation images
# that were predicted as $c$ *correctly*, and set the threshold $t_c$ at the
# 10th percentile of their top-label probabilities. At test time, refuse when
# the top-label probability is below the threshold of the predicted class.
# `metrics.fit_class_thresholds` fits the thresholds, `.refuse(...)` applies
# them.

# %%
print(f"{'method':14s} {'refused (test)':>14s} {'refused (OOD)':>14s} {'acc. accepted':>14s} {'acc. all':>9s}")
for name, p in preds.items():
    thresholds = metrics.fit_class_thresholds(p["val"], y_val, percentile=10)
    refused_test = thresholds.refuse(p["test"])
    refused_ood = thresholds.refuse(p["ood"])
    accepted = ~refused_test
    acc_accepted = metrics.accuracy(p["test"].probs[accepted], y_test[accepted]) if accepted.any() else float("nan")
    print(f"{name:14s} {refused_test.mean():14.2f} {refused_ood.mean():14.2f} {acc_accepted:14.3f} "
          f"{metrics.accuracy(p['test'], y_test):9.3f}")

# %% [markdown]
# By construction roughly 10% of in-distribution images are refused; the
# useful number is how many of the unseen digits are refused as well, and how
# accurate the accepted predictions are.
#
# The accuracy-rejection curve asks the same question for every refusal rate:
# refuse the most uncertain fraction $r$ of the test images and report the
# accuracy on the rest. A curve that rises quickly means the uncertainty points
# at the mistakes.

# %%
curves = {name: metrics.accuracy_rejection_curve(p["test"], y_test, uncertainty="predictive_entropy")
          for name, p in preds.items()}
ax = plots.plot_accuracy_rejection(curves, title="digits 0-4: refuse the most uncertain first")
savefig(ax.figure, "05_rejection")

for name, p in preds.items():
    print(f"{name:14s} AURC = {metrics.aurc(p['test'], y_test, uncertainty='predictive_entropy'):.4f}")

# %% [markdown]
# The area under the risk-coverage curve (AURC, lower is better; Geifman &
# El-Yaniv, 2017) summarises each curve in one number.
#
# **Take-aways.** Calibration on familiar data says little about behaviour on
# unfamiliar data; the Bayesian methods' mutual information is a score that a
# plain network cannot give; and a refusal rule fitted on validation data turns
# uncertainty into a decision. Tutorial 7 does the same with a Bayesian last
# layer on top of a convolutional feature extractor.

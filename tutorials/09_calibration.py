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
# # Tutorial 9: Recalibration and conformal prediction
#
# A predictive distribution is *calibrated* when its probabilities match
# frequencies: of the test digits predicted with confidence 0.8, about 80% are
# right; the 90% intervals of a regression model contain about 90% of the
# targets. Approximate posteriors, default priors and a finite training set
# give no such promise (Guo et al., 2017; Ovadia et al., 2019), and tutorial 5
# showed how far off a model can be. This tutorial repairs calibration *after*
# training, with a few hundred held-out points and `pyrobdl.calibration`:
# `recalibrate(posterior, x_cal, y_cal, method="temperature")` returns a
# posterior whose `predict(x)` gives the same kind of prediction
# object as before, recalibrated, so every metric and plot of the library works
# on it unchanged. The methods come in two families.
#
# - **Recalibration** fits a small map from the model's predictive to a better
#   one on the calibration data: temperature and vector scaling for
#   classifiers, variance scaling and isotonic CDF recalibration for
#   regression. It improves calibration on average, without a finite-sample
#   guarantee.
# - **Conformal prediction** leaves the probabilities alone and turns them into
#   prediction *sets* (classification: APS, RAPS) or *intervals* (regression:
#   split conformal, CQR) with a guarantee. With a score $s(x, y)$ (large when
#   $y$ is an unusual answer at $x$), the scores $s_1, \dots, s_n$ of the $n$
#   calibration points and $\hat q$ their $\lceil (n+1)(1-\alpha)\rceil$-th
#   smallest value, the set $C(x) = \{y : s(x, y) \le \hat q\}$ of a new point
#   satisfies, whenever the calibration and test points are exchangeable,
#
# $$
# 1 - \alpha \;\le\; P\big(y_{n+1} \in C(x_{n+1})\big) \;<\; 1 - \alpha + \frac{1}{n+1},
# $$
#
# the upper bound for scores without ties (Vovk et al., 2005; Lei et al., 2018).
# The probability is over the calibration set *and* the test point: it is a
# statement about the average over many calibration sets and test points, not
# about a single input. Part 4 checks it by repetition.
#
# The plan: (1) temperature scaling of a Bayesian classifier on the 8x8 digits,
# with reliability diagrams and what it does to the aleatoric/epistemic split;
# (2) conformal prediction sets on the same classifier; (3) variance scaling,
# isotonic recalibration and conformal intervals for a regression network on
# Boston housing; (4) the conformal guarantee over repeated random splits; (5)
# which recalibrator to use when.
#
# **Papers.** C. Guo, G. Pleiss, Y. Sun and K. Q. Weinberger, *On Calibration
# of Modern Neural Networks* (ICML 2017); V. Kuleshov, N. Fenner and S. Ermon,
# *Accurate Uncertainties for Deep Learning Using Calibrated Regression* (ICML
# 2018); D. Levi, L. Gispan, N. Giladi and E. Fetaya, *Evaluating and
# Calibrating Uncertainty Prediction in Regression Tasks* (2020); V. Vovk, A.
# Gammerman and G. Shafer, *Algorithmic Learning in a Random World* (2005); J.
# Lei, M. G'Sell, A. Rinaldo, R. J. Tibshirani and L. Wasserman,
# *Distribution-Free Predictive Inference for Regression* (JASA 2018); Y.
# Romano, E. Patterson and E. J. Candès, *Conformalized Quantile Regression*
# (NeurIPS 2019); Y. Romano, M. Sesia and E. J. Candès, *Classification with
# Valid and Adaptive Coverage* (NeurIPS 2020); A. N. Angelopoulos, S. Bates, J.
# Malik and M. I. Jordan, *Uncertainty Sets for Image Classifiers using
# Conformal Prediction* (ICLR 2021); A. N. Angelopoulos and S. Bates, *Conformal
# Prediction: A Gentle Introduction* (Foundations and Trends in ML, 2023); V.
# Vovk, *Conditional Validity of Inductive Conformal Predictors* (ACML 2012); Y.
# Ovadia et al., *Can You Trust Your Model's Uncertainty?* (NeurIPS 2019).

# %%
import math
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
from pyrobdl import BayesianNetwork, datasets, likelihoods, metrics, plots
from pyrobdl.calibration import (APS, ConformalizedQuantileRegression, ConformalRegression, IsotonicCalibration,
                                 VarianceScaling, recalibrate)
from pyrobdl.prediction import ClassificationPrediction, RegressionPrediction

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
# In smoke mode (CI) everything is tiny: the code runs, the numbers and pictures are rough.
# Otherwise every fit uses the library's defaults, as a first attempt would.
FIT = dict(num_steps=100) if smoke_test else {}          # mean-field: 5000 steps by default
ENSEMBLE_FIT = dict(epochs=2) if smoke_test else {}      # ensemble: 5 members, 40 epochs by default
NUM_SAMPLES = 20 if smoke_test else 100                  # predictive samples per prediction
NUM_REPEATS = 10 if smoke_test else 50                   # random splits in part 4
LEVEL = 0.9                                              # target coverage 1 - alpha

# %% [markdown]
# ## Part 1: temperature scaling a Bayesian classifier
#
# ### Three disjoint sets
#
# `datasets.load("digits")` gives scikit-learn's 8x8 digits, all ten classes,
# split into a training and a test set. A recalibrator must be fitted on data
# the model was *not* trained on: on its own training data a network looks
# more accurate than it is, and a recalibrator fitted there would make it more
# confident, not less. So we hold out a random fifth of the training set as
# the **calibration set**. The test set is used only to evaluate.

# %%
ds = datasets.load("digits")
print(ds)
perm = torch.randperm(ds.n_train, generator=torch.Generator().manual_seed(0))
n_cal = ds.n_train // 5
x_train, y_train = ds.x_train[perm[n_cal:]], ds.y_train[perm[n_cal:]]
x_cal, y_cal = ds.x_train[perm[:n_cal]], ds.y_train[perm[:n_cal]]
x_test, y_test = ds.x_test, ds.y_test
print(f"train {len(y_train)}, calibration {len(y_cal)}, test {len(y_test)}")

# %% [markdown]
# ### Two classifiers with default settings
#
# A `64 -> 50 -> 10` network with a softmax (`Categorical`) likelihood and the
# default prior, fitted once with mean-field variational inference and once
# as a deep ensemble, both with the library's default settings: no tuning, as
# a first attempt would be.

# %%
def make_classifier():
    net = nn.Sequential(nn.Linear(64, 50), nn.ReLU(), nn.Linear(50, 10))
    return BayesianNetwork(net, likelihood=likelihoods.Categorical())


classifiers = {
    "mean-field": pyrobdl.fit(make_classifier(), x_train, y_train, method="mean-field", progress=False, seed=0, **FIT),
    "ensemble": pyrobdl.fit(make_classifier(), x_train, y_train, method="ensemble", progress=False, seed=0,
                            **ENSEMBLE_FIT),
}
for name, post in classifiers.items():
    print(f"{name:10s} fitted in {post.fit_info['seconds']:.1f} s")

# %% [markdown]
# ### Temperature scaling
#
# Each of the $S$ predictive samples (weight draws, ensemble members) gives
# class probabilities $p_s(x)$; the predictive is their mean
# $\bar p = \frac1S\sum_s p_s$. Temperature scaling (Guo et al., 2017) divides
# the log-probabilities by one number $T > 0$, fitted by the negative
# log-likelihood of the calibration labels:
#
# $$
# \bar p' = \mathrm{softmax}\big(\log \bar p / T\big), \qquad
# \hat T = \arg\min_T \; -\frac1n \sum_{i=1}^n \log \bar p'(x_i)[y_i] .
# $$
#
# $T > 1$ flattens the predictive (the model was over-confident), $T < 1$
# sharpens it (under-confident). By default (`apply_to="mean"`) pyrobdl
# tempers the predictive $\bar p$ itself, so the predicted class, and the
# accuracy, never change; the samples are moved along with it, each keeping
# its deviation $p_s - \bar p$ from the mean, shrunk only as far as needed to
# keep every sample a probability vector. With `apply_to="samples"` every
# sample is tempered instead, $p'_s = \mathrm{softmax}(\log p_s / T)$, and
# $\hat T$ is fitted for their mixture; the order of the classes within one
# sample is kept, but the argmax of the mixture can change.
#
# `recalibrate` predicts at the calibration inputs, fits $\hat T$ and returns
# the recalibrated posterior (options such as `apply_to` are passed on to the
# recalibrator). Its `predict(x)` is
# `recalibrator.transform(posterior.predict(x))`; we call `transform` on the
# test prediction we already have, so that "before" and "after" use the same
# posterior samples.

# %%
before, after, after_samples, temperature = {}, {}, {}, {}
for name, post in classifiers.items():
    before[name] = post.predict(x_test, num_samples=NUM_SAMPLES)
    for apply_to, out in (("mean", after), ("samples", after_samples)):
        cal = recalibrate(post, x_cal, y_cal, method="temperature", num_samples=NUM_SAMPLES, apply_to=apply_to)
        out[name] = cal.recalibrator.transform(before[name])
        temperature[name, apply_to] = cal.recalibrator.temperature

variants = {"before": (before, None), "temperature": (after, "mean"), "per sample": (after_samples, "samples")}
print(f"{'model':10s} {'':12s} {'T':>6s} {'accuracy':>8s} {'NLL':>6s} {'ECE':>6s} {'mean confidence':>15s}")
for name in classifiers:
    for label, (preds, apply_to) in variants.items():
        p = preds[name]
        T = f"{temperature[name, apply_to]:6.3f}" if apply_to else f"{'':6s}"
        print(f"{name:10s} {label:12s} {T} {metrics.accuracy(p, y_test):8.3f} {metrics.nll(p, y_test):6.3f} "
              f"{metrics.expected_calibration_error(p, y_test):6.3f} {float(p.confidence.mean()):15.3f}")

fig, axes = plt.subplots(2, 2, figsize=(10, 10))
for row, name in enumerate(classifiers):
    T = temperature[name, "mean"]
    plots.reliability_diagram(before[name], y_test, ax=axes[row, 0], title=f"{name}: before")
    plots.reliability_diagram(after[name], y_test, ax=axes[row, 1], title=f"{name}: after temperature T = {T:.2f}")
fig.tight_layout()
savefig(fig, "09_reliability")

# %% [markdown]
# Each row of the figure is one model, on the test digits: left as fitted,
# right after temperature scaling (the default). Blue bars are the accuracy of
# the points in each confidence bin, hatched red bars the gap to their mean
# confidence (above the blue bar: over-confident, below its top:
# under-confident), the small numbers the points per bin. The printed table
# gives $\hat T$: a model with $\hat T > 1$ was over-confident on the
# calibration set, one with $\hat T < 1$ under-confident, and scaling
# typically brings its mean confidence close to its accuracy. ECE is a binned
# estimate on a few hundred points, noisy at the level of about 0.01; the NLL,
# which temperature scaling minimises on the calibration set, is the steadier
# number to compare.
#
# Mean-field VI with default settings can be markedly under-confident: to keep
# its KL divergence to the prior small it keeps the weights noisy, so every
# sampled network is unsure and their average is flatter still (the predictive
# entropy printed below shows how flat). A $\hat T$ far below 1 is the sign of
# it. Temperature scaling repairs the confidence, not the accuracy: a model
# that under-fits stays as accurate as it was.
#
# ### What temperature does to aleatoric and epistemic uncertainty
#
# Tutorial 5 split the predictive entropy into the expected entropy of the
# samples (aleatoric) and the mutual information between label and weights
# (epistemic, the samples' disagreement):
#
# $$
# H[\bar p] = \tfrac1S \textstyle\sum_s H[p_s] + I[y, \theta] .
# $$
#
# The two ways of tempering treat the samples differently.
#
# - **Tempering the mean** (the default) keeps each sample's deviation from
#   the mean where it fits, so the mutual information is kept where it fits and
#   the expected entropy takes up the change. With $\hat T > 1$ the flattened
#   mean has room for the deviations, and the mutual information stays about
#   as it was. With $\hat T < 1$ it mostly does not: sharpening shrinks the
#   small probabilities of the unlikely classes by large factors, a sample
#   that gave such a class less than the mean would, with its full deviation,
#   get a negative probability there, and so all samples' deviations at that
#   point shrink by one common factor until none does. Sharpening by the
#   default rule can therefore remove most of the mutual information.
# - **Tempering every sample** treats each as a model of its own. $T > 1$
#   flattens each $p_s$, so the expected entropy grows, and pulls the samples
#   towards the uniform distribution and so towards each other, so the mutual
#   information typically shrinks. $T < 1$ does the opposite: lower expected
#   entropy and typically a larger mutual information, because samples that
#   were mildly unsure about different classes become confident about
#   different classes.
#
# The printed means show which way each model moved.

# %%
print(f"{'model':10s} {'':12s} {'predictive entropy':>18s} {'expected entropy':>18s} {'mutual information':>18s}")
for name in classifiers:
    for label, (preds, _) in variants.items():
        p = preds[name]
        print(f"{name:10s} {label:12s} {float(p.predictive_entropy.mean()):18.3f} "
              f"{float(p.expected_entropy.mean()):18.3f} {float(p.mutual_information.mean()):18.3f}")

# %% [markdown]
# Where the two variants reach a similar NLL (compare the first table), the
# calibration labels cannot tell them apart, yet they may split the
# uncertainty very differently: the labels constrain the predictive, not how
# it divides into aleatoric and epistemic parts. The split of a recalibrated
# model is therefore not a new measurement; it was decided by the rule chosen
# in advance. Use the recalibrated probabilities for decisions (they are the
# better-calibrated ones), and read its epistemic part with that in mind.
# Vector scaling (`method="vector"`, one weight and one bias per class) is the
# more flexible relative of temperature scaling; it can change the predicted
# class and needs more calibration data.
#
# ## Part 2: conformal prediction sets
#
# Instead of one label, a classifier can return a *set* of labels that holds
# the true one with probability $1-\alpha$. The obvious rule,
# `pred.prediction_sets(0.9)`, adds the most probable classes until their
# probability reaches 0.9; it trusts the probabilities, so its coverage is
# only as good as the model's calibration.
#
# Adaptive prediction sets (APS; Romano et al., 2020) use the same ordering
# but choose the cut-off by split conformal prediction. The score of a label is
# the total probability of the classes ranked at or above it, except that the
# most probable class scores 0, so that every set holds it:
#
# $$
# s(x, y) = \sum_{y' :\, \bar p_{y'}(x) \ge \bar p_y(x)} \bar p_{y'}(x)
# \quad (0 \text{ for the top class}),
# \qquad C(x) = \{ y : s(x, y) \le \hat q \},
# $$
#
# and $\hat q$ is the $\lceil (n+1)(1-\alpha)\rceil$-th smallest score of the
# calibration labels. RAPS (Angelopoulos et al., 2021) adds a penalty
# $\lambda\,(r(y) - k_{reg})^+$ on labels of deep rank $r(y)$, which keeps
# the sets from collecting many unlikely classes; by default $\lambda$ and
# $k_{reg}$ are tuned on 30% of the calibration points and $\hat q$ comes from
# the other 70%.
#
# Below, for each model: the naive sets before and after temperature scaling,
# and the APS and RAPS sets, all at level 0.9, with their coverage on the test
# digits (the fraction of sets that hold the true label), mean size and share
# of single-label sets.

# %%
def set_summary(sets, y):
    """Coverage, mean set size and share of singletons of boolean prediction sets (N, C)."""
    size = sets.sum(-1).double()
    covered = sets[torch.arange(len(y)), y].double()
    return float(covered.mean()), float(size.mean()), float((size == 1).double().mean())


conformal_sets = {}
print(f"level {LEVEL}: {'model':10s} {'sets':22s} {'coverage':>8s} {'mean size':>9s} {'singletons':>10s}")
for name, post in classifiers.items():
    rows = {"naive": before[name].prediction_sets(LEVEL), "naive, temperature": after[name].prediction_sets(LEVEL)}
    for method in ("aps", "raps"):
        cal = recalibrate(post, x_cal, y_cal, method=method, level=LEVEL, num_samples=NUM_SAMPLES)
        rows[method.upper()] = cal.recalibrator.transform(before[name]).prediction_sets(LEVEL)
        conformal_sets[name, method] = cal
    for label, sets in rows.items():
        cov, size, single = set_summary(sets, y_test)
        print(f"{'':11s}{name:10s} {label:22s} {cov:8.3f} {size:9.2f} {single:10.2f}")
print("RAPS penalties:", {name: (c.recalibrator.lam, c.recalibrator.k_reg)
                          for (name, m), c in conformal_sets.items() if m == "raps"})

# %% [markdown]
# What to look for in the printed table:
#
# - The naive sets' coverage depends on the model: an under-confident model's
#   sets are too large and over-cover, an over-confident model's too small.
#   Temperature scaling changes them in the direction its $\hat T$ says, but
#   with no promise about their coverage.
# - The APS and RAPS sets cover at least about 90% whatever the model was
#   like: the guarantee needs only exchangeable data, not a good model. A
#   better model gives *smaller* sets at the same coverage.
# - The guarantee bounds the coverage from above as well, by
#   $1-\alpha + 1/(n+1)$, except in one case: when more than 90% of the
#   calibration labels are the model's top class, $\hat q$ is the score of the
#   top class, 0, every set is that single class, and the coverage is the
#   accuracy. A digits classifier that is right more than 90% of the time is
#   in that case at level 0.9: conformal sets then become interesting at
#   higher levels.
#
# Since the calibration scores are kept, any level works without refitting
# (as long as $\lceil (n+1)(1-\alpha)\rceil \le n$). On one calibration
# set and one test set of 359 digits, a coverage a little below the level
# turns up now and then; part 4 shows how much it varies.

# %%
for level in (0.95, 0.98, 0.99):
    cells = []
    for name in classifiers:
        for method in ("aps", "raps"):
            sets = conformal_sets[name, method].recalibrator.transform(before[name]).prediction_sets(level)
            cov, size, _ = set_summary(sets, y_test)
            cells.append(f"{name} {method.upper()}: {cov:.3f} / {size:.2f}")
    print(f"level {level}: coverage / mean size   " + "   ".join(cells))

# %% [markdown]
# ## Part 3: recalibrating a regression network
#
# Boston housing (one of the three UCI sets shipped with the package; split 0
# of the standard 20, with inputs and targets standardised by the training
# split) has 455 training and 51 test houses. We hold out a fifth of the
# training houses for calibration and fit a `13 -> 50 -> 1` network with a
# learned Gaussian noise level (the default likelihood) by mean-field VI, with
# default settings again.

# %%
uci = datasets.load("boston")
print(uci)
perm = torch.randperm(uci.n_train, generator=torch.Generator().manual_seed(0))
n_cal_r = uci.n_train // 5
xr_train, yr_train = uci.x_train[perm[n_cal_r:]], uci.y_train[perm[n_cal_r:]]
xr_cal, yr_cal = uci.x_train[perm[:n_cal_r]], uci.y_train[perm[:n_cal_r]]
xr_test, yr_test = uci.x_test, uci.y_test
print(f"train {len(yr_train)}, calibration {len(yr_cal)}, test {len(yr_test)}")

net = nn.Sequential(nn.Linear(uci.input_dim, 50), nn.ReLU(), nn.Linear(50, 1))
regressor = pyrobdl.fit(BayesianNetwork(net), xr_train, yr_train, method="mean-field", progress=False, seed=0, **FIT)
print(f"mean-field fitted in {regressor.fit_info['seconds']:.1f} s")

# %% [markdown]
# Four recalibrators, each fitted on the 91 calibration houses:
#
# - **variance scaling** (`"variance"`; Levi et al., 2020): one factor $c$ on
#   the predictive standard deviation, fitted by the calibration NLL; the mean
#   stays, and the epistemic and aleatoric variances are both multiplied by
#   $c^2$;
# - **isotonic recalibration** (`"isotonic"`; Kuleshov et al., 2018): a
#   monotone map $R$ of the predictive CDF, $F' = R \circ F$, fitted so that the
#   probability integral transforms $F_i(y_i)$ of the calibration targets
#   become uniform; it can fix a wrong *shape* (say, tails that are too light),
#   not just a wrong width;
# - **split conformal** (`"conformal"`): the scores $s_i = |y_i - \mu^*_i| / \sigma^*_i$
#   (the error in units of the predicted standard deviation) and intervals
#   $\mu^*(x) \pm \hat q\,\sigma^*(x)$; the model's distribution is kept,
#   only its intervals change;
# - **conformalised quantile regression** (`"cqr"`; Romano et al., 2019): the
#   model's own 5% and 95% quantiles, each moved outwards (or inwards) by one
#   conformal correction; valid at the fitted level only.
#
# The table gives, on the 51 test houses, the coverage of the central 90%
# interval, its mean width and the NLL (both in the original units, thousands
# of dollars), and the miscalibration area, the area between the calibration
# curve and the diagonal. The two conformal methods keep the model's
# predictive distribution, so they change only the first two columns.

# %%
pred_r = regressor.predict(xr_test, num_samples=NUM_SAMPLES)
recalibrated = {m: recalibrate(regressor, xr_cal, yr_cal, method=m, level=LEVEL, num_samples=NUM_SAMPLES)
                for m in ("variance", "isotonic", "conformal", "cqr")}
preds_r = {"uncalibrated": pred_r, **{m: c.recalibrator.transform(pred_r) for m, c in recalibrated.items()}}
print(f"variance factor c = {recalibrated['variance'].recalibrator.factor:.3f}, "
      f"conformal quantile q = {recalibrated['conformal'].recalibrator.score_quantile():.3f}, "
      f"CQR correction = {recalibrated['cqr'].recalibrator.correction * uci.y_std:.2f} (thousand $)")

print(f"{'':13s} {'coverage 90%':>12s} {'mean width':>10s} {'NLL':>7s} {'miscal. area':>12s}")
for name, p in preds_r.items():
    cov = metrics.interval_coverage(p, yr_test, level=LEVEL)
    width = metrics.mean_interval_width(p, level=LEVEL) * uci.y_std
    if name in ("conformal", "cqr"):
        rest = f"{'(model)':>7s} {'(model)':>12s}"
    else:
        nll = metrics.nll(p, yr_test) - uci.log_likelihood_offset
        rest = f"{nll:7.3f} {metrics.miscalibration_area(p, yr_test):12.3f}"
    print(f"{name:13s} {cov:12.3f} {width:10.2f} {rest}")

# %% [markdown]
# With only 51 test houses a coverage is measured in steps of 0.02 and has a
# standard error of about 0.04 at 90%, so the columns above are rough; part 4
# repeats the comparison over many splits. The calibration curve shows the
# whole picture: for every level $p$ on the horizontal axis, the fraction of
# test targets inside the central $p$ interval. A curve below the diagonal
# means intervals that are too narrow (over-confident), above it too wide. The
# dots are the conformal intervals at a few levels: their scores are kept, so
# `interval(level)` works at any level without refitting.

# %%
fig, ax = plt.subplots(figsize=(6, 6))
for name, color in (("uncalibrated", "C0"), ("variance", "C1"), ("isotonic", "C2")):
    area = metrics.miscalibration_area(preds_r[name], yr_test)
    plots.plot_calibration_curve(preds_r[name], yr_test, ax=ax, label=f"{name} (miscalibration area {area:.3f})",
                                 color=color, show_area=False)
    if name == "variance":  # dashed, so that the uncalibrated curve shows when c is close to 1
        [line for line in ax.lines if line.get_gid() == "calibration"][-1].set_linestyle("--")
conf_levels = np.linspace(0.1, 0.9, 9)
ax.plot(conf_levels, [metrics.interval_coverage(preds_r["conformal"], yr_test, level=float(p)) for p in conf_levels],
        "o", color="C3", label="conformal intervals")
ax.legend(loc="lower right", fontsize="small")
ax.set_title("Boston housing, 51 test houses")
savefig(fig, "09_regression_calibration")

# %% [markdown]
# Variance scaling multiplies every interval by the same factor $c$, so if the
# model's curve crosses the diagonal, or bends, some miscalibration remains.
# And its $c$ minimises the NLL, which a few badly predicted houses pull
# upwards: with heavy-tailed errors the central intervals can stay too wide
# even after scaling (compare the printed $c$ with the coverage). Isotonic
# recalibration fits the shape of the curve on the calibration set, and with
# enough calibration data it comes close to the diagonal at every level at
# once; with 91 points the fitted map is itself noisy. Neither promises
# anything on a particular test set.
#
# ## Part 4: the conformal guarantee, over many splits
#
# The guarantee is about the *average* over calibration sets and test points:
# one calibration set can be lucky or unlucky. Given the $n$ calibration
# scores, the coverage on an infinite test set is a random variable with a
# Beta distribution,
# $\mathrm{Beta}(k, n + 1 - k)$ with $k = \lceil (n+1)(1-\alpha) \rceil$
# (Vovk, 2012; Angelopoulos & Bates, 2023, section 3.2), whose mean lies in
# $[1-\alpha, 1-\alpha + 1/(n+1))$; a finite test set of $m$ points adds
# binomial noise of variance about $\frac{(1-\alpha)\alpha}{m}$.
#
# Recalibration needs only the predictions, not a refit. So we pool the
# held-out points (calibration and test), predict once, and re-split them at
# random many times: half to calibrate, half to test. The recalibrator classes
# work on prediction objects directly: `ConformalRegression(level=0.9).fit(pred, y)`
# and `.transform(pred)`, and likewise `VarianceScaling`, `IsotonicCalibration`,
# `ConformalizedQuantileRegression` and, for classifiers, `APS`. On Boston we
# refit all four regression recalibrators on every split; on the digits we
# use the mean-field classifier and APS sets at level 0.99, where the sets are
# not all single labels (part 2).

# %%
def take(pred, idx):
    """The prediction at the points idx (the same posterior samples)."""
    if isinstance(pred, RegressionPrediction):
        return RegressionPrediction(pred.loc_samples[:, idx], pred.scale_samples[:, idx])
    return ClassificationPrediction(pred.probs_samples[:, idx])


def repeated_splits(pred, y, recalibrators, coverage, size, generator):
    """Coverage and interval width / set size on the test half of NUM_REPEATS random
    calibration/test halvings of the held-out points, uncalibrated and for each recalibrator."""
    n_c = len(y) // 2
    cov = {name: [] for name in ["uncalibrated", *recalibrators]}
    width = {name: [] for name in cov}
    for _ in range(NUM_REPEATS):
        idx = torch.randperm(len(y), generator=generator)
        c, t = idx[:n_c], idx[n_c:]
        p_test = take(pred, t)
        preds = {"uncalibrated": p_test}
        for name, make in recalibrators.items():
            preds[name] = make().fit(take(pred, c), y[c]).transform(p_test)
        for name, p in preds.items():
            cov[name].append(coverage(p, y[t]))
            width[name].append(size(p))
    return {k: np.array(v) for k, v in cov.items()}, {k: np.array(v) for k, v in width.items()}, n_c, len(y) - n_c


def theory(n, m, level):
    """Split conformal: mean and standard deviation of one split's coverage (calibration and test noise)."""
    k = math.ceil((n + 1) * level)
    mean = k / (n + 1)
    var_cal = k * (n + 1 - k) / ((n + 1) ** 2 * (n + 2))
    var_test = (mean - (var_cal + mean**2)) / m
    return mean, math.sqrt(var_cal + var_test)


g = torch.Generator().manual_seed(1)
y_held_r = torch.cat([yr_cal, yr_test])
pred_held_r = regressor.predict(torch.cat([xr_cal, xr_test]), num_samples=NUM_SAMPLES)
cov_r, width_r, n_r, m_r = repeated_splits(
    pred_held_r, y_held_r,
    {"variance": VarianceScaling, "isotonic": IsotonicCalibration,
     "conformal": lambda: ConformalRegression(level=LEVEL),
     "cqr": lambda: ConformalizedQuantileRegression(level=LEVEL)},
    coverage=lambda p, y: metrics.interval_coverage(p, y, level=LEVEL),
    size=lambda p: metrics.mean_interval_width(p, level=LEVEL) * uci.y_std, generator=g)

LEVEL_DIGITS = 0.99
y_held_c = torch.cat([y_cal, y_test])
pred_held_c = classifiers["mean-field"].predict(torch.cat([x_cal, x_test]), num_samples=NUM_SAMPLES)
cov_c, size_c, n_c, m_c = repeated_splits(
    pred_held_c, y_held_c, {"APS": lambda: APS(level=LEVEL_DIGITS)},
    coverage=lambda p, y: set_summary(p.prediction_sets(LEVEL_DIGITS), y)[0],
    size=lambda p: float(p.prediction_sets(LEVEL_DIGITS).sum(-1).double().mean()), generator=g)

fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
panels = [(axes[0], cov_r, "conformal", n_r, m_r, LEVEL, "model's 90% interval",
           f"Boston, split conformal, level {LEVEL}"),
          (axes[1], cov_c, "APS", n_c, m_c, LEVEL_DIGITS, f"naive {LEVEL_DIGITS} sets",
           f"digits (mean-field), APS, level {LEVEL_DIGITS}")]
for ax, cov, method, n, m, level, naive, title in panels:
    step = 1.0 / m
    lo = min(cov[method].min(), cov["uncalibrated"].min(), level - 0.05)
    bins = np.arange(lo - step / 2, 1.0 + step, step)
    ax.hist(cov["uncalibrated"], bins=bins, color="0.6", alpha=0.6, label=f"uncalibrated: {naive}")
    ax.hist(cov[method], bins=bins, color="C0", alpha=0.8, label=method)
    ax.axvspan(level, level + 1.0 / (n + 1), color="C2", alpha=0.3, label=f"[1-α, 1-α+1/(n+1)), n = {n}")
    ax.axvline(cov[method].mean(), color="C3", lw=2, label=f"{method}: mean coverage {cov[method].mean():.3f}")
    ax.set_xlabel(f"coverage on the {m} test points of a split")
    ax.set_ylabel(f"splits (of {NUM_REPEATS})")
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left")
fig.tight_layout()
savefig(fig, "09_conformal_repeats")

for label, cov, width, n, m, level, what in (
        ("Boston", cov_r, width_r, n_r, m_r, LEVEL, "mean width (thousand $)"),
        ("digits", cov_c, size_c, n_c, m_c, LEVEL_DIGITS, "mean set size")):
    mean, sd = theory(n, m, level)
    print(f"{label}: {NUM_REPEATS} splits into n = {n} calibration and m = {m} test points, level {level}; "
          f"conformal theory: mean in [{level}, {level + 1 / (n + 1):.3f}), std over splits {sd:.3f}")
    print(f"  {'':13s} {'mean coverage':>13s} {'std':>6s} {'below level':>11s} {what:>24s}")
    for name in cov:
        print(f"  {name:13s} {cov[name].mean():13.3f} {cov[name].std(ddof=1):6.3f} {np.mean(cov[name] < level):11.0%} "
              f"{width[name].mean():24.2f}")

# %% [markdown]
# Each histogram is the coverage of one random calibration/test split; the
# green band is $[1-\alpha, 1-\alpha+1/(n+1))$ and the red line the mean over
# the splits. Single splits scatter well outside the band, both below and
# above it; compare the printed standard deviation of the conformal coverage
# with the theory's: a calibration set of $n$ points cannot pin down a
# quantile exactly, and $m$ test points cannot measure a coverage exactly. It
# is the *mean* that the guarantee is about, and with a few dozen repeats that
# mean is itself uncertain by about the printed standard deviation divided by
# $\sqrt{50} \approx 7$: check that the means of the conformal methods
# (split conformal, CQR, APS) lie in the band or within that distance of it. Variance scaling and isotonic
# recalibration carry no such guarantee: their mean coverage is whatever the
# fitted map gives at 90%, which is why the table also shows it. The gray
# histograms are the uncalibrated model's own intervals and naive sets on the
# same test halves.
#
# The guarantee is *marginal*: averaged over inputs. It does not say that
# every kind of house or every digit class is covered 90% of the time, and it
# does not survive a distribution shift between calibration and test data.
#
# ## Part 5: which recalibrator when
#
# | you want | method | what it changes | guarantee |
# |---|---|---|---|
# | better class probabilities (NLL, ECE) | `temperature` | one factor on the predictive's log-probabilities (samples follow); predicted class kept | none; works with a few hundred points |
# | the same, with class-dependent bias | `vector` | a weight and a bias per class; can change the predicted class | none; needs every class in the calibration data |
# | label sets that hold the truth with probability 1-α | `aps` | nothing (sets from the probabilities, any level) | coverage at least 1-α, marginal |
# | smaller sets with many classes | `raps` | nothing; a penalty on deep ranks, tuned on 30% of the points | as APS, with 70% of the points |
# | intervals of the right average width, Gaussian shape kept | `variance` | one factor on the predictive std (epistemic and aleatoric alike) | none |
# | a calibrated CDF at every level | `isotonic` | a monotone map of the CDF: width and shape | none; asymptotic |
# | intervals with a coverage guarantee, any level | `conformal` | intervals mean ± q std; distribution kept | coverage at least p, marginal |
# | intervals at one level, additive correction | `cqr` | the model's quantiles moved by one constant | coverage at least p at the fitted level |
#
# Rules of thumb:
#
# - Recalibrate on held-out data from the same distribution as the test data,
#   never on the training data; a few hundred points are enough for
#   temperature and variance scaling, conformal methods need at least
#   $(1-\alpha)/\alpha$ points (9 at 90%, 99 at 99%) and give tighter results
#   with more.
# - For decisions that use the probabilities (expected costs, thresholds),
#   recalibrate the distribution (temperature, variance, isotonic). For a
#   promise about how often the answer is right, use a conformal method: it
#   does not need a calibrated model, but a sharper, more accurate one gives
#   smaller sets and narrower intervals at the same coverage.
# - Recalibration rescales the total uncertainty; it does not tell you which
#   part, aleatoric or epistemic, was wrong.
# - `cal.save(path)` stores the posterior with its recalibrator and
#   `pyrobdl.load(path)` restores both; `pyrobdl compare --recalibrate`
#   reports metrics before and after for a whole comparison.

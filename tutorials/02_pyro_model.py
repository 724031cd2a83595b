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
# # Tutorial 2: Writing the model yourself in Pyro
#
# `pyrobdl.BayesianNetwork` is not a closed box: it *is* a Pyro model. Calling
# `model(x, y)` runs ordinary `pyro.sample` statements (one per weight tensor,
# one per likelihood latent, and the observations inside a `pyro.plate`), so
# everything in Pyro works on it: `SVI` with any autoguide, `MCMC`,
# `Predictive`, and the `poutine` effect handlers.
#
# This tutorial
#
# 1. looks inside a `BayesianNetwork` with `poutine.trace`,
# 2. trains it with a plain Pyro `SVI` loop (minibatches included),
# 3. uses it as *one part* of a hand-written Pyro model: a Bayesian network for
#    the mean and a two-parameter noise model $\sigma(x) = s_0 + s_1 |x|$,
# 4. fits that model with a guide that combines an autoguide (for the
#    network) with a guide written by hand (for $s_0, s_1$),
# 5. and predicts with `pyro.infer.Predictive`.
#
# **Papers.** E. Bingham et al., *Pyro: Deep Universal Probabilistic
# Programming* (JMLR 2019); M. D. Hoffman, D. M. Blei, C. Wang and J. Paisley,
# *Stochastic Variational Inference* (JMLR 2013); C. Blundell et al., *Weight
# Uncertainty in Neural Networks* (ICML 2015).

# %%
import os

smoke_test = "CI" in os.environ or os.environ.get("PYROBDL_SMOKE") == "1"

import matplotlib

if smoke_test:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoGuideList, AutoNormal, init_to_value
from pyro.poutine.util import site_is_subsample
from torch.distributions import constraints

import pyrobdl
from pyrobdl import BayesianNetwork, datasets, inference, likelihoods, plots, priors

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
N_TRAIN = 100 if smoke_test else 500
SVI_STEPS = 30 if smoke_test else 1000  # section 2: a plain SVI loop
CUSTOM_STEPS = 50 if smoke_test else 4000  # section 4: the hand-written model
NUM_SAMPLES = 20 if smoke_test else 200

ds = datasets.load("toy-regression", normalize=True, n_train=N_TRAIN, n_test=200)
x, y, x_test = ds.x_train, ds.y_train, ds.x_test
print(ds)

# %% [markdown]
# ## 1. A `BayesianNetwork` is a Pyro model
#
# Wrap any `torch.nn.Module`. The optional `name` prefixes every Pyro site,
# so that one Pyro model can hold several networks without name clashes.

# %%
net = nn.Sequential(nn.Linear(1, 100), nn.ReLU(), nn.Linear(100, 1))
bnn = BayesianNetwork(net, prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian(), name="f")
print(bnn.site_names)  # one latent per weight tensor, plus the learned noise scale "f.sigma"

trace = poutine.trace(bnn).get_trace(x, y)
for name, site in trace.nodes.items():
    if site["type"] == "sample" and not site_is_subsample(site):  # skip the plate's index site
        kind = "observed" if site["is_observed"] else "latent"
        print(f"{name:12s} {kind:8s} {str(tuple(site['value'].shape)):10s} {type(site['fn']).__name__}")

# %% [markdown]
# The weight sites have the shapes of the parameters they replace, and their
# prior is the `priors.Normal(0, 1)` we asked for. The observation site
# `f.obs` sits in a plate called `f.data`.
#
# ## 2. Train it with plain Pyro
#
# Any autoguide fits. Pass `num_data=N` with a minibatch: the likelihood is then
# scaled by $N/B$ and the ELBO stays an unbiased estimate of the full-data
# ELBO (Hoffman et al., 2013). We start the guide's means at the network's own
# PyTorch initialisation with `init_to_value`: starting every weight at zero
# (Pyro's default for unconstrained sites) would leave all ReLU units identical.

# %%
pyro.clear_param_store()
init = {bnn.parameter_site(name): p.detach() for name, p in bnn.net.named_parameters()}
guide = AutoNormal(bnn, init_loc_fn=init_to_value(values=init), init_scale=0.01)
svi = SVI(bnn, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
batch_size = 50
losses = []
for step in range(SVI_STEPS):
    idx = torch.randint(0, len(x), (batch_size,))
    losses.append(svi.step(x[idx], y[idx], num_data=len(x)))
print(f"negative ELBO after {SVI_STEPS} steps: {losses[-1]:.1f}")

# %% [markdown]
# pyrobdl's own `inference.MeanField` fits the same guide family (Pyro's
# `AutoNormal`) with a faster estimator of the same ELBO, and the fitted guide
# it returns is an ordinary Pyro autoguide. So both routes end in the same
# place, and `Predictive` works on either:

# %%
posterior = inference.MeanField(num_steps=SVI_STEPS, progress=False, seed=0).fit(bnn, x, y)
samples = Predictive(posterior.model, guide=posterior.guide, num_samples=NUM_SAMPLES)(x_test)
print("draws of y at the test inputs:", tuple(samples["f.obs"].shape))
print("draws of the noise scale:", tuple(samples["f.sigma"].shape))

# %% [markdown]
# ## 3. A network inside a hand-written model
#
# Now the model of our own. The toy data's noise grows linearly with $|x|$,
# so we write the noise model down explicitly with two positive parameters and
# let a Bayesian network learn the mean:
#
# $$
# s_0, s_1 \sim \text{HalfNormal}(1),\qquad
# \theta \sim \mathcal N(0, I),\qquad
# y_n \sim \mathcal N\big(f_\theta(x_n),\ (s_0 + s_1 |x_n|)^2\big).
# $$
#
# Calling the `BayesianNetwork` inside the model samples its weights as usual.
# It would also sample its *own* observation site; our model has its own
# likelihood, so we hide that site with the `poutine.block` handler. We give
# the network a fixed-noise likelihood, `Gaussian(scale=1.0)`, so that it adds
# no noise latent of its own.

# %%
mean_net = BayesianNetwork(
    nn.Sequential(nn.Linear(1, 100), nn.ReLU(), nn.Linear(100, 1)),
    prior=priors.Normal(0.0, 1.0),
    likelihood=likelihoods.Gaussian(scale=1.0),
    name="mean",
)


def model(x, y=None):
    s0 = pyro.sample("s0", dist.HalfNormal(1.0))
    s1 = pyro.sample("s1", dist.HalfNormal(1.0))
    with poutine.block(hide=[mean_net.obs_name]):
        mu = mean_net(x).squeeze(-1)  # samples the weights, returns f_theta(x)
    sigma = s0 + s1 * x[:, 0].abs()
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(mu, sigma), obs=y)
    return mu


trace = poutine.trace(model).get_trace(x, y)
print([name for name, site in trace.nodes.items() if site["type"] == "sample" and not site_is_subsample(site)])

# %% [markdown]
# ## 4. A guide that is part autoguide, part hand-written
#
# `AutoGuideList` combines guides. The network's weights get an `AutoNormal`
# on a *blocked* copy of the model that exposes only the network's sites; the
# two noise parameters get a guide written by hand: a log-normal each, so they
# stay positive, with learnable location and scale (`pyro.param` with a
# positivity constraint).

# %%
def noise_guide(x, y=None):
    for name, start in [("s0", 0.3), ("s1", 0.1)]:
        loc = pyro.param(f"{name}_loc", torch.tensor(start).log())
        scale = pyro.param(f"{name}_scale", torch.tensor(0.1), constraint=constraints.positive)
        pyro.sample(name, dist.LogNormal(loc, scale))


pyro.clear_param_store()
init = {mean_net.parameter_site(name): p.detach() for name, p in mean_net.net.named_parameters()}
guide = AutoGuideList(model)
guide.append(noise_guide)  # same order as the model's sites: s0, s1, then the weights
guide.append(
    AutoNormal(poutine.block(model, expose=mean_net.site_names), init_loc_fn=init_to_value(values=init), init_scale=0.01)
)

# TraceMeanField_ELBO uses the closed-form KL divergence between the Gaussian
# guide and the Gaussian prior where it can: lower-variance gradients.
svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), TraceMeanField_ELBO())
losses = [svi.step(x, y) for _ in range(CUSTOM_STEPS)]

fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(losses, lw=0.8)
ax.set_yscale("log")
ax.set_xlabel("SVI step")
ax.set_ylabel("negative ELBO")
savefig(fig, "02_elbo")

# %% [markdown]
# The negative ELBO falls quickly and then flattens; the noise of the curve is
# the Monte Carlo noise of the one-sample gradient estimate.
#
# ## 5. Predict with `Predictive`
#
# `Predictive` runs the guide to draw latents and then the model with them.
# `return_sites` picks what to keep: `"_RETURN"` is the model's return value,
# here the network's mean $f_\theta(x)$ for each posterior draw, and `"y"` is
# a draw from the full predictive. From the draws we get the two kinds of
# uncertainty: the spread of $f_\theta(x)$ across draws is epistemic, and the
# noise $\sigma(x)$ is aleatoric.

# %%
predictive = Predictive(model, guide=guide, num_samples=NUM_SAMPLES, return_sites=["_RETURN", "y", "s0", "s1"])
draws = predictive(x_test)
mu = draws["_RETURN"]  # (S, N): one function per posterior draw
sigma = draws["s0"] + draws["s1"] * x_test[:, 0].abs()  # (S, N): the noise model per draw
epistemic_std = mu.std(0)
aleatoric_std = sigma.pow(2).mean(0).sqrt()

fig, axes = plt.subplots(1, 2, figsize=(13, 4))
plots.plot_predictive_1d(
    x_test[:, 0], mu.mean(0), epistemic_std, aleatoric_std,
    x_train=x[:, 0], y_train=y, train_range=(float(x.min()), float(x.max())), ax=axes[0],
    title="hand-written model (normalised units)",
)
axes[1].plot(x_test[:, 0], aleatoric_std, label=r"learned $s_0 + s_1|x|$")
axes[1].plot(x_test[:, 0], ds.test_noise_std, "k--", label="true noise std")
axes[1].plot(x_test[:, 0], epistemic_std, label="epistemic std")
axes[1].set_xlabel("x (normalised)")
axes[1].legend(fontsize="small")
savefig(fig, "02_custom_model")

print(f"s0 = {draws['s0'].mean():.3f}, s1 = {draws['s1'].mean():.3f}")

# %% [markdown]
# Left: the familiar picture: a thin epistemic band where the data are, wider
# outside. Right: the learned noise line against the true noise of the data
# (dashed). With the noise model written down, two numbers describe it and
# the network only has to learn the mean. Look where the two lines differ:
# the small network does not quite reach the bottoms of the two valleys (near
# $x = \pm 1.3$ in normalised units), and the noise model, which sees only
# residuals, absorbs that misfit with a steeper slope. A model's aleatoric
# estimate is only as good as its fit of the mean.
#
# ## Other handlers
#
# A few more things the handlers give for free:
#
# - `poutine.condition(model, data={"s0": ..., "s1": ...})` fixes the noise
#   parameters, here to a homoscedastic model with $\sigma = 0.1$;
# - `poutine.replay(model, trace=guide_trace)` runs the model with the latent
#   values a guide drew, here the fitted network weights;
# - `poutine.trace(...)` records every site with its distribution, and
#   `trace.compute_log_prob()` adds the log-densities;
# - `poutine.scale(model, scale=0.1)` tempers the likelihood and prior terms
#   (for example a cold posterior).
#
# Together: the log-likelihood of the training data under one posterior draw
# of the weights, with the learned noise model and with a fixed
# $\sigma = 0.1$ instead.

# %%
with torch.no_grad():
    guide_trace = poutine.trace(guide).get_trace(x, y)  # one posterior draw of every latent
fixed = poutine.condition(model, data={"s0": torch.tensor(0.1), "s1": torch.tensor(0.0)})
for name, m in [("learned noise", model), ("sigma = 0.1", fixed)]:
    with torch.no_grad():
        trace = poutine.trace(poutine.replay(m, trace=guide_trace)).get_trace(x, y)
        trace.compute_log_prob()
    print(f"{name:14s} log p(y | theta, noise) = {float(trace.nodes['y']['log_prob_sum']):9.1f}")

# %% [markdown]
# The same model could be sampled with `pyro.infer.MCMC(pyro.infer.NUTS(model))`,
# but Pyro's generic NUTS re-traces the model at every leapfrog step, which is
# slow for networks; pyrobdl's `inference.NUTS` (tutorial 4) samples a
# `BayesianNetwork` on a flat, compiled potential instead.

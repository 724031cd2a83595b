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
# # Tutorial 8: Running on a GPU
#
# pyrobdl follows the device of the data: pass CUDA tensors and the model, the
# variational parameters, the ensemble members and the predictive samples all
# live on the GPU. There is no separate GPU code path, so this tutorial runs
# the *same* function once per device and compares the timings. Without a
# CUDA device it runs on the CPU only and says so.
#
# What to expect: a GPU pays a fixed cost per operation (kernel launches,
# synchronisation), so for a small network on a few hundred points the CPU is
# as fast or faster. The GPU wins when each step does a lot of arithmetic:
# many data points per step, wide layers, many ensemble members trained at
# once, and above all the predictive, which pushes hundreds of weight samples
# through the network in a few batched passes.
#
# **Papers.** A. Paszke et al., *PyTorch: An Imperative Style,
# High-Performance Deep Learning Library* (NeurIPS 2019); E. Bingham et al.,
# *Pyro: Deep Universal Probabilistic Programming* (JMLR 2019); B.
# Lakshminarayanan et al., *Simple and Scalable Predictive Uncertainty
# Estimation using Deep Ensembles* (NeurIPS 2017).

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
from pyrobdl import BayesianNetwork, datasets, inference, likelihoods, metrics, priors

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

# %% [markdown]
# ## Which devices are there?

# %%
devices = ["cpu"]
if torch.cuda.is_available():
    devices.append("cuda")
    print("CUDA device:", torch.cuda.get_device_name(0))
else:
    print("No CUDA device: running on the CPU only (the code is the same; set devices to compare).")
print("torch", torch.__version__, "| CPU threads:", torch.get_num_threads())

# Two problem sizes: small (where the CPU holds its own) and large (where a GPU pays off).
if smoke_test:
    SIZES = {"small": dict(n=200, width=16)}
    STEPS, NUM_SAMPLES, N_TEST = 20, 10, 200
else:
    SIZES = {"small": dict(n=500, width=50), "large": dict(n=10_000, width=256)}
    STEPS, NUM_SAMPLES, N_TEST = 200, 100, 10_000

# %% [markdown]
# ## One function for every device
#
# The only device-specific line is `.to(device)` on the data. `Dataset.to`
# moves every tensor of a dataset; `pyrobdl.fit` then moves a copy of the
# model to the data's device, and `predict` runs where its inputs are.
#
# CUDA calls return before the GPU has finished, so for honest timings we
# call `torch.cuda.synchronize()` before reading the clock.

# %%
def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def make_model(width):
    net = nn.Sequential(nn.Linear(1, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2))
    return BayesianNetwork(net, prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.HeteroscedasticGaussian())


def run(device, n, width, steps=STEPS):
    ds = datasets.load("toy-regression", normalize=True, n_train=n, n_test=N_TEST).to(device)
    timings, preds = {}, {}
    for method, options in [("mean-field", dict(num_steps=steps)), ("ensemble", dict(num_steps=steps, size=5))]:
        sync(device)
        t0 = time.perf_counter()
        posterior = pyrobdl.fit(make_model(width), ds.x_train, ds.y_train, method=method, progress=False, seed=0,
                                **options)
        sync(device)
        timings[f"{method} fit"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        preds[method] = posterior.predict(ds.x_test, num_samples=NUM_SAMPLES)
        sync(device)
        timings[f"{method} predict"] = time.perf_counter() - t0
    return timings, preds, ds


# The first run on a device pays one-off start-up costs (CUDA context, kernel caches): warm up first.
for device in devices:
    run(device, n=100, width=8, steps=5)

results = {}
for size, cfg in SIZES.items():
    for device in devices:
        timings, preds, ds = run(device, **cfg)
        results[(size, device)] = timings
        where = preds["mean-field"].mean.device
        print(f"{size:6s} {device:5s} (predictions on {where}): "
              + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))

# %% [markdown]
# The predictions come back on the device the inputs were on. Metrics accept
# them there: they convert to float64 NumPy on the CPU internally. (With only
# a few hundred steps these fits are for timing, not for accuracy.)

# %%
pred = preds["ensemble"]
print(f"prediction on {pred.mean.device}: test RMSE {metrics.rmse(pred, ds.y_test):.3f}, "
      f"90% coverage {metrics.interval_coverage(pred, ds.y_test, level=0.9):.3f}")

# %% [markdown]
# ## The timings side by side

# %%
labels = list(next(iter(results.values())).keys())
fig, axes = plt.subplots(1, len(SIZES), figsize=(6.5 * len(SIZES), 4), squeeze=False)
for ax, size in zip(axes[0], SIZES):
    pos = np.arange(len(labels))
    for k, device in enumerate(devices):
        values = [results[(size, device)][label] for label in labels]
        ax.bar(pos + (k - (len(devices) - 1) / 2) * 0.38, values, width=0.38, label=device)
    ax.set_xticks(pos)
    ax.set_xticklabels(labels, rotation=20, ha="right")
    ax.set_ylabel("seconds")
    cfg = SIZES[size]
    ax.set_title(f"{size}: {cfg['n']} points, width {cfg['width']}, {STEPS} steps, S={NUM_SAMPLES}")
    ax.legend()
fig.tight_layout()
savefig(fig, "08_timings")

if "cuda" in devices:
    for size in SIZES:
        speedups = {k: results[(size, "cpu")][k] / results[(size, "cuda")][k] for k in labels}
        print(f"{size}: CUDA speed-up " + ", ".join(f"{k} x{v:.1f}" for k, v in speedups.items()))

# %% [markdown]
# What this printed on one NVIDIA H200 (torch 2.11, 16 CPU threads for the
# CPU side), full settings:
#
# | size | mean-field fit | mean-field predict | ensemble fit | ensemble predict |
# | --- | --- | --- | --- | --- |
# | small (500 points, width 50) | ×0.8 | ×3.1 | ×0.8 | ×1.7 |
# | large (10,000 points, width 256) | ×4.0 | ×11.9 | ×24.2 | ×7.5 |
#
# The small problem is launch-bound: the GPU is slightly *slower* to train.
# The large one is arithmetic-bound, and the five ensemble members trained in
# one batched pass gain most. `benchmarks/bench_gpu.py` measures the same
# against plain Pyro on the GPU.

# %% [markdown]
# ## Moving a fitted posterior
#
# A posterior fitted on the GPU can be moved with `posterior.to("cpu")` (or
# predicted on CPU inputs, which moves it). Saved posteriors hold CPU tensors,
# so `pyrobdl.load` works on a machine without a GPU.

# %%
posterior = inference.MeanField(num_steps=STEPS, progress=False, seed=0).fit(
    make_model(16), ds.x_train[:200], ds.y_train[:200])
posterior.to("cpu")
print(posterior.predict(ds.x_test[:5].cpu(), num_samples=NUM_SAMPLES).mean.device)

# %% [markdown]
# ## Notes
#
# - **The command line.** `pyrobdl compare --device cuda` runs the method
#   comparison of tutorial 3 on the GPU.
# - **MCMC.** `inference.NUTS` runs its chains one after the other on a GPU
#   (worker processes are for CPU chains); for the small networks NUTS is
#   meant for, the CPU is usually as fast.
# - **Memory.** `predict` chunks the weight samples so that one batched pass
#   stays under `max_memory` bytes of activations (512 MiB by default); raise
#   it on a large GPU for speed, lower it if you run out of memory.
# - **CPU threads.** For small networks, one thread is often faster than
#   several: `torch.set_num_threads(1)` or `OMP_NUM_THREADS=1`.

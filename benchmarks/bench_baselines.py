"""Benchmark: vectorised baselines against member-by-member / pass-by-pass loops.

1. Deep ensemble training, 5 members of a 1 -> 50 -> 50 -> 1 ReLU net,
   N = 1000 points, minibatches of 100 (10 steps per epoch), Gaussian NLL
   with a learned noise scale per member, Adam:
   ``DeepEnsemble`` (stack_module_state + vmap, one optimiser) against
   training the 5 members one after another with plain PyTorch, each with
   its own Adam (torch's default, and fused as DeepEnsemble uses) and its
   own shuffling. Reported: milliseconds per epoch.
2. MC-dropout prediction with S = 100 masks: ``DropoutPosterior.predict``
   (one batched pass, or cache-sized chunks of passes on CPU) against 100
   separate forward passes of the same trained network under
   ``torch.no_grad``, stacked into the same prediction object: (a) the usual
   loop, network in train mode (``nn.Dropout`` semantics: a fresh mask for
   every example), (b) the same semantics as ``predict`` (one mask per pass,
   shared by all inputs). Reported for several test-set sizes.

Run::

    python benchmarks/bench_baselines.py            # default settings
    python benchmarks/bench_baselines.py --threads 1 --repeats 7

Timings are medians over ``--repeats`` runs after one warm-up run. On a
small machine shared with other work, ``--threads 1`` gives stable numbers:
with two intra-op threads and a busy second core, OpenMP synchronisation
stalls dominate and the timings of both sides swing by 10x and more.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

import pyrobdl
from pyrobdl import BayesianNetwork, likelihoods, priors
from pyrobdl.inference import DeepEnsemble, MCDropout
from pyrobdl.inference.baselines import _Sampling


def make_net() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 50), nn.ReLU(), nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, 1))


def toy(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 14 - 7
    y = x[:, 0] * torch.sin(x[:, 0]) + (0.3 + 0.3 * x[:, 0].abs() / 7) * torch.randn(n, generator=g)
    return x, y


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ----------------------------------------------------------------------------- ensembles
def ensemble_vectorised(model, x, y, *, size, epochs, batch_size) -> float:
    post = DeepEnsemble(size=size, epochs=epochs, batch_size=batch_size, lr=1e-2, progress=False).fit(model, x, y)
    return post.fit_info["seconds"] / epochs


def ensemble_loop(model, x, y, *, size, epochs, batch_size, fused=False) -> float:
    """The members one after another: plain PyTorch, one Adam each."""
    lik = model.likelihood
    N = x.shape[0]
    t0 = time.perf_counter()
    for m in range(size):
        net = copy.deepcopy(model.net)
        for mod in net.modules():
            if hasattr(mod, "reset_parameters"):
                mod.reset_parameters()
        log_sigma = torch.zeros((), requires_grad=True)
        opt = torch.optim.Adam(list(net.parameters()) + [log_sigma], lr=1e-2, fused=fused)
        for _ in range(epochs):
            perm = torch.randperm(N)
            for i in range(0, N - batch_size + 1, batch_size):
                idx = perm[i : i + batch_size]
                loss = -lik.log_prob(net(x[idx]), y[idx], {"sigma": log_sigma.exp()}).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return (time.perf_counter() - t0) / epochs


# ----------------------------------------------------------------------------- MC dropout
def dropout_batched(post, x, S) -> None:
    post.predict(x, num_samples=S)


def dropout_loop(post, x, S) -> None:
    """S separate forward passes in train mode (a fresh mask per example), then the same prediction object."""
    net = post.net
    net.train()
    try:
        with torch.no_grad():
            out = torch.stack([net(x) for _ in range(S)])
    finally:
        net.eval()
    post.model.likelihood.prediction(out, post._expanded_latents(S))


def dropout_loop_shared_mask(post, x, S) -> None:
    """S separate forward passes, each with one mask shared by all inputs (predict's semantics)."""
    with torch.no_grad(), _Sampling(post.net):
        out = torch.stack([post.net(x) for _ in range(S)])
    post.model.likelihood.prediction(out, post._expanded_latents(S))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20, help="epochs per ensemble timing run")
    ap.add_argument("--test-sizes", type=int, nargs="+", default=[10, 100, 1000])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, pyrobdl {pyrobdl.__version__}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats} runs")

    x, y = toy(1000)
    model = BayesianNetwork(make_net(), prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian())
    kw = dict(size=5, epochs=args.epochs, batch_size=100)
    runs = {
        "vectorised": ensemble_vectorised,
        "loop": ensemble_loop,
        "loop_fused": lambda *a, **k: ensemble_loop(*a, fused=True, **k),
    }
    res = {}
    for name, fn in runs.items():
        times = []
        fn(model, x, y, **dict(kw, epochs=2))  # warm-up
        for _ in range(args.repeats):
            times.append(fn(model, x, y, **kw))
        res[name] = statistics.median(times)
    v = res["vectorised"]
    print("\nDeep ensemble training, 5 members, 1-50-50-1, N=1000, batch 100 (10 steps/epoch)")
    print(f"  vectorised (vmap, fused Adam)        {1e3 * v:8.2f} ms/epoch")
    print(f"  loop, default Adam                   {1e3 * res['loop']:8.2f} ms/epoch   speed-up {res['loop'] / v:5.2f}x")
    print(f"  loop, fused Adam                     {1e3 * res['loop_fused']:8.2f} ms/epoch   "
          f"speed-up {res['loop_fused'] / v:5.2f}x   (target >= 3x)")

    post = MCDropout(p=0.1, num_steps=300, progress=False, seed=0).fit(model, x, y)
    S = 100
    print(f"\nMC-dropout prediction, S={S} masks, 1-50-50-1 (dropout before both hidden-fed layers)")
    print(f"  {'N test':>7} {'batched ms':>11} {'(a) loop ms':>12} {'speed-up':>9} {'(b) loop ms':>12} {'speed-up':>9}")
    for n in args.test_sizes:
        xt = torch.linspace(-10, 10, n).unsqueeze(-1)
        tb = median_time(lambda: dropout_batched(post, xt, S), args.repeats)
        ta = median_time(lambda: dropout_loop(post, xt, S), args.repeats)
        tc = median_time(lambda: dropout_loop_shared_mask(post, xt, S), args.repeats)
        print(f"  {n:>7} {1e3 * tb:>11.2f} {1e3 * ta:>12.2f} {ta / tb:>8.2f}x {1e3 * tc:>12.2f} {tc / tb:>8.2f}x")
    print("  (target >= 10x)")


if __name__ == "__main__":
    main()

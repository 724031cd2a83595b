"""Benchmark: vectorised baselines against member-by-member / pass-by-pass loops.

The network is the issue's 1 -> 50 -> 50 -> 1 tanh net; the data the 1-D toy
(``N`` training points, default 500: the toy's training size; Boston's UCI
split has 455). Everything is printed in one run, for each thread count.

1. Deep ensemble training, 5 members, Gaussian NLL with a learned noise scale
   per member, Adam (lr 1e-2), at two settings:

   * ``UCI``: the settings ``pyrobdl compare`` uses on UCI data
     (``DeepEnsemble``'s class defaults: 40 epochs, minibatches of 32,
     each member its own shuffle);
   * ``full batch``: one step per epoch (``compare.profiles.TOY_OPTIONS``), 200 epochs.

   ``DeepEnsemble.fit`` (end to end: copies, initialisation, checks and
   training) against what a user writes without pyrobdl: a plain PyTorch
   loop over the 5 members, each a fresh copy with ``reset_parameters()``,
   its own Adam, its own ``randperm`` shuffle, same batch size, epochs and
   learning rate, with the closed-form Gaussian NLL (cheaper than building a
   distribution object each step). The loop runs with torch's default Adam
   (for-loop implementation on CPU) and with ``fused=True`` (the fastest
   Adam torch has; DeepEnsemble uses it too). Also shown: DeepEnsemble on
   its general ``vmap``/``functional_call`` path (what arbitrary networks
   use), to show what the hand-batched path for Linear chains adds.
   Reported: milliseconds per epoch and the loop / vectorised ratios.

2. MC-dropout prediction with S = 100 masks (p = 0.1 before both hidden-fed
   layers): ``DropoutPosterior.predict`` against 100 separate forward passes
   of the same trained network under ``torch.no_grad``, stacked into the same
   prediction object: (a) the usual loop, network in train mode (a fresh
   mask for every example, ``nn.Dropout`` semantics), (b) the same
   semantics as ``predict`` (one mask per pass, shared by all inputs). Also
   shown: ``predict`` on the general ``vmap`` path. For several test-set sizes.

Protocol: each variant runs once as warm-up, then ``--repeats`` times,
interleaved with the other variants (so a burst of load on a shared machine
hits all of them); the table shows the best (minimum) wall-clock time and, in
brackets, the median. Ratios are of the best times; a third line gives the ratios
of the medians, which ``main()`` returns (with both times) and the README shows
(``benchmarks/readme.py`` runs this in a fresh process per thread count). A second line gives the
ratios of process CPU time (best of the repeats): with one thread and a quiet
machine they equal the wall-clock ones; on a machine shared with other work
they are the steadier of the two (with several threads CPU time also counts
the threads' spinning, so read the wall-clock ratios there).

Run::

    python benchmarks/bench_baselines.py                 # threads 1 and 2, ~1-2 minutes
    python benchmarks/bench_baselines.py --quick         # a few seconds, smoke test
    python benchmarks/bench_baselines.py --threads 4 --repeats 7
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

import pyrobdl
from pyrobdl import BayesianNetwork, likelihoods, priors
from pyrobdl._fast import general_path
from pyrobdl.inference import DeepEnsemble, MCDropout
from pyrobdl.inference import dropout as _dropout

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def make_net() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 50), nn.Tanh(), nn.Linear(50, 50), nn.Tanh(), nn.Linear(50, 1))


def toy(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 14 - 7
    y = x[:, 0] * torch.sin(x[:, 0]) + (0.3 + 0.3 * x[:, 0].abs() / 7) * torch.randn(n, generator=g)
    return x, y


def interleaved(variants: Dict[str, Tuple[Callable[[], None], Callable[[], None], int]], repeats: int):
    """``variants``: name -> (warm-up call, timed call, units of work in a timed call).
    Each warm-up once, then ``repeats`` rounds over all timed calls. Returns
    name -> (wall seconds per unit, CPU seconds per unit), one entry per repeat."""
    for warm, _, _ in variants.values():
        warm()
    wall: Dict[str, List[float]] = {k: [] for k in variants}
    cpu: Dict[str, List[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for k, (_, fn, units) in variants.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[k].append((time.perf_counter() - t0) / units)
            cpu[k].append((time.process_time() - c0) / units)
    return wall, cpu


def fmt(ts: List[float], scale: float = 1e3) -> str:
    return f"{scale * min(ts):9.2f} ({scale * statistics.median(ts):8.2f})"


def cpu_ratios(cpu: Dict[str, List[float]], base: str, others: List[str]) -> str:
    return "  ".join(f"{min(cpu[o]) / min(cpu[base]):.2f}x" for o in others)


def _ratios(t: Dict[str, List[float]], base: str, others: List[str], stat=min) -> str:
    return "  ".join(f"{stat(t[o]) / stat(t[base]):.2f}x" for o in others)


def _summary(t: Dict[str, List[float]], base: str, others: List[str]) -> dict:
    """Wall-clock ms per unit (median and min of the repeats) and ratio = other / base: the
    median over rounds of the ratio within a round (``ratio_*``: both sides timed back to back,
    so a drift of the machine's speed cancels), of the medians (``ratio_*_of_medians``) and
    of the minimums (``ratio_*_min``)."""
    out = {k: {"median_ms": 1e3 * statistics.median(v), "min_ms": 1e3 * min(v), "n": len(v)} for k, v in t.items()}
    for o in others:
        out[f"ratio_{o}"] = statistics.median(a / b for a, b in zip(t[o], t[base]))
        out[f"ratio_{o}_of_medians"] = statistics.median(t[o]) / statistics.median(t[base])
        out[f"ratio_{o}_min"] = min(t[o]) / min(t[base])
    return out


# ----------------------------------------------------------------------------- ensembles
def ensemble_vectorised(model, x, y, *, size, epochs, batch_size) -> None:
    """``DeepEnsemble.fit``, end to end."""
    DeepEnsemble(size=size, epochs=epochs, batch_size=batch_size, lr=1e-2, progress=False).fit(model, x, y)


def ensemble_loop(model, x, y, *, size, epochs, batch_size, fused=False) -> None:
    """The members one after another: plain PyTorch, one Adam each."""
    N = x.shape[0]
    bs = N if batch_size is None else min(batch_size, N)
    for _ in range(size):
        net = copy.deepcopy(model.net)
        for mod in net.modules():
            if hasattr(mod, "reset_parameters"):
                mod.reset_parameters()
        log_sigma = torch.zeros((), requires_grad=True)
        opt = torch.optim.Adam([*net.parameters(), log_sigma], lr=1e-2, fused=fused or None)
        for _ in range(epochs):
            perm = torch.randperm(N) if bs < N else None
            for i in range(0, N - bs + 1, bs):
                if perm is None:
                    xb, yb = x, y
                else:
                    idx = perm[i : i + bs]
                    xb, yb = x[idx], y[idx]
                z = (yb - net(xb)[:, 0]) * torch.exp(-log_sigma)
                loss = (0.5 * z * z).mean() + log_sigma + HALF_LOG_2PI
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()


def bench_ensembles(model, x, y, *, settings, repeats) -> dict:
    """Returns {setting key: {variant: {"median_ms", "min_ms"}, "ratio_*": median ratios}}."""
    out = {}
    print("\n  Deep ensemble training, 5 members: ms per epoch, best (median); ratio = loop / DeepEnsemble")
    print(f"  {'setting':<34} {'DeepEnsemble':>20} {'(vmap path)':>20} {'loop, default Adam':>20} "
          f"{'loop, fused Adam':>20}  {'ratio default':>13} {'ratio fused':>11}")
    for label, kw in settings:
        key, kw = kw.get("key", label), {k: v for k, v in kw.items() if k != "key"}
        warm = dict(kw, epochs=max(1, kw["epochs"] // 10))

        def vmap_fit(**k):
            with general_path():
                ensemble_vectorised(model, x, y, size=5, **k)

        fns = {
            "vec": lambda **k: ensemble_vectorised(model, x, y, size=5, **k),
            "vmap": vmap_fit,
            "loop": lambda **k: ensemble_loop(model, x, y, size=5, **k),
            "loop_fused": lambda **k: ensemble_loop(model, x, y, size=5, fused=True, **k),
        }
        variants = {
            name: (lambda fn=fn: fn(**warm), lambda fn=fn: fn(**kw), kw["epochs"]) for name, fn in fns.items()
        }
        t, cpu = interleaved(variants, repeats)
        v = min(t["vec"])
        print(f"  {label:<34} {fmt(t['vec']):>20} {fmt(t['vmap']):>20} {fmt(t['loop']):>20} {fmt(t['loop_fused']):>20}"
              f"  {min(t['loop']) / v:12.2f}x {min(t['loop_fused']) / v:10.2f}x")
        print(f"  {'   CPU-time ratios (vmap path, default, fused)':<34} "
              f"{cpu_ratios(cpu, 'vec', ['vmap', 'loop', 'loop_fused'])}")
        print(f"  {'   ratios of the medians (default, fused)':<34} "
              f"{_ratios(t, 'vec', ['loop', 'loop_fused'], statistics.median)}")
        out[key] = _summary(t, "vec", ["vmap", "loop", "loop_fused"])
    print("  target: >= 3x against the loop (the issue)")
    return out


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
    with torch.no_grad(), _dropout._Sampling(post.net):
        out = torch.stack([post.net(x) for _ in range(S)])
    post.model.likelihood.prediction(out, post._expanded_latents(S))


def repeated(fn: Callable[[], None], inner: int) -> Tuple[Callable[[], None], Callable[[], None], int]:
    """A variant for :func:`interleaved`: ``fn`` ``inner`` times per timed call."""

    def call():
        for _ in range(inner):
            fn()

    return fn, call, inner


def bench_dropout(post, *, sizes, repeats, S=100) -> dict:
    """Returns {str(N): {variant: {"median_ms", "min_ms"}, "ratio_*": median ratios}}."""
    out = {}
    print(f"\n  MC-dropout prediction, S={S} masks: ms per predict, best (median); ratio = loop / predict")
    print(f"  {'N test':>7} {'predict':>20} {'(vmap path)':>20} {'(a) loop ms':>20} {'(b) loop ms':>20}"
          f"  {'ratio (a)':>9} {'ratio (b)':>9}")
    for n in sizes:
        xt = torch.linspace(-10, 10, n).unsqueeze(-1)
        inner = max(1, 2000 // n)  # short calls: time several per repeat

        def vmap_call(xt=xt):
            with general_path():
                dropout_batched(post, xt, S)

        variants = {
            "batched": repeated(lambda: dropout_batched(post, xt, S), inner),
            "vmap": repeated(vmap_call, inner),
            "a": repeated(lambda: dropout_loop(post, xt, S), max(1, inner // 10)),
            "b": repeated(lambda: dropout_loop_shared_mask(post, xt, S), max(1, inner // 10)),
        }
        t, cpu = interleaved(variants, repeats)
        b = min(t["batched"])
        print(f"  {n:>7} {fmt(t['batched']):>20} {fmt(t['vmap']):>20} {fmt(t['a']):>20} {fmt(t['b']):>20}"
              f"  {min(t['a']) / b:8.2f}x {min(t['b']) / b:8.2f}x"
              f"   CPU-time ratios (vmap, a, b): {cpu_ratios(cpu, 'batched', ['vmap', 'a', 'b'])}"
              f"   ratios of the medians (a, b): {_ratios(t, 'batched', ['a', 'b'], statistics.median)}")
        out[str(n)] = _summary(t, "batched", ["vmap", "a", "b"])
    print("  target: >= 10x against the loop (the issue)")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to run (default: 1 2)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per variant, after one warm-up")
    ap.add_argument("--n", type=int, default=500, help="training points")
    ap.add_argument("--test-sizes", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--quick", action="store_true", help="tiny settings (seconds): a smoke test, not a measurement")
    args = ap.parse_args(argv)
    uci, full = 40, 200
    if args.quick:
        args.threads, args.repeats, args.test_sizes, uci, full = args.threads[:1], 1, args.test_sizes[:1], 2, 5
    settings = [
        (f"UCI: {uci} epochs, batch 32", dict(epochs=uci, batch_size=32, key="uci")),
        (f"full batch: {full} epochs", dict(epochs=full, batch_size=None, key="full_batch")),
    ]
    print(f"torch {torch.__version__}, pyrobdl {pyrobdl.__version__}, python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"net 1-50-50-1 tanh, N={args.n} training points, Gaussian likelihood with learned noise; "
          f"{args.repeats} timed repeats after a warm-up")
    x, y = toy(args.n)
    model = BayesianNetwork(make_net(), prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian())
    torch.manual_seed(0)
    post = MCDropout(p=0.1, layers="hidden", num_steps=300 if not args.quick else 20, progress=False, seed=0).fit(model, x, y)
    t_start = time.perf_counter()
    results = {"n_train": args.n, "repeats": args.repeats, "quick": args.quick,
               "settings": {"uci": {"epochs": uci, "batch_size": 32}, "full_batch": {"epochs": full, "batch_size": None}},
               "threads": {}}
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n=== {torch.get_num_threads()} thread(s) ===")
        torch.manual_seed(0)
        results["threads"][str(torch.get_num_threads())] = {
            "ensemble": bench_ensembles(model, x, y, settings=settings, repeats=args.repeats),
            "dropout": bench_dropout(post, sizes=args.test_sizes, repeats=args.repeats),
        }
    print(f"\n(total {time.perf_counter() - t_start:.0f} s)")
    return results


if __name__ == "__main__":
    main()

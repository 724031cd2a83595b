"""Benchmark: a 5-head deep sub-ensemble against a 5-member deep ensemble (issue 16's goal:
sub-ensemble training at least 3x faster, OOD AUROC within 0.02).

Setup: what ``pyrobdl compare --dataset digits --ood digits-5-9`` runs -- the 8x8 digits
0..4 in distribution, the test images of 5..9 as OOD (``datasets.load("digits-ood-5-9",
split=s, seed=0)``), the network of :func:`pyrobdl.compare.runner.build_model` (64 -> 50
ReLU -> 5, ``Categorical`` likelihood, the default prior), each method with its defaults
through ``pyrobdl.fit(model, x, y, method=..., seed=s)`` (compare's per-split seed).

Protocol: for each split, each method is fitted once as warm-up and then ``--repeats`` more
times, interleaved (a burst of load on a shared machine hits both); the time of a split is
the best (minimum) of its repeats, both end to end (``pyrobdl.fit`` wall clock) and the
training loop alone (``fit_info["seconds"]``). The metrics are those of the last fit of each
split, averaged over the splits: test accuracy, test NLL, and OOD AUROC of the predictive
entropy (the compare report's ``ood_auroc_entropy``) and of the mutual information.

Run: ``python -m benchmarks.bench_subensemble [--splits 5] [--repeats 3] [--threads 1]``.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Dict, List

import torch

import pyrobdl
from pyrobdl import datasets
from pyrobdl import metrics as m
from pyrobdl.compare.runner import build_model
import pyrobdl.inference.subensemble  # noqa: F401  (registers "sub-ensemble")

METHODS = ("ensemble", "sub-ensemble")


def _metrics(post, ds) -> Dict[str, float]:
    p, po = post.predict(ds.x_test), post.predict(ds.x_ood)

    def auroc(kind: str) -> float:
        return m.ood_auroc(m.uncertainty_score(p, kind=kind), m.uncertainty_score(po, kind=kind))

    return {
        "accuracy": m.accuracy(p, ds.y_test), "nll": m.nll(p, ds.y_test),
        "auroc_entropy": auroc("entropy"), "auroc_mi": auroc("mutual_information"),
    }


def main(splits: int = 5, repeats: int = 3, threads: int = 1, seed: int = 0) -> Dict[str, Dict[str, float]]:
    torch.set_num_threads(threads)
    res: Dict[str, Dict[str, List[float]]] = {k: {} for k in METHODS}
    for split in range(splits):
        ds = datasets.load("digits-ood-5-9", split=split, seed=seed)
        best = {k: [float("inf"), float("inf")] for k in METHODS}
        last = {}
        for rep in range(repeats + 1):
            for method in METHODS:
                model = build_model(ds, hidden=50, method=method)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t0 = time.perf_counter()
                    post = pyrobdl.fit(model, ds.x_train, ds.y_train, method=method, progress=False, seed=seed + split)
                    wall = time.perf_counter() - t0
                if rep > 0:  # rep 0 is the warm-up
                    best[method] = [min(best[method][0], wall), min(best[method][1], post.fit_info["seconds"])]
                last[method] = post
        for method in METHODS:
            row = dict(_metrics(last[method], ds), wall_seconds=best[method][0], train_seconds=best[method][1])
            for k, v in row.items():
                res[method].setdefault(k, []).append(v)
    out = {k: {name: statistics.fmean(v) for name, v in d.items()} for k, d in res.items()}
    e, s = out["ensemble"], out["sub-ensemble"]
    print(f"digits-ood-5-9, {splits} splits, best of {repeats} fits per split, {threads} thread(s); means over splits")
    print(f"{'':14s}{'wall s':>9s}{'train s':>9s}{'acc':>8s}{'NLL':>8s}{'AUROC(H)':>10s}{'AUROC(MI)':>11s}")
    for k in METHODS:
        r = out[k]
        print(f"{k:14s}{r['wall_seconds']:9.3f}{r['train_seconds']:9.3f}{r['accuracy']:8.4f}{r['nll']:8.4f}"
              f"{r['auroc_entropy']:10.4f}{r['auroc_mi']:11.4f}")
    speed_wall = e["wall_seconds"] / s["wall_seconds"]
    speed_train = e["train_seconds"] / s["train_seconds"]
    d_h = s["auroc_entropy"] - e["auroc_entropy"]
    d_mi = s["auroc_mi"] - e["auroc_mi"]
    print(f"speed-up (ensemble / sub-ensemble): wall {speed_wall:.2f}x, training loop {speed_train:.2f}x (goal >= 3x)")
    print(f"AUROC difference (sub-ensemble - ensemble): entropy {d_h:+.4f}, MI {d_mi:+.4f} (goal within 0.02)")
    out["comparison"] = {"speedup_wall": speed_wall, "speedup_train": speed_train, "d_auroc_entropy": d_h, "d_auroc_mi": d_mi}
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    main(a.splits, a.repeats, a.threads, a.seed)

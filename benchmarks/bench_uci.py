"""UCI regression quality with the library's default settings, against the published numbers.

Run:  python benchmarks/bench_uci.py --datasets boston,concrete --methods mean-field,mc-dropout,ensemble,nuts --splits 20

Uses :func:`pyrobdl.compare.compare` (the same code path as ``pyrobdl compare``) on the standard
splits (normalised with the training split, RMSE and test log-likelihood in the target's
original units, mean ± standard error over splits) and prints our numbers beside
``pyrobdl.datasets.PUBLISHED``. Reports are written under ``--out`` (one folder per dataset).
"""
from __future__ import annotations

import argparse
import json
import os
import time

from pyrobdl import datasets
from pyrobdl.compare import compare


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--datasets", default="boston,concrete")
    ap.add_argument("--methods", default="mean-field,mc-dropout,ensemble,nuts")
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--out", default="uci-benchmark")
    args = ap.parse_args(argv)
    rows = []
    for name in args.datasets.split(","):
        t0 = time.perf_counter()
        res = compare(name, methods=args.methods, splits=args.splits, out=os.path.join(args.out, name), progress=True)
        for method, r in res["methods"].items():
            summ = r.get("summary", {})
            ll, rmse = summ.get("ll", {}), summ.get("rmse", {})
            rows.append((name, method, r.get("status"), ll.get("mean"), ll.get("stderr"), rmse.get("mean"),
                         rmse.get("stderr"), summ.get("fit_seconds", {}).get("mean")))
        rows.append((name, f"(all methods, {time.perf_counter() - t0:.0f} s)", "", None, None, None, None, None))
    print(f"\n{'dataset':<10} {'method':<28} {'test LL':>16} {'RMSE':>14} {'fit s':>8}")
    for name, method, status, ll, lls, rm, rms, fs in rows:
        if ll is None:
            print(f"{name:<10} {method:<28} {status}")
            continue
        print(f"{name:<10} {method:<28} {ll:>9.3f} ± {lls or 0:.3f} {rm:>7.3f} ± {rms or 0:.3f} {fs or 0:>8.1f}")
    print("\npublished (LL mean ± se; RMSE):")
    for name in args.datasets.split(","):
        pub = datasets.PUBLISHED.get(datasets.resolve_name(name), {})
        for m, v in pub.items():
            print(f"{name:<10} {m:<28} {v['ll'][0]:>9.3f} ± {v['ll'][1]:.3f} {v['rmse'][0]:>7.3f} ± {v['rmse'][1]:.3f}")
    with open(os.path.join(args.out, "uci_summary.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

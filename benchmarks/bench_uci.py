"""UCI regression quality with the library's default settings, against the published numbers.

Run::

    python benchmarks/bench_uci.py --all                          # every dataset and method, the standard splits
    python benchmarks/bench_uci.py --datasets boston,energy --methods mean-field,ensemble --splits 5
    python benchmarks/bench_uci.py --render                       # rewrite the README's table from the JSON
    python benchmarks/bench_uci.py --check                        # exit 1 if the README differs from the JSON
    python benchmarks/bench_uci.py --quick --datasets boston,concrete --splits 1 --json /tmp/uci.json  # smoke

Each (dataset, method) runs :func:`pyrobdl.compare.compare` (the code path of ``pyrobdl compare``)
on the standard splits (20; protein 5) with every method's class defaults: features and target
standardised with the training split's statistics, test RMSE and log-likelihood in the target's
original units (the log-likelihood adds :math:`-\\log\\sigma_y`), mean ± standard error over the
splits. Results are merged into one JSON file (default ``benchmarks/results/uci.json``), keyed by
dataset and method, each entry with its splits, per-split numbers, seconds, date and commit, so
a long benchmark can be run in parts; the README's ``### UCI regression: every dataset`` table is
rendered from that file (``--render``) and ``tests/test_bench_uci.py`` checks that they agree.

The datasets not shipped with pyrobdl (kin8nm, naval, power, protein) are read from ``--data-dir``
(default: ``$PYROBDL_UCI_DIR``, else ``../shared/data/uci`` beside the checkout when it exists).
The published numbers are :data:`pyrobdl.datasets.PUBLISHED` and the goals of
:data:`BEST_PUBLISHED` (the strongest published result on these splits per dataset).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
README = os.path.join(ROOT, "README.md")
DEFAULT_JSON = os.path.join(HERE, "results", "uci.json")
SCHEMA = 1
BEGIN = "### UCI regression: every dataset"

#: The datasets of ``--all``, in the README's order.
ALL_DATASETS = ("boston", "concrete", "energy", "kin8nm", "naval", "power", "protein")
#: The methods of ``--all``: the variational, dropout and ensemble families (full-rank VI only runs
#: where ``compare`` runs it by default: networks of at most ``FullRank.max_weights`` weights).
ALL_METHODS = ("mean-field", "low-rank", "full-rank", "mc-dropout", "mc-dropconnect", "ensemble")

#: The strongest published test LL on these splits per dataset: (mean, standard error, by).
BEST_PUBLISHED: Dict[str, tuple] = {
    "boston": (-2.40, 0.04, "MC dropout, grid search"),
    "concrete": (-2.93, 0.02, "MC dropout, grid search"),
    "energy": (-1.01, 0.06, "DVI"),
    "kin8nm": (1.20, 0.02, "deep ensembles"),
    "naval": (6.29, 0.04, "DVI"),
    "power": (-2.79, 0.04, "deep ensembles"),
    "protein": (-2.83, 0.02, "deep ensembles"),
}
#: Each family's own published row (test LL), the issue's per-family bars.
FAMILY_PUBLISHED: Dict[str, Dict[str, float]] = {
    "mc-dropout": {"boston": -2.40, "concrete": -2.93, "energy": -1.21, "kin8nm": 1.14, "naval": 4.45,
                   "power": -2.80, "protein": -2.87},
    "ensemble": {"energy": -1.38, "kin8nm": 1.20, "naval": 5.63, "power": -2.79, "protein": -2.83},
    "mean-field": {"boston": -2.46, "concrete": -3.07, "energy": -1.03, "kin8nm": 1.14, "naval": 5.94,
                   "power": -2.80, "protein": -2.87},
}
METHOD_LABELS = {
    "mean-field": "mean-field VI", "low-rank": "low-rank VI", "full-rank": "full-rank VI",
    "mc-dropout": "MC dropout", "mc-dropconnect": "MC DropConnect", "ensemble": "deep ensemble",
}
DATASET_LABELS = {
    "boston": "Boston", "concrete": "Concrete", "energy": "Energy", "kin8nm": "Kin8nm", "naval": "Naval",
    "power": "Power", "protein": "Protein",
}


def default_data_dir() -> Optional[str]:
    env = os.environ.get("PYROBDL_UCI_DIR")
    if env:
        return env
    shared = os.path.join(os.path.dirname(ROOT), "shared", "data", "uci")
    return shared if os.path.isdir(shared) else None


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


# ============================================================================ running
def run_one(dataset: str, method: str, *, splits: Optional[int], data_dir: Optional[str], quick: bool,
            out_dir: str) -> Dict[str, Any]:
    """One (dataset, method) over the first ``splits`` standard splits: the JSON entry."""
    import torch

    from pyrobdl.compare import compare

    t0 = time.perf_counter()
    res = compare(dataset, methods=[method], splits=splits, out=os.path.join(out_dir, dataset, method),
                  data_dir=data_dir, quick=quick, progress=False)
    seconds = time.perf_counter() - t0
    (name, r), = res["methods"].items()
    entry: Dict[str, Any] = {
        "method": name, "status": r.get("status"), "seconds": round(seconds, 1),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "--short", "HEAD"), "quick": quick,
        "threads": torch.get_num_threads(),
    }
    if r.get("status") != "ok":
        entry["error"] = r.get("error") or r.get("reason")
        return entry
    summ = r.get("summary", {})
    per_split = [s for s in r.get("splits", []) if isinstance(s, dict)]
    entry.update({
        "splits": len(per_split) or None,
        "ll": [summ["ll"]["mean"], summ["ll"].get("stderr")],
        "rmse": [summ["rmse"]["mean"], summ["rmse"].get("stderr")],
        "fit_seconds": summ.get("fit_seconds", {}).get("mean"),
        "per_split": [
            {"split": s.get("split"), "ll": s.get("metrics", {}).get("ll"), "rmse": s.get("metrics", {}).get("rmse"),
             "fit_seconds": s.get("metrics", {}).get("fit_seconds")}
            for s in per_split
        ],
    })
    return entry


def load(path: str) -> Dict[str, Any]:
    if not os.path.exists(path):
        return {"schema": SCHEMA, "results": {}}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if data.get("schema") != SCHEMA:
        raise SystemExit(f"{path}: schema {data.get('schema')!r}, this script reads {SCHEMA}")
    return data


def save(data: Dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


# ============================================================================ rendering
def _fmt(v: Optional[float], digits: int) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    s = f"{v:.{digits}f}"
    return s.replace("-", "−")


def _pm(pair: Optional[Sequence[Optional[float]]], digits: int) -> str:
    if not pair or pair[0] is None:
        return "–"
    return f"{_fmt(pair[0], digits)} ± {_fmt(pair[1] or 0.0, digits)}"


def _rmse_digits(dataset: str) -> int:
    return 4 if dataset == "naval" else (3 if dataset == "kin8nm" else 2)


def render(data: Dict[str, Any]) -> str:
    """The README's ``### UCI regression: every dataset`` subsection, from the JSON."""
    results = data.get("results", {})
    lines = [
        BEGIN,
        "",
        "Generated by `python benchmarks/bench_uci.py --render` from `benchmarks/results/uci.json` (which",
        "`python benchmarks/bench_uci.py --all` writes); do not edit by hand. Test log-likelihood (higher is",
        "better) and RMSE in the target's original units, mean ± standard error over the splits run, every",
        "method with its class defaults (one set for every dataset), the 50-unit network (protein 100), fit",
        "seconds per split on this project's 2-core machine. **Bold**: the best pyrobdl row of a dataset;",
        "*bar*: the method family's own published row (MC dropout: the grid search; ensembles:",
        "Lakshminarayanan et al.; mean-field: DVI's MCVI row), ✓ when our mean is at or above it.",
        "",
    ]
    for ds in ALL_DATASETS:
        rows = results.get(ds, {})
        ok = {m: e for m, e in rows.items() if e.get("status") == "ok" and e.get("ll")}
        best_pub = BEST_PUBLISHED[ds]
        if not ok:
            lines.append(f"**{DATASET_LABELS[ds]}**: not run yet (best published {_fmt(best_pub[0], 2)} ± "
                         f"{_fmt(best_pub[1], 2)}, {best_pub[2]}).")
            lines.append("")
            continue
        best = max(ok, key=lambda m: ok[m]["ll"][0])
        mark = "✓" if ok[best]["ll"][0] >= best_pub[0] else "✗"
        lines.append(f"**{DATASET_LABELS[ds]}**: best published {_fmt(best_pub[0], 2)} ± {_fmt(best_pub[1], 2)} "
                     f"({best_pub[2]}); best pyrobdl {_fmt(ok[best]['ll'][0], 3)} {mark}.")
        lines.append("")
        lines.append("| method | splits | test LL | RMSE | fit s | bar |")
        lines.append("| --- | --- | --- | --- | --- | --- |")
        order = [m for m in ALL_METHODS if m in rows] + sorted(m for m in rows if m not in ALL_METHODS)
        for m in order:
            e = rows[m]
            label = METHOD_LABELS.get(m, m)
            if m not in ok:
                lines.append(f"| {label} | – | {e.get('status')}: {e.get('error') or ''} | | | |")
                continue
            ll = _pm(e["ll"], 3)
            if m == best:
                ll = f"**{ll}**"
            bar = FAMILY_PUBLISHED.get(m, {}).get(ds)
            bar_s = "" if bar is None else f"{_fmt(bar, 2)} {'✓' if e['ll'][0] >= bar else '✗'}"
            quick = " (quick)" if e.get("quick") else ""
            lines.append(f"| {label}{quick} | {e.get('splits')} | {ll} | {_pm(e['rmse'], _rmse_digits(ds))} | "
                         f"{_fmt(e.get('fit_seconds'), 1)} | {bar_s} |")
        lines.append("")
    total = sum(e.get("seconds", 0.0) for rows in results.values() for e in rows.values())
    per_ds = ", ".join(
        f"{DATASET_LABELS.get(ds, ds)} {sum(e.get('seconds', 0.0) for e in results[ds].values()) / 60:.0f} min"
        for ds in ALL_DATASETS if ds in results
    )
    commits = sorted({e.get("git_commit") or "?" for rows in results.values() for e in rows.values()})
    lines.append(f"Wall time of the runs recorded: {total / 60:.0f} min ({per_ds}); commits {', '.join(commits)}.")
    return "\n".join(lines).rstrip("\n") + "\n"


def _readme_tools():
    sys.path.insert(0, HERE)
    import readme  # benchmarks/readme.py: the region helpers

    return readme


def check(json_path: str = DEFAULT_JSON, readme_path: str = README) -> List[str]:
    """The diff between the README's region and the JSON's rendering (empty: they agree)."""
    import difflib

    tools = _readme_tools()
    with open(readme_path, encoding="utf-8") as f:
        current = tools.extract_region(f.read(), BEGIN)
    expected = render(load(json_path))
    return list(difflib.unified_diff(current.splitlines(), expected.splitlines(), "README.md",
                                     "rendered", lineterm=""))


def write_readme(json_path: str = DEFAULT_JSON, readme_path: str = README) -> None:
    tools = _readme_tools()
    with open(readme_path, encoding="utf-8") as f:
        text = f.read()
    new = tools.replace_region(text, render(load(json_path)), BEGIN)
    with open(readme_path, "w", encoding="utf-8") as f:
        f.write(new)


# ============================================================================ command line
def main(argv=None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", action="store_true", help="every dataset and the methods of ALL_METHODS")
    ap.add_argument("--datasets", default=None, help="comma-separated (default: boston,concrete; --all: all seven)")
    ap.add_argument("--methods", default=None, help="comma-separated (default: ALL_METHODS)")
    ap.add_argument("--splits", type=int, default=None, help="the first N splits (default: every standard split)")
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--json", default=DEFAULT_JSON, help="results file, merged per (dataset, method)")
    ap.add_argument("--out", default="uci-benchmark", help="folder for the compare reports")
    ap.add_argument("--quick", action="store_true", help="compare's quick profile (a smoke test, not a measurement)")
    ap.add_argument("--render", action="store_true", help="rewrite the README's table from --json (after running, if asked)")
    ap.add_argument("--check", action="store_true", help="exit 1 when the README differs from --json")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one core per run)")
    args = ap.parse_args(argv)
    if args.check:
        diff = check(args.json)
        print("\n".join(diff) if diff else "README agrees with " + args.json)
        raise SystemExit(1 if diff else 0)
    import torch

    torch.set_num_threads(args.threads)
    names = ALL_DATASETS if args.all else tuple((args.datasets or ("" if args.render else "boston,concrete")).split(","))
    names = tuple(n for n in names if n)
    methods = tuple(args.methods.split(",")) if args.methods else ALL_METHODS
    data = load(args.json)
    for name in names:
        t0 = time.perf_counter()
        for method in methods:
            if method == "full-rank" and not _full_rank_fits(name, args.data_dir):
                continue
            entry = run_one(name, method, splits=args.splits, data_dir=args.data_dir, quick=args.quick, out_dir=args.out)
            # re-read before writing: a long run can be stopped and resumed, and runs in parallel
            # processes (other datasets) add to one file
            data = load(args.json)
            data.setdefault("results", {}).setdefault(name, {})[entry["method"]] = entry
            save(data, args.json)
            print(f"{name:<9} {entry['method']:<15} LL {_pm(entry.get('ll'), 3):>17}  RMSE "
                  f"{_pm(entry.get('rmse'), _rmse_digits(name)):>17}  fit {_fmt(entry.get('fit_seconds'), 1):>6} s  "
                  f"({entry['seconds']:.0f} s, {entry.get('splits')} splits) {entry['status']}", flush=True)
        if names:
            print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    if args.render:
        write_readme(args.json)
    return data


def _full_rank_fits(name: str, data_dir: Optional[str]) -> bool:
    """Whether ``compare`` runs full-rank VI on this dataset's network by default."""
    from pyrobdl import datasets
    from pyrobdl.compare import build_model
    from pyrobdl.compare.runner import fits_by_default

    ds = datasets.load(name, split=0, data_dir=data_dir)
    return fits_by_default("full-rank", build_model(ds, hidden=ds.meta.get("n_hidden", 50), method="full-rank"))


if __name__ == "__main__":
    main()

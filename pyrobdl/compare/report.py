r"""The comparison report written by :func:`pyrobdl.compare.compare`
(``pyrobdl compare``): ``report.md``, ``report.html`` and the PNGs they show.

* tables of methods × metrics, mean ± standard error over splits, the best
  value of each column marked (bold in Markdown, ``<strong>`` in HTML) in the
  direction of :data:`pyrobdl.compare.evaluation.METRICS` (lower RMSE/NLL/CRPS/ECE...,
  higher LL/accuracy/AUROC, coverage closest to its level);
* for the UCI benchmarks, the published numbers on the same splits
  (:data:`pyrobdl.datasets.PUBLISHED`) beside ours;
* the failed and skipped methods with their errors;
* plots (matplotlib; drawn with interactive mode off and closed after saving,
  so nothing is shown; the ``pyrobdl`` command uses the Agg backend):
  ``metrics.png`` (headline metrics as bars with standard-error bars),
  ``predictive_1d.png`` (1-D inputs: predictive bands per method),
  ``calibration.png`` (regression calibration curves on one axes),
  ``reliability.png`` (reliability diagrams), ``accuracy_rejection.png``,
  ``ood_<score>.png`` (uncertainty histograms in- vs out-of-distribution) and
  ``mcmc_trace_<method>.png`` / ``mcmc_rank_<method>.png`` for MCMC posteriors.

The HTML references the PNGs by relative path, so the output folder can be
moved or zipped as a whole.

Example::

    from pyrobdl.compare.report import write_report
    written = write_report(results, "pyrobdl-report", artefacts)
    written["report"]["html"]        # 'report.html'
"""
from __future__ import annotations

import html
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from .evaluation import to_original_units

__all__ = ["write_report", "metric_tables", "best_methods", "format_value", "save_figure_of"]

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Metric groups, one table each, in this order.
_RECAL_GROUP = "Recalibration: before and after"
_GROUPS: List[Tuple[str, Tuple[str, ...]]] = [
    ("Accuracy and likelihood", ("rmse", "ll", "accuracy", "nll", "crps", "brier", "rmse_in_range", "ll_in_range")),
    ("Calibration", ("coverage_90", "mean_width_90", "miscalibration_area", "sharpness", "ece", "mce", "aurc")),
    ("Out-of-distribution detection", (
        "ood_auroc_std", "ood_auroc_epistemic", "ood_auroc_entropy", "ood_aupr_entropy", "fpr95_entropy",
        "ood_auroc_mi", "ood_aupr_mi", "fpr95_mi", "ood_accuracy",
    )),
    (_RECAL_GROUP, (
        "ll", "ll_recal", "coverage_90", "coverage_90_recal", "mean_width_90", "mean_width_90_recal",
        "miscalibration_area", "miscalibration_area_recal",
        "accuracy", "accuracy_recal", "nll", "nll_recal", "ece", "ece_recal", "set_coverage_90", "set_size_90",
    )),
    ("Distance to the reference posterior", ("ref_w2", "ref_kl", "ref_tv", "ref_agreement")),
    ("Time", ("fit_seconds", "predict_seconds")),
]


# ============================================================================ helpers
def _plt():
    # The backend is left as it is (switching it would close a notebook's figures);
    # figures are made under ``plt.ioff()`` and closed after saving, so none is shown.
    # The ``pyrobdl`` command selects Agg itself.
    import matplotlib.pyplot as plt

    return plt


def save_figure_of(obj: Any, path: PathLike, *, dpi: int = 110) -> Path:
    """Save the figure behind ``obj`` (a Figure, an Axes, or an array/list/dict of
    Axes, as plotting functions such as ArviZ's return) to ``path`` and close it.

    Example:
        >>> import os, tempfile
        >>> import matplotlib.pyplot as plt
        >>> fig, axes = plt.subplots(1, 2)
        >>> path = save_figure_of(axes, os.path.join(tempfile.mkdtemp(), "two_panels.png"))
        >>> path.name, path.exists()
        ('two_panels.png', True)
    """
    plt = _plt()
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    fig = None
    stack = [obj]
    while stack and fig is None:
        item = stack.pop(0)
        if isinstance(item, Figure):
            fig = item
        elif isinstance(item, Axes):
            fig = item.figure
        elif isinstance(item, np.ndarray):
            stack.extend(item.ravel().tolist())
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif hasattr(item, "figure") and isinstance(getattr(item, "figure"), Figure):
            fig = item.figure
    if fig is None:
        fig = plt.gcf()
    path = Path(path)
    try:
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def format_value(mean: Optional[float], stderr: Optional[float] = None, *, digits: int = 4) -> str:
    """``"3.142 ± 0.05"``, ``"3.142"``, or ``"–"`` for a missing value.

    Example::

        >>> format_value(3.14159, 0.0512)
        '3.142 ± 0.051'
    """
    if mean is None or not math.isfinite(mean):
        return "–"
    text = f"{mean:.{digits}g}"
    if stderr is not None and math.isfinite(stderr):
        text += f" ± {stderr:.2g}"
    return text


def best_methods(summaries: Mapping[str, Mapping[str, Any]], metric: str, meta: Mapping[str, Any]) -> List[str]:
    """The methods with the best mean of ``metric`` (ties all count), following
    ``meta["direction"]``: ``"lower"``, ``"higher"``, ``"target"`` (closest to
    ``meta["target"]``); none when the direction is ``None`` or fewer than two
    methods have a value.

    Example:
        >>> summaries = {"mean-field": {"coverage_90": {"mean": 0.84}}, "ensemble": {"coverage_90": {"mean": 0.93}}}
        >>> best_methods(summaries, "coverage_90", {"direction": "target", "target": 0.9})
        ['ensemble']
    """
    direction = meta.get("direction")
    values = {
        m: s[metric]["mean"] for m, s in summaries.items()
        if metric in s and s[metric].get("mean") is not None and math.isfinite(s[metric]["mean"])
    }
    if direction is None or len(values) < 2:
        return []
    if direction == "lower":
        key = {m: v for m, v in values.items()}
    elif direction == "higher":
        key = {m: -v for m, v in values.items()}
    elif direction == "target":
        key = {m: abs(v - float(meta["target"])) for m, v in values.items()}
    else:
        return []
    best = min(key.values())
    tol = 1e-12 * max(1.0, abs(best))
    return [m for m, k in key.items() if k <= best + tol]


def metric_tables(results: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The report's tables: a list of ``{"title", "columns": [metric names],
    "labels": [headers], "rows": [{"method", "cells": [text], "best": [bool]}]}``,
    one per metric group that has values. Methods without any successful split
    are left out (they are listed as failures).

    Example:
        >>> results = {
        ...     "metrics": {"rmse": {"direction": "lower", "label": "RMSE"}},
        ...     "methods": {"mean-field": {"summary": {"rmse": {"mean": 3.0, "stderr": 0.3}}},
        ...                 "ensemble": {"summary": {"rmse": {"mean": 2.6, "stderr": 0.2}}}},
        ... }
        >>> table = metric_tables(results)[0]
        >>> table["labels"], [(r["method"], r["cells"], r["best"]) for r in table["rows"]]
        (['RMSE ↓'], [('mean-field', ['3 ± 0.3'], [False]), ('ensemble', ['2.6 ± 0.2'], [True])])
    """
    meta = results.get("metrics", {})
    summaries = {
        m: e.get("summary", {}) for m, e in results.get("methods", {}).items() if e.get("summary")
    }
    tables = []
    recal = (results.get("settings") or {}).get("recalibration") or {}
    for title, names in _GROUPS:
        cols = [n for n in names if n in meta and any(n in s for s in summaries.values())]
        if title == _RECAL_GROUP:
            if not any(c.endswith("_recal") or c.startswith("set_") for c in cols):
                continue  # no --recalibrate: the group would only repeat other tables
            if recal:
                title = (f"{title} ({recal.get('method')}, fitted on {recal.get('calibration_fraction', 0):.0%} "
                         "of each training split held out; both columns from the same fit)")
        if not cols:
            continue
        best = {c: set(best_methods(summaries, c, meta[c])) for c in cols}
        rows = []
        for m, s in summaries.items():
            cells, flags = [], []
            for c in cols:
                v = s.get(c)
                digits = 3 if c.endswith("seconds") else 4
                cells.append(format_value(v["mean"], v["stderr"], digits=digits) if v else "–")
                flags.append(m in best[c])
            rows.append({"method": m, "cells": cells, "best": flags})
        labels = [_column_label(c, meta[c]) for c in cols]
        tables.append({"title": title, "columns": cols, "labels": labels, "rows": rows})
    return tables


def _column_label(name: str, meta: Mapping[str, Any]) -> str:
    arrow = {"lower": " ↓", "higher": " ↑", "target": f" →{meta.get('target')}"}.get(meta.get("direction"), "")
    return f"{meta.get('label', name)}{arrow}"


def _grid(plt, n: int, *, ncols: int = 3, size: Tuple[float, float] = (4.4, 3.5), **kw):
    ncols = max(1, min(ncols, n))
    nrows = int(math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False, **kw)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


# ============================================================================ plots
def _plot_metrics(results, plt, plots_mod) -> Optional[Any]:
    task = results["dataset"]["task"]
    names = (["rmse", "nll", "crps", "fit_seconds"] if task == "regression"
             else ["accuracy", "nll", "ece", "fit_seconds"])
    meta = results["metrics"]
    per_metric = {}
    for name in names:
        values = {}
        for m, e in results["methods"].items():
            vals = [r["metrics"][name] for r in e["splits"] if r["status"] == "ok" and name in r["metrics"]]
            vals = [v for v in vals if v is not None and math.isfinite(v)]
            if vals:
                values[m] = vals
        if values:
            per_metric[name] = values
    if not per_metric:
        return None
    fig, axes = _grid(plt, len(per_metric), ncols=2, size=(5.6, 3.8))
    for ax, (name, values) in zip(axes, per_metric.items()):
        direction = meta[name]["direction"]
        plots_mod.plot_metric_comparison(
            values, metric=meta[name]["label"], ax=ax,
            lower_is_better=None if direction not in ("lower", "higher") else direction == "lower",
        )
    fig.tight_layout()
    return fig


def _orig_pred(art):
    return to_original_units(art["pred"], art["dataset"])


def _plot_predictive_1d(artefacts, plt, plots_mod):
    fig, axes = _grid(plt, len(artefacts), sharex=True, sharey=True)
    lo = hi = None
    for i, (ax, (m, art)) in enumerate(zip(axes, artefacts.items())):
        ds = art["dataset"]
        x = ds.unnormalize_x(ds.x_test)[:, 0]
        x_train = ds.unnormalize_x(ds.x_train)[:, 0]
        y_train = ds.y_train_original
        plots_mod.plot_predictive_1d(
            x, _orig_pred(art), x_train=x_train, y_train=y_train, train_range=ds.train_range,
            x_test=x, y_test=ds.y_test_original, ax=ax, title=m,
        )
        ys = np.concatenate([y_train.numpy(), ds.y_test_original.numpy()])
        lo = ys.min() if lo is None else min(lo, ys.min())
        hi = ys.max() if hi is None else max(hi, ys.max())
        if i > 0 and ax.get_legend() is not None:
            ax.get_legend().remove()
    pad = 0.5 * (hi - lo)
    axes[0].set_ylim(lo - pad, hi + pad)
    fig.tight_layout()
    return fig


def _plot_calibration(artefacts, plt, plots_mod, metrics_mod):
    _, ax = plt.subplots(figsize=(5.4, 5.4))
    for m, art in artefacts.items():
        pred = _orig_pred(art)
        y = art["dataset"].y_test_original
        curve = metrics_mod.calibration_curve(pred, y)
        plots_mod.plot_calibration_curve(curve, ax=ax, label=f"{m} (area {curve.miscalibration_area:.3f})",
                                         show_area=False)
    ax.set_title("Regression calibration (central intervals)")
    return ax.figure


def _plot_reliability(artefacts, plt, plots_mod):
    fig, axes = _grid(plt, len(artefacts), size=(4.2, 4.2))
    for ax, (m, art) in zip(axes, artefacts.items()):
        plots_mod.reliability_diagram(art["pred"], art["dataset"].y_test, ax=ax, title=m, show_counts=False)
    fig.tight_layout()
    return fig


def _plot_rejection(artefacts, plt, plots_mod, metrics_mod):
    curves = {m: metrics_mod.accuracy_rejection_curve(a["pred"], a["dataset"].y_test) for m, a in artefacts.items()}
    ax = plots_mod.plot_accuracy_rejection(curves, title="Accuracy–rejection (most uncertain refused first)")
    return ax.figure


def _plot_ood(artefacts, plt, plots_mod, metrics_mod, kind: str, score_name: str):
    with_ood = {m: a for m, a in artefacts.items() if a.get("pred_ood") is not None}
    if not with_ood:
        return None
    fig, axes = _grid(plt, len(with_ood))
    for ax, (m, art) in zip(axes, with_ood.items()):
        ds = art["dataset"]
        pred, pred_ood = art["pred"], art["pred_ood"]
        if ds.task == "regression":  # scores in the target's units
            pred, pred_ood = _orig_pred(art), to_original_units(pred_ood, ds)
        s_in = metrics_mod.uncertainty_score(pred, kind=kind)
        if ds.task == "regression":
            s_in = s_in[ds.in_train_range(ds.x_test).numpy()]
        s_out = metrics_mod.uncertainty_score(pred_ood, kind=kind)
        plots_mod.plot_uncertainty_histogram(s_in, s_out, ax=ax, score_name=score_name)
        ax.set_title(f"{m}: {ax.get_title()}")
    fig.tight_layout()
    return fig


def _make_plots(results, out_dir: Path, artefacts) -> Dict[str, Dict[str, str]]:
    plt = _plt()
    from .. import metrics as metrics_mod
    from .. import plots as plots_mod

    task = results["dataset"]["task"]
    made: Dict[str, Dict[str, str]] = {}
    jobs: List[Tuple[str, str, Callable[[], Any]]] = [
        ("metrics", "Headline metrics per method (mean ± standard error over splits)",
         lambda: _plot_metrics(results, plt, plots_mod)),
    ]
    if artefacts:
        if task == "regression":
            if results["dataset"]["input_dim"] == 1:
                jobs.append(("predictive_1d",
                             "Predictive mean with total (light) and epistemic (dark) ±2σ bands, training "
                             "points (black) and test points (red); the shaded span is the training range",
                             lambda: _plot_predictive_1d(artefacts, plt, plots_mod)))
            jobs.append(("calibration", "Observed vs expected coverage of central predictive intervals",
                         lambda: _plot_calibration(artefacts, plt, plots_mod, metrics_mod)))
            jobs.append(("ood_std", "Predictive std: test points inside the training range vs OOD inputs",
                         lambda: _plot_ood(artefacts, plt, plots_mod, metrics_mod, "std", "predictive std")))
        else:
            jobs.append(("reliability", "Reliability diagrams (15 equal-width confidence bins)",
                         lambda: _plot_reliability(artefacts, plt, plots_mod)))
            jobs.append(("accuracy_rejection",
                         "Accuracy on the retained test points as the least confident are refused",
                         lambda: _plot_rejection(artefacts, plt, plots_mod, metrics_mod)))
            jobs.append(("ood_entropy", "Predictive entropy, in-distribution test vs OOD inputs",
                         lambda: _plot_ood(artefacts, plt, plots_mod, metrics_mod, "entropy",
                                           "predictive entropy (nats)")))
            jobs.append(("ood_mi", "Mutual information (epistemic), in-distribution test vs OOD inputs",
                         lambda: _plot_ood(artefacts, plt, plots_mod, metrics_mod, "mutual_information",
                                           "mutual information (nats)")))
    for name, caption, job in jobs:
        try:
            fig = job()
        except Exception as e:  # noqa: BLE001 - one plot must not cost the report
            logger.warning("plot %s failed: %s: %s", name, type(e).__name__, e)
            plt.close("all")
            continue
        if fig is None:
            continue
        save_figure_of(fig, out_dir / f"{name}.png")
        made[name] = {"file": f"{name}.png", "caption": caption}
    for m, e in results["methods"].items():
        for rec in e["splits"]:
            diag_plots = (rec.get("diagnostics") or {}).get("plots") or {}
            for kind, file in diag_plots.items():
                if (out_dir / file).is_file():
                    caption = f"{m}: MCMC {kind} plot of the predictions at a few test inputs (split {rec['split']})"
                    made[f"mcmc_{kind}_{m}"] = {"file": file, "caption": caption}
    return made


# ============================================================================ text
def _diagnostics_rows(results) -> List[Tuple[str, str]]:
    """(method, one-line summary) for MCMC methods: worst R-hat and smallest ESS when found."""
    rows = []
    for m, e in results["methods"].items():
        for rec in e["splits"]:
            diag = rec.get("diagnostics")
            if not diag:
                continue
            if diag.get("error"):
                rows.append((m, f"split {rec['split']}: diagnostics failed: {diag['error']}"))
                continue
            summary = diag.get("summary") if isinstance(diag.get("summary"), Mapping) else {}
            parts = []
            for key, label, fmt in _DIAGNOSTIC_FIELDS:
                v = summary.get(key)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    parts.append(f"{label} {fmt.format(v)}")
            rows.append((m, f"split {rec['split']}: " + (", ".join(parts) or "see results.json")))
    return rows


#: Fields of ``pyrobdl.diagnostics.summary(...).to_dict()`` shown in the report.
_DIAGNOSTIC_FIELDS = (
    ("num_chains", "chains", "{:.0f}"),
    ("num_draws", "draws per chain", "{:.0f}"),
    ("function_rhat_max", "function-space R-hat max over the test inputs", "{:.3f}"),
    ("function_nested_rhat_max", "function-space nested R-hat max", "{:.3f}"),
    ("function_ess_bulk_min", "function-space bulk ESS min", "{:.0f}"),
    ("rhat_max", "weight R-hat max", "{:.3f}"),
    ("num_divergences", "divergences", "{:.0f}"),
    ("tree_depth_mean", "mean tree depth", "{:.2f}"),
    ("acceptance_rate_mean", "acceptance", "{:.2f}"),
)


def _failures(results) -> List[Tuple[str, str]]:
    out = []
    for m, e in results["methods"].items():
        for rec in e["splits"]:
            if rec["status"] == "failed":
                out.append((m, f"split {rec['split']}: {rec['error']}"))
    return out


def _lists(results) -> List[Tuple[str, List[Tuple[str, str]], str]]:
    """The report's lists that have entries, each as ``(title, [(method, text)], joiner)``:
    MCMC diagnostics, failures, skipped methods."""
    lists = [
        ("MCMC diagnostics", _diagnostics_rows(results), ": "),
        ("Failed", _failures(results), " failed on "),
        ("Skipped", list((results.get("skipped") or {}).items()), ": "),
    ]
    return [item for item in lists if item[1]]


def _published_rows(results) -> List[Tuple[str, str, str, str]]:
    pub = results.get("published")
    if not pub:
        return []
    rows = []
    for m, e in results["methods"].items():
        s = e.get("summary") or {}
        if "rmse" in s:
            rows.append((f"{m} (this run)", format_value(s["rmse"]["mean"], s["rmse"]["stderr"], digits=3),
                         format_value(s["ll"]["mean"], s["ll"]["stderr"], digits=3), f"{s['rmse']['n']} split(s)"))
    for name, vals in pub["results"].items():
        rmse = vals.get("rmse")
        ll = vals.get("ll")
        rows.append((f"{name} (published)", format_value(*rmse, digits=3) if rmse else "–",
                     format_value(*ll, digits=3) if ll else "–", pub["sources"].get(name) or ""))
    return rows


def _header_lines(results) -> List[Tuple[str, str]]:
    ds, st = results["dataset"], results["settings"]
    sizes = f"{ds['n_train']} train / {ds['n_test']} test" + (f" / {ds['n_ood']} OOD" if ds.get("n_ood") else "")
    task = ds["task"] + (f" ({ds['num_classes']} classes)" if ds.get("num_classes") else "")
    units = ("metrics in the target's original units (LL per test point, plus the log-std offset)"
             if ds["task"] == "regression" else "")
    lines = [
        ("dataset", f"{ds['name']} — {ds.get('description') or ''}"),
        ("task", task),
        ("size", f"{sizes}, {ds['input_dim']} input feature{'s' if ds['input_dim'] != 1 else ''} "
                 f"(split {ds['splits'][0]})"),
        ("splits", f"{len(ds['splits'])} of {ds.get('num_splits_available')} ({', '.join(map(str, ds['splits']))})"),
        ("model", f"{st['model']['network']}; prior {st['model']['prior'].get('type')}, likelihood "
                  f"{st['model']['likelihood'].get('type')}; {st['model']['num_weights']} weights"),
        ("settings", f"profile {st['profile']}, device {st['device']}, seed {st['seed']}, "
                     f"{st['num_samples']} predictive samples"),
        ("versions", ", ".join(f"{k} {v}" for k, v in results["versions"].items() if v and k != "platform")),
    ]
    if results.get("reference"):
        lines.append(("reference", f"{results['reference']}: the other methods' distances to its test predictive are in "
                                   "'Distance to the reference posterior'; how far to trust it is in its MCMC diagnostics"))
    other = _other_models(results)
    if other:
        lines.append(("other models", "; ".join(f"{', '.join(ms)}: {desc}" for desc, ms in other.items())))
    if units:
        lines.append(("units", units))
    if results.get("total_seconds") is not None:
        lines.append(("run time", f"{results['total_seconds']:.1f} s ({results['status']})"))
    return lines


def _other_models(results) -> Dict[str, List[str]]:
    """``{model description: [methods]}`` for the methods whose model differs from
    ``settings.model`` (e.g. heteroscedastic ones; their split records carry ``model``)."""
    out: Dict[str, List[str]] = {}
    for m, e in results["methods"].items():
        mod = next((rec["model"] for rec in e.get("splits", []) if rec.get("model")), None)
        if mod is None:
            continue
        desc = (f"{mod['network']}; likelihood {mod['likelihood'].get('type')}; "
                f"{mod['num_weights']} weights")
        out.setdefault(desc, []).append(m)
    return out


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown(results, tables, plots) -> str:
    out = [f"# pyrobdl compare: {results['dataset']['name']}", ""]
    for k, v in _header_lines(results):
        out.append(f"- **{k}**: {_md_escape(v)}")
    out.append("")
    for t in tables:
        out += [f"## {t['title']}", "", "| method | " + " | ".join(t["labels"]) + " |",
                "| --- |" + " ---: |" * len(t["labels"])]
        for r in t["rows"]:
            cells = [f"**{c}**" if b else c for c, b in zip(r["cells"], r["best"])]
            out.append(f"| {_md_escape(r['method'])} | " + " | ".join(cells) + " |")
        out.append("")
    if tables:
        out += ["Best per column in **bold** (↓ lower is better, ↑ higher is better, →x closest to x); "
                "± is the standard error over splits.", ""]
    pub = _published_rows(results)
    if pub:
        out += ["## Published results (same splits)", "", "| method | RMSE | test LL | source |",
                "| --- | ---: | ---: | --- |"]
        out += [f"| {_md_escape(a)} | {b} | {c} | {_md_escape(d)} |" for a, b, c, d in pub]
        out.append("")
    for title, items, joiner in _lists(results):
        out += [f"## {title}", ""] + [f"- **{_md_escape(m)}**{joiner}{_md_escape(t)}" for m, t in items] + [""]
    if plots:
        out += ["## Plots", ""]
        for p in plots.values():
            out += [f"![{_md_escape(p['caption'])}]({p['file']})", "", f"*{_md_escape(p['caption'])}*", ""]
    return "\n".join(out).rstrip() + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:0.6em 0 1.4em}
th,td{border:1px solid #ccc;padding:0.3em 0.6em}
td.num{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f3f3f3}
td strong{color:#0b5d1e}
.failed{color:#a00}
figure{margin:1em 0 2em}
figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:0.9em}
dl{display:grid;grid-template-columns:max-content auto;gap:0.2em 1em}
dt{font-weight:600}
dd{margin:0}
"""


def _html(results, tables, plots) -> str:
    e = html.escape
    title = f"pyrobdl compare: {results['dataset']['name']}"
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>", "<dl>"]
    for k, v in _header_lines(results):
        out.append(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>")
    out.append("</dl>")
    for t in tables:
        out += [f"<h2>{e(t['title'])}</h2>", "<table><thead><tr><th>method</th>"
                + "".join(f"<th>{e(lbl)}</th>" for lbl in t["labels"]) + "</tr></thead><tbody>"]
        for r in t["rows"]:
            cells = "".join(
                f'<td class="num">{"<strong>" + e(c) + "</strong>" if b else e(c)}</td>'
                for c, b in zip(r["cells"], r["best"])
            )
            out.append(f"<tr><td>{e(r['method'])}</td>{cells}</tr>")
        out.append("</tbody></table>")
    if tables:
        out.append("<p>Best per column in <strong>bold</strong> (↓ lower is better, ↑ higher is better, "
                   "→x closest to x); ± is the standard error over splits.</p>")
    pub = _published_rows(results)
    if pub:
        out += ["<h2>Published results (same splits)</h2>",
                "<table><thead><tr><th>method</th><th>RMSE</th><th>test LL</th><th>source</th></tr></thead><tbody>"]
        out += [f'<tr><td>{e(a)}</td><td class="num">{e(b)}</td><td class="num">{e(c)}</td><td>{e(d)}</td></tr>'
                for a, b, c, d in pub]
        out.append("</tbody></table>")
    for title, items, joiner in _lists(results):
        css = ' class="failed"' if title == "Failed" else ""
        out += [f"<h2>{e(title)}</h2>", "<ul>"] + [f"<li{css}><b>{e(m)}</b>{e(joiner)}{e(t)}</li>" for m, t in items]
        out.append("</ul>")
    if plots:
        out.append("<h2>Plots</h2>")
        for p in plots.values():
            out.append(f'<figure><img src="{e(p["file"])}" alt="{e(p["caption"])}">'
                       f"<figcaption>{e(p['caption'])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(
    results: Mapping[str, Any],
    out_dir: PathLike,
    artefacts: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> Dict[str, Any]:
    """Write the plots, ``report.md`` and ``report.html`` for ``results`` (the
    dict :func:`pyrobdl.compare.compare` returns) into ``out_dir``.

    Args:
        results: the comparison results.
        out_dir: the output folder (must exist).
        artefacts: per method, the test predictions behind the plots:
            ``{"pred": Prediction, "pred_ood": Prediction or None, "dataset": Dataset}``
            (one split). Without them only the metric bar chart is drawn.

    Returns:
        ``{"plots": {name: {"file", "caption"}}, "report": {"markdown": "report.md", "html": "report.html"}}``
        (file names relative to ``out_dir``).

    Example (not run here: it fits every method)::

        from pyrobdl.compare import compare
        results = compare("toy-regression", methods="mean-field,ensemble", out="report")  # calls write_report
        written = write_report(results, "report")         # again, e.g. after editing results
        written["report"]["html"]                          # 'report.html'
    """
    out_dir = Path(out_dir)
    with _plt().ioff():
        plots = _make_plots(results, out_dir, dict(artefacts or {}))
    tables = metric_tables(results)
    (out_dir / "report.md").write_text(_markdown(results, tables, plots), encoding="utf-8")
    (out_dir / "report.html").write_text(_html(results, tables, plots), encoding="utf-8")
    return {"plots": plots, "report": {"markdown": "report.md", "html": "report.html"}}

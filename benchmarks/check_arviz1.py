"""Check pyrobdl's ArviZ code paths in the current environment (a check, not a benchmark).

``pyrobdl.diagnostics`` supports arviz 0.x (``InferenceData``, ``az.plot_*``) and
arviz >= 1 (``xarray.DataTree`` from ``az.from_dict``, arviz-stats array functions,
arviz-plots ``PlotCollection``). arviz 1.x needs Python >= 3.12, so the main CI
(Python 3.11, arviz 0.2x) only runs the 0.x path; run this script in an
environment with arviz >= 1 to exercise the other one (it works with either)::

    python3.12 -m venv /tmp/py312
    /tmp/py312/bin/pip install torch "arviz>=1" pyro-ppl matplotlib scikit-learn tqdm pytest
    /tmp/py312/bin/pip install --no-deps -e .
    /tmp/py312/bin/python benchmarks/check_arviz1.py [--out DIR]

It fits a 1 -> 8 -> 1 tanh net to 40 points with mean-field VI and with NUTS
(2 chains, 30 warm-up + 30 draws), exports both with ``to_arviz(x, y)``, checks the
groups and their dims, the summary / function-space diagnostics, R-hat / ESS
(against numbers computed with arviz 0.23.4), ``az.rhat`` / ``az.ess`` /
``az.summary`` / ``az.loo`` on the exported data and the plot helpers (Agg
backend, PNGs written to ``--out`` or a temporary directory). One line per
check, ``OK`` or ``FAIL``; the exit code is 1 when any check fails. The same
checks run as pytest tests in ``tests/test_arviz1.py`` (only with arviz >= 1).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import traceback
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import pyrobdl  # noqa: E402
from pyrobdl import BayesianNetwork, diagnostics, likelihoods, priors  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az  # noqa: E402

N_POINTS, CHAINS, DRAWS = 40, 2, 30

# rhat_ess of _ar1(4, 400, 0.7, [0, 0, 0.5, 1]) columns (x, 2x + 1, x^2), computed with arviz 0.23.4
REF_AR1 = {
    "rhat": [1.0892131280020378, 1.0892131280020378, 1.014050150435269],
    "ess_bulk": [40.79163263137544, 40.79163263137544, 490.3087188514919],
    "ess_tail": [363.5982243275233, 363.5982243275233, 563.7742412524955],
}


def arviz_major() -> int:
    return int(az.__version__.split(".")[0])


# ----------------------------------------------------------------------------- data and fits
def data(n=N_POINTS, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-2, 2, n).unsqueeze(-1)
    y = torch.sin(2 * x).squeeze(-1) + 0.2 * torch.randn(n, generator=g)
    return x, y


def model():
    net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
    return BayesianNetwork(net, prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian())


def fit_both(seed=0):
    """``{"mean-field": posterior, "nuts": posterior}`` and the data ``(x, y)``."""
    x, y = data(seed=seed)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a 30-draw run is far from converged, and fit says so
        mf = pyrobdl.fit(model(), x, y, method="mean-field", num_steps=300, lr=0.03, seed=seed, progress=False)
        nuts = pyrobdl.fit(model(), x, y, method="nuts", num_chains=CHAINS, num_samples=DRAWS, warmup_steps=DRAWS,
                           max_tree_depth=6, seed=seed, chain_method="sequential", progress=False)
    return {"mean-field": mf, "nuts": nuts}, x, y


# ----------------------------------------------------------------------------- ArviZ data access (0.x and 1.x)
def group_names(idata) -> set:
    if hasattr(idata, "children"):  # xarray.DataTree (arviz >= 1)
        return set(idata.children)
    return set(idata.groups())  # InferenceData (arviz 0.x)


def group(idata, name):
    """A group as an ``xarray.Dataset``."""
    g = idata[name]
    return g.to_dataset() if hasattr(g, "to_dataset") and hasattr(g, "children") else g


def stat_values(result, var):
    """``az.rhat`` / ``az.ess`` of exported data: a Dataset (0.x) or a DataTree (1.x)."""
    if hasattr(result, "children") and "posterior" in result.children:
        result = result["posterior"]
    return np.asarray(result[var].values, dtype=float)


def elpd_loo(loo) -> float:
    v = getattr(loo, "elpd_loo", None)  # arviz 0.x ELPDData
    return float(v if v is not None else loo.elpd)  # arviz-stats ELPDDataLOO


def _ar1(C, S, phi, shifts, seed=0):
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(C, S))
    x = np.zeros((C, S))
    for t in range(1, S):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    return x + np.asarray(shifts)[:, None]


# ----------------------------------------------------------------------------- checks (raise AssertionError)
def check_to_arviz(post, x, y, method):
    idata = diagnostics.to_arviz(post, x, y)
    expected_type = "DataTree" if arviz_major() >= 1 else "InferenceData"
    assert type(idata).__name__ == expected_type, f"to_arviz returned {type(idata).__name__}, not {expected_type}"
    want = {"posterior", "log_likelihood", "posterior_predictive", "observed_data"}
    if method == "nuts":
        want.add("sample_stats")
    assert group_names(idata) == want, f"groups {sorted(group_names(idata))} != {sorted(want)}"
    C, S = (CHAINS, DRAWS) if method == "nuts" else (1, 1000)
    p = group(idata, "posterior")
    assert dict(p.sizes)["chain"] == C and dict(p.sizes)["draw"] == S, f"posterior sizes {dict(p.sizes)}"
    assert set(p.data_vars) == set(post.model.site_names), f"posterior vars {sorted(p.data_vars)}"
    for k, v in p.data_vars.items():
        assert v.dims[:2] == ("chain", "draw"), f"{k} dims {v.dims}"
    assert p["0.weight"].dims == ("chain", "draw", "0_out", "0_in"), p["0.weight"].dims
    attrs = p.attrs if arviz_major() >= 1 else idata.attrs  # per group (1.x) or on the InferenceData (0.x)
    assert attrs.get("inference_library") == "pyrobdl", attrs
    if method == "nuts":
        ss = group(idata, "sample_stats")
        assert {"diverging", "energy", "tree_depth", "step_size"} <= set(ss.data_vars), sorted(ss.data_vars)
        assert ss["diverging"].dtype == bool and ss["energy"].dims == ("chain", "draw")
    ll = group(idata, "log_likelihood")["obs"]
    assert ll.dims == ("chain", "draw", "obs_id") and ll.shape == (C, S, N_POINTS), (ll.dims, ll.shape)
    assert np.isfinite(ll.values).all()
    pp = group(idata, "posterior_predictive")["obs"]
    assert pp.dims == ("chain", "draw", "obs_id") and pp.shape == (C, S, N_POINTS), (pp.dims, pp.shape)
    od = group(idata, "observed_data")["obs"]
    assert od.dims == ("obs_id",) and np.allclose(od.values, y.numpy()), od.dims
    return f"{expected_type} groups {sorted(want)}"


def check_summary(post, x, y, method):
    num_samples = None if method == "nuts" else 200
    s = diagnostics.summary(post, x_grid=x, num_samples=num_samples)
    C, S = (CHAINS, DRAWS) if method == "nuts" else (1, 200)
    assert (s.num_chains, s.num_draws) == (C, S), (s.num_chains, s.num_draws)
    assert set(s.per_site) == set(post.model.site_names)
    assert s.ess_bulk_min > 0 and s.ess_tail_min > 0, (s.ess_bulk_min, s.ess_tail_min)
    assert 0 < s.function_ess_bulk_min <= s.function_ess_bulk_median
    if method == "nuts":
        assert math.isfinite(s.rhat_max) and math.isfinite(s.function_rhat_max) and s.function_rhat_max >= 0.99
        assert s.num_divergences is not None and s.step_size_mean > 0 and s.bfmi_min > 0
    else:  # one chain: no R-hat, no sampler statistics
        assert math.isnan(s.function_rhat_max) and s.num_divergences is None
    fs = diagnostics.function_space_diagnostics(post, x[:7], num_samples=num_samples)
    assert fs.rhat.shape == (7,) and fs.ess_bulk.shape == (7,) and fs.ess_tail.shape == (7,)
    assert np.isfinite(fs.ess_bulk).all() and np.isfinite(fs.ess_tail).all()
    assert "function space" in str(s)
    return f"function R-hat max {s.function_rhat_max:.3f}, bulk ESS median {s.function_ess_bulk_median:.0f}"


def check_rhat_ess_reference():
    x = _ar1(4, 400, 0.7, [0, 0, 0.5, 1.0])
    d = diagnostics.rhat_ess(np.stack([x, 2 * x + 1, x ** 2], -1))
    for k, ref in REF_AR1.items():
        assert np.allclose(d[k], ref, rtol=1e-6), f"{k}: {d[k].tolist()} != arviz 0.23.4's {ref}"
    one = diagnostics.rhat_ess(x[:1])  # one chain: R-hat NaN, ESS finite
    assert np.isnan(one["rhat"]).all() and np.isfinite(one["ess_bulk"]).all() and np.isfinite(one["ess_tail"]).all()
    assert diagnostics.rhat_ess(_ar1(4, 300, 0.5, [0, 0, 3, 3]))["rhat"][0] > 1.1
    return "rank R-hat, bulk and tail ESS equal arviz 0.23.4's"


def check_az_on_export(post, x, y, method):
    """ArviZ's own functions on the exported data agree with diagnostics.rhat_ess on the same draws."""
    idata = diagnostics.to_arviz(post, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rhat = stat_values(az.rhat(idata, var_names=["sigma"]), "sigma")
        ess = stat_values(az.ess(idata, var_names=["sigma"], method="bulk"), "sigma")
        table = az.summary(idata, var_names=["sigma"])
    ours = diagnostics.rhat_ess(group(idata, "posterior")["sigma"].values)
    assert np.isfinite(ess).all() and ess > 0, ess
    assert np.allclose(ess, ours["ess_bulk"], rtol=1e-4), (ess, ours["ess_bulk"])
    if method == "nuts":
        assert np.isfinite(rhat).all() and np.allclose(rhat, ours["rhat"], rtol=1e-4), (rhat, ours["rhat"])
    assert len(table) == 1, table
    return f"az.rhat(sigma) {float(rhat):.3f}, az.ess bulk {float(ess):.0f} (= rhat_ess)"


def check_loo(post, x, y, method):
    idata = diagnostics.to_arviz(post, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pareto-k warnings for a tiny, unconverged run
        loo = az.loo(idata)
    elpd = elpd_loo(loo)
    ll = group(idata, "log_likelihood")["obs"].values.reshape(-1, N_POINTS).astype(np.float64)
    lppd = float(np.sum(np.logaddexp.reduce(ll, axis=0) - math.log(ll.shape[0])))
    assert math.isfinite(elpd) and elpd <= lppd + 1e-6, (elpd, lppd)
    assert np.asarray(loo.pareto_k).size == N_POINTS
    return f"elpd_loo {elpd:.2f} (lppd {lppd:.2f})"


def _is_axes(obj) -> bool:
    return isinstance(np.ravel(np.asarray(obj, dtype=object))[0], matplotlib.axes.Axes)


def _save(obj, out_dir, name) -> str:
    ax = np.ravel(np.asarray(obj, dtype=object))[0]
    path = os.path.join(out_dir, f"{name}.png")
    ax.figure.savefig(path, dpi=60)
    plt.close(ax.figure)
    assert os.path.getsize(path) > 1000, f"{path} is nearly empty"
    return path


def check_plots(post, x, y, method, out_dir):
    written = []
    ns = None if method == "nuts" else 200  # MCMC: every draw; VI: 200 draws as one chain
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = [
            ("trace_weights", lambda: diagnostics.plot_trace(post, var_names=["sigma", "2.bias"], num_samples=ns)),
            ("trace_function", lambda: diagnostics.plot_trace(post, x_grid=x[:3], num_samples=ns)),
            ("rank_function", lambda: diagnostics.plot_rank(post, x_grid=x[:2], num_samples=ns)),
            ("rank_weights", lambda: diagnostics.plot_rank(post, var_names=["sigma"], num_samples=ns)),
            ("forest", lambda: diagnostics.plot_forest(post, var_names=["sigma", "2.bias"], r_hat=True, ess=True,
                                                       num_samples=ns)),
        ]
        for name, make in cases:
            obj = make()
            assert _is_axes(obj), f"{name} returned {type(obj).__name__}, not matplotlib Axes"
            written.append(_save(obj, out_dir, f"{method}_{name}"))
        if method == "nuts":
            ax = diagnostics.plot_energy(post)
            assert isinstance(ax, matplotlib.axes.Axes), f"plot_energy returned {type(ax).__name__}"
            written.append(_save(ax, out_dir, f"{method}_energy"))
        else:
            try:
                diagnostics.plot_energy(post)
            except ValueError:
                pass
            else:
                raise AssertionError("plot_energy of a variational posterior did not raise ValueError")
    plt.close("all")
    return f"{len(written)} PNGs"


# ----------------------------------------------------------------------------- driver
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="directory for the PNGs (default: a temporary directory)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out_dir = args.out or tempfile.mkdtemp(prefix="pyrobdl_arviz_")
    os.makedirs(out_dir, exist_ok=True)
    print(f"arviz {az.__version__} (major {arviz_major()}), python {sys.version.split()[0]}, "
          f"torch {torch.__version__}, pyrobdl {pyrobdl.__version__}; PNGs in {out_dir}")
    failures = 0

    def run(name, fn, *a):
        nonlocal failures
        try:
            detail = fn(*a)
            print(f"OK   [arviz {az.__version__}] {name}: {detail}")
        except Exception as e:  # noqa: BLE001 - report and go on
            failures += 1
            print(f"FAIL [arviz {az.__version__}] {name}: {type(e).__name__}: {e}")
            traceback.print_exc(limit=4, file=sys.stdout)

    fits = {}

    def do_fit():
        fits["posts"], fits["x"], fits["y"] = fit_both(args.seed)
        return "mean-field (300 steps) and nuts (2 chains x 30 + 30), fitted with diagnose on"

    run("fit", do_fit)
    run("rhat_ess vs arviz 0.23.4", check_rhat_ess_reference)
    for method, post in fits.get("posts", {}).items():
        x, y = fits["x"], fits["y"]
        run(f"{method}: to_arviz groups/dims", check_to_arviz, post, x, y, method)
        run(f"{method}: summary + function-space diagnostics", check_summary, post, x, y, method)
        run(f"{method}: az.rhat/az.ess/az.summary on export", check_az_on_export, post, x, y, method)
        run(f"{method}: az.loo", check_loo, post, x, y, method)
        run(f"{method}: plot helpers", check_plots, post, x, y, method, out_dir)
    print(f"{'FAILED' if failures else 'ALL OK'}: {failures} failing check(s) with arviz {az.__version__}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

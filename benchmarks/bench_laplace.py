"""pyrobdl's Laplace against laplace-torch on the same trained MLP, side by side.

Run (in an environment that has laplace-torch; never install it into the CI environment, it
pulls torchvision and another torch build):

    python benchmarks/bench_laplace.py               # the comparison table + the memory check
    python benchmarks/bench_laplace.py --no-memory   # only the table

One small MLP per task is trained by plain PyTorch (regression: Boston split 0, standardised
with the training split as ``pyrobdl.datasets`` does, 13-50-1 ReLU; classification: digits
0-4, 64-50-5 ReLU); for the *same weights* the script fits

* pyrobdl: ``pyrobdl.fit(model, x, y, method="laplace", train=False, subset=..., hessian=...)``
  with its default marginal-likelihood tuning of one scalar prior precision;
* laplace-torch: ``Laplace(net, likelihood, subset_of_weights=..., hessian_structure=...)``,
  ``la.fit(loader)``, ``la.optimize_prior_precision(pred_type="glm", method="marglik",
  prior_structure="scalar")`` (its defaults otherwise: 100 Adam steps at lr 0.1 from 1.0);

for all-weights diag, all-weights kron and last-layer full, and prints

* the log marginal likelihood of both at a *common* prior precision and noise (the formula,
  free of optimiser differences), at two precisions;
* the tuned prior precision of each library's own procedure, and the exact maximiser of each
  library's evidence (golden-section search on the log precision), which separates the
  formula from the optimiser;
* the GLM predictive mean and epistemic variance on the test inputs at a common prior
  precision (max absolute and max relative differences);
* fit + predict seconds of each library (one run each, one CPU thread).

Regression noise: laplace-torch's ``optimize_prior_precision`` tunes only the prior
precision, so the main rows fix sigma in both to its maximum-likelihood value at the MAP,
``sqrt(SSE/N)`` (pyrobdl ``tune_noise=False``, which sets exactly that; laplace-torch
``sigma_noise=`` the same number). A separate row tunes prior precision *and* noise jointly in
both (pyrobdl ``tune_noise=True``; laplace-torch by Adam on ``la.log_marginal_likelihood(prior,
sigma)`` as its README shows) and reports laplace-torch's gradient at pyrobdl's optimum.

K-FAC: laplace-torch (all its backends) keeps a layer's weight and bias as two blocks,
``B (x) A`` for the weight and ``B`` for the bias, while pyrobdl takes one Kronecker factor of the
layer's ``[W | b]`` (the inputs augmented by a column of ones, Martens & Grosse 2015), which also
has weight-bias cross terms. Both are legitimate K-FAC variants, so the kron rows differ by
design; the script shows that pyrobdl's dense K-FAC with the cross terms deleted equals
laplace-torch's to round-off, and prints how much of the evidence difference the cross terms
account for.

The memory check (``--memory``, default on) runs each library on a last-layer Laplace with
1,000 classes (64-128-1000 net, random data, 2,000 rows) in a child process with an
address-space limit (``--mem-limit-gb``), reporting peak RSS growth (``ru_maxrss``) and seconds,
or the error. A full last-layer GGN is 129,000 x 129,000 (66 GB in float32): laplace-torch
allocates it and runs out of memory (laplace-torch issues #138, #281); pyrobdl refuses it up
front (``DENSE_MAX``) and points to kron/diag, so kron is measured as well.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import subprocess
import sys
import time
import warnings
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pyrobdl  # noqa: E402
from pyrobdl import BayesianNetwork, datasets, likelihoods  # noqa: E402

CASES = (("all", "diag"), ("all", "kron"), ("last-layer", "full"))


# ============================================================================ data and the MAP net
def load_task(task: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): Boston split 0 standardised with the training split
    (the datasets default), or digits 0-4 (pixels already on unit scale)."""
    if task == "regression":
        ds = datasets.load("boston", split=0)
    else:
        ds = datasets.load("digits-0-4", split=0)
    return ds.x_train, ds.y_train, ds.x_test, ds.y_test


def make_net(task: str, d_in: int, seed: int = 0, hidden: int = 50, out: Optional[int] = None, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    k = out if out is not None else (1 if task == "regression" else 5)
    return nn.Sequential(nn.Linear(d_in, hidden, bias=bias), nn.ReLU(), nn.Linear(hidden, k, bias=bias))


def train_net(net: nn.Module, task: str, x: torch.Tensor, y: torch.Tensor, *, steps: int = 2000,
              lr: float = 1e-2, weight_decay: float = 1e-3, seed: int = 0) -> nn.Module:
    """A plain PyTorch MAP fit: full-batch Adam on the mean loss plus a small weight decay
    (the Laplace methods then take the weights as given)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.MSELoss() if task == "regression" else nn.CrossEntropyLoss()
    target = y.unsqueeze(-1) if task == "regression" else y
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.01)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(net(x), target).backward()
        opt.step()
        sched.step()
    net.eval()
    return net


def ml_sigma(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The noise's maximum-likelihood value at the MAP, sqrt(SSE / N)."""
    with torch.no_grad():
        r = y.double() - net(x).squeeze(-1).double()
    return float(r.pow(2).mean().sqrt())


# ============================================================================ the two libraries
def fit_pyrobdl(net: nn.Module, task: str, x, y, subset: str, hessian: str, *, tune_noise: bool = False,
                prior_precision: Any = "marglik"):
    model = BayesianNetwork(copy.deepcopy(net),
                            likelihood=likelihoods.Gaussian() if task == "regression" else likelihoods.Categorical())
    opts = dict(tune_noise=tune_noise) if task == "regression" else {}
    return pyrobdl.fit(model, x, y, method="laplace", train=False, subset=subset, hessian=hessian,
                       prior_precision=prior_precision, progress=False, **opts)


def pyrobdl_set_prior(post, delta: float) -> None:
    post.log_prior_precision = torch.full_like(post.log_prior_precision, math.log(delta))


def pyrobdl_delta(post) -> float:
    return float(post.log_prior_precision.exp()[0])


def pyrobdl_sigma(post) -> Optional[float]:
    lat = post.latents
    return float(lat["sigma"]) if "sigma" in lat else None


def pyrobdl_moments(post, x) -> Tuple[torch.Tensor, torch.Tensor]:
    m, c = post.glm_moments(x)
    return m.double(), c.double()


def fit_laplace_torch(net: nn.Module, task: str, x, y, subset: str, hessian: str, *, sigma: float = 1.0,
                      tune: bool = True, n_steps: int = 100):
    from laplace import Laplace
    lik = "regression" if task == "regression" else "classification"
    sub = {"all": "all", "last-layer": "last_layer"}[subset]
    kw = dict(sigma_noise=sigma) if task == "regression" else {}
    la = Laplace(copy.deepcopy(net), lik, subset_of_weights=sub, hessian_structure=hessian, **kw)
    target = y.unsqueeze(-1) if task == "regression" else y
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, target), batch_size=len(x))
    la.fit(loader)
    if tune:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            la.optimize_prior_precision(pred_type="glm", method="marglik", prior_structure="scalar", n_steps=n_steps)
    return la


def lt_lml(la, delta: float, sigma: Optional[float] = None) -> float:
    """laplace-torch's evidence at (delta, sigma), leaving its state as it was."""
    old_p = la.prior_precision.clone()
    old_s = la.sigma_noise.clone() if torch.is_tensor(la.sigma_noise) else la.sigma_noise
    with torch.no_grad():
        v = la.log_marginal_likelihood(torch.tensor([float(delta)], dtype=la._dtype),
                                       None if sigma is None else torch.tensor(float(sigma), dtype=la._dtype))
    la.prior_precision = old_p
    if sigma is not None:
        la.sigma_noise = old_s
    return float(v)


def lt_delta(la) -> float:
    return float(la.prior_precision.reshape(-1)[0])


def lt_moments(la, x) -> Tuple[torch.Tensor, torch.Tensor]:
    f, v = la._glm_predictive_distribution(x)
    if v.dim() == 2:  # (N, k) diagonal
        v = torch.diag_embed(v)
    return f.double(), v.double()


def golden_argmax(fn, lo: float = -10.0, hi: float = 10.0, tol: float = 1e-7) -> float:
    """argmax of a unimodal fn on [lo, hi] by golden-section search; returns exp(argmax)."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = fn(c), fn(d)
    while b - a > tol:
        if fc > fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = fn(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = fn(d)
    return math.exp(0.5 * (a + b))


def lt_joint_tune(la, steps: int = 1000, lr: float = 0.1, delta0: float = 1.0, sigma0: float = 1.0) -> Tuple[float, float]:
    """laplace-torch's README recipe: Adam on (log prior precision, log sigma) of -log marglik."""
    log_p = torch.tensor([math.log(delta0)], dtype=la._dtype, requires_grad=True)
    log_s = torch.tensor([math.log(sigma0)], dtype=la._dtype, requires_grad=True)
    opt = torch.optim.Adam([log_p, log_s], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        (-la.log_marginal_likelihood(log_p.exp(), log_s.exp())).backward()
        opt.step()
    return float(log_p.exp()), float(log_s.exp())


def lt_grad_at(la, delta: float, sigma: float) -> Tuple[float, float]:
    """d log marglik / d (log delta, log sigma) of laplace-torch's formula at a point."""
    lp = torch.tensor([math.log(delta)], dtype=la._dtype, requires_grad=True)
    ls = torch.tensor([math.log(sigma)], dtype=la._dtype, requires_grad=True)
    v = la.log_marginal_likelihood(lp.exp(), ls.exp())
    gp, gs = torch.autograd.grad(v, [lp, ls])
    return float(gp), float(gs)


def kron_cross_term_check(post, la) -> Dict[str, float]:
    """pyrobdl's dense K-FAC with the weight-bias cross terms deleted against laplace-torch's
    dense K-FAC; and the log-determinant the cross terms account for."""
    H_p = post.curvature.dense().double()
    H_l = la.H.to_matrix().double()
    keep = torch.zeros_like(H_p, dtype=torch.bool)
    lay = post.layout
    for n in lay.names:  # block-diagonal over parameter tensors (weight, bias separately)
        s = lay.slice(n)
        keep[s, s] = True
    H_blk = torch.where(keep, H_p, torch.zeros_like(H_p))
    rel = float((H_blk - H_l).abs().max() / H_l.abs().max())
    d = pyrobdl_delta(post)
    s = post._scale().double()
    eye = torch.eye(H_p.shape[0], dtype=torch.float64)
    ld_full = float(torch.linalg.slogdet(s * H_p + d * eye)[1])
    ld_blk = float(torch.linalg.slogdet(s * H_blk + d * eye)[1])
    return {"H_rel_diff_without_cross_terms": rel, "half_logdet_cross_terms": 0.5 * (ld_full - ld_blk)}


# ============================================================================ one comparison
def compare_case(net, task, x, y, xt, subset, hessian, *, sigma: Optional[float] = None, n_steps: int = 100) -> Dict[str, Any]:
    """Fit both libraries on the same weights; the numbers of one table row."""
    row: Dict[str, Any] = {"task": task, "subset": subset, "hessian": hessian}
    # timed end-to-end runs: fit + tune + GLM predictive
    t0 = time.perf_counter()
    post = fit_pyrobdl(net, task, x, y, subset, hessian, tune_noise=False)
    if task == "regression":
        post.glm_moments(xt)
    else:
        post.probit_probs(xt)
    row["seconds_pyrobdl"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    la = fit_laplace_torch(net, task, x, y, subset, hessian, sigma=sigma if sigma is not None else 1.0, n_steps=n_steps)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        la(xt, pred_type="glm") if task == "regression" else la(xt, pred_type="glm", link_approx="probit")
    row["seconds_laplace_torch"] = time.perf_counter() - t0
    if task == "regression":
        row["sigma_pyrobdl"], row["sigma_laplace_torch"] = pyrobdl_sigma(post), float(la.sigma_noise)
    # the tuned precisions and the exact maximisers of each formula
    row["delta_tuned_pyrobdl"] = pyrobdl_delta(post)
    row["delta_tuned_laplace_torch"] = lt_delta(la)
    row["delta_argmax_pyrobdl"] = golden_argmax(lambda t: float(post.log_marginal_likelihood(prior_precision=math.exp(t))))
    row["delta_argmax_laplace_torch"] = golden_argmax(lambda t: lt_lml(la, math.exp(t)))
    # the evidence at common values
    d_common = row["delta_argmax_pyrobdl"]
    for tag, d in (("1", 1.0), ("opt", d_common)):
        row[f"lml_{tag}_pyrobdl"] = float(post.log_marginal_likelihood(prior_precision=d))
        row[f"lml_{tag}_laplace_torch"] = lt_lml(la, d)
    row["lml_at"] = d_common
    # the GLM predictive at the common precision
    pyrobdl_set_prior(post, d_common)
    la.prior_precision = torch.tensor([d_common], dtype=la._dtype)
    mp, cp = pyrobdl_moments(post, xt)
    ml, cl = lt_moments(la, xt)
    vp, vl = cp.diagonal(dim1=-2, dim2=-1), cl.diagonal(dim1=-2, dim2=-1)
    row["mean_max_abs"] = float((mp - ml).abs().max())
    row["var_max_abs"] = float((vp - vl).abs().max())
    row["var_max_rel"] = float(((vp - vl).abs() / vl.abs().clamp_min(1e-30)).max())
    row["var_mean"] = float(vl.mean())
    if hessian == "kron":
        row.update(kron_cross_term_check(post, la))
    return row


def joint_noise_row(net, x, y) -> Dict[str, Any]:
    """Regression, all-weights diag: prior precision and noise tuned jointly in both."""
    post = fit_pyrobdl(net, "regression", x, y, "all", "diag", tune_noise=True)
    la = fit_laplace_torch(net, "regression", x, y, "all", "diag", tune=False)
    d_p, s_p = pyrobdl_delta(post), pyrobdl_sigma(post)
    d_l, s_l = lt_joint_tune(la)
    return {
        "delta_pyrobdl": d_p, "sigma_pyrobdl": s_p, "delta_laplace_torch": d_l, "sigma_laplace_torch": s_l,
        "lml_pyrobdl_at_pyrobdl_opt": float(post.log_marginal_likelihood(prior_precision=d_p, sigma=s_p)),
        "lml_laplace_torch_at_pyrobdl_opt": lt_lml(la, d_p, s_p),
        "lml_laplace_torch_at_its_opt": lt_lml(la, d_l, s_l),
        "lml_pyrobdl_at_laplace_torch_opt": float(post.log_marginal_likelihood(prior_precision=d_l, sigma=s_l)),
        "laplace_torch_grad_at_pyrobdl_opt": lt_grad_at(la, d_p, s_p),
    }


# ============================================================================ the memory check
def _child(lib: str, hessian: str, limit_gb: float) -> None:
    """Runs in a child process: one last-layer Laplace with 1,000 classes; prints one JSON line."""
    torch.set_num_threads(1)
    if limit_gb > 0:
        lim = int(limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 64, generator=g)
    y = torch.randint(0, 1000, (2000,), generator=g)
    net = make_net("classification", 64, hidden=128, out=1000).eval()
    xt = x[:100]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out: Dict[str, Any] = {"lib": lib, "hessian": hessian}
    t0 = time.perf_counter()
    try:
        if lib == "pyrobdl":
            model = BayesianNetwork(net, likelihood=likelihoods.Categorical())
            post = pyrobdl.fit(model, x, y, method="laplace", train=False, subset="last-layer", hessian=hessian, progress=False)
            post.probit_probs(xt)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                la = fit_laplace_torch(net, "classification", x, y, "last-layer", hessian)
                la(xt, pred_type="glm", link_approx="probit")
        out["status"] = "ok"
    except BaseException as e:  # MemoryError, RuntimeError from the allocator, ValueError
        out["status"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_growth_gb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**20
    print("RESULT " + json.dumps(out), flush=True)


def memory_check(limit_gb: float, timeout: float) -> list:
    rows = []
    for hessian in ("full", "kron"):
        for lib in ("pyrobdl", "laplace-torch"):
            cmd = [sys.executable, os.path.abspath(__file__), "--child", lib, hessian, "--mem-limit-gb", str(limit_gb)]
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
                line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
                if line:
                    rows.append(json.loads(line[-1][7:]))
                else:
                    rows.append({"lib": lib, "hessian": hessian, "status": f"child died (rc {p.returncode}): "
                                 + (p.stderr.strip().splitlines() or ["?"])[-1][:160]})
            except subprocess.TimeoutExpired:
                rows.append({"lib": lib, "hessian": hessian, "status": f"timed out after {timeout:.0f} s"})
    return rows


# ============================================================================ main
def _fmt(v, w=11):
    if v is None:
        return " " * (w - 1) + "-"
    return f"{v:>{w}.4g}"


def main(argv=None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--mem-limit-gb", type=float, default=10.0)
    ap.add_argument("--mem-timeout", type=float, default=300.0)
    ap.add_argument("--child", nargs=2, metavar=("LIB", "HESSIAN"), help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help="write the numbers to this file")
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child[0], args.child[1], args.mem_limit_gb)
        return {}
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import laplace  # noqa: F401  (fail early without it)
    from importlib.metadata import version

    versions = {p: version(p) for p in ("laplace-torch", "curvlinops-for-pytorch", "torch", "pyro-ppl")}
    versions["python"] = sys.version.split()[0]
    print("versions:", ", ".join(f"{k} {v}" for k, v in versions.items()))
    results: Dict[str, Any] = {"versions": versions, "rows": []}
    for task in ("regression", "classification"):
        x, y, xt, _ = load_task(task)
        net = train_net(make_net(task, x.shape[1]), task, x, y)
        sigma = ml_sigma(net, x, y) if task == "regression" else None
        if sigma is not None:
            print(f"\n{task}: Boston split 0, 13-50-1 ReLU; sigma fixed in both at its ML value at the MAP = {sigma:.5f}")
        else:
            print(f"\n{task}: digits 0-4, 64-50-5 ReLU")
        hdr = (f"{'case':<16}{'lib':<14}{'lml(d=1)':>11}{'lml(d*)':>11}{'d tuned':>11}{'d argmax':>11}"
               f"{'fit+pred s':>11}")
        print(hdr)
        for subset, hessian in CASES:
            r = compare_case(net, task, x, y, xt, subset, hessian, sigma=sigma)
            results["rows"].append(r)
            case = f"{subset}/{hessian}"
            for lib, key in (("pyrobdl", "pyrobdl"), ("laplace-torch", "laplace_torch")):
                print(f"{case:<16}{lib:<14}{_fmt(r[f'lml_1_{key}'])}{_fmt(r[f'lml_opt_{key}'])}"
                      f"{_fmt(r[f'delta_tuned_{key}'])}{_fmt(r[f'delta_argmax_{key}'])}{_fmt(r[f'seconds_{key}'])}")
                case = ""
            print(f"{'':<16}{'difference':<14}{_fmt(r['lml_1_pyrobdl'] - r['lml_1_laplace_torch'])}"
                  f"{_fmt(r['lml_opt_pyrobdl'] - r['lml_opt_laplace_torch'])}"
                  f"{'':>11}{_fmt(r['delta_argmax_pyrobdl'] / r['delta_argmax_laplace_torch'] - 1)}  (argmax: rel.)")
            print(f"{'':<16}GLM at d*={r['lml_at']:.4g}: mean max|diff| {r['mean_max_abs']:.2e}, var max|diff| "
                  f"{r['var_max_abs']:.2e} (rel {r['var_max_rel']:.2e}; mean var {r['var_mean']:.3g})")
            if hessian == "kron":
                print(f"{'':<16}K-FAC: pyrobdl without W-b cross terms vs laplace-torch: max rel diff "
                      f"{r['H_rel_diff_without_cross_terms']:.2e}; the cross terms add "
                      f"{r['half_logdet_cross_terms']:+.4f} to -lml (1/2 logdet)")
        if task == "regression":
            j = joint_noise_row(net, x, y)
            results["joint_noise"] = j
            print("regression, all/diag, prior precision AND noise tuned jointly in both "
                  "(pyrobdl tune_noise=True; laplace-torch Adam on its log_marginal_likelihood, 1000 steps):")
            print(f"  pyrobdl:       d={j['delta_pyrobdl']:.5g} sigma={j['sigma_pyrobdl']:.5g}  "
                  f"lml pyrobdl {j['lml_pyrobdl_at_pyrobdl_opt']:.6g}  laplace-torch formula there {j['lml_laplace_torch_at_pyrobdl_opt']:.6g}")
            print(f"  laplace-torch: d={j['delta_laplace_torch']:.5g} sigma={j['sigma_laplace_torch']:.5g}  "
                  f"lml laplace-torch {j['lml_laplace_torch_at_its_opt']:.6g}  pyrobdl formula there {j['lml_pyrobdl_at_laplace_torch_opt']:.6g}")
            gp, gs = j["laplace_torch_grad_at_pyrobdl_opt"]
            print(f"  laplace-torch's gradient at pyrobdl's optimum: d/dlog d {gp:.3g}, d/dlog sigma {gs:.3g}")
    if not args.no_memory:
        print(f"\nmemory: last-layer Laplace, 1,000 classes (64-128-1000, 2,000 random rows), one child process "
              f"each, address space capped at {args.mem_limit_gb:g} GB")
        rows = memory_check(args.mem_limit_gb, args.mem_timeout)
        results["memory"] = rows
        print(f"{'hessian':<8}{'lib':<15}{'seconds':>9}{'peak RSS +GB':>14}  status")
        for r in rows:
            print(f"{r['hessian']:<8}{r['lib']:<15}{_fmt(r.get('seconds'), 9)}{_fmt(r.get('peak_rss_growth_gb'), 14)}  {r['status']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return results


if __name__ == "__main__":
    main()

"""HMC/NUTS speed benchmark (not a test).

1. Toy regression, 1 -> 10 -> 1 tanh net, 100 points, 300 warm-up + 300 draws,
   one chain: effective samples per second of plain Pyro
   ``MCMC(NUTS(model, jit_compile=True))`` vs ``pyrobdl.inference.NUTS`` (and
   NumPyro when it is importable, for reference only). ESS is measured in
   function space: the bulk ESS of the network's predictive mean at a grid of
   50 inputs, median over the grid (weight-space ESS is meaningless for a BNN,
   see :mod:`pyrobdl.diagnostics`). Times are wall-clock and include every
   compilation (Pyro's JIT trace, our ``torch.compile``, NumPyro's XLA jit).
2. One Boston-housing split (13 -> 50 -> 1, 455 training points, split 0,
   standardised with training statistics), 500 warm-up + 500 draws, with
   ``pyrobdl.inference.NUTS`` (chains in parallel, one per core), plus the test
   RMSE/log-likelihood and the function-space diagnostics.

Run::

    python benchmarks/bench_mcmc.py                 # everything (takes a while: plain Pyro is slow)
    python benchmarks/bench_mcmc.py --skip-pyro     # ours (and NumPyro) only
    python benchmarks/bench_mcmc.py --only toy --seeds 0 1 2

Plain Pyro cannot JIT-trace ``BayesianNetwork`` itself (``torch.func.functional_call``
refuses to run under ``torch.jit.trace``), so the baseline runs the equivalent
hand-written Pyro model: same site names, priors, likelihood and data; the
script checks that its log density equals ours at random points.
"""
from __future__ import annotations

import argparse
import math
import os
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import pyro
import pyro.distributions as dist

import pyrobdl
from pyrobdl import BayesianNetwork, diagnostics, inference, likelihoods, priors
from pyrobdl.inference.mcmc import FlatPotential

HERE = os.path.dirname(os.path.abspath(__file__))
UCI = os.environ.get("PYROBDL_UCI", "/work/shared/data/uci")


# ----------------------------------------------------------------------------- problems
def toy_data(seed: int = 0, n: int = 100):
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.rand(n, 1, generator=g) * 6 - 3
    y = torch.sin(x).squeeze(-1) + 0.2 * torch.randn(n, generator=g)
    return x, y


def toy_model(hidden: int = 10):
    net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    return BayesianNetwork(net, prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian())


def plain_pyro_model(hidden: int = 10):
    """The toy BayesianNetwork written as a plain Pyro model (identical density)."""

    def model(x, y=None):
        w0 = pyro.sample("0.weight", dist.Normal(0.0, 1.0).expand([hidden, 1]).to_event(2))
        b0 = pyro.sample("0.bias", dist.Normal(0.0, 1.0).expand([hidden]).to_event(1))
        w2 = pyro.sample("2.weight", dist.Normal(0.0, 1.0).expand([1, hidden]).to_event(2))
        b2 = pyro.sample("2.bias", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        f = F.linear(torch.tanh(F.linear(x, w0, b0)), w2, b2).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(f, sigma), obs=y)
        return f

    return model


def boston_split(split: int = 0):
    root = os.path.join(UCI, "bostonHousing")
    if not os.path.isdir(root):
        root = os.path.join(os.path.dirname(pyrobdl.__file__), "datasets", "data", "uci", "bostonHousing")
    data = np.loadtxt(os.path.join(root, "data.txt"))
    feats = np.loadtxt(os.path.join(root, "index_features.txt")).astype(int)
    target = int(np.loadtxt(os.path.join(root, "index_target.txt")))
    tr = np.loadtxt(os.path.join(root, f"index_train_{split}.txt")).astype(int)
    te = np.loadtxt(os.path.join(root, f"index_test_{split}.txt")).astype(int)
    X, Y = data[:, feats], data[:, target]
    mx, sx = X[tr].mean(0), X[tr].std(0)
    sx[sx == 0] = 1.0
    my, sy = Y[tr].mean(), Y[tr].std()
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return t((X[tr] - mx) / sx), t((Y[tr] - my) / sy), t((X[te] - mx) / sx), t(Y[te]), float(my), float(sy)


# ----------------------------------------------------------------------------- ESS in function space
def function_diagnostics(model: BayesianNetwork, chain_draws: dict, grid: torch.Tensor) -> dict:
    """Median bulk ESS and max R-hat over the grid of the predictive mean, draws (C, S, ...)."""
    C, S = next(iter(chain_draws.values())).shape[:2]
    flat = {k: torch.as_tensor(v).reshape((C * S,) + tuple(v.shape[2:])) for k, v in chain_draws.items()}
    with torch.no_grad():
        pred = model.predict_from_samples(grid, flat)
    d = diagnostics.rhat_ess(pred.loc_samples.reshape(C, S, -1).numpy())
    return {"ess": float(np.median(d["ess_bulk"])), "rhat_max": float(np.max(d["rhat"])) if C > 1 else float("nan")}


def check_same_density(model: BayesianNetwork, pyro_model, x, y):
    from pyro.infer.mcmc.util import initialize_model

    xc, yc = model.check_data(x, y)
    pot = FlatPotential(model, xc, yc)
    _, pyro_pot, transforms, _ = initialize_model(pyro_model, (x, y))
    d = []
    for z in pot.sample_prior(5):
        cons = pot.unpack(z)
        unc = {k: (transforms[k](v) if k in transforms else v) for k, v in cons.items()}
        d.append(float(pot(z)) - float(pyro_pot(unc)))
    spread = max(d) - min(d)
    assert spread < 1e-2, f"the plain Pyro model's density differs from ours: {d}"
    return spread


# ----------------------------------------------------------------------------- runners
def run_plain_pyro(x, y, grid, seed, warmup, samples):
    model = toy_model()
    pm = plain_pyro_model()
    try:  # the spec asks for Pyro on our BayesianNetwork; it cannot be jit-traced (see module doc)
        pyro.set_rng_seed(seed)
        k = pyro.infer.NUTS(model, jit_compile=True, ignore_jit_warnings=True)
        pyro.infer.MCMC(k, num_samples=1, warmup_steps=1, disable_progbar=True).run(x, y)
        target, label = model, "BayesianNetwork"
    except Exception as e:  # noqa: BLE001
        target, label = pm, f"equivalent plain Pyro model (BayesianNetwork is not jit-traceable: {type(e).__name__})"
    check_same_density(model, pm, x, y)
    pyro.set_rng_seed(seed)
    kernel = pyro.infer.NUTS(target, jit_compile=True, ignore_jit_warnings=True)
    mcmc = pyro.infer.MCMC(kernel, num_samples=samples, warmup_steps=warmup, disable_progbar=True)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mcmc.run(x, y)
    secs = time.perf_counter() - t0
    draws = mcmc.get_samples(group_by_chain=True)
    ess = function_diagnostics(model, draws, grid)["ess"]
    return {"seconds": secs, "ess": ess, "label": label, "step_size": kernel.step_size}


def run_ours(x, y, grid, seed, warmup, samples, *, compile=None, chains=1, dense_mass=False):
    model = toy_model()
    t0 = time.perf_counter()
    post = inference.NUTS(
        num_samples=samples, warmup_steps=warmup, num_chains=chains, seed=seed, compile=compile,
        dense_mass=dense_mass, progress=False, diagnose=False,
    ).fit(model, x, y)
    secs = time.perf_counter() - t0
    ess = function_diagnostics(post.model, post.samples, grid)["ess"]
    st = post.sample_stats
    return {
        "seconds": secs,
        "ess": ess,
        "compile_seconds": post.fit_info["compile_seconds"],
        "compiled": post.fit_info["compiled"],
        "leapfrogs": int(st["n_steps"].sum()) + int(post.fit_info["warmup_stats"]["n_steps"].sum()),
        "tree_depth": float(st["tree_depth"].double().mean()),
        "step_size": float(st["step_size"].double().mean()),
    }


def run_chees(x, y, grid, seed, warmup, samples, *, chains=64, compile=None):
    """pyrobdl's ChEES-HMC: ``chains`` chains as one batched program (``samples`` draws each)."""
    model = toy_model()
    t0 = time.perf_counter()
    post = inference.ChEESHMC(
        num_chains=chains, num_samples=samples, warmup_steps=warmup, seed=seed, compile=compile,
        progress=False, diagnose=False,
    ).fit(model, x, y)
    secs = time.perf_counter() - t0
    d = function_diagnostics(post.model, post.samples, grid)
    st = post.sample_stats
    return {
        "seconds": secs, "ess": d["ess"], "rhat_max": d["rhat_max"], "chains": chains,
        "leapfrogs_per_draw": float(st["n_steps"].double().mean()),
        "gradient_evaluations": post.fit_info["gradient_evaluations"],
        "divergences": int(st["diverging"].sum()),
    }


def _jax_toy_logdensity(x, y, H=10):
    """The toy posterior in unconstrained space as a JAX function of a flat vector, and a map
    from flat draws (C, S, D) to the BayesianNetwork's sites."""
    import jax.numpy as jnp
    from jax.scipy.stats import norm

    X, Y = jnp.asarray(x.numpy()), jnp.asarray(y.numpy())
    sizes = [("0.weight", (H, 1)), ("0.bias", (H,)), ("2.weight", (1, H)), ("2.bias", (1,))]

    def unpack(z):
        out, i = {}, 0
        for name, shape in sizes:
            n = int(np.prod(shape))
            out[name] = z[..., i:i + n].reshape(z.shape[:-1] + shape)
            i += n
        out["sigma"] = jnp.exp(z[..., i])
        return out, z[..., i]

    def single(z):
        p, log_sigma = unpack(z)
        f = (jnp.tanh(X @ p["0.weight"].T + p["0.bias"]) @ p["2.weight"].T + p["2.bias"])[:, 0]
        lp = sum(norm.logpdf(p[k]).sum() for k, _ in sizes)
        lp += jnp.log(2.0) + norm.logpdf(p["sigma"]) + log_sigma  # HalfNormal(1) and the log-Jacobian
        return lp + norm.logpdf(Y, f, p["sigma"]).sum()

    def logdensity(z):  # one point (D,) or a batch (..., D)
        return jnp.vectorize(single, signature="(d)->()")(z)

    dim = sum(int(np.prod(s)) for _, s in sizes) + 1

    def to_sites(zs):
        vals, _ = unpack(zs)
        return {k: torch.as_tensor(np.asarray(v)) for k, v in vals.items()}

    return logdensity, dim, to_sites


def run_numpyro_vectorized(x, y, grid, seed, warmup, samples, chains):
    """NumPyro NUTS with ``chain_method="vectorized"`` (reference, not a dependency)."""
    try:
        import jax
        import jax.numpy as jnp
        from numpyro.infer import MCMC as NMCMC, NUTS as NNUTS
    except ImportError:
        return None
    logdensity, dim, to_sites = _jax_toy_logdensity(x, y)
    init = 0.1 * jax.random.normal(jax.random.PRNGKey(seed + 1), (chains, dim))
    if chains == 1:
        init = init[0]
    mcmc = NMCMC(NNUTS(potential_fn=lambda z: -logdensity(z)), num_warmup=warmup, num_samples=samples,
                 num_chains=chains, chain_method="vectorized", progress_bar=False)
    t0 = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), init_params=init)
    z = mcmc.get_samples(group_by_chain=True)
    jax.block_until_ready(z)
    secs = time.perf_counter() - t0
    d = function_diagnostics(toy_model(), to_sites(jnp.asarray(z)), grid)
    return {"seconds": secs, **d, "chains": chains}


def run_blackjax(x, y, grid, seed, warmup, samples, *, algorithm, chains):
    """BlackJAX NUTS (window adaptation, one chain) or ChEES-HMC (``chains`` chains), for
    reference (not dependencies)."""
    try:
        import blackjax
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError:
        return None
    logdensity, dim, to_sites = _jax_toy_logdensity(x, y)
    key = jax.random.PRNGKey(seed)
    k_init, k_warm, k_draw = jax.random.split(key, 3)
    t0 = time.perf_counter()
    if algorithm == "nuts":
        init = 0.1 * jax.random.normal(k_init, (dim,))
        warm = blackjax.window_adaptation(blackjax.nuts, logdensity)
        (state, params), _ = warm.run(k_warm, init, num_steps=warmup)
        kernel = jax.jit(blackjax.nuts(logdensity, **params).step)

        def one(state, k):
            state, _ = kernel(k, state)
            return state, state.position

        _, zs = jax.lax.scan(one, state, jax.random.split(k_draw, samples))
        zs = zs[None]
    else:
        init = 0.1 * jax.random.normal(k_init, (chains, dim))
        warm = blackjax.chees_adaptation(logdensity, chains)
        (states, params), _ = warm.run(k_warm, init, step_size=0.1, optim=optax.adam(0.025), num_steps=warmup)
        step = jax.vmap(blackjax.dynamic_hmc(logdensity, **params).step)

        def one(states, k):
            states, _ = step(jax.random.split(k, chains), states)
            return states, states.position

        _, zs = jax.lax.scan(one, states, jax.random.split(k_draw, samples))
        zs = jnp.swapaxes(zs, 0, 1)
    jax.block_until_ready(zs)
    secs = time.perf_counter() - t0
    d = function_diagnostics(toy_model(), to_sites(zs), grid)
    return {"seconds": secs, **d, "chains": chains if algorithm != "nuts" else 1}


TABLE = []  # (label, seed, result) of every toy run, for the closing table


def toy(args):
    grid = torch.linspace(-4, 4, 50).unsqueeze(-1)
    W, S = args.warmup, args.samples
    print(f"== toy: 1->10->1 tanh, 100 points, {W} warm-up + {S} draws, 1 chain; ESS = median bulk ESS of f(x) on 50 grid points")
    rows = []
    for seed in args.seeds:
        x, y = toy_data(seed)
        r = {"seed": seed}
        r["ours"] = run_ours(x, y, grid, seed, W, S)
        o = r["ours"]
        print(
            f"[seed {seed}] pyrobdl NUTS (compiled={o['compiled']}): {o['seconds']:.1f} s "
            f"(compile {o['compile_seconds']:.1f} s), ESS {o['ess']:.0f} -> {o['ess'] / o['seconds']:.2f} ESS/s; "
            f"{o['leapfrogs']} leapfrog steps ({1e6 * (o['seconds'] - o['compile_seconds']) / o['leapfrogs']:.0f} us each), "
            f"mean tree depth {o['tree_depth']:.1f}",
            flush=True,
        )
        if args.eager:
            e = run_ours(x, y, grid, seed, W, S, compile=False)
            r["eager"] = e
            print(f"[seed {seed}] pyrobdl NUTS eager: {e['seconds']:.1f} s, ESS {e['ess']:.0f} -> {e['ess'] / e['seconds']:.2f} ESS/s", flush=True)
        if args.dense:
            d = run_ours(x, y, grid, seed, W, S, dense_mass=True)
            r["dense"] = d
            print(
                f"[seed {seed}] pyrobdl NUTS dense_mass: {d['seconds']:.1f} s, ESS {d['ess']:.0f} -> "
                f"{d['ess'] / d['seconds']:.2f} ESS/s, mean tree depth {d['tree_depth']:.1f}",
                flush=True,
            )
        if not args.skip_pyro:
            p = run_plain_pyro(x, y, grid, seed, W, S)
            r["pyro"] = p
            print(
                f"[seed {seed}] plain Pyro NUTS jit_compile=True on the {p['label']}: {p['seconds']:.1f} s, "
                f"ESS {p['ess']:.0f} -> {p['ess'] / p['seconds']:.2f} ESS/s",
                flush=True,
            )
            print(f"[seed {seed}] ratio ours/Pyro (ESS/s): {(o['ess'] / o['seconds']) / (p['ess'] / p['seconds']):.1f}x", flush=True)
        rows.append(r)
        TABLE.append(("pyrobdl NUTS, 1 chain", seed, {**o, "rhat_max": float("nan")}))
        if not args.skip_pyro:
            TABLE.append(("plain Pyro NUTS(jit_compile=True), 1 chain", seed, {**r["pyro"], "rhat_max": float("nan")}))
    if len(rows) > 1 and not args.skip_pyro:
        ours = sum(r["ours"]["ess"] for r in rows) / sum(r["ours"]["seconds"] for r in rows)
        theirs = sum(r["pyro"]["ess"] for r in rows) / sum(r["pyro"]["seconds"] for r in rows)
        print(f"pooled over seeds: ours {ours:.2f} ESS/s, Pyro {theirs:.2f} ESS/s, ratio {ours / theirs:.1f}x")
    return rows


def chees_rows(args):
    """pyrobdl's ChEES-HMC on the toy problem at each chain count of ``--chees-chains``."""
    grid = torch.linspace(-4, 4, 50).unsqueeze(-1)
    rows = []
    for seed in args.seeds:
        x, y = toy_data(seed)
        for C in args.chees_chains:
            r = run_chees(x, y, grid, seed, args.warmup, args.samples, chains=C)
            rows.append((f"pyrobdl ChEES-HMC, {C} chains", seed, r))
            print(
                f"[seed {seed}] pyrobdl ChEES-HMC, {C} chains: {r['seconds']:.1f} s, fn-ESS {r['ess']:.0f} -> "
                f"{r['ess'] / r['seconds']:.1f} ESS/s, fn R-hat max {r['rhat_max']:.3f}, "
                f"{r['leapfrogs_per_draw']:.0f} leapfrog steps/draw, {r['divergences']} divergences",
                flush=True,
            )
    return rows


def references(args):
    """NumPyro and BlackJAX on the same toy problem, for reference (run last: JAX starts
    threads, and forking a process with JAX threads can deadlock)."""
    grid = torch.linspace(-4, 4, 50).unsqueeze(-1)
    rows = []
    for seed in args.seeds:
        x, y = toy_data(seed)
        runs = [
            ("NumPyro NUTS, 1 chain", lambda: run_numpyro_vectorized(x, y, grid, seed, args.warmup, args.samples, 1)),
            ("NumPyro NUTS, 4 chains vectorized", lambda: run_numpyro_vectorized(x, y, grid, seed, args.warmup, args.samples, 4)),
            ("BlackJAX NUTS (window adaptation), 1 chain",
             lambda: run_blackjax(x, y, grid, seed, args.warmup, args.samples, algorithm="nuts", chains=1)),
            ("BlackJAX ChEES-HMC, 64 chains",
             lambda: run_blackjax(x, y, grid, seed, args.warmup, args.samples, algorithm="chees", chains=64)),
        ]
        for label, fn in runs:
            r = fn()
            if r is None:
                print(f"{label}: not installed (optional reference; pip install numpyro blackjax optax)")
                continue
            rows.append((label, seed, r))
            print(f"[seed {seed}] {label}: {r['seconds']:.1f} s, fn-ESS {r['ess']:.0f} -> {r['ess'] / r['seconds']:.1f} ESS/s, "
                  f"fn R-hat max {r['rhat_max']:.3f}", flush=True)
    return rows


def table(rows, base_label="pyrobdl NUTS, 1 chain"):
    """fn-ESS per second of every sampler, pooled over seeds, with its ratio to pyrobdl NUTS."""
    pooled = {}
    for label, _seed, r in rows:
        e, t, rh = pooled.get(label, (0.0, 0.0, float("nan")))
        new = r.get("rhat_max", float("nan"))
        rh = new if math.isnan(rh) else (rh if math.isnan(new) else max(rh, new))
        pooled[label] = (e + r["ess"], t + r["seconds"], rh)
    base = pooled.get(base_label)
    print("\n| sampler | fn-ESS/s | fn R-hat max | vs pyrobdl NUTS, 1 chain |\n| --- | --- | --- | --- |")
    for label, (e, t, rh) in pooled.items():
        ratio = f"{(e / t) / (base[0] / base[1]):.1f}x" if base else "-"
        print(f"| {label} | {e / t:.1f} | {'- (one chain)' if math.isnan(rh) else f'{rh:.3f}'} | {ratio} |")


def boston(args):
    xtr, ytr, xte, yte, my, sy = boston_split(0)
    W, S = args.boston_warmup, args.boston_samples
    C = args.boston_chains
    print(f"== Boston split 0: 13->50->1 ReLU, {xtr.shape[0]} training points, {W} warm-up + {S} draws, {C} chain(s), {os.cpu_count()} cores")
    net = nn.Sequential(nn.Linear(13, 50), nn.ReLU(), nn.Linear(50, 1))
    model = BayesianNetwork(net, prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian())
    t0 = time.perf_counter()
    post = inference.NUTS(num_samples=S, warmup_steps=W, num_chains=C, seed=0, progress=False, diagnose=False).fit(model, xtr, ytr)
    secs = time.perf_counter() - t0
    pred = post.predict(xte)
    rmse = float(((pred.mean * sy + my - yte) ** 2).mean().sqrt())
    ll = float((pred.log_prob((yte - my) / sy) - math.log(sy)).mean())
    s = diagnostics.summary(post, x_grid=xte)
    st = post.sample_stats
    print(
        f"pyrobdl NUTS: {secs:.1f} s total ({'within' if secs <= 300 else 'OVER'} 5 min; compile "
        f"{post.fit_info['compile_seconds']:.1f} s, chains {post.fit_info['chain_method']}, per chain "
        f"{', '.join(f'{c:.0f}' for c in post.fit_info['chain_seconds'])} s); mean tree depth "
        f"{float(st['tree_depth'].double().mean()):.1f}, leapfrog steps/draw {float(st['n_steps'].double().mean()):.0f}"
    )
    print(f"test RMSE {rmse:.2f}, test log-likelihood {ll:.2f}; {s.num_divergences} divergences")
    print(
        f"function space (test inputs): R-hat max {s.function_rhat_max:.3f}, bulk ESS median {s.function_ess_bulk_median:.0f}; "
        f"weight space: R-hat max {s.rhat_max:.2f}, bulk ESS min {s.ess_bulk_min:.0f}"
    )
    return {"seconds": secs, "rmse": rmse, "ll": ll}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["toy", "boston"], default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--skip-pyro", action="store_true", help="skip the (slow) plain Pyro baseline")
    ap.add_argument("--skip-numpyro", action="store_true", help="skip the NumPyro and BlackJAX references")
    ap.add_argument("--skip-nuts", action="store_true", help="skip pyrobdl's NUTS on the toy")
    ap.add_argument("--chees-chains", type=int, nargs="+", default=[16, 64],
                    help="chain counts of pyrobdl's ChEES-HMC on the toy (default 16 64)")
    ap.add_argument("--eager", action="store_true", help="also time pyrobdl with compile=False")
    ap.add_argument("--dense", action="store_true", help="also time pyrobdl with dense_mass=True")
    ap.add_argument("--boston-warmup", type=int, default=500)
    ap.add_argument("--boston-samples", type=int, default=500)
    ap.add_argument("--boston-chains", type=int, default=2)
    args = ap.parse_args(argv)
    print(
        f"torch {torch.__version__}, pyro {pyro.__version__}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} (other processes slow every timing down)",
        flush=True,
    )
    if args.only in (None, "toy"):
        if not args.skip_nuts:
            toy(args)
        TABLE.extend(chees_rows(args))
    if args.only in (None, "boston"):
        boston(args)
    if args.only in (None, "toy"):
        if not args.skip_numpyro:
            TABLE.extend(references(args))
        table(TABLE)


if __name__ == "__main__":
    main()

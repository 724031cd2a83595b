"""Speed of pyrobdl's SVI training and predictive sampling against plain Pyro and the floor.

Run:  python benchmarks/bench_svi.py [--quick]

Prints, on the 1->50->50->1 tanh net:
  * predictive sampling, regime (a) S=1000, N=100 and regime (b) S=100, N=10,000:
    pyrobdl ``posterior.predict`` vs ``pyro.infer.Predictive`` on the equivalent plain-Pyro
    BNN (``PyroModule[nn.Linear]`` + ``PyroSample`` priors, the Pyro tutorial way) and vs the
    floor (a plain batched forward pass of pre-sampled weights); achieved GFLOP/s beside the
    machine's matmul rate measured in the same run; a sweep of chunk sizes; peak memory of a
    naive one-shot batched pass vs the default chunked pass (each measured in a fresh process).
  * mean-field SVI training steps/s at N=1,000 full batch vs the floor (a deterministic torch
    MLP with Adam), plain Pyro ``AutoNormal`` + ``Trace_ELBO`` and ``JitTrace_ELBO``; vectorised
    particles (8) vs a loop over particles.
  * gradient variance of the mean-field estimators (reparam, local reparameterisation, flipout).

Protocol: every time is the median of the timed calls after one warm-up call (``--stat min``
for the minimum, ``--repeats`` for their number); ``Predictive`` is timed warm like ``predict``
(its first call is recorded apart). The README's numbers come from ``benchmarks/readme.py``,
which runs this script in a fresh process per thread count.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroSample
from torch import nn

from pyrobdl import BayesianNetwork, inference, likelihoods, priors

H = 50


def make_net():
    return nn.Sequential(nn.Linear(1, H), nn.Tanh(), nn.Linear(H, H), nn.Tanh(), nn.Linear(H, 1))


class PlainPyroBNN(PyroModule):
    """The plain-Pyro way of writing the same BNN (Pyro's BNN tutorial style)."""

    def __init__(self):
        super().__init__()
        self.l1 = PyroModule[nn.Linear](1, H)
        self.l2 = PyroModule[nn.Linear](H, H)
        self.l3 = PyroModule[nn.Linear](H, 1)
        for layer in (self.l1, self.l2, self.l3):
            layer.weight = PyroSample(dist.Normal(0.0, 1.0).expand(layer.weight.shape).to_event(2))
            layer.bias = PyroSample(dist.Normal(0.0, 1.0).expand(layer.bias.shape).to_event(1))

    def forward(self, x, y=None):
        h = torch.tanh(self.l1(x))
        h = torch.tanh(self.l2(h))
        mu = self.l3(h).squeeze(-1)
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mu, sigma), obs=y)
        return mu


# Timing protocol, set by main(): one warm-up call, then REPEATS timed calls (None: each
# measurement's own default), summarised by STAT. The median is the default: a min rewards the
# luckiest of a few calls and made re-runs disagree (the README's numbers are medians).
REPEATS = None
STAT = "median"


def timeit(fn, *, repeat=5, min_time=0.0):
    """Seconds per call of ``fn``: one warm-up call, then ``REPEATS`` (or ``repeat``) timed calls,
    their median (``STAT="min"``: their minimum)."""
    fn()  # warm-up
    times = []
    for _ in range(REPEATS or repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) if STAT == "min" else statistics.median(times)


def matmul_gflops():
    a, b = torch.randn(2000, 2000), torch.randn(2000, 2000)
    t = timeit(lambda: a @ b, repeat=5)
    return 2 * 2000**3 / t / 1e9


def forward_flops(S, N):
    return 2 * S * N * (1 * H + H * H + H * 1)


def fitted_posterior(n=1000):
    torch.manual_seed(0)
    x = torch.linspace(-3, 3, n).unsqueeze(-1)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(n)
    model = BayesianNetwork(make_net(), prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian())
    post = inference.MeanField(num_steps=200, progress=False).fit(model, x, y)
    return post, x, y


def plain_guide(x, y):
    pyro.clear_param_store()
    m = PlainPyroBNN()
    g = pyro.infer.autoguide.AutoNormal(m)
    g(x, y)
    return m, g


def first_call(fn):
    """Seconds of one call of ``fn`` with nothing warmed up for it (set-up included)."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_predict(post, quick, sweeps=True):
    """Both sides timed warm: ``pyro.infer.Predictive`` is built once, called once as warm-up,
    then timed in paired rounds with ``predict`` (one call of each, back to back; the speed-up is
    the median of the per-round ratios, the times the medians). The first call of each (set-up and
    first run, before any warm-up) is recorded apart as ``*_first_call_s``. ``Predictive`` runs
    with ``parallel=False``, its default: ``parallel=True`` fails on this model (a batch of
    weights reaches ``nn.Linear``)."""
    res = {"predictive_timing": "warm: built once, one warm-up call, then paired rounds (one call of each, "
                                "back to back); speed-up = median of the per-round ratios; Predictive(parallel=False)"}
    gf = matmul_gflops()
    res["matmul_gflops"] = gf
    for tag, S, N in (("a", 1000, 100), ("b", 100, 10_000)):
        x = torch.linspace(-4, 4, N).unsqueeze(-1)
        ours_first = first_call(lambda: post.predict(x, num_samples=S))
        m, g = plain_guide(x[:10], torch.zeros(10))
        pyro_first = first_call(lambda: pyro.infer.Predictive(m, guide=g, num_samples=S)(x))
        predictive = pyro.infer.Predictive(m, guide=g, num_samples=S)
        # paired rounds (one call of each, back to back, after one warm-up call of each): the
        # speed-up is the median of the per-round ratios, robust to a drift of the machine's speed
        post.predict(x, num_samples=S), predictive(x)
        ours_ts, pyro_ts, ratios = [], [], []
        for _ in range(REPEATS or (2 if quick else 5)):
            t = time.perf_counter()
            post.predict(x, num_samples=S)
            t_ours = time.perf_counter() - t
            t = time.perf_counter()
            predictive(x)
            t_pyro = time.perf_counter() - t
            ours_ts.append(t_ours), pyro_ts.append(t_pyro), ratios.append(t_pyro / t_ours)
        pick = min if STAT == "min" else statistics.median
        ours, pyro_t = pick(ours_ts), pick(pyro_ts)
        speedup = max(ratios) if STAT == "min" else statistics.median(ratios)
        samples = post.sample_latents(S)
        W = {k: v for k, v in post.model.split_values(samples)[0].items()}

        def floor():
            h = torch.tanh(torch.baddbmm(W["0.bias"].unsqueeze(1), x.expand(S, N, 1), W["0.weight"].transpose(1, 2)))
            h = torch.tanh(torch.baddbmm(W["2.bias"].unsqueeze(1), h, W["2.weight"].transpose(1, 2)))
            return torch.baddbmm(W["4.bias"].unsqueeze(1), h, W["4.weight"].transpose(1, 2))

        with torch.no_grad():
            floor_t = timeit(floor, repeat=3 if quick else 5)
        # the rate comparisons, paired the same way: predict, the one-shot pass and a 2,000²
        # matmul back to back in each round, the median of the per-round ratios
        a_mm, b_mm = torch.randn(2000, 2000), torch.randn(2000, 2000)
        to_floor, to_mm = [], []
        with torch.no_grad():
            for _ in range(REPEATS or (2 if quick else 5)):
                t = time.perf_counter()
                post.predict(x, num_samples=S)
                t_ours = time.perf_counter() - t
                t = time.perf_counter()
                floor()
                t_floor = time.perf_counter() - t
                t = time.perf_counter()
                a_mm @ b_mm
                t_mm = time.perf_counter() - t
                to_floor.append(t_ours / t_floor)
                to_mm.append((forward_flops(S, N) / t_ours) / (2 * 2000**3 / t_mm))
        res[tag] = {
            "S": S, "N": N, "pyrobdl_s": ours, "pyro_predictive_s": pyro_t, "floor_batched_forward_s": floor_t,
            "pyrobdl_first_call_s": ours_first, "pyro_predictive_first_call_s": pyro_first,
            "speedup_vs_pyro": speedup, "speedup_vs_pyro_first_calls": pyro_first / ours_first,
            "ratio_to_floor": statistics.median(to_floor),
            "rate_over_floor_rate": statistics.median(1.0 / r for r in to_floor),
            "rate_over_matmul_rate": statistics.median(to_mm),
            "pyrobdl_gflops": forward_flops(S, N) / ours / 1e9,
            "floor_gflops": forward_flops(S, N) / floor_t / 1e9,
        }
    if not sweeps:
        return res
    # chunk sweep at regime (b)
    x = torch.linspace(-4, 4, 10_000).unsqueeze(-1)
    sweep = {}
    for c in (1, 5, 10, 25, 50, 100):
        sweep[c] = timeit(lambda: post.predict(x, num_samples=100, chunk_size=c), repeat=2 if quick else 3)
    res["chunk_sweep_b_s"] = sweep
    # the predictive engine's CPU pass size (bytes of activations per pass), both regimes
    from pyrobdl._fast import engine as _engine

    saved = _engine.CPU_PASS_BYTES
    rows_sweep = {}
    try:
        for mb in (2, 4, 8, 16, 32, 64):
            _engine.CPU_PASS_BYTES = mb * 2**20
            rows_sweep[f"{mb}MiB"] = {
                tag: timeit(lambda: post.predict(torch.linspace(-4, 4, N).unsqueeze(-1), num_samples=S), repeat=2 if quick else 3)
                for tag, S, N in (("a", 1000, 100), ("b", 100, 10_000))
            }
    finally:
        _engine.CPU_PASS_BYTES = saved
    res["pass_bytes_sweep_s"] = rows_sweep
    return res


def peak_rss_mb(code: str) -> float:
    """Peak resident memory (MB) of a fresh process running ``code`` (Linux VmHWM)."""
    prog = code + "\nimport re\nprint(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1]) / 1024


def bench_memory():
    setup = (
        "import torch, sys; sys.path.insert(0, %r)\n" % os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        + "from benchmarks.bench_svi import fitted_posterior\n"
        "post, _, _ = fitted_posterior(200)\n"
        "x = torch.linspace(-4, 4, 10000).unsqueeze(-1)\n"
        "post.predict(x[:10], num_samples=2)  # warm-up: libraries loaded, allocator primed\n"
        "import gc; gc.collect()\n"
    )
    base = peak_rss_mb(setup)
    naive = peak_rss_mb(setup + "post.predict(x, num_samples=100, chunk_size=100, max_memory=2**40)\n")
    default = peak_rss_mb(setup + "post.predict(x, num_samples=100)\n")
    bounded = peak_rss_mb(setup + "post.predict(x, num_samples=100, max_memory=32 * 2**20)\n")
    return {"baseline_mb": base, "naive_one_pass_extra_mb": naive - base, "default_extra_mb": default - base,
            "max_memory_32MiB_extra_mb": bounded - base}


def bench_train(quick):
    torch.manual_seed(0)
    N = 1000
    x = torch.linspace(-3, 3, N).unsqueeze(-1)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(N)
    steps = 200 if quick else 500
    res = {}
    def adam_loop(net):
        """``steps`` full-batch Adam steps of a deterministic MLP (the floor)."""
        opt = torch.optim.Adam(net.parameters(), 1e-3)

        def run():
            for _ in range(steps):
                loss = (net(x).squeeze(-1) - y).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()

        return run

    det = adam_loop(make_net())

    # The same floor with tanh computed as 2*sigmoid(2x) - 1, as pyrobdl's plain-chain path does on
    # the CPU (torch's CPU tanh is several times slower than sigmoid): the floor a user gets by
    # applying the same trick, so the ratio to it isolates pyrobdl's own overhead.
    class SigmoidTanh(nn.Module):
        def forward(self, h):
            return torch.sigmoid(h * 2.0).mul(2.0).sub(1.0)

    det_st = adam_loop(nn.Sequential(nn.Linear(1, H), SigmoidTanh(), nn.Linear(H, H), SigmoidTanh(), nn.Linear(H, 1)))
    det(), det_st()  # warm-up

    def clock(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    # Paired rounds: every round times the floor right before the measured run, and a ratio is the
    # median over rounds of the ratio within the round. A machine whose speed drifts over minutes
    # (a shared VM) then moves both sides of each ratio together; the rates are medians too.
    rounds = REPEATS or 3
    med = statistics.median if STAT == "median" else max

    def paired(rate_fn, floor=det):
        """(median rate, median over rounds of floor rate / rate, floor rates)."""
        rates, ratios, floors = [], [], []
        rate_fn()  # warm-up
        for _ in range(rounds):
            f = steps / clock(floor)
            r = rate_fn()
            rates.append(r)
            floors.append(f)
            ratios.append(f / r)
        pick = statistics.median if STAT == "median" else min
        return med(rates), pick(ratios), floors

    # pyrobdl's mean-field under the settings that change its cost per step: the noise scale
    # learned (``Gaussian()``, the default: one more latent in the guide) or fixed
    # (``Gaussian(scale=0.1)``: the floor's squared error is a fixed-noise Gaussian NLL, so this is
    # the like-for-like comparison), and the gradient estimator (``reparam``, samples weights;
    # ``local`` samples pre-activations: lower variance, more work per step).
    # Keys: pyrobdl_meanfield_{learned,fixed}_noise_{reparam,local}_P{P}_steps_s;
    # pyrobdl_meanfield_P{P}_steps_s is learned noise with reparam.
    variants = [("learned", "reparam", 1), ("learned", "reparam", 8), ("fixed", "reparam", 1),
                ("learned", "local", 1), ("fixed", "local", 1)]
    all_floors = []
    for noise, est, P in variants:
        lik = likelihoods.Gaussian() if noise == "learned" else likelihoods.Gaussian(scale=0.1)
        model = BayesianNetwork(make_net(), likelihood=lik)
        # steps/s from the difference of two run lengths, so the one-off set-up of fit()
        # (model copy, guide construction, data checks) is not counted as per-step cost
        short = inference.MeanField(num_steps=steps // 5, num_particles=P, estimator=est, progress=False)
        long = inference.MeanField(num_steps=steps, num_particles=P, estimator=est, progress=False)
        setups = []

        def rate():
            t_short = clock(lambda: short.fit(model, x, y))
            t_long = clock(lambda: long.fit(model, x, y))
            if t_long <= t_short:  # a noisy machine: the long fit's rate, set-up included
                return steps / t_long
            per_step = (t_long - t_short) / (steps - steps // 5)
            setups.append(t_short - (steps // 5) * per_step)
            return 1.0 / per_step

        key = f"pyrobdl_meanfield_{noise}_noise_{est}_P{P}"
        r, ratio, floors = paired(rate)
        all_floors += floors
        res[f"{key}_steps_s"] = r
        res[f"ratio_floor_over_{key}"] = ratio
        res[f"{key}_fit_setup_s"] = statistics.median(setups) if setups else None
        if noise == "learned" and est == "reparam":
            res[f"pyrobdl_meanfield_P{P}_steps_s"] = r
            res[f"pyrobdl_meanfield_P{P}_fit_setup_s"] = res[f"{key}_fit_setup_s"]
            if P == 1:
                res["ratio_floor_over_pyrobdl_P1"] = ratio
                # the same run against the sigmoid-tanh floor, paired the same way
                _, res["ratio_sigmoid_tanh_floor_over_pyrobdl_P1"], st_floors = paired(rate, floor=det_st)
                res["floor_det_mlp_sigmoid_tanh_steps_s"] = med(st_floors)
    for name, elbo in (("trace_elbo", pyro.infer.Trace_ELBO()), ("jit_trace_elbo", pyro.infer.JitTrace_ELBO())):
        m, g = plain_guide(x, y)
        svi = pyro.infer.SVI(m, g, pyro.optim.Adam({"lr": 1e-2}), elbo)
        n = steps // 2

        def run():
            for _ in range(n):
                svi.step(x, y)

        r, ratio, floors = paired(lambda: n / clock(run))
        all_floors += floors
        res[f"pyro_autonormal_{name}_steps_s"] = r
        res["ratio_floor_over_pyro_trace_elbo" if name == "trace_elbo" else "ratio_floor_over_pyro_jit"] = ratio
    m, g = plain_guide(x, y)
    svi8 = pyro.infer.SVI(m, g, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO(num_particles=8))
    res["pyro_autonormal_loop_P8_steps_s"] = 20 / timeit(lambda: [svi8.step(x, y) for _ in range(20)], repeat=2)
    res["floor_det_mlp_steps_s"] = med(all_floors)
    res["floor_rounds"] = rounds
    # each side paired with the floor timed right before it, so a drift of the machine's speed
    # between the two measurements cancels (a ratio of raw rates taken minutes apart does not)
    res["particles8_cost_vs_P1"] = (res["ratio_floor_over_pyrobdl_meanfield_learned_noise_reparam_P8"]
                                    / res["ratio_floor_over_pyrobdl_meanfield_learned_noise_reparam_P1"])
    res["pyro_loop8_cost_vs_pyro_P1"] = res["pyro_autonormal_trace_elbo_steps_s"] / res["pyro_autonormal_loop_P8_steps_s"]
    return res


def bench_grad_variance(quick):
    """Variance of the minibatch ELBO gradient w.r.t. the variational means and scales."""
    torch.manual_seed(0)
    N, B = 1000, 100
    x = torch.linspace(-3, 3, N).unsqueeze(-1)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(N)
    model = BayesianNetwork(make_net(), likelihood=likelihoods.Gaussian(scale=0.1))
    post = inference.MeanField(num_steps=300 if quick else 1500, lr=1e-2, batch_size=B, progress=False).fit(model, x, y)
    idx = torch.randperm(N)[:B]
    xb, yb = x[idx], y[idx]
    params = list(post.guide.parameters())
    out = {}
    reps = 50 if quick else 200
    for est in ("reparam", "local", "flipout"):
        algo = inference.MeanField(estimator=est, progress=False)
        grads = []
        for _ in range(reps):
            ll, lp, ent = algo.elbo_terms(post, xb, yb, N)
            g = torch.autograd.grad(-(ll + lp + ent), params)
            grads.append(torch.cat([t.reshape(-1) for t in g]))
        G = torch.stack(grads)
        out[est] = float(G.var(0).sum())
    out["variance_ratio_reparam_over_local"] = out["reparam"] / out["local"]
    out["variance_ratio_reparam_over_flipout"] = out["reparam"] / out["flipout"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed calls per measurement after one warm-up (default: each measurement's own, 2-5)")
    ap.add_argument("--stat", choices=("median", "min"), default="median",
                    help="summary of the timed calls (default median; min is what older READMEs used)")
    ap.add_argument("--no-sweeps", action="store_true", help="skip the chunk-size and pass-size sweeps")
    ap.add_argument("--parts", default="predict,memory,train,grad_variance",
                    help="comma-separated subset of predict,memory,train,grad_variance")
    args = ap.parse_args(argv)
    global REPEATS, STAT
    REPEATS, STAT = args.repeats, args.stat
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    unknown = parts - {"predict", "memory", "train", "grad_variance"}
    if unknown:
        ap.error(f"unknown --parts: {sorted(unknown)}")
    results = {"torch_threads": torch.get_num_threads(), "repeats": args.repeats, "stat": args.stat,
               "quick": args.quick}
    if "predict" in parts:
        post, _, _ = fitted_posterior()
        results["predict"] = bench_predict(post, args.quick, sweeps=not args.no_sweeps)
    if "memory" in parts:
        results["memory"] = bench_memory()
    if "train" in parts:
        results["train"] = bench_train(args.quick)
    if "grad_variance" in parts:
        results["grad_variance"] = bench_grad_variance(args.quick)
    print(json.dumps(results, indent=2))
    if parts != {"predict", "memory", "train", "grad_variance"}:
        return results
    p, t = results["predict"], results["train"]
    print("\nSummary")
    print(f"  torch threads: {results['torch_threads']}")
    print(f"  predict (a) S=1000 N=100:   {p['a']['speedup_vs_pyro']:.1f}x faster than Pyro Predictive ({p['a']['pyrobdl_s']:.4f} s vs {p['a']['pyro_predictive_s']:.3f} s), {p['a']['ratio_to_floor']:.2f}x the floor")
    print(f"  predict (b) S=100 N=10000:  {p['b']['speedup_vs_pyro']:.1f}x faster than Pyro Predictive ({p['b']['pyrobdl_s']:.4f} s vs {p['b']['pyro_predictive_s']:.3f} s), "
          f"{p['b']['ratio_to_floor']:.2f}x the floor, "
          f"{p['b']['pyrobdl_gflops']:.1f} GFLOP/s (matmul {p['matmul_gflops']:.1f})")
    print(f"  memory (b): naive one pass +{results['memory']['naive_one_pass_extra_mb']:.0f} MB, default +{results['memory']['default_extra_mb']:.0f} MB")
    print(f"  training (learned noise, reparam): pyrobdl {t['pyrobdl_meanfield_P1_steps_s']:.0f} steps/s, floor {t['floor_det_mlp_steps_s']:.0f} steps/s; "
          f"floor/pyrobdl = {t['ratio_floor_over_pyrobdl_P1']:.2f}, floor/Pyro Trace_ELBO = {t['ratio_floor_over_pyro_trace_elbo']:.1f}, "
          f"floor/Pyro JitTrace_ELBO = {t['ratio_floor_over_pyro_jit']:.1f}")
    print(f"  training against a floor with tanh as 2*sigmoid(2x)-1 ({t['floor_det_mlp_sigmoid_tanh_steps_s']:.0f} steps/s): "
          f"floor/pyrobdl = {t['ratio_sigmoid_tanh_floor_over_pyrobdl_P1']:.2f}")
    for noise, est in (("fixed", "reparam"), ("learned", "local"), ("fixed", "local")):
        print(f"  training ({noise} noise, {est}): floor/pyrobdl = "
              f"{t[f'ratio_floor_over_pyrobdl_meanfield_{noise}_noise_{est}_P1']:.2f}")
    print(f"  8 particles cost {t['particles8_cost_vs_P1']:.2f}x one (Pyro loop: {t['pyro_loop8_cost_vs_pyro_P1']:.2f}x)")
    gv = results["grad_variance"]
    print(f"  gradient variance reparam/local = {gv['variance_ratio_reparam_over_local']:.1f}, reparam/flipout = {gv['variance_ratio_reparam_over_flipout']:.1f}")
    return results


if __name__ == "__main__":
    main()

"""pyrobdl on a GPU against the same code on the CPU, plain Pyro on the GPU, and the GPU floor.

Run:  python benchmarks/bench_gpu.py [--quick] [--out results.json]

Needs CUDA (exits with a message otherwise). Every timing synchronises the device
and is the best of several repeats after a warm-up. On the 1→50→50→1 tanh net
(and a wider 1→256→256→1 net, where the arithmetic per step is larger) it prints:

* predictive sampling, ``posterior.predict(x, num_samples=S)`` on CUDA vs the same
  call on the CPU vs ``pyro.infer.Predictive`` on CUDA (the plain-Pyro BNN of
  ``bench_svi.py``) vs the floor (a plain batched forward pass of pre-sampled
  weights on CUDA);
* mean-field SVI training steps/s on CUDA vs the CPU vs a deterministic MLP
  with Adam on CUDA (the floor), full batch at N=1,000 and N=100,000;
* a 5-member deep ensemble's training epoch on CUDA vs the CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import pyro
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyro.distributions as dist  # noqa: E402
from pyro.nn import PyroModule, PyroSample  # noqa: E402

from pyrobdl import BayesianNetwork, inference, likelihoods, priors  # noqa: E402

H = 50
#: the accelerator measured (``--device``; ``cpu`` only to dry-run this script)
GPU = torch.device("cuda")


class PlainPyroBNN(PyroModule):
    """The plain-Pyro BNN of ``bench_svi.py``, with its priors on ``device``
    (Pyro's tutorial way puts them on the CPU, which fails on CUDA inputs)."""

    def __init__(self, device):
        super().__init__()
        zero, one = torch.zeros((), device=device), torch.ones((), device=device)
        self.one = one
        self.l1 = PyroModule[nn.Linear](1, H).to(device)
        self.l2 = PyroModule[nn.Linear](H, H).to(device)
        self.l3 = PyroModule[nn.Linear](H, 1).to(device)
        for layer in (self.l1, self.l2, self.l3):
            layer.weight = PyroSample(dist.Normal(zero, one).expand(layer.weight.shape).to_event(2))
            layer.bias = PyroSample(dist.Normal(zero, one).expand(layer.bias.shape).to_event(1))

    def forward(self, x, y=None):
        h = torch.tanh(self.l1(x))
        h = torch.tanh(self.l2(h))
        mu = self.l3(h).squeeze(-1)
        sigma = pyro.sample("sigma", dist.HalfNormal(self.one))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mu, sigma), obs=y)
        return mu


def make_net(h):
    return nn.Sequential(nn.Linear(1, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 1))


def timeit(fn, device, repeat=5):
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def data(n, device):
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-3, 3, n).unsqueeze(-1)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(n, generator=g)
    return x.to(device), y.to(device)


def fitted(h, device, steps=100):
    x, y = data(1000, device)
    model = BayesianNetwork(make_net(h), prior=priors.Normal(0.0, 1.0), likelihood=likelihoods.Gaussian())
    return inference.MeanField(num_steps=steps, progress=False).fit(model, x, y)


def bench_predict(quick):
    cuda, cpu = GPU, torch.device("cpu")
    rows = []
    post_gpu = fitted(50, cuda)
    post_cpu = fitted(50, cuda).to(cpu)
    cases = [(1000, 100), (100, 10_000), (1000, 100_000)]
    if quick:
        cases = [(100, 100), (10, 1000)]
    for S, N in cases:
        xg = torch.linspace(-4, 4, N, device=cuda).unsqueeze(-1)
        xc = xg.cpu()
        r = {"S": S, "N": N}
        r["pyrobdl_cuda_s"] = timeit(lambda: post_gpu.predict(xg, num_samples=S), cuda)
        r["pyrobdl_cpu_s"] = timeit(lambda: post_cpu.predict(xc, num_samples=S), cpu, repeat=2 if N * S > 1e7 else 3)
        if S * N <= 1_000_000:
            pyro.clear_param_store()
            m = PlainPyroBNN(cuda)
            g = pyro.infer.autoguide.AutoNormal(m)
            g(xg[:10], torch.zeros(10, device=cuda))
            r["pyro_predictive_cuda_s"] = timeit(lambda: pyro.infer.Predictive(m, guide=g, num_samples=S)(xg), cuda, repeat=1)
        lat = post_gpu.sample_latents(S)
        W = post_gpu.model.split_values(lat)[0]

        def floor():
            h = torch.tanh(torch.baddbmm(W["0.bias"].unsqueeze(1), xg.expand(S, N, 1), W["0.weight"].transpose(1, 2)))
            h = torch.tanh(torch.baddbmm(W["2.bias"].unsqueeze(1), h, W["2.weight"].transpose(1, 2)))
            return torch.baddbmm(W["4.bias"].unsqueeze(1), h, W["4.weight"].transpose(1, 2))

        with torch.no_grad():
            r["floor_cuda_s"] = timeit(floor, cuda)
        r["cuda_speedup_vs_cpu"] = r["pyrobdl_cpu_s"] / r["pyrobdl_cuda_s"]
        r["cuda_ratio_to_floor"] = r["pyrobdl_cuda_s"] / r["floor_cuda_s"]
        if "pyro_predictive_cuda_s" in r:
            r["cuda_speedup_vs_pyro_predictive_cuda"] = r["pyro_predictive_cuda_s"] / r["pyrobdl_cuda_s"]
        rows.append(r)
    return rows


def bench_train(quick):
    rows = []
    steps = 50 if quick else 300
    for h, N in ((50, 1000), (50, 100_000), (256, 100_000)) if not quick else ((50, 1000), (50, 10_000)):
        r = {"hidden": h, "N": N}
        for dev in ("cuda", "cpu"):
            device = GPU if dev == "cuda" else torch.device("cpu")
            x, y = data(N, device)
            model = BayesianNetwork(make_net(h), likelihood=likelihoods.Gaussian())
            n_steps = steps if dev == "cuda" or N <= 1000 else max(steps // 10, 20)
            short = inference.MeanField(num_steps=n_steps // 5, progress=False)
            long = inference.MeanField(num_steps=n_steps, progress=False)
            t_s = timeit(lambda: short.fit(model, x, y), device, repeat=2)
            t_l = timeit(lambda: long.fit(model, x, y), device, repeat=2)
            r[f"meanfield_{dev}_steps_s"] = (n_steps - n_steps // 5) / max(t_l - t_s, 1e-9)
            if dev == "cuda":
                net = make_net(h).to(device)
                opt = torch.optim.Adam(net.parameters(), 1e-3)

                def det():
                    for _ in range(n_steps):
                        loss = (net(x).squeeze(-1) - y).pow(2).mean()
                        opt.zero_grad()
                        loss.backward()
                        opt.step()

                r["floor_det_mlp_cuda_steps_s"] = n_steps / timeit(det, device, repeat=2)
        if "meanfield_cpu_steps_s" in r:
            r["cuda_speedup_vs_cpu"] = r["meanfield_cuda_steps_s"] / r["meanfield_cpu_steps_s"]
        r["cuda_floor_over_pyrobdl"] = r["floor_det_mlp_cuda_steps_s"] / r["meanfield_cuda_steps_s"]
        rows.append(r)
    return rows


def bench_ensemble(quick):
    rows = []
    for N in (1000, 100_000) if not quick else (1000,):
        r = {"N": N, "size": 5}
        for dev in ("cuda", "cpu"):
            device = GPU if dev == "cuda" else torch.device("cpu")
            x, y = data(N, device)
            model = BayesianNetwork(make_net(50), likelihood=likelihoods.Gaussian())
            epochs = 2 if N > 10_000 else 5
            algo = inference.DeepEnsemble(size=5, epochs=epochs, batch_size=500, progress=False)
            r[f"ensemble_{dev}_s_per_epoch"] = timeit(lambda: algo.fit(model, x, y), device, repeat=2) / epochs
        r["cuda_speedup_vs_cpu"] = r["ensemble_cpu_s_per_epoch"] / r["ensemble_cuda_s_per_epoch"]
        rows.append(r)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cuda", help="the accelerator (cpu only to dry-run the script)")
    args = ap.parse_args(argv)
    global GPU
    GPU = torch.device(args.device)
    if GPU.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu.py needs a CUDA device (torch.cuda.is_available() is False)")
        return 0
    res = {"device": torch.cuda.get_device_name(0) if GPU.type == "cuda" else str(GPU), "torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
    res["predict"] = bench_predict(args.quick)
    res["train"] = bench_train(args.quick)
    res["ensemble"] = bench_ensemble(args.quick)
    print(json.dumps(res, indent=2))
    print("\nSummary (CUDA:", res["device"], "| CPU threads:", res["cpu_threads"], ")")
    for r in res["predict"]:
        extra = f", {r['cuda_speedup_vs_pyro_predictive_cuda']:.0f}x faster than Pyro Predictive on CUDA" if "cuda_speedup_vs_pyro_predictive_cuda" in r else ""
        print(f"  predict S={r['S']} N={r['N']}: CUDA {r['pyrobdl_cuda_s'] * 1e3:.1f} ms, CPU {r['pyrobdl_cpu_s'] * 1e3:.1f} ms "
              f"({r['cuda_speedup_vs_cpu']:.1f}x), {r['cuda_ratio_to_floor']:.2f}x the CUDA floor{extra}")
    for r in res["train"]:
        cpu = f", CPU {r['meanfield_cpu_steps_s']:.0f} ({r['cuda_speedup_vs_cpu']:.1f}x)" if "meanfield_cpu_steps_s" in r else ""
        print(f"  mean-field training h={r['hidden']} N={r['N']}: CUDA {r['meanfield_cuda_steps_s']:.0f} steps/s{cpu}; "
              f"floor/pyrobdl on CUDA {r['cuda_floor_over_pyrobdl']:.2f}")
    for r in res["ensemble"]:
        print(f"  ensemble (5) epoch N={r['N']}: CUDA {r['ensemble_cuda_s_per_epoch']:.3f} s, CPU {r['ensemble_cpu_s_per_epoch']:.3f} s "
              f"({r['cuda_speedup_vs_cpu']:.1f}x)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The README's CPU speed numbers: one command measures them, one renders the README from them.

Run::

    python benchmarks/readme.py --out benchmarks/results/cpu.json     # measure (about 12 min, 2 quiet cores)
    python benchmarks/readme.py --out benchmarks/results/cpu.json --render   # measure, then render
    python benchmarks/readme.py --render benchmarks/results/cpu.json  # rewrite the README's tables from it
    python benchmarks/readme.py --check benchmarks/results/cpu.json   # exit 1 if the README differs from it
    python benchmarks/readme.py --compare OLD.json NEW.json           # NEW/OLD per number, flag outside ±20%
    python benchmarks/readme.py --quick --out /tmp/quick-check.json   # smoke test (minutes), not a measurement

What a measurement fixes and records (``conditions`` and ``protocol`` in the JSON):

* **Threads.** Each thread count (default 1 and 2) runs in its own fresh process (so thread
  pools start clean) with ``torch.set_num_threads(T)`` and ``OMP_NUM_THREADS``,
  ``MKL_NUM_THREADS`` and ``OPENBLAS_NUM_THREADS`` set to ``T``; the README shows one column per
  thread count. The environment the command itself was started with is recorded too.
* **Statistic.** Every time is the median of ``--repeats`` (default 5) timed calls after one
  warm-up call, never a minimum; ratios are of the medians, except the SVI training ratios,
  which are the median over paired rounds (the floor timed right before each measured run) of
  the ratio within the round.
* **``pyro.infer.Predictive``** is timed warm like ``predict``: built once, one warm-up call,
  then paired rounds with ``predict`` (one call of each, back to back), the speed-up the median
  of the per-round ratios (``parallel=False``, its default; ``parallel=True`` fails on the
  tutorial-style model). The first call of each, set-up included, is recorded in the JSON but
  not shown: it includes one-time set-up and did not reproduce (2.9x-11.8x across runs).
* **SVI training** against the floor (a deterministic MLP trained with Adam on a squared error):
  pyrobdl's mean-field with the noise scale learned (``likelihoods.Gaussian()``, the default)
  and fixed (``likelihoods.Gaussian(scale=0.1)``: the floor's squared error is a fixed-noise
  Gaussian, so this is the like-for-like row), each with ``estimator="reparam"`` (the default)
  and ``estimator="local"`` (local reparameterisation: lower gradient variance, more work per
  step).
* CPU model (``/proc/cpuinfo``), core count, torch/Pyro/pyrobdl/Python versions, date, git
  commit (and whether the tree had uncommitted changes), load average before and after.

The README section this writes is the ``### CPU speed`` subsection of ``## Performance``, from
that heading to the next heading (HTML-comment markers would break the docs build, whose
markdown converter rejects HTML; ``docs/which_method.rst`` renders this section).
``tests/test_readme_benchmarks.py`` checks that the README equals the rendering of the
committed ``benchmarks/results/cpu.json``.
"""
from __future__ import annotations

import argparse
import datetime
import difflib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
README = os.path.join(ROOT, "README.md")
DEFAULT_JSON = os.path.join(HERE, "results", "cpu.json")
SCHEMA = 1

# The generated region: from this heading line up to (not including) the next heading of level 1-3.
BEGIN = "### CPU speed"
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
TOLERANCE = 0.20  # --compare flags NEW/OLD outside [1 - TOLERANCE, 1 + TOLERANCE]


# ============================================================================ measuring
def _recorded_env(env=None) -> Dict[str, str]:
    env = os.environ if env is None else env
    prefixes = ("OMP_", "OPENBLAS_", "MKL_", "KMP_", "GOMP_", "TORCH_", "PYTORCH_")
    return {k: v for k, v in sorted(env.items()) if k.startswith(prefixes)}


def _cpu_model() -> Optional[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git(*args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def conditions() -> Dict[str, Any]:
    """What the numbers depend on, recorded next to them."""
    import pyro
    import torch

    import pyrobdl

    dirty = _git("status", "--porcelain", "--untracked-files=no")
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_uncommitted_changes": None if dirty is None else dirty.splitlines(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "pyrobdl": pyrobdl.__version__,
        "env_at_start": _recorded_env(),
        "load_average_start": list(os.getloadavg()),
    }


def worker(threads: int, repeats: int, quick: bool, extras: bool, out_path: str) -> None:
    """One thread count, in this (fresh) process: bench_svi and bench_baselines, results to ``out_path``."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, HERE)
    import bench_baselines
    import bench_svi

    t0 = time.perf_counter()
    parts = "predict,train" + (",memory,grad_variance" if extras else "")
    argv = ["--threads", str(threads), "--repeats", str(repeats), "--no-sweeps", "--parts", parts]
    svi = bench_svi.main(argv + (["--quick"] if quick else []))
    t1 = time.perf_counter()
    argv = ["--threads", str(threads), "--repeats", str(repeats)]
    base = bench_baselines.main(argv + (["--quick"] if quick else []))
    t2 = time.perf_counter()
    result = {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "env": _recorded_env(),
        "parallel_info": torch.__config__.parallel_info(),
        "svi": svi,
        "baselines": {k: v for k, v in base.items() if k != "threads"} | base["threads"][str(threads)],
        "wall_s": {"svi": t1 - t0, "baselines": t2 - t1},
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)


def measure(out: str, threads: Sequence[int], repeats: int, quick: bool) -> Dict[str, Any]:
    t_start = time.perf_counter()
    data: Dict[str, Any] = {
        "schema": SCHEMA,
        "command": " ".join(["python", "benchmarks/readme.py"] + sys.argv[1:]),
        "quick": quick,
        "conditions": conditions(),
        "protocol": {
            "repeats": repeats,
            "statistic": "median of the timed calls after one warm-up call; ratios of the medians",
            "threads": "each thread count in its own fresh process: torch.set_num_threads(T) and "
                       + ", ".join(f"{k}=T" for k in THREAD_ENV),
            "predictive": "pyro.infer.Predictive(parallel=False) built once, one warm-up call, then the timed "
                          "calls (warm, like predict); *_first_call_s: the first call, set-up included",
            "training": "steps/s from the difference of a short and a long fit (fit()'s set-up not counted); "
                        "pyrobdl mean-field with learned noise (Gaussian()) and fixed noise (Gaussian(scale=0.1)), "
                        "each with estimator='reparam' and 'local'; the floor: a deterministic MLP, squared "
                        "error, Adam",
            "memory_and_gradient_variance": f"measured in the {threads[0]}-thread run only",
        },
        "threads": {},
    }
    for k, T in enumerate(threads):
        env = dict(os.environ, **{name: str(T) for name in THREAD_ENV})
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "worker.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(T), "--worker-out", path,
                   "--repeats", str(repeats)] + (["--quick"] if quick else []) + (["--worker-extras"] if k == 0 else [])
            print(f"\n##### {T} thread(s): {' '.join(cmd[1:])}", flush=True)
            subprocess.run(cmd, env=env, check=True)
            with open(path, encoding="utf-8") as f:
                data["threads"][str(T)] = json.load(f)
    data["conditions"]["load_average_end"] = list(os.getloadavg())
    data["total_wall_s"] = time.perf_counter() - t_start
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.write("\n")
    print(f"\nwrote {out} ({data['total_wall_s']:.0f} s)")
    return data


# ============================================================================ rendering
def get(d: Any, path: str) -> Any:
    """``d["a"]["b"]`` for ``path="a.b"``; None where anything is missing."""
    for key in path.split("."):
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def fx(r: Optional[float]) -> str:
    """A ratio: 86×, 4.0×, 0.86×."""
    if not _num(r):
        return "—"
    if r >= 20:
        return f"{r:,.0f}×"
    return f"{r:.1f}×" if r >= 1 else f"{r:.2f}×"


def fs(t: Optional[float], unit: str = "s") -> str:
    """A time with two significant digits: 0.025 s, 2.2 s, 14 s."""
    if not _num(t):
        return "—"
    if t >= 10:
        return f"{t:,.0f} {unit}"
    return f"{float(f'{t:.2g}'):g} {unit}"


def fn(x: Optional[float]) -> str:
    """A count or rate, rounded to a whole number: 1,234."""
    return f"{x:,.0f}" if _num(x) else "—"


def fg(x: Optional[float]) -> str:
    """A rate: 48, 4.1."""
    return ("—" if not _num(x) else f"{x:,.0f}" if x >= 10 else f"{x:.1f}")


def fpct(r: Optional[float]) -> str:
    return f"{100 * r:.0f}%" if _num(r) else "—"


class Row:
    """One table row: ``cell(thread_data) -> (text, value)``; ``goal(value) -> bool`` if the row has a goal."""

    def __init__(self, what: str, setting: str, cell: Callable[[dict], Tuple[str, Optional[float]]],
                 goal: str = "", check: Optional[Callable[[float], bool]] = None):
        self.what, self.setting, self.cell, self.goal, self.check = what, setting, cell, goal, check


def _ratio_cell(path: str, detail: Callable[[dict], str] = lambda t: "", bold: bool = False):
    def cell(t):
        v = get(t, path)
        text = fx(v)
        if bold and text != "—":
            text = f"**{text}**"
        d = detail(t) if _num(v) else ""
        return (f"{text} ({d})" if d else text), v

    return cell


def _goal_text(row: Row, values: List[Tuple[str, Optional[float]]]) -> str:
    if not row.goal:
        return ""
    checked = [(label, row.check(v)) for label, v in values if _num(v)]
    if not checked:
        return row.goal
    met = [label for label, ok in checked if ok]
    if len(met) == len(checked):
        status = "met"
    elif not met:
        status = "not met"
    else:
        status = "met at " + ", ".join(met) + " only"
    return f"{row.goal}: {status}"


def _thread_label(T: str) -> str:
    return f"{T} thread" if T == "1" else f"{T} threads"


def _predict_rows() -> List[Row]:
    def times(tag, ours, theirs):
        return lambda t: f"{fs(get(t, f'svi.predict.{tag}.{ours}'))} vs {fs(get(t, f'svi.predict.{tag}.{theirs}'))}"

    def rate(t):
        p = get(t, "svi.predict.b.pyrobdl_gflops")
        floor, mm = get(t, "svi.predict.b.floor_gflops"), get(t, "svi.predict.matmul_gflops")
        if not _num(p):
            return "—", None
        parts = [f"{fg(p)} GFLOP/s"]
        # paired ratios where the JSON has them (predict, the pass and the matmul back to back per round)
        r_floor = get(t, "svi.predict.b.rate_over_floor_rate")
        r_mm = get(t, "svi.predict.b.rate_over_matmul_rate")
        if _num(floor):
            parts.append(f"{fx(r_floor if _num(r_floor) else p / floor)} the rate of a one-shot `baddbmm` pass ({fg(floor)})")
        if _num(mm):
            parts.append(f"{fpct(r_mm if _num(r_mm) else p / mm)} of a 2,000² matmul's ({fg(mm)})")
        return "; ".join(parts), p

    def memory(t):
        d, naive = get(t, "svi.memory.default_extra_mb"), get(t, "svi.memory.naive_one_pass_extra_mb")
        if not _num(d):
            return "—", None
        return f"+{d:.0f} MB (one-shot batched pass +{naive:.0f} MB)" if _num(naive) else f"+{d:.0f} MB", d

    warm = "both warm: built once, one warm-up call each, then paired rounds (one call of each, back to back), the median ratio; `Predictive(parallel=False)`"
    return [
        Row("predictive, S=1,000 samples, N=100 inputs: `predict` vs `pyro.infer.Predictive`", warm,
            _ratio_cell("svi.predict.a.speedup_vs_pyro", times("a", "pyrobdl_s", "pyro_predictive_s"), bold=True),
            "≥ 20×", lambda v: v >= 20),
        Row("predictive, S=100, N=10,000: `predict` vs `pyro.infer.Predictive`", warm,
            _ratio_cell("svi.predict.b.speedup_vs_pyro", times("b", "pyrobdl_s", "pyro_predictive_s"), bold=True),
            "≥ 3.5×", lambda v: v >= 3.5),
        Row("`predict`'s arithmetic rate, S=100, N=10,000", "warm; beside the rate of a one-shot batched pass of "
            "pre-sampled weights and of a square matmul, same process", rate),
        Row("`predict`'s extra peak memory, S=100, N=10,000", "default bound (512 MiB); each in a fresh process",
            memory),
    ]


def _train_rows() -> List[Row]:
    noise_text = {"fixed": "fixed noise, `Gaussian(scale=0.1)`", "learned": "learned noise, `Gaussian()` (the default)"}
    est_text = {"reparam": '`estimator="reparam"` (the default)', "local": '`estimator="local"`'}
    rows = []
    for k, (noise, est) in enumerate([("fixed", "reparam"), ("learned", "reparam"), ("fixed", "local"),
                                       ("learned", "local")]):
        key = f"pyrobdl_meanfield_{noise}_noise_{est}_P1"

        def detail(t, key=key):
            fallback = get(t, f"svi.train.{key}_steps_s_fallback_long_fit_rate")
            return (f"{fn(get(t, f'svi.train.{key}_steps_s'))} vs {fn(get(t, 'svi.train.floor_det_mlp_steps_s'))} "
                    f"steps/s" + ("; the long fit's rate, set-up included: the short and long fits' times "
                                   "were too noisy to subtract" if fallback else ""))

        what = ("mean-field SVI, N=1,000 full batch: time per step / the floor's (a deterministic MLP, squared "
                "error, Adam)") if k == 0 else "the same"
        goal = ("≤ 2×", lambda v: v <= 2) if est == "reparam" else ("", None)
        rows.append(Row(what, f"{noise_text[noise]}, {est_text[est]}",
                        _ratio_cell(f"svi.train.ratio_floor_over_{key}", detail, bold=est == "reparam"), *goal))

    def steps(path, floor="floor_det_mlp_steps_s"):
        return lambda t: f"{fn(get(t, f'svi.train.{path}'))} vs {fn(get(t, f'svi.train.{floor}'))} steps/s"

    def particles(t):
        v, loop = get(t, "svi.train.particles8_cost_vs_P1"), get(t, "svi.train.pyro_loop8_cost_vs_pyro_P1")
        return (f"{fx(v)} the time of 1 (Pyro's loop over 8: {fx(loop)})" if _num(v) else "—"), v

    def gradvar(t):
        lo, fl = (get(t, "svi.grad_variance.variance_ratio_reparam_over_local"),
                  get(t, "svi.grad_variance.variance_ratio_reparam_over_flipout"))
        if not _num(lo):
            return "—", None
        return f"local reparameterisation {fx(lo)} lower, flipout {fx(fl)} lower than reparam", lo

    learned = f"{noise_text['learned']}, {est_text['reparam']}"
    rows += [
        Row("the same against the floor with tanh as 2σ(2x)−1 (as pyrobdl computes it on the CPU)", learned,
            _ratio_cell("svi.train.ratio_sigmoid_tanh_floor_over_pyrobdl_P1",
                        steps("pyrobdl_meanfield_P1_steps_s", "floor_det_mlp_sigmoid_tanh_steps_s"))),
        Row("plain Pyro `AutoNormal` + `Trace_ELBO`: time per step / the floor's", "learned noise (σ ~ HalfNormal)",
            _ratio_cell("svi.train.ratio_floor_over_pyro_trace_elbo", steps("pyro_autonormal_trace_elbo_steps_s"))),
        Row("plain Pyro `AutoNormal` + `JitTrace_ELBO`", "learned noise (σ ~ HalfNormal)",
            _ratio_cell("svi.train.ratio_floor_over_pyro_jit", steps("pyro_autonormal_jit_trace_elbo_steps_s"))),
        Row("8 vectorised particles: time per step", learned, particles),
        Row("gradient variance, minibatch 100, ELBO gradient w.r.t. the guide", "fixed noise, after 1,500 steps", gradvar),
    ]
    return rows


def _baseline_rows(data: dict) -> List[Row]:
    first = next(iter(data.get("threads", {}).values()), {})
    settings = get(first, "baselines.settings") or {}
    n_train = get(first, "baselines.n_train")
    rows = []
    what = ("deep ensemble (5 members), time per epoch: a plain loop over the members / `DeepEnsemble`"
            + (f" ({n_train:,} training points)" if _num(n_train) else ""))
    for key, label in (("uci", "UCI settings"), ("full_batch", "full batch")):
        s = settings.get(key, {})
        desc = f"{label}: {s.get('epochs', '?')} epochs" + (f", batch {s['batch_size']}" if s.get("batch_size") else "")
        for variant, adam in (("loop", "torch's default Adam"), ("loop_fused", "fused Adam")):
            def detail(t, key=key, variant=variant):
                return (f"{fs(get(t, f'baselines.ensemble.{key}.{variant}.median_ms'), 'ms')} vs "
                        f"{fs(get(t, f'baselines.ensemble.{key}.vec.median_ms'), 'ms')}")

            goal = ("≥ 3×", lambda v: v >= 3) if (key, variant) == ("uci", "loop") else ("", None)
            rows.append(Row(what if not rows else "the same", f"{desc}; the loop with {adam}",
                            _ratio_cell(f"baselines.ensemble.{key}.ratio_{variant}", detail,
                                        bold=(key, variant) == ("uci", "loop")), *goal))
    sizes = sorted((get(first, "baselines.dropout") or {}).keys(), key=int)
    for variant, what in (("a", "MC-dropout predict, S=100: 100 forward passes with `nn.Dropout` on / `predict`"),
                          ("b", "the same against 100 passes with one mask per pass (`predict`'s semantics)")):
        for j, n in enumerate(sizes):
            def detail(t, n=n, variant=variant):
                return (f"{fs(get(t, f'baselines.dropout.{n}.{variant}.median_ms'), 'ms')} vs "
                        f"{fs(get(t, f'baselines.dropout.{n}.batched.median_ms'), 'ms')}")

            goal = ("≥ 10×", lambda v: v >= 10) if variant == "a" else ("", None)
            rows.append(Row(what if j == 0 else "the same", f"N={int(n):,} test inputs",
                            _ratio_cell(f"baselines.dropout.{n}.ratio_{variant}", detail, bold=variant == "a"), *goal))
    return rows


def _table(rows: List[Row], data: dict) -> List[str]:
    """A markdown table: one column per thread count in ``data``."""
    threads = sorted(data.get("threads", {}), key=int)
    head = ["what", "setting"] + [_thread_label(T) for T in threads] + ["goal"]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = [row.cell(data["threads"][T]) for T in threads]
        goal = _goal_text(row, [(_thread_label(T), v) for T, (_, v) in zip(threads, cells)])
        out.append("| " + " | ".join([row.what, row.setting] + [c for c, _ in cells] + [goal]) + " |")
    return out


def _conditions_text(data: dict) -> str:
    c = data.get("conditions", {})
    p = data.get("protocol", {})
    commit = (c.get("git_commit") or "unknown")[:7]
    dirty = " with uncommitted changes" if c.get("git_uncommitted_changes") else ""
    date = (c.get("date") or "?")[:10]
    cores = c.get("cpus_usable") or c.get("cpu_count")
    env = c.get("env_at_start") or {}
    env_text = ("; the command's own environment set " + ", ".join(f"`{k}={v}`" for k, v in env.items())
                if env else "")
    load = c.get("load_average_start")
    load_text = f" The load average was {load[0]:.1f} when it started." if load else ""
    text = (f"Measured by `{data.get('command', 'python benchmarks/readme.py')}` on {date} at commit `{commit}`"
            f"{dirty}: {c.get('cpu_model') or 'unknown CPU'}, {cores} cores, torch {c.get('torch')}, "
            f"Pyro {c.get('pyro')}, Python {c.get('python')}; the 1→50→50→1 tanh net. Each thread count ran "
            f"in its own fresh process with `torch.set_num_threads` and "
            + ", ".join(f"`{k}`" for k in THREAD_ENV)
            + f" set to it{env_text}. Every time is the median of {p.get('repeats', '?')} timed calls after one "
            f"warm-up call. Every ratio between two timed things is the median over paired rounds of the ratio "
            f"within a round (one call of each side back to back; for SVI training the floor timed right before "
            f"each measured run, in {get(data, 'threads.1.svi.train.floor_rounds') or 'the'} rounds; the 8-particle "
            "cost is the ratio of the two paired ratios to the floor), so a drift of the machine's speed moves "
            "both sides; "
            "memory and gradient variance were measured in "
            f"the first thread count's run only.{load_text}")
    if data.get("quick"):
        text = "**Quick mode (`--quick`): a smoke test of the script, not a measurement.** " + text
    return text


def render(data: dict) -> str:
    """The README's ``### CPU speed`` subsection (heading included), from a measurement's JSON."""
    lines = [BEGIN, "", _conditions_text(data), "",
             "Predictive sampling and mean-field SVI (`benchmarks/bench_svi.py`):", ""]
    lines += _table(_predict_rows() + _train_rows(), data)
    lines += ["", "Baselines (`benchmarks/bench_baselines.py`; ratio = the loop's time / pyrobdl's):", ""]
    lines += _table(_baseline_rows(data), data)
    lines += ["", "Written by `python benchmarks/readme.py --render benchmarks/results/cpu.json` from the "
              "measurement in that file; `tests/test_readme_benchmarks.py` fails when the two differ, so "
              "edit the measurement, not these tables."]
    return "\n".join(lines) + "\n"


# ============================================================================ the README region
def region_bounds(text: str, begin: str = BEGIN) -> Tuple[int, int]:
    """Line indices ``[start, end)`` of a generated region: the ``begin`` heading up to the next
    heading of level 1-3 (or the end of the file)."""
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if line.rstrip() == begin]
    if len(starts) != 1:
        raise ValueError(f"README must have exactly one {begin!r} line, found {len(starts)}")
    start = starts[0]
    end = len(lines)
    fence = False
    for i in range(start + 1, len(lines)):
        if lines[i].lstrip().startswith("```"):
            fence = not fence
        if not fence and lines[i].startswith("#") and lines[i].split(" ", 1)[0] in ("#", "##", "###"):
            end = i
            break
    return start, end


def extract_region(text: str, begin: str = BEGIN) -> str:
    start, end = region_bounds(text, begin)
    return "\n".join(text.split("\n")[start:end]).rstrip("\n") + "\n"


def replace_region(text: str, region: str, begin: str = BEGIN) -> str:
    start, end = region_bounds(text, begin)
    lines = text.split("\n")
    new = region.rstrip("\n").split("\n") + ([""] if end < len(lines) else [])
    return "\n".join(lines[:start] + new + lines[end:])


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if data.get("schema") != SCHEMA:
        raise SystemExit(f"{path}: schema {data.get('schema')!r}, this script reads {SCHEMA}")
    return data


def check(json_path: str, readme: str = README) -> List[str]:
    """The diff between the README's region and the JSON's rendering (empty: they agree)."""
    with open(readme, encoding="utf-8") as f:
        current = extract_region(f.read())
    expected = render(load(json_path))
    return list(difflib.unified_diff(current.splitlines(), expected.splitlines(), "README.md",
                                     f"rendered from {os.path.relpath(json_path, ROOT)}", lineterm=""))


# ============================================================================ comparing two runs
# (label, path inside one thread count's results): the numbers the README shows. Ratios are what
# a re-run must reproduce (within ±TOLERANCE); absolute times and rates (ABSOLUTE) move with the
# machine's speed and are listed without a flag, as are the first-call speed-ups (one-time set-up).
ABSOLUTE = ("_s", "gflops", "_mb", "steps_s", "first_calls")
HEADLINE: List[Tuple[str, str]] = [
    ("predict S=1000 N=100: speed-up vs Predictive (warm)", "svi.predict.a.speedup_vs_pyro"),
    ("predict S=1000 N=100: pyrobdl s", "svi.predict.a.pyrobdl_s"),
    ("predict S=1000 N=100: Predictive s", "svi.predict.a.pyro_predictive_s"),
    ("predict S=1000 N=100: speed-up, first calls", "svi.predict.a.speedup_vs_pyro_first_calls"),
    ("predict S=100 N=10000: speed-up vs Predictive (warm)", "svi.predict.b.speedup_vs_pyro"),
    ("predict S=100 N=10000: pyrobdl s", "svi.predict.b.pyrobdl_s"),
    ("predict S=100 N=10000: Predictive s", "svi.predict.b.pyro_predictive_s"),
    ("predict S=100 N=10000: speed-up, first calls", "svi.predict.b.speedup_vs_pyro_first_calls"),
    ("predict S=100 N=10000: GFLOP/s", "svi.predict.b.pyrobdl_gflops"),
    ("one-shot baddbmm pass GFLOP/s", "svi.predict.b.floor_gflops"),
    ("predict S=100 N=10000: rate / one-shot baddbmm pass rate", "svi.predict.b.rate_over_floor_rate"),
    ("predict S=100 N=10000: rate / 2000x2000 matmul rate", "svi.predict.b.rate_over_matmul_rate"),
    ("2000x2000 matmul GFLOP/s", "svi.predict.matmul_gflops"),
    ("predict extra peak memory MB", "svi.memory.default_extra_mb"),
    ("floor steps/s", "svi.train.floor_det_mlp_steps_s"),
] + [
    (f"mean-field {noise} noise {est}: time/step over the floor's",
     f"svi.train.ratio_floor_over_pyrobdl_meanfield_{noise}_noise_{est}_P1")
    for noise in ("fixed", "learned") for est in ("reparam", "local")
] + [
    ("mean-field vs sigmoid-tanh floor", "svi.train.ratio_sigmoid_tanh_floor_over_pyrobdl_P1"),
    ("Pyro Trace_ELBO: time/step over the floor's", "svi.train.ratio_floor_over_pyro_trace_elbo"),
    ("Pyro JitTrace_ELBO: time/step over the floor's", "svi.train.ratio_floor_over_pyro_jit"),
    ("8 particles: time/step over 1's", "svi.train.particles8_cost_vs_P1"),
    ("gradient variance reparam/local", "svi.grad_variance.variance_ratio_reparam_over_local"),
    ("ensemble UCI: loop (default Adam) / DeepEnsemble", "baselines.ensemble.uci.ratio_loop"),
    ("ensemble UCI: loop (fused Adam) / DeepEnsemble", "baselines.ensemble.uci.ratio_loop_fused"),
    ("ensemble full batch: loop (default Adam) / DeepEnsemble", "baselines.ensemble.full_batch.ratio_loop"),
    ("ensemble full batch: loop (fused Adam) / DeepEnsemble", "baselines.ensemble.full_batch.ratio_loop_fused"),
] + [
    (f"MC dropout N={n}: loop ({v}) / predict", f"baselines.dropout.{n}.ratio_{v}")
    for v in ("a", "b") for n in (10, 100, 1000)
]


def _leaves(d: Any, prefix: str = "") -> Dict[str, float]:
    out: Dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    elif _num(d):
        out[prefix] = float(d)
    return out


def compare(old: dict, new: dict, every: bool = False, tolerance: float = TOLERANCE) -> Tuple[List[str], int]:
    """Lines of a NEW/OLD table and the number of numbers outside ±``tolerance``."""
    lines = []
    flagged = 0
    threads = [T for T in sorted(new.get("threads", {}), key=int) if T in old.get("threads", {})]
    for T in threads:
        o, n = old["threads"][T], new["threads"][T]
        if every:
            lo, ln = _leaves(o), _leaves(n)
            items = [(p, p) for p in lo if p in ln and not p.endswith((".n", "repeats", "torch_threads",
                                                                           "torch_interop_threads"))]
        else:
            items = HEADLINE
        lines.append(f"\n{_thread_label(T)}:")
        lines.append(f"  {'number':<58} {'old':>10} {'new':>10} {'new/old':>8}")
        for label, path in items:
            a, b = get(o, path), get(n, path)
            if not (_num(a) and _num(b)):
                continue
            r = b / a if a else float("inf")
            if path.endswith(ABSOLUTE):
                lines.append(f"  {label[:58]:<58} {a:10.4g} {b:10.4g} {r:8.2f}  (absolute: moves with the machine)")
                continue
            bad = not (1 - tolerance <= r <= 1 + tolerance)
            flagged += bad
            lines.append(f"  {label[:58]:<58} {a:10.4g} {b:10.4g} {r:8.2f}" + ("  <-- outside ±20%" if bad else ""))
    missing = sorted(set(new.get("threads", {})) ^ set(old.get("threads", {})))
    if missing:
        lines.append(f"\nthread counts in only one of the two files: {', '.join(missing)}")
    for key in ("cpu_model", "torch", "pyro", "git_commit"):
        a, b = get(old, f"conditions.{key}"), get(new, f"conditions.{key}")
        if a != b:
            lines.append(f"conditions differ: {key}: {a!r} -> {b!r}")
    lines.append(f"\n{flagged} ratio(s) outside ±{tolerance:.0%}")
    return lines, flagged


# ============================================================================ command line
def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--out", metavar="JSON", help="measure, write the JSON here")
    ap.add_argument("--render", metavar="JSON", nargs="?", const="",
                    help="rewrite the README's tables from this JSON (default: the --out file, else "
                         "benchmarks/results/cpu.json)")
    mode.add_argument("--check", metavar="JSON", nargs="?", const=DEFAULT_JSON,
                      help="exit 1 if the README differs from this JSON's rendering")
    mode.add_argument("--compare", metavar=("OLD", "NEW"), nargs=2, help="NEW/OLD for every README number")
    mode.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to measure (default 1 2)")
    ap.add_argument("--repeats", type=int, default=7, help="timed calls per measurement after one warm-up (default 7)")
    ap.add_argument("--quick", action="store_true", help="tiny settings: a smoke test of the script, not a measurement")
    ap.add_argument("--readme", default=README, help="the README to render into / check (default: the repository's)")
    ap.add_argument("--all", action="store_true", help="with --compare: every number in the files, not only the README's")
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--worker-extras", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.render is not None and (args.check or args.compare or args.worker is not None):
        ap.error("--render goes alone or with --out")
    if args.render is None and not (args.out or args.check or args.compare or args.worker is not None):
        ap.error("one of --out, --render, --check, --compare is required")
    if args.worker is not None:
        worker(args.worker, args.repeats, args.quick, args.worker_extras, args.worker_out)
        return 0
    if args.out:
        repeats = 1 if args.quick else args.repeats
        measure(args.out, args.threads, repeats, args.quick)
    if args.render is not None:
        src = args.render or args.out or DEFAULT_JSON
        with open(args.readme, encoding="utf-8") as f:
            text = f.read()
        new = replace_region(text, render(load(src)))
        if new != text:
            with open(args.readme, "w", encoding="utf-8") as f:
                f.write(new)
        print(f"{args.readme}: {'updated' if new != text else 'already up to date'} from {src}")
    if args.out or args.render is not None:
        return 0
    if args.check:
        diff = check(args.check, args.readme)
        if diff:
            print("\n".join(diff))
            print(f"\nthe README differs from {args.check}: run python benchmarks/readme.py --render {args.check}")
            return 1
        print(f"{args.readme} agrees with {args.check}")
        return 0
    lines, flagged = compare(load(args.compare[0]), load(args.compare[1]), every=args.all)
    print("\n".join(lines))
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())

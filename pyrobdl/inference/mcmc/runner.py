"""Running HMC/NUTS chains: one after the other in this process, or in parallel in forked
worker processes, with the number of intra-op threads per chain chosen for the problem size.

**Chains** are independent: chain ``c`` is seeded with ``seed + c`` and runs the same way
whether chains run one after the other or in parallel worker processes, so results do not
depend on the machine's cores.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pyro
import torch

from ..._util import eval_mode, warn_user
from .potential import FlatPotential

__all__ = ["run_chain", "run_chains", "plan_chains", "num_threads", "threads_per_chain", "fork_available", "SMALL_WORK"]

#: one potential evaluation below this many multiply-adds (data points x weights) runs
#: faster on one thread: intra-op parallelism only adds synchronisation at this size
SMALL_WORK = 5_000_000

_WORKER_JOB: Optional[Dict[str, Any]] = None  # set in the parent before forking


def run_chain(job: Dict[str, Any], chain: int, progress: Optional[Callable[[int], None]] = None) -> Dict[str, Any]:
    """Run one chain of ``job`` (``potential``, ``make_kernel``, ``num_samples``,
    ``warmup_steps``, ``init`` (one row per chain), ``seed``): seed, build the kernel, run
    :class:`pyro.infer.MCMC`. Returns host arrays: the draws ``z`` ``(S, D)``, the sampler
    statistics after and during warm-up, the adapted step size and inverse mass matrix,
    and the seconds taken."""
    pyro.set_rng_seed(job["seed"] + chain)
    pot: FlatPotential = job["potential"]
    kernel = job["make_kernel"](pot)
    hook = None
    if progress is not None:
        def hook(kernel, params, stage, i):  # noqa: E306
            progress(1)
    mcmc = pyro.infer.MCMC(
        kernel,
        num_samples=job["num_samples"],
        warmup_steps=job["warmup_steps"],
        num_chains=1,
        initial_params={"z": job["init"][chain].clone()},
        disable_progbar=True,
        hook_fn=hook,
    )
    t0 = time.perf_counter()
    with eval_mode(pot.model.net), torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*num_chains.*")
        mcmc.run()
    seconds = time.perf_counter() - t0
    z = mcmc.get_samples()["z"]  # (S, D)
    W = job["warmup_steps"]
    stats = {k: np.asarray(v[W:], dtype=np.float64 if k != "diverging" else bool) for k, v in kernel.stats.items()}
    warm = {k: np.asarray(v[:W], dtype=np.float64 if k != "diverging" else bool) for k, v in kernel.stats.items()}
    inv = kernel.inverse_mass_matrix[("z",)]
    return {
        "z": z.detach().cpu().numpy(),
        "stats": stats,
        "warmup_stats": warm,
        "step_size": float(kernel.step_size),
        "inverse_mass_matrix": inv.detach().cpu().numpy(),
        "seconds": seconds,
    }


def _worker_init(threads: Optional[int]):
    if threads is not None:
        torch.set_num_threads(threads)
    # compiling inside a forked process can deadlock on locks inherited from the parent:
    # refuse, and let the kernel fall back to the eager leapfrog instead
    try:
        torch.compiler.set_stance("fail_on_recompile")
    except Exception:  # pragma: no cover - older torch
        pass


def _worker_chain(chain: int) -> Dict[str, Any]:
    job = _WORKER_JOB
    counter = job.get("counter")

    def bump(k):
        if counter is not None:
            with counter.get_lock():
                counter.value += k

    return run_chain(job, chain, bump if counter is not None else None)


@contextlib.contextmanager
def num_threads(n: Optional[int]) -> Iterator[None]:
    """Run with ``n`` intra-op threads (restoring the previous number); ``None``: as is."""
    prev = torch.get_num_threads()
    if n is None or n == prev:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def threads_per_chain(pot: FlatPotential, workers: int) -> int:
    """Intra-op threads for each of ``workers`` chains running at once: one for small
    problems (see :data:`SMALL_WORK`), else the cores shared out."""
    if pot.x.shape[0] * pot.dim < SMALL_WORK:
        return 1
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


def fork_available() -> bool:
    """Whether worker processes can be forked (not on Windows, nor macOS by default)."""
    return "fork" in multiprocessing.get_all_start_methods()


def plan_chains(chain_method: str, num_chains: int, pot: FlatPotential) -> Tuple[str, int, Optional[int]]:
    """(chain method, worker processes, intra-op threads per chain) for ``chain_method``
    ``"auto"`` (parallel on CPU where ``fork`` exists, else sequential), ``"parallel"``
    or ``"sequential"``; parallel falls back to sequential, with a warning, where it cannot run."""
    cpus = os.cpu_count() or 1
    method = chain_method
    if method == "auto":
        method = "parallel" if (fork_available() and pot.device.type == "cpu") else "sequential"
    if method == "parallel" and not fork_available():
        warn_user("chain_method='parallel' needs the 'fork' start method, which this platform lacks; running chains sequentially")
        method = "sequential"
    if method == "parallel" and pot.device.type != "cpu":
        warn_user("parallel chains run on CPU only; running the CUDA chains sequentially")
        method = "sequential"
    workers = min(num_chains, cpus) if method == "parallel" else 1
    threads = threads_per_chain(pot, workers) if pot.device.type == "cpu" else None
    return method, workers, threads


def run_chains(job: Dict[str, Any], num_chains: int, *, progress: bool = False, desc: str = "") -> List[Dict[str, Any]]:
    """Run ``num_chains`` chains of ``job`` (see :func:`run_chain`) by the plan in ``job``
    (``chain_method``, ``workers``, ``threads`` from :func:`plan_chains`); one result per
    chain, in chain order."""
    global _WORKER_JOB
    C = num_chains
    method, workers, threads = job["chain_method"], job["workers"], job["threads"]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = C * (job["warmup_steps"] + job["num_samples"])
        bar = tqdm(total=total, desc=f"{desc} ({C} chain{'s' if C > 1 else ''}, {method})", leave=False)
    try:
        if method == "sequential":
            with num_threads(threads), torch.enable_grad():
                return [run_chain(job, c, (bar.update if bar is not None else None)) for c in range(C)]
        ctx = multiprocessing.get_context("fork")
        counter = ctx.Value("l", 0) if bar is not None else None
        job["counter"] = counter
        _WORKER_JOB = job
        try:
            with ctx.Pool(processes=workers, initializer=_worker_init, initargs=(threads,)) as pool:
                res = pool.map_async(_worker_chain, range(C), chunksize=1)
                while not res.ready():
                    res.wait(0.25)
                    if bar is not None:
                        bar.n = counter.value
                        bar.refresh()
                out = res.get()
        finally:
            _WORKER_JOB = None
            job.pop("counter", None)
        return out
    finally:
        if bar is not None:
            bar.close()

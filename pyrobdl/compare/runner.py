"""The comparison run behind :func:`pyrobdl.compare.compare` (``pyrobdl compare``):
the network per task, the methods that run by default, one fit per (method,
split), and ``results.json`` written as the run goes.

Example::

    from pyrobdl.compare import build_model, compare, default_methods
    from pyrobdl import datasets
    default_methods(build_model(datasets.load("boston")))     # what compare("boston") would run
    compare("boston", splits=20, out="uci-boston")           # the UCI protocol, every method
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import shutil
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .. import datasets as _datasets
from .. import likelihoods as _likelihoods
from .. import priors as _priors
from .._util import check_positive_int, parse_device
from ..datasets._base import RANDOM_SPLITS
from ..inference.base import fit as _fit, memory_limit, prediction_bytes
from ..inference.registry import available_methods, get_method, methods as registered_methods
from ..network import BayesianNetwork
from . import profiles
from .evaluation import METRICS, evaluate, reference_distances, subset, summarise, to_jsonable, write_json
from .recalibration import calibration_split, check_recalibration, recalibrated_metrics
from .report import save_figure_of, write_report

__all__ = [
    "compare",
    "build_model",
    "default_methods",
    "fits_by_default",
    "uses_variance_head",
    "SCHEMA_VERSION",
    "SMALL_WORK",
    "FolderLock",
    "LOCK_NAME",
    "clear_previous_outputs",
]

logger = logging.getLogger("pyrobdl.compare")

PathLike = Union[str, os.PathLike]

#: Version of the ``results.json`` layout.
SCHEMA_VERSION = 1


#: A fit whose full-data pass costs fewer multiply-adds than this (training rows
#: x weights) runs on one intra-op thread: at this size threads only add
#: synchronisation, and on a busy machine spinning threads slow it down many
#: times (the same rule as MCMC's ``SMALL_WORK``).
SMALL_WORK = 5_000_000


# ============================================================================ model
def uses_variance_head(dataset: _datasets.Dataset, method: Optional[str]) -> bool:
    """Whether :func:`build_model` gives ``method`` a per-input variance head on
    ``dataset``: the method class declares ``variance_head`` and the data is
    regression other than the 1-D toys (:data:`~pyrobdl.compare.profiles.TOY_DATASETS`).

    Example:
        >>> from pyrobdl import datasets
        >>> uses_variance_head(datasets.load("toy-regression"), "mean-field")   # never on the 1-D toys
        False
    """
    if method is None or dataset.task != "regression" or dataset.name in profiles.TOY_DATASETS:
        return False
    return bool(getattr(get_method(method), "variance_head", False))


def build_model(
    dataset: _datasets.Dataset, *, hidden: int = profiles.HIDDEN, method: Optional[str] = None
) -> BayesianNetwork:
    """The network :func:`compare` fits for ``dataset`` (see :mod:`pyrobdl.compare`).

    ``Linear(d, H) → ReLU → Linear(H, k)`` with a
    :class:`~pyrobdl.likelihoods.Categorical` likelihood for classification and a
    :class:`~pyrobdl.likelihoods.Gaussian` one (learned noise) for regression. For a
    method whose class declares ``variance_head = True``, on regression data other
    than the 1-D toys, the network has two outputs (mean and log-variance) and a
    :class:`~pyrobdl.likelihoods.HeteroscedasticGaussian` likelihood. The prior is
    :data:`~pyrobdl.compare.profiles.TOY_PRIOR` on the toys and
    :class:`~pyrobdl.network.BayesianNetwork`'s default elsewhere.

    Example::

        >>> from pyrobdl import datasets
        >>> ds = datasets.load("digits")
        >>> build_model(ds, hidden=20).net
        Sequential(
          (0): Linear(in_features=64, out_features=20, bias=True)
          (1): ReLU()
          (2): Linear(in_features=20, out_features=10, bias=True)
        )
    """
    d = dataset.input_dim
    if dataset.task == "classification":
        net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, int(dataset.num_classes)))
        likelihood = _likelihoods.Categorical()
    elif uses_variance_head(dataset, method):
        net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 2))
        likelihood = _likelihoods.HeteroscedasticGaussian()
    else:
        net = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        likelihood = _likelihoods.Gaussian()
    prior = _priors.prior_from_config(dict(profiles.TOY_PRIOR)) if dataset.name in profiles.TOY_DATASETS else None
    return BayesianNetwork(net, prior=prior, likelihood=likelihood)


def _describe(net: nn.Module) -> str:
    """``"Linear(1, 50) → ReLU → Linear(50, 1)"`` for a Sequential of simple layers."""
    parts = []
    for layer in net.children() if isinstance(net, nn.Sequential) else [net]:
        if isinstance(layer, nn.Linear):
            parts.append(f"Linear({layer.in_features}, {layer.out_features})")
        else:
            parts.append(type(layer).__name__)
    return " → ".join(parts)


def fits_by_default(method: str, model: BayesianNetwork) -> bool:
    """Whether ``method`` runs on ``model`` when no methods are named: the network
    has at most the ``max_weights`` Bayesian weights the method class declares
    (``None``: no limit).

    Example:
        >>> import torch.nn as nn
        >>> from pyrobdl import BayesianNetwork, likelihoods
        >>> model = BayesianNetwork(nn.Linear(1, 1), likelihood=likelihoods.Gaussian())
        >>> fits_by_default("mean-field", model)
        True
    """
    limit = getattr(get_method(method), "max_weights", None)
    return limit is None or model.num_bayesian_parameters <= limit


def default_methods(model: BayesianNetwork) -> List[str]:
    """Every registered method that fits ``model`` (:func:`fits_by_default`), in
    registration order (:func:`pyrobdl.inference.methods`).

    Example:
        >>> import torch.nn as nn
        >>> from pyrobdl import BayesianNetwork, priors, likelihoods
        >>> model = BayesianNetwork(nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)),
        ...                         prior=priors.Normal(), likelihood=likelihoods.Gaussian())
        >>> default_methods(model)[:3]
        ['mean-field', 'low-rank', 'full-rank']
    """
    return [cls.name for cls in registered_methods() if fits_by_default(cls.name, model)]


def _versions() -> Dict[str, Optional[str]]:
    """Versions of Python, pyrobdl and its main dependencies (from the installed
    package metadata, so nothing heavy is imported)."""
    import sys
    from importlib import metadata

    from .. import __version__

    out: Dict[str, Optional[str]] = {"pyrobdl": __version__, "python": sys.version.split()[0]}
    for dist, key in (("torch", "torch"), ("pyro-ppl", "pyro"), ("numpy", "numpy"), ("arviz", "arviz"),
                      ("matplotlib", "matplotlib"), ("scikit-learn", "scikit-learn")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    out["torch"] = torch.__version__
    out["platform"] = platform.platform()
    return out


# ============================================================================ inputs
def _check_device(device: Union[str, torch.device]) -> torch.device:
    dev = parse_device(device, "--device", "use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; use cpu or cuda")
    return dev


def _ood_dataset(dataset: str, ood: str) -> str:
    """The dataset name for ``--dataset digits --ood SPEC``: ``5-9`` /
    ``digits-5-9`` / ``digits-ood-5-9`` = digits 5..9 held out as OOD;
    ``rotated`` / ``noisy`` = the covariate-shift sets."""
    base = _datasets.resolve_name(dataset)
    if base != "digits":
        raise ValueError(
            f"--ood applies to --dataset digits (got {base}); the toys have their OOD inputs built in, "
            "and digits OOD variants can also be named directly (digits-ood-5-9, digits-rotated)"
        )
    key = str(ood).strip().lower().replace("_", "-")
    if key in ("rotated", "digits-rotated"):
        return "digits-rotated"
    if key in ("noisy", "corrupted", "digits-noisy", "digits-corrupted"):
        return "digits-noisy"
    match = re.fullmatch(r"(?:digits-)?(?:ood-)?(\d)-(\d)", key)
    if not match:
        raise ValueError(
            f"unknown --ood {ood!r}; use a held-out class range such as digits-5-9 (or 5-9), rotated or noisy"
        )
    name = f"digits-ood-{match.group(1)}-{match.group(2)}"
    return _datasets.resolve_name(name)


#: a CSV comparison needs at least this many training and test rows
MIN_CSV_TRAIN, MIN_CSV_TEST = 10, 5


class _Data:
    """Loads the requested dataset's splits once, validating everything up front."""

    def __init__(self, *, dataset, csv, target, task, ood, splits, seed, data_dir):
        self.csv = None if csv is None else Path(csv)
        self.seed = seed
        self.data_dir = data_dir
        if self.csv is not None:
            if target is None:
                raise ValueError("--csv needs --target COLUMN (the column to predict)")
            if ood is not None:
                raise ValueError("--ood applies to --dataset digits, not to a CSV file")
            if not self.csv.is_file():
                raise ValueError(f"CSV file not found: {self.csv}")
            self.name = self.csv.stem
            self.task = task or "regression"
            total = RANDOM_SPLITS
            if isinstance(splits, (int, np.integer)) and not isinstance(splits, bool):
                if not 1 <= int(splits) <= total:
                    raise ValueError(
                        f"--splits {splits} is out of range for {self.csv.name}: "
                        f"it has {total} random splits (1..{total})"
                    )
                indices = list(range(int(splits)))
            else:
                indices = [int(s) for s in splits]
                if not indices or any(not 0 <= s < total for s in indices):
                    raise ValueError(f"split indices {indices} out of range for {self.csv.name} (0..{total - 1})")
        else:
            if target is not None:
                raise ValueError("--target applies to --csv files only")
            if task is not None:
                raise ValueError("--task applies to --csv files only")
            name = _datasets.resolve_name(dataset)
            if ood is not None:
                name = _ood_dataset(name, ood)
            self.name = name
            self.task = None
            indices = _datasets.check_splits(name, splits, data_dir)
        self.splits = indices
        self.target = target
        self._cache: Dict[int, _datasets.Dataset] = {}
        first = self.get(self.splits[0])  # data errors surface here, before any fitting
        if self.csv is not None and (first.n_train < MIN_CSV_TRAIN or first.n_test < MIN_CSV_TEST):
            raise ValueError(
                f"{self.csv.name} has {first.n_train + first.n_test} data rows: its random split leaves "
                f"{first.n_train} for training and {first.n_test} for testing, and a comparison needs at least "
                f"{MIN_CSV_TRAIN} and {MIN_CSV_TEST} (metrics on fewer test rows say nothing); use a larger file"
            )
        self.task = first.task
        self.is_toy = self.csv is None and self.name in profiles.TOY_DATASETS

    def get(self, split: int) -> _datasets.Dataset:
        if split not in self._cache:
            if self.csv is not None:
                ds = _datasets.load_csv(self.csv, target=self.target, split=split, seed=self.seed, task=self.task)
            elif self.name in profiles.TOY_DATASETS:
                ds = _datasets.load(self.name, split=split, seed=self.seed, normalize=True)
            elif self.name.startswith("digits"):
                ds = _datasets.load(self.name, split=split, seed=self.seed)
            else:
                ds = _datasets.load(self.name, split=split, data_dir=self.data_dir)
            self._cache[split] = ds
        return self._cache[split]


#: a fit holds several copies of the weights and of one pass's activations (gradients, optimiser
#: state, samples or chains): refuse widths whose single copy exceeds this share of the memory
WIDTH_MEMORY_SHARE = 1 / 8


def _check_width(ds: _datasets.Dataset, hidden: int, device: torch.device, num_samples: int) -> None:
    """Refuse, before building anything, a hidden width whose weights plus one pass's hidden
    activations over the training rows (float32) exceed :data:`WIDTH_MEMORY_SHARE` of the
    device's memory (``--hidden 10000000`` would otherwise end in the out-of-memory killer),
    and a ``num_samples`` whose kept predictive samples cannot fit in memory."""
    limit = memory_limit(device)
    if limit is None:
        return
    d, k = ds.input_dim, max(2, int(ds.num_classes or 2))
    rows = ds.n_test + (0 if ds.x_ood is None else int(ds.x_ood.shape[0]))
    weights = (d + 1) * hidden + (hidden + 1) * k
    predict = prediction_bytes(num_samples, weights, rows, k)
    if predict > limit:
        raise ValueError(
            f"--num-samples {num_samples}: the predictive samples need about {predict / 2**30:,.1f} GiB, more than "
            f"the {limit / 2**30:,.1f} GiB of {device.type} memory here; a few hundred samples suffice (default "
            f"{profiles.NUM_SAMPLES})"
        )
    need = 4 * (weights + ds.n_train * hidden)
    if need > WIDTH_MEMORY_SHARE * limit:
        raise ValueError(
            f"--hidden {hidden}: the weights and one pass over the {ds.n_train} training rows need about "
            f"{need / 2**30:,.1f} GiB, and a fit holds several copies; this machine has {limit / 2**30:,.1f} GiB "
            f"of {device.type} memory, so use --hidden {max(1, int(WIDTH_MEMORY_SHARE * limit / (4 * (d + k + 2 + ds.n_train))))} or less"
        )


#: the lock file that marks a folder as being written by a ``compare`` run
LOCK_NAME = ".pyrobdl-compare.lock"


def _create_exclusive(path: Path) -> int:
    """Create ``path``, failing with ``FileExistsError`` when it exists (atomic)."""
    return os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)


class FolderLock:
    """One ``compare`` run per output folder: an exclusively created lock file holding the
    writer's process id and host. A second run into the folder fails with a ``ValueError``
    naming the first; a lock left by a process that no longer runs (on this host) is taken
    over. ``OSError`` (a read-only folder) becomes a ``ValueError`` naming the folder."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        me = f"{os.getpid()}\n{platform.node()}\n"
        for _ in range(2):
            try:
                fd = _create_exclusive(self.path)
            except FileExistsError:
                owner = self._owner()
                if owner is not None:
                    raise ValueError(
                        f"another pyrobdl compare ({owner}) is writing to {folder}; wait for it to finish "
                        "or use another --out"
                    ) from None
                try:  # a stale lock: its process is gone
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            except OSError as e:
                raise ValueError(f"cannot write to output directory {folder}: {e.strerror or e}") from None
            with os.fdopen(fd, "w") as fh:
                fh.write(me)
            return
        raise ValueError(f"could not take the lock {self.path}; remove it if no pyrobdl compare is running")

    def _owner(self) -> Optional[str]:
        """``"process N on HOST"`` when the lock's writer still runs (or runs elsewhere), else ``None``."""
        try:
            pid_text, host = (self.path.read_text().split("\n") + ["", ""])[:2]
            pid = int(pid_text)
        except (OSError, ValueError):
            return "an unknown process"  # being written right now, or unreadable: do not steal it
        if host and host != platform.node():
            return f"process {pid} on {host}"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return f"process {pid}"

    def release(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


#: the plots an MCMC method writes (one per method); other outputs are named in results.json
_MCMC_PLOTS = ("mcmc_trace_*.png", "mcmc_rank_*.png")


def clear_previous_outputs(folder: Path) -> List[str]:
    """Remove what an earlier ``compare`` run wrote into ``folder`` (its ``results.json``, the
    report and plot files that file names, MCMC plots, temporary files), so a new run's
    outputs are never mixed with stale ones; other files are left alone. Returns the names
    removed."""
    folder = Path(folder)
    names = set()
    old = folder / "results.json"
    if old.is_file():
        names.add(old.name)
        try:
            prev = json.loads(old.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            prev = None
        if isinstance(prev, dict) and "schema_version" in prev:
            for p in (prev.get("plots") or {}).values():
                if isinstance(p, dict) and isinstance(p.get("file"), str):
                    names.add(p["file"])
            report = prev.get("report") or {}
            names.update(v for v in report.values() if isinstance(v, str) and v in ("report.md", "report.html"))
    for pattern in _MCMC_PLOTS + ("results.json.*.tmp",):
        names.update(p.name for p in folder.glob(pattern))
    removed = []
    for name in sorted(names):
        path = folder / name
        if path.parent == folder and path.is_file():  # plain names inside the folder only
            path.unlink()
            removed.append(name)
    for stage in folder.glob(STAGE_PREFIX + "*"):  # left by a run that was killed (we hold the lock)
        if stage.is_dir() and not stage.is_symlink():
            shutil.rmtree(stage, ignore_errors=True)
            removed.append(stage.name)
    return removed


#: a run writes its plots and report into ``out/.pyrobdl-stage-<pid>`` and moves them into
#: ``out`` only once the report is complete, so an interrupted run never leaves half a report
STAGE_PREFIX = ".pyrobdl-stage-"


def publish_stage(stage: Path, folder: Path) -> List[str]:
    """Move every file of the staging folder ``stage`` into ``folder`` (each move atomic,
    replacing a file of the same name) and remove ``stage``. Returns the names moved."""
    moved = []
    for path in sorted(stage.iterdir()):
        if path.is_file():
            os.replace(path, folder / path.name)
            moved.append(path.name)
    shutil.rmtree(stage, ignore_errors=True)
    return moved


def _parse_methods(methods: Union[None, str, Sequence[str]]) -> Optional[List[str]]:
    if methods is None:
        return None
    if isinstance(methods, str):
        items = [m.strip() for m in methods.split(",")]
    else:
        items = [str(m).strip() for m in methods]
    items = [m for m in items if m]
    if not items:
        raise ValueError(f"no methods given; known methods: {', '.join(available_methods())}")
    out: List[str] = []
    for m in items:
        name = get_method(m).name  # ValueError: unknown method ...; known methods: ...
        if name not in out:
            out.append(name)
    return out


def _error_text(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


@contextlib.contextmanager
def _threads_for(ds: _datasets.Dataset, model: BayesianNetwork, device: torch.device):
    """One intra-op thread for small CPU fits, restored afterwards."""
    prev = torch.get_num_threads()
    small = device.type == "cpu" and ds.n_train * model.num_bayesian_parameters < SMALL_WORK
    if not small or prev == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ============================================================================ one fit
#: MCMC trace/rank plots show the network's prediction at this many test inputs
#: (function space: unlike the weights, free of the hidden-unit symmetries).
_TRACE_POINTS = 4


def _mcmc_diagnostics(posterior, method: str, x_test: torch.Tensor, out_dir: Path, make_plots: bool) -> Dict[str, Any]:
    """The diagnostics summary of an MCMC posterior (plain JSON; the function-space R-hat
    and ESS over the predictions at the test inputs) and its trace and rank plots of the
    predictions at a few test inputs."""
    from .. import diagnostics

    result: Dict[str, Any] = {"function_grid": "test inputs"}
    try:
        result["summary"] = to_jsonable(diagnostics.summary(posterior, x_grid=x_test))
    except Exception as e:  # noqa: BLE001 - diagnostics must not fail the method
        result["error"] = _error_text(e)
        return result
    if make_plots:
        import matplotlib.pyplot as plt

        idx = torch.linspace(0, x_test.shape[0] - 1, min(_TRACE_POINTS, x_test.shape[0])).round().long()
        grid = x_test[idx.to(x_test.device)]
        plots = {}
        for kind in ("trace", "rank"):
            fn = getattr(diagnostics, f"plot_{kind}", None)
            if fn is None:
                continue
            try:
                path = out_dir / f"mcmc_{kind}_{method}.png"
                with warnings.catch_warnings(), plt.ioff():  # ArviZ's own deprecation warnings
                    warnings.simplefilter("ignore", DeprecationWarning)
                    figure = fn(posterior, x_grid=grid)
                save_figure_of(figure, path)
                plots[kind] = path.name
            except Exception as e:  # noqa: BLE001
                logger.warning("%s: %s plot failed: %s", method, kind, _error_text(e))
        result["plots"] = plots
    return result


def _run_one(
    method: str,
    options: Dict[str, Any],
    accepted: Optional[set],
    ds: _datasets.Dataset,
    *,
    hidden: int,
    seed: int,
    num_samples: int,
    device: torch.device,
    out_dir: Path,
    make_plots: bool,
    recalibration: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    import pyro

    pyro.set_rng_seed(seed)
    opts = dict(options)
    for key, value in (("progress", False), ("seed", seed)):
        if key not in opts and (accepted is None or key in accepted):
            opts[key] = value
    ds = ds.to(device)
    if recalibration is not None:  # train on the rest; the held-out rows fit the recalibrator
        ds, x_cal, y_cal = calibration_split(ds, recalibration["calibration_fraction"], seed)
    model = build_model(ds, hidden=hidden, method=method).to(device)
    n_test = ds.n_test
    x_all = ds.x_test if ds.x_ood is None else torch.cat([ds.x_test, ds.x_ood], 0)
    with _threads_for(ds, model, device):
        _sync(device)
        t0 = time.perf_counter()
        posterior = _fit(model, ds.x_train, ds.y_train, method=method, **opts)
        _sync(device)
        fit_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        fixed = posterior.num_fixed_draws  # a fixed set (members, MCMC draws): never more than it has
        num_samples = num_samples if fixed is None else min(num_samples, fixed)
        pred_all = posterior.predict(x_all, num_samples=num_samples)
        _sync(device)
        predict_seconds = time.perf_counter() - t0
    pred_all = pred_all.cpu()
    pred = subset(pred_all, slice(0, n_test))
    pred_ood = None if ds.x_ood is None else subset(pred_all, slice(n_test, None))
    ds_cpu = ds.to("cpu")
    values = evaluate(pred, ds_cpu, pred_ood=pred_ood)
    values["fit_seconds"] = fit_seconds
    values["predict_seconds"] = predict_seconds
    record: Dict[str, Any] = {"status": "ok", "metrics": values}
    if recalibration is not None:
        pred_cal = posterior.predict(x_cal, num_samples=num_samples)
        after, record["recalibration"] = recalibrated_metrics(recalibration["method"], pred_cal, y_cal, pred, ds_cpu)
        values.update(after)
    if uses_variance_head(ds_cpu, method):
        # this method's model differs from settings.model (a variance head): say which
        record["model"] = {
            "network": _describe(model.net),
            "likelihood": to_jsonable(model.likelihood.to_config()),
            "num_weights": model.num_bayesian_parameters,
        }
    if getattr(type(posterior), "markov_chains", False):
        record["diagnostics"] = _mcmc_diagnostics(posterior, method, ds.x_test, out_dir, make_plots)
    artefact = {"pred": pred, "pred_ood": pred_ood, "dataset": ds_cpu} if make_plots else None
    return {"record": record, "artefact": artefact, "pred": pred}


# ============================================================================ compare
def compare(
    dataset: str = "toy-regression",
    *,
    methods: Union[None, str, Sequence[str]] = None,
    splits: Union[None, int, Sequence[int]] = None,
    out: PathLike = "pyrobdl-report",
    device: Union[str, torch.device] = "cpu",
    seed: int = 0,
    num_samples: Optional[int] = None,
    quick: bool = False,
    hidden: Optional[int] = None,
    config: Union[None, PathLike, Mapping[str, Any]] = None,
    data_dir: Optional[PathLike] = None,
    csv: Optional[PathLike] = None,
    target: Optional[str] = None,
    task: Optional[str] = None,
    ood: Optional[str] = None,
    recalibrate: Optional[str] = None,
    calibration_fraction: float = 0.2,
    progress: bool = True,
) -> Dict[str, Any]:
    """Fit several inference methods on one dataset and write a comparison report.

    Args:
        dataset: a name of :func:`pyrobdl.datasets.list_datasets` (ignored when
            ``csv`` is given).
        methods: method names (a list or a comma-separated string); default:
            every registered method that fits the problem (:func:`default_methods`).
        splits: the first ``splits`` train/test splits, or a list of split
            indices; default 1 (split 0). The UCI protocol is ``splits=20``.
        out: output directory (created): ``results.json``, ``report.md``,
            ``report.html`` and PNGs.
        device: ``"cpu"`` or ``"cuda"``.
        seed: seeds the network initialisation and each method (``seed + split``),
            and the random splits of toys, digits and CSV files.
        num_samples: predictive samples per prediction (default 100; 20 with ``quick``).
        quick: tiny settings (:data:`~pyrobdl.compare.profiles.QUICK_OPTIONS`, 20 hidden units) for smoke tests.
        hidden: hidden units (default 50, or the UCI dataset's ``n_hidden``; 20 with ``quick``).
        config: per-method settings ``{method: {option: value}}`` or a YAML/JSON file.
        data_dir: directory of the UCI folders not shipped with pyrobdl.
        csv, target: a CSV file with a header row and the column to predict.
        task: for a CSV, ``"regression"`` (default) or ``"classification"``.
        ood: for ``dataset="digits"``, the OOD set: ``"digits-5-9"`` (digits 5..9
            held out as OOD), ``"rotated"`` or ``"noisy"``.
        recalibrate: a recalibration method of :mod:`pyrobdl.calibration` for the dataset's
            task (e.g. ``"temperature"``, ``"variance"``, ``"conformal"``): every method then
            trains on ``1 - calibration_fraction`` of each training split, the recalibrator is
            fitted on the held-out rest, and each split's metrics gain ``*_recal`` columns (the
            recalibrated prediction; see :mod:`pyrobdl.compare.recalibration`).
        calibration_fraction: the share of each training split held out with ``recalibrate``.
        progress: a progress bar per method over the splits (on stderr).

    Returns:
        The results, as written to ``results.json``: ``schema_version``,
        ``status``, ``dataset``, ``settings``, ``versions``, ``metrics``
        (metadata of the metrics reported), ``reference`` (the ``method=`` name of the
        reference sampler, :data:`~pyrobdl.compare.profiles.REFERENCE_METHOD`, when it ran;
        it runs first and every other method's metrics gain ``ref_*`` distances to its
        predictive, :func:`~pyrobdl.compare.evaluation.reference_distances`; else ``None``),
        ``methods`` (per method:
        ``status``, ``options``, ``splits`` -- one record per split with
        ``status`` and ``metrics`` or ``error``, plus ``diagnostics`` for MCMC --,
        ``summary`` {metric: {mean, stderr, n}} and ``error``), ``skipped``,
        ``published`` (UCI), ``plots`` and ``report``.

    Raises:
        ValueError: unknown dataset or method (the message lists the known
            ones), bad CSV data or column, too many splits, CUDA unavailable,
            bad config.

    Example::

        results = compare("digits", ood="digits-5-9", methods="mean-field,ensemble", quick=True,
                          out="report", progress=False)
        results["methods"]["mean-field"]["summary"]["ood_auroc_entropy"]["mean"]
    """
    from tqdm.auto import tqdm


    dev = _check_device(device)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    seed = int(seed)
    if not 0 <= seed < 2**32 - 1000:  # each split runs with seed + split
        raise ValueError(f"seed (--seed) must be an integer in [0, 2**32 - 1000), got {seed}")
    num_samples = check_positive_int(
        num_samples if num_samples is not None else (profiles.QUICK_NUM_SAMPLES if quick else profiles.NUM_SAMPLES),
        "num_samples",
    )
    if task is not None and task not in ("regression", "classification"):
        raise ValueError(f"task must be 'regression' or 'classification', got {task!r}")
    method_list = _parse_methods(methods)
    cfg = profiles.load_config(config)
    data = _Data(
        dataset=dataset, csv=csv, target=target, task=task, ood=ood,
        splits=1 if splits is None else splits, seed=seed, data_dir=data_dir,
    )
    first = data.get(data.splits[0])
    if hidden is None:
        hidden = profiles.QUICK_HIDDEN if quick else int(first.meta.get("n_hidden", profiles.HIDDEN))
    hidden = check_positive_int(hidden, "hidden")
    _check_width(first, hidden, dev, num_samples)
    recalibration = check_recalibration(recalibrate, calibration_fraction, first.task, first.n_train)
    probe = build_model(first, hidden=hidden)
    skipped: Dict[str, str] = {}
    if method_list is None:
        method_list = default_methods(probe)
        for cls in registered_methods():
            if cls.name not in method_list:
                skipped[cls.name] = (
                    f"network has {probe.num_bayesian_parameters} weights, more than the "
                    f"{getattr(cls, 'max_weights', None)} {cls.name} runs on by default (ask for it with --methods)"
                )

    reference = profiles.REFERENCE_METHOD if profiles.REFERENCE_METHOD in method_list else None
    options = {m: profiles.method_options(m, toy=data.is_toy, quick=quick, config=cfg) for m in method_list}
    accepted = {m: profiles.accepted_options(get_method(m)) for m in method_list}
    setup_errors = _check_settings(options, accepted, cfg)

    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create output directory {out_dir}: {e.strerror or e}") from None

    task_name = first.task
    results: Dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "status": "running",
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "finished": None,
        "total_seconds": None,
        "dataset": {
            "name": data.name,
            "task": task_name,
            "source": str(data.csv) if data.csv is not None else first.source,
            "description": first.description,
            "n_train": first.n_train,
            "n_test": first.n_test,
            "n_ood": 0 if first.x_ood is None else int(first.x_ood.shape[0]),
            "input_dim": first.input_dim,
            "num_classes": first.num_classes,
            "normalized": first.normalized,
            "target": first.target_name,
            "train_range": first.train_range,
            "splits": data.splits,
            "num_splits_available": (
                RANDOM_SPLITS if data.csv is not None else _datasets.num_splits(data.name, data_dir)
            ),
        },
        "settings": {
            "methods": method_list,
            "splits": data.splits,
            "device": str(dev),
            "seed": seed,
            "num_samples": num_samples,
            "quick": bool(quick),
            "recalibration": recalibration,
            "hidden": hidden,
            "profile": profiles.profile_name(toy=data.is_toy, quick=quick),
            "model": {
                "network": _describe(probe.net),
                "prior": to_jsonable(probe.prior.to_config()),
                "likelihood": to_jsonable(probe.likelihood.to_config()),
                "num_weights": probe.num_bayesian_parameters,
            },
            "config": to_jsonable(cfg),
        },
        "versions": _versions(),
        "metrics": {k: v for k, v in METRICS.items() if v["task"] in (task_name, "both")},
        "reference": reference,
        "methods": {},
        "skipped": skipped,
        "published": None,
        "plots": {},
        "report": {},
    }
    if data.csv is None and data.name in _datasets.PUBLISHED:
        results["published"] = {
            "results": _datasets.PUBLISHED[data.name],
            "sources": {k: _datasets.PUBLISHED_SOURCES.get(k) for k in _datasets.PUBLISHED[data.name]},
            "note": "mean ± standard error over the 20 standard splits; ll = test log-likelihood",
        }
    for m in method_list:
        results["methods"][m] = {
            "status": "pending",
            "options": to_jsonable(profiles.effective_options(m, options[m])),
            "splits": [],
            "summary": {},
            "error": None,
        }
    json_path = out_dir / "results.json"
    lock = FolderLock(out_dir)  # one writer per folder
    stage = out_dir / f"{STAGE_PREFIX}{os.getpid()}"  # plots and report, until complete
    try:
        clear_previous_outputs(out_dir)
        stage.mkdir()
        write_json(results, json_path)
    except BaseException:
        lock.release()
        raise

    artefacts: Dict[str, Dict[str, Any]] = {}
    reference_preds: Dict[int, Any] = {}  # split -> the reference's test predictive
    run_order = ([reference] if reference else []) + [m for m in method_list if m != reference]
    t_start = time.perf_counter()
    try:
        for m in run_order:
            entry = results["methods"][m]
            bar = tqdm(total=len(data.splits), desc=f"{m:>15}", unit="split", disable=not progress, leave=True)
            try:
                for split in data.splits:
                    split_seed = seed + split
                    if m in setup_errors:
                        rec: Dict[str, Any] = {"split": split, "status": "failed", "error": setup_errors[m]}
                    else:
                        try:
                            res = _run_one(
                                m, options[m], accepted[m], data.get(split), hidden=hidden, seed=split_seed,
                                num_samples=num_samples, device=dev, out_dir=stage,
                                make_plots=m not in artefacts, recalibration=recalibration,
                            )
                            rec = {"split": split, **res["record"]}
                            if m == reference:
                                reference_preds[split] = res["pred"]
                            elif split in reference_preds:
                                rec["metrics"].update(
                                    reference_distances(res["pred"], reference_preds[split], data.get(split))
                                )
                            if res["artefact"] is not None:
                                artefacts[m] = res["artefact"]
                        except Exception as e:  # noqa: BLE001 - a failing method must not stop the run
                            logger.debug("%s split %d failed:\n%s", m, split, traceback.format_exc())
                            rec = {"split": split, "status": "failed", "error": _error_text(e)}
                    entry["splits"].append(rec)
                    _finish_entry(entry, results["metrics"])
                    write_json(results, json_path)
                    bar.update(1)
                    if rec["status"] == "ok":
                        key = "rmse" if task_name == "regression" else "accuracy"
                        bar.set_postfix({key: f"{rec['metrics'][key]:.4g}"})
                    else:
                        bar.set_postfix(status="failed")
                        logger.warning("%s failed on split %d: %s", m, split, rec["error"])
            finally:
                bar.close()
    finally:
        try:
            finished = all(e["status"] in ("ok", "failed", "partial") for e in results["methods"].values())
            results["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            results["total_seconds"] = time.perf_counter() - t_start
            results["status"] = "interrupted"  # until the report is written too
            write_json(results, json_path)
            try:
                written = write_report(results, stage, artefacts)  # built aside ...
                results["plots"] = written["plots"]
                results["report"] = written["report"]
            except Exception as e:  # noqa: BLE001 - keep results.json even if the report fails
                results["report"] = {"error": _error_text(e)}
                logger.warning("writing the report failed: %s", _error_text(e))
            write_json(results, json_path)  # names the files (still "interrupted") so a later run clears them
            publish_stage(stage, out_dir)  # ... and swapped in
            results["status"] = "complete" if finished else "interrupted"
            write_json(results, json_path)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
            lock.release()
    return results


def _check_settings(
    options: Mapping[str, Dict[str, Any]], accepted: Mapping[str, Optional[set]], cfg: Mapping[str, Any]
) -> Dict[str, str]:
    """Build each method's algorithm once with its settings, before anything runs.
    A bad setting from the user's config is a ``ValueError``; one from the
    defaults makes that method fail (returned as method -> error) while the
    others run."""
    errors: Dict[str, str] = {}
    for m, opts in options.items():
        quiet = {"progress": False} if accepted[m] is None or "progress" in accepted[m] else {}
        try:
            get_method(m)(**{**opts, **quiet})
        except (TypeError, ValueError) as e:
            if m in cfg:
                raise ValueError(f"invalid options for method {m!r}: {' '.join(str(e).split())}") from None
            errors[m] = _error_text(e)
    return errors


def _finish_entry(entry: Dict[str, Any], metric_meta: Mapping[str, Any]) -> None:
    """Update a method's status, error and summary from its split records."""
    recs = entry["splits"]
    ok = [r for r in recs if r["status"] == "ok"]
    failed = [r for r in recs if r["status"] == "failed"]
    entry["status"] = "ok" if not failed else ("failed" if not ok else "partial")
    entry["error"] = failed[0]["error"] if failed else None
    keys = [k for k in metric_meta if any(k in r["metrics"] for r in ok)]
    entry["summary"] = {k: summarise([r["metrics"][k] for r in ok if k in r["metrics"]]) for k in keys}

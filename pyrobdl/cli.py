"""The ``pyrobdl`` command (also ``python -m pyrobdl``).

::

    pyrobdl compare                                    # toy 1-D regression, every method
    pyrobdl compare --dataset boston --methods mean-field,low-rank,mc-dropout,ensemble,nuts --splits 20 --out report/
    pyrobdl compare --csv data.csv --target price --methods mean-field,ensemble
    pyrobdl compare --dataset digits --ood digits-5-9 --methods mean-field,mc-dropout,ensemble
    pyrobdl datasets                                   # the datasets, with sizes and task

``compare`` is a thin wrapper around :func:`pyrobdl.compare.compare`; see its
documentation for the model, the metrics and the output files.

Exit codes: 0 success; 1 the report was written but some method failed;
2 bad input (unknown dataset or method, bad CSV, too many splits, CUDA
unavailable, bad config, usage error), reported as one line
``pyrobdl: error: ...`` on stderr, without a traceback; 130 interrupted.

Example::

    from pyrobdl.cli import main
    main(["compare", "--quick", "--out", "report", "--no-progress"])
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import List, Optional, Sequence

__all__ = ["main", "build_parser"]

_EPILOG_COMPARE = """\
examples:
  pyrobdl compare
  pyrobdl compare --dataset boston --methods mean-field,low-rank,mc-dropout,ensemble,nuts --splits 20 --out report/
  pyrobdl compare --csv data.csv --target price --methods mean-field,ensemble
  pyrobdl compare --dataset digits --ood digits-5-9 --methods mean-field,mc-dropout,ensemble

--config FILE (YAML or JSON) maps method names to their options, e.g.
  mean-field: {num_steps: 8000, lr: 0.005}
  ensemble: {size: 10}

exit codes: 0 ok, 1 some method failed (report written), 2 bad input.
"""


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error format of the rest of the command."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.print_usage(sys.stderr)
        self.exit(2, f"pyrobdl: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pyrobdl`` command.

    Example:
        >>> args = build_parser().parse_args(["compare", "--dataset", "boston", "--methods", "mean-field,ensemble", "--quick"])
        >>> args.command, args.dataset, args.methods, args.quick
        ('compare', 'boston', 'mean-field,ensemble', True)
    """
    from . import __version__

    parser = _Parser(prog="pyrobdl", description="Bayesian deep learning on Pyro: compare inference methods.")
    parser.add_argument("--version", action="version", version=f"pyrobdl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{compare,datasets}", parser_class=_Parser)

    c = sub.add_parser(
        "compare", help="fit several methods on one dataset and write a report",
        description="Fit several inference methods on one dataset and write results.json, report.md, "
                    "report.html and plots.",
        epilog=_EPILOG_COMPARE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = c.add_mutually_exclusive_group()
    src.add_argument("--dataset", default="toy-regression",
                     help="dataset name (see 'pyrobdl datasets'; default: toy-regression)")
    src.add_argument("--csv", metavar="FILE", help="a CSV file with a header row (use with --target)")
    c.add_argument("--target", metavar="COLUMN", help="the CSV column to predict")
    c.add_argument("--task", choices=("regression", "classification"), help="task of a CSV target (default regression)")
    c.add_argument("--methods", metavar="M1,M2,...",
                   help="comma-separated methods (default: every registered method that fits the problem)")
    c.add_argument("--splits", type=_positive_int, metavar="N", help="run the first N train/test splits (default 1)")
    c.add_argument("--out", default="pyrobdl-report", metavar="DIR", help="output folder (default ./pyrobdl-report/)")
    c.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    c.add_argument("--seed", type=_int, default=0, help="random seed (default 0)")
    c.add_argument("--num-samples", type=_positive_int, metavar="S",
                   help="predictive samples per prediction (default 100; 20 with --quick)")
    c.add_argument("--quick", action="store_true", help="tiny settings for smoke tests")
    c.add_argument("--hidden", type=_positive_int, metavar="H",
                   help="hidden units (default 50, the UCI dataset's own width, 20 with --quick)")
    c.add_argument("--config", metavar="FILE", help="per-method options, YAML or JSON: {method: {option: value}}")
    c.add_argument("--data-dir", metavar="DIR", help="folder with UCI datasets not shipped with pyrobdl")
    c.add_argument("--ood", metavar="SPEC",
                   help="OOD set for --dataset digits: digits-5-9 (digits 5..9 held out), rotated or noisy")
    c.add_argument("--recalibrate", metavar="METHOD",
                   help="fit a recalibrator on part of each training split and report before/after columns: "
                        "temperature, vector, aps or raps (classification); variance, isotonic, conformal or cqr "
                        "(regression)")
    c.add_argument("--calibration-fraction", type=float, default=0.2, metavar="F",
                   help="share of each training split held out for --recalibrate (default 0.2)")
    c.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    c.add_argument("-v", "--verbose", action="store_true", help="log details (tracebacks of failed methods)")

    d = sub.add_parser("datasets", help="list the datasets with sizes and task",
                       description="List the datasets pyrobdl knows, with sizes, task and splits.")
    d.add_argument("--data-dir", metavar="DIR", help="folder with UCI datasets not shipped with pyrobdl")
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"pyrobdl: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _summary_lines(results) -> List[str]:
    from .compare.report import metric_tables

    lines = []
    tables = metric_tables(results)
    if tables:
        t = tables[0]
        width = max([len("method")] + [len(r["method"]) for r in t["rows"]])
        widths = [max(len(lbl), *(len(r["cells"][i]) + (2 if r["best"][i] else 0) for r in t["rows"]))
                  for i, lbl in enumerate(t["labels"])]
        lines.append("  ".join(["method".ljust(width)] + [lbl.rjust(w) for lbl, w in zip(t["labels"], widths)]))
        for r in t["rows"]:
            cells = [(f"*{c}*" if b else c).rjust(w) for c, b, w in zip(r["cells"], r["best"], widths)]
            lines.append("  ".join([r["method"].ljust(width)] + cells))
    for m, e in results["methods"].items():
        if e["status"] in ("failed", "partial"):
            lines.append(f"{m}: {e['status']}: {e['error']}")
    return lines


def _compare(args) -> int:
    from pathlib import Path

    from .compare import compare

    results = compare(
        args.dataset,
        methods=args.methods,
        splits=args.splits,
        out=args.out,
        device=args.device,
        seed=args.seed,
        num_samples=args.num_samples,
        quick=args.quick,
        hidden=args.hidden,
        config=args.config,
        data_dir=args.data_dir,
        csv=args.csv,
        target=args.target,
        task=args.task,
        ood=args.ood,
        recalibrate=args.recalibrate,
        calibration_fraction=args.calibration_fraction,
        progress=args.progress,
    )
    for line in _summary_lines(results):
        print(line)
    out = Path(args.out)
    report = results.get("report") or {}
    if "html" in report:
        print(f"report: {out / report['html']} (also {out / report['markdown']}, {out / 'results.json'})")
    else:
        print(f"results: {out / 'results.json'} (report failed: {report.get('error')})", file=sys.stderr)
    failed = any(e["status"] != "ok" for e in results["methods"].values())
    return 1 if failed else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``pyrobdl`` command with ``argv`` (default ``sys.argv[1:]``);
    returns the exit code (0 ok, 1 report written but a method failed, 2 bad input).

    Example:
        >>> main(["datasets"])        # doctest: +ELLIPSIS
        name            task                 n      d   train/test  ood  splits  description
        toy-regression  regression ...
        0
    """
    import matplotlib

    matplotlib.use("Agg")  # the command writes PNG files; no windows
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as e:  # argparse: --help/--version (0) or a usage error (2)
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 2)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    # pyrobdl's log records (a failed method, a failed plot) go to stderr while the command runs
    log = logging.getLogger("pyrobdl")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pyrobdl: %(message)s"))
    previous_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning  # one line each, no source line
            if args.command == "datasets":
                from . import datasets

                if args.data_dir is not None and not os.path.isdir(args.data_dir):
                    raise ValueError(f"--data-dir {args.data_dir!r} is not a folder; pass the folder that holds the UCI datasets")
                print(datasets.format_table(args.data_dir))
                return 0
            return _compare(args)
    except (ValueError, TypeError, OSError) as e:
        print(f"pyrobdl: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pyrobdl: interrupted", file=sys.stderr)
        return 130
    finally:
        log.removeHandler(handler)
        log.setLevel(previous_level)

"""`pyrobdl compare` / `pyrobdl datasets` end to end (--quick), the JSON schema,
the report and plots, the CSV path, a failing method, and bad input."""
import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
import torch

import pyrobdl
from pyrobdl import compare as compare_mod
from pyrobdl.cli import main
from pyrobdl.inference import base as inference_base
from pyrobdl.inference import registry as inference_registry

REGRESSION_METRICS = {
    "rmse", "ll", "nll", "crps", "coverage_90", "mean_width_90", "miscalibration_area", "sharpness",
    "fit_seconds", "predict_seconds",
}
CLASSIFICATION_METRICS = {"accuracy", "nll", "brier", "ece", "mce", "aurc", "fit_seconds", "predict_seconds"}
OOD_CLASSIFICATION_METRICS = {
    f"{k}_{s}" for k in ("ood_auroc", "ood_aupr", "fpr95") for s in ("entropy", "mi")
}


@pytest.fixture(autouse=True)
def _one_thread():
    """These fits are tiny: one intra-op thread is faster, and much faster when
    the machine is busy (two spinning OpenMP threads on a shared core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(capsys, *args):
    code = main(["compare", "--quick", "--no-progress", *map(str, args)])
    return code, capsys.readouterr()


def _check_schema(results, *, task, methods, splits):
    assert results["schema_version"] == compare_mod.SCHEMA_VERSION
    assert results["status"] == "complete"
    keys = ("started", "finished", "total_seconds", "settings", "versions", "metrics", "reference", "skipped", "plots",
            "report")
    assert set(keys) <= set(results)
    ds = results["dataset"]
    assert ds["task"] == task and ds["splits"] == splits and ds["n_train"] > 0 and ds["n_test"] > 0
    st = results["settings"]
    assert st["methods"] == methods and st["quick"] is True and st["device"] == "cpu"
    assert {"network", "prior", "likelihood", "num_weights"} <= set(st["model"])
    assert {"pyrobdl", "torch", "pyro", "numpy", "python"} <= set(results["versions"])
    assert set(results["methods"]) == set(methods)
    expected = REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS
    for name, entry in results["methods"].items():
        assert entry["status"] == "ok", (name, entry["error"])
        assert entry["error"] is None and isinstance(entry["options"], dict)
        assert [r["split"] for r in entry["splits"]] == splits
        for rec in entry["splits"]:
            assert rec["status"] == "ok"
            assert expected <= set(rec["metrics"])
            assert all(isinstance(v, float) and np.isfinite(v) for v in rec["metrics"].values())
        for metric, summ in entry["summary"].items():
            assert metric in results["metrics"]
            assert set(summ) == {"mean", "stderr", "n"} and summ["n"] == len(splits)
            assert (summ["stderr"] is None) == (len(splits) == 1)


def _check_report(out, results, pngs):
    assert results["report"] == {"markdown": "report.md", "html": "report.html"}
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for name in results["methods"]:
        assert name in md and name in page
    assert "**" in md and "<strong>" in page  # best values marked
    for png in pngs:
        assert (out / png).stat().st_size > 1000, png
        assert f"]({png})" in md and f'src="{png}"' in page
    assert {p["file"] for p in results["plots"].values()} >= set(pngs)


def test_compare_toy_default_methods(tmp_path, capsys):
    """The README's first command, quick: toy regression, every registered method."""
    out = tmp_path / "toy"
    code, cap = _run(capsys, "--out", out)
    assert code == 0, cap.err
    results = json.loads((out / "results.json").read_text())
    methods = compare_mod.default_methods(compare_mod.build_model(pyrobdl.datasets.load("toy-regression"), hidden=20))
    assert set(methods) == set(pyrobdl.available_methods())  # the 61-weight toy net fits every method
    _check_schema(results, task="regression", methods=methods, splits=[0])
    assert results["dataset"]["name"] == "toy-regression" and results["settings"]["hidden"] == 20
    for entry in results["methods"].values():
        assert {"ood_auroc_std", "ood_auroc_epistemic"} <= set(entry["splits"][0]["metrics"])
    # the reference sampler is named, runs first, and every other method is measured against it
    assert results["reference"] == compare_mod.REFERENCE_METHOD == "chees-hmc"
    for name, entry in results["methods"].items():
        metrics = entry["splits"][0]["metrics"]
        if name == results["reference"]:
            assert not any(k.startswith("ref_") for k in metrics)
        else:
            assert metrics["ref_w2"] >= 0 and metrics["ref_kl"] >= 0, name
    pngs = ["metrics.png", "predictive_1d.png", "calibration.png", "ood_std.png"]
    for name, entry in results["methods"].items():  # MCMC: diagnostics summary and trace/rank plots
        if name in ("nuts", "hmc", "chees-hmc"):
            diag = entry["splits"][0]["diagnostics"]
            assert diag["summary"]["num_draws"] == compare_mod.QUICK_OPTIONS[name]["num_samples"]
            assert "rhat_max" in diag["summary"] and "function_rhat_max" in diag["summary"]
            pngs += [f"mcmc_trace_{name}.png", f"mcmc_rank_{name}.png"]
    _check_report(out, results, pngs)
    assert "report.html" in cap.out and "RMSE" in cap.out
    md = (out / "report.md").read_text()
    assert "## Distance to the reference posterior" in md and "- **reference**: chees-hmc" in md


def test_compare_digits_ood_two_splits(tmp_path, capsys):
    out = tmp_path / "digits"
    code, cap = _run(capsys, "--dataset", "digits", "--ood", "digits-5-9", "--methods", "mean-field,ensemble,chees-hmc",
                     "--splits", 2, "--hidden", 10, "--out", out)
    assert code == 0, cap.err
    results = json.loads((out / "results.json").read_text())
    _check_schema(results, task="classification", methods=["mean-field", "ensemble", "chees-hmc"], splits=[0, 1])
    assert results["dataset"]["name"] == "digits-ood-5-9" and results["dataset"]["num_classes"] == 5
    for entry in results["methods"].values():
        assert OOD_CLASSIFICATION_METRICS <= set(entry["summary"])
        acc = entry["summary"]["accuracy"]
        assert acc["mean"] > 0.3 and acc["stderr"] >= 0
    assert results["reference"] == "chees-hmc"
    for name in ("mean-field", "ensemble"):  # distances to the reference on both splits
        summ = results["methods"][name]["summary"]
        assert summ["ref_tv"]["n"] == 2 and 0 <= summ["ref_tv"]["mean"] <= 1
        assert summ["ref_agreement"]["n"] == 2 and 0.5 < summ["ref_agreement"]["mean"] <= 1
    _check_report(out, results, ["metrics.png", "reliability.png", "accuracy_rejection.png",
                                 "ood_entropy.png", "ood_mi.png"])


def test_compare_csv(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3))
    price = 3.0 * x[:, 0] - 2.0 * x[:, 1] + 0.1 * rng.normal(size=80) + 100.0
    path = tmp_path / "houses.csv"
    rows = [f"{r[0]:.4f},{r[1]:.4f},{p:.4f},{r[2]:.4f}" for r, p in zip(x, price)]
    path.write_text("\n".join(["a,b,price,c", *rows]) + "\n")
    out = tmp_path / "csv"
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"mean-field": {"num_steps": 150}}))
    code, cap = _run(capsys, "--csv", path, "--target", "price", "--methods", "mean-field,ensemble",
                     "--config", config, "--out", out)
    assert code == 0, cap.err
    results = json.loads((out / "results.json").read_text())
    _check_schema(results, task="regression", methods=["mean-field", "ensemble"], splits=[0])
    assert results["dataset"]["name"] == "houses" and results["dataset"]["target"] == "price"
    assert results["methods"]["mean-field"]["options"]["num_steps"] == 150  # the config wins
    # metrics are in the target's units: RMSE far below the target's level (~100)
    assert results["methods"]["ensemble"]["summary"]["rmse"]["mean"] < 5.0
    _check_report(out, results, ["metrics.png", "calibration.png"])


class _Boom(inference_base.Inference):
    name = "boom"

    def __init__(self, *, progress=True, seed=None):
        pass

    def fit(self, model, x=None, y=None):
        raise RuntimeError("kaboom\nsecond line")


def test_failing_method_is_reported_and_the_others_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(inference_registry._METHODS, "boom", _Boom)
    out = tmp_path / "fail"
    code, cap = _run(capsys, "--methods", "boom,ensemble", "--out", out)
    assert code == 1
    results = json.loads((out / "results.json").read_text())
    boom, ens = results["methods"]["boom"], results["methods"]["ensemble"]
    assert boom["status"] == "failed" and boom["error"] == "RuntimeError: kaboom second line"
    assert boom["splits"] == [{"split": 0, "status": "failed", "error": "RuntimeError: kaboom second line"}]
    assert ens["status"] == "ok" and "rmse" in ens["summary"]
    assert "kaboom" in (out / "report.md").read_text() and "kaboom" in (out / "report.html").read_text()
    assert "boom: failed" in cap.out


def _bad_csv(tmp_path, body):
    path = tmp_path / "bad.csv"
    path.write_text("x1,x2,y\n" + body)
    return path


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--dataset", "bostn"], ["unknown dataset 'bostn'", "boston", "toy-regression"]),
        (["--methods", "mean-field,magic"], ["unknown method 'magic'", "mean-field", "ensemble"]),
        (["--dataset", "boston", "--splits", "21"], ["--splits 21", "20 splits"]),
        (["--dataset", "toy-regression", "--ood", "digits-5-9"], ["--ood", "digits"]),
        (["--dataset", "digits", "--ood", "five"], ["unknown --ood 'five'"]),
        (["--csv", "{tmp}/missing.csv", "--target", "y"], ["CSV file not found"]),
        (["--csv", "{bad_missing}", "--target", "y"], ["missing value", "'x2'", "row 2"]),
        (["--csv", "{bad_text}", "--target", "y"], ["non-numeric value 'abc'", "'x1'", "row 1"]),
        (["--csv", "{good}", "--target", "price"], ["target column 'price' not found", "x1, x2, y"]),
        (["--csv", "{good}", "--target", "y"], ["good.csv has 3 data rows", "training", "at least 10 and 5"]),
        (["--csv", "{float_target}", "--target", "y", "--task", "classification"],
         ["column 'y' holds non-integer numbers", "--task regression"]),
        (["--csv", "{good}"], ["--csv needs --target"]),
        (["--config", "{bad_config}"], ["unknown option(s) nmu_steps", "mean-field"]),
        (["--config", "{bad_value}"], ["invalid options for method 'mean-field'", "lr"]),
        (["--config", "{bad_method}"], ["unknown method 'magic'", "known methods"]),
        (["--config", "{tmp}/nope.yaml"], ["config file not found"]),
        (["--device", "tpu"], ["device"]),
        (["--seed", "-1"], ["seed (--seed) must be an integer in [0, 2**32 - 1000)", "got -1"]),
        (["--seed", str(2**64)], ["seed (--seed)", str(2**64)]),
        (["--hidden", "10000000"], ["--hidden 10000000", "GiB", "use --hidden"]),
        (["--num-samples", "1000000000"], ["--num-samples 1000000000", "GiB"]),
    ],
)
def test_bad_input_one_line_error(tmp_path, capsys, args, expected):
    files = {
        "tmp": tmp_path,
        "bad_missing": _bad_csv(tmp_path, "1,2,3\n4,,6\n7,8,9\n"),
        "bad_text": tmp_path / "text.csv",
        "good": tmp_path / "good.csv",
        "bad_config": tmp_path / "cfg.json",
        "bad_value": tmp_path / "value.json",
        "bad_method": tmp_path / "method.yaml",
        "float_target": tmp_path / "float.csv",
    }
    files["float_target"].write_text("x1,y\n" + "".join(f"{i},{0.37 * i:.2f}\n" for i in range(60)))
    files["bad_value"].write_text(json.dumps({"mean-field": {"lr": -1.0}}))
    files["bad_method"].write_text("magic:\n  num_steps: 10\n")
    files["bad_text"].write_text("x1,x2,y\nabc,2,3\n4,5,6\n")
    files["good"].write_text("x1,x2,y\n1,2,3\n4,5,6\n7,8,9\n")
    files["bad_config"].write_text(json.dumps({"mean-field": {"nmu_steps": 10}}))
    args = [a.format(**files) for a in args]
    code, cap = _run(capsys, *args, "--out", tmp_path / "out")
    assert code == 2
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyrobdl: error: "), cap.err
    assert "Traceback" not in cap.err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not (tmp_path / "out" / "results.json").exists()  # nothing ran


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_cuda_is_a_one_line_error(tmp_path, capsys):
    code, cap = _run(capsys, "--device", "cuda", "--out", tmp_path)
    assert code == 2
    assert cap.err.strip().splitlines() == [
        "pyrobdl: error: --device cuda: CUDA is not available on this machine "
        "(torch.cuda.is_available() is False); use --device cpu"
    ]


def test_usage_errors_exit_2(capsys):
    assert main(["compare", "--splits", "0"]) == 2
    assert "pyrobdl: error:" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert main([]) == 2


def test_options_profiles_and_default_methods(tmp_path):
    opts = compare_mod.method_options("mean-field", toy=True, quick=True, config={"mean-field": {"lr": 0.5}})
    assert opts["num_steps"] == compare_mod.QUICK_OPTIONS["mean-field"]["num_steps"] and opts["lr"] == 0.5
    assert compare_mod.method_options("ensemble") == {}  # the class defaults, nothing on top
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"deep-ensemble": {"size": 2}, "mean_field": None}))
    assert compare_mod.load_config(path) == {"ensemble": {"size": 2}, "mean-field": {}}
    big = compare_mod.build_model(pyrobdl.datasets.load("digits"), hidden=50)
    assert big.num_bayesian_parameters > pyrobdl.inference.get_method("nuts").max_weights
    assert "nuts" not in compare_mod.default_methods(big)
    assert "mean-field" in compare_mod.default_methods(big)


def test_datasets_with_a_missing_data_dir_is_an_error(capsys):
    code = main(["datasets", "--data-dir", "/nonexistent/uci"])
    cap = capsys.readouterr()
    assert code == 2 and "--data-dir '/nonexistent/uci' is not a folder" in cap.err and cap.out == ""


def test_python_m_pyrobdl_datasets():
    proc = subprocess.run([sys.executable, "-m", "pyrobdl", "datasets"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in ("toy-regression", "boston", "digits", "regression", "classification"):
        assert name in proc.stdout


# ----------------------------------------------------------------------------- the output folder
def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    """Two real processes: a live process holding the folder's lock makes a second run exit 2
    naming it; once that process is gone its lock is stale and the next run takes it over."""
    import platform

    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (out / compare_mod.runner.LOCK_NAME).write_text(f"{holder.pid}\n{platform.node()}\n")
        code, cap = _run(capsys, "--methods", "mean-field", "--out", out)
        assert code == 2 and f"another pyrobdl compare (process {holder.pid}) is writing to" in cap.err
        assert not (out / "results.json").exists()
    finally:
        holder.kill()
        holder.wait()
    code, cap = _run(capsys, "--methods", "mean-field", "--out", out)
    assert code == 0, cap.err
    assert json.loads((out / "results.json").read_text())["status"] == "complete"
    assert not (out / compare_mod.runner.LOCK_NAME).exists()  # released at the end


def test_a_reused_folder_keeps_no_stale_outputs(tmp_path, capsys):
    out = tmp_path / "out"
    code, _ = _run(capsys, "--methods", "nuts,mean-field", "--out", out)
    assert code == 0 and (out / "mcmc_trace_nuts.png").exists()
    (out / "notes.txt").write_text("mine")
    code, _ = _run(capsys, "--methods", "mean-field", "--out", out)
    assert code == 0
    assert not list(out.glob("mcmc_*.png")) and not list(out.glob("*.tmp"))  # the old run's plots are gone
    assert (out / "notes.txt").read_text() == "mine"  # files pyrobdl did not write are left alone
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["mean-field"]
    assert {p.name for p in out.glob("*.png")} == {p["file"] for p in results["plots"].values()}


def test_an_unwritable_folder_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(compare_mod.runner, "_create_exclusive", refuse)
    code, cap = _run(capsys, "--methods", "mean-field", "--out", tmp_path / "out")
    assert code == 2 and "cannot write to output directory" in cap.err and "Permission denied" in cap.err
    assert "Traceback" not in cap.err


def test_interrupted_report_is_not_marked_complete(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_mod.runner, "write_report", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compare_mod.compare("toy-regression", methods="mean-field", quick=True, out=tmp_path, progress=False)
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "interrupted"
    assert not (tmp_path / compare_mod.runner.LOCK_NAME).exists()


def test_a_report_interrupted_midway_leaves_none_of_its_files(tmp_path, monkeypatch):
    """The report is built in a staging folder and moved in only when complete: a Ctrl-C after
    some of its files were written leaves none of them beside a results.json marked interrupted."""
    real = compare_mod.runner.write_report
    seen = {}

    def half_written(results, folder, artefacts=None):
        seen["folder"] = Path(folder)
        (Path(folder) / "metrics.png").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_mod.runner, "write_report", half_written)
    with pytest.raises(KeyboardInterrupt):
        compare_mod.compare("toy-regression", methods="mean-field", quick=True, out=tmp_path, progress=False)
    assert seen["folder"] != tmp_path and seen["folder"].parent == tmp_path  # built aside
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no half report, no stage
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "interrupted"
    # a complete run into the same folder publishes the whole report and removes what a killed run left
    stale = tmp_path / (compare_mod.runner.STAGE_PREFIX + "999999")
    stale.mkdir()
    (stale / "report.md").write_text("stale")
    monkeypatch.setattr(compare_mod.runner, "write_report", real)
    results = compare_mod.compare("toy-regression", methods="mean-field", quick=True, out=tmp_path, progress=False)
    assert results["status"] == "complete" and not stale.exists()
    assert "stale" not in (tmp_path / "report.md").read_text()
    assert not list(tmp_path.glob(compare_mod.runner.STAGE_PREFIX + "*"))
    assert {p.name for p in tmp_path.glob("*.png")} == {p["file"] for p in results["plots"].values()}


@pytest.mark.slow
def test_two_real_compare_runs_into_one_folder(tmp_path):
    """Two `pyrobdl compare` processes on one --out: the second, started while the first holds
    the folder, exits 2 naming the first's process; the first completes untouched."""
    import os
    import time

    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "pyrobdl", "compare", "--quick", "--no-progress", "--methods", "mean-field",
           "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lock = out / compare_mod.runner.LOCK_NAME
        deadline = time.time() + 120
        while not lock.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert lock.exists(), "the first run never took the folder's lock"
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        assert second.returncode == 2, second.stderr
        assert f"another pyrobdl compare (process {first.pid}) is writing to" in second.stderr
        assert "Traceback" not in second.stderr
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete" and list(results["methods"]) == ["mean-field"]
    assert not (out / compare_mod.runner.LOCK_NAME).exists()

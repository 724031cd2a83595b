"""The UCI benchmark: its protocol on a hand-computed case, a smoke run of the command on one split
of two datasets, and the README table equal to the rendering of the committed JSON."""
import math
import os
import sys

import pytest
import torch

from pyrobdl import datasets
from pyrobdl.compare.evaluation import evaluate
from pyrobdl.prediction import RegressionPrediction

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import bench_uci  # noqa: E402


def _write_folder(root, rows, train, test):
    folder = root / "kin8nm"  # a dataset that is read from data_dir
    folder.mkdir()
    (folder / "data.txt").write_text("\n".join(" ".join(str(v) for v in r) for r in rows) + "\n")
    (folder / "index_features.txt").write_text("0\n1\n")
    (folder / "index_target.txt").write_text("2\n")
    (folder / "index_train_0.txt").write_text("\n".join(map(str, train)) + "\n")
    (folder / "index_test_0.txt").write_text("\n".join(map(str, test)) + "\n")
    (folder / "n_splits.txt").write_text("1\n")


def test_protocol_on_a_hand_computed_case(tmp_path):
    """Rows 0-3 train, row 4 test. Training statistics (population std): x1 mean 2.5, std
    sqrt(1.25); y mean 5.25, std sqrt(6.6875). A prediction N(0, 0.5^2) in standardised units is
    N(5.25, (0.5 sqrt(6.6875))^2) in the original ones; at y = 3 its log density is computed here
    by hand and must equal the benchmark's test LL (the standardised LL minus log std_y)."""
    rows = [[1, 10, 2], [2, 20, 4], [3, 30, 6], [4, 40, 9], [5, 50, 3]]
    _write_folder(tmp_path, rows, train=[0, 1, 2, 3], test=[4])
    ds = datasets.load("kin8nm", split=0, data_dir=tmp_path)
    y_std = math.sqrt(6.6875)
    assert ds.y_mean == pytest.approx(5.25) and ds.y_std == pytest.approx(y_std)
    assert ds.x_test[0, 0].item() == pytest.approx((5 - 2.5) / math.sqrt(1.25), rel=1e-6)
    assert ds.x_test[0, 1].item() == pytest.approx((50 - 25) / math.sqrt(125.0), rel=1e-6)
    assert ds.y_test[0].item() == pytest.approx((3 - 5.25) / y_std, rel=1e-6)
    assert ds.log_likelihood_offset == pytest.approx(-math.log(y_std))

    pred = RegressionPrediction(torch.zeros(1, 1), torch.full((1, 1), 0.5))
    sigma = 0.5 * y_std
    by_hand = -0.5 * math.log(2 * math.pi) - math.log(sigma) - 0.5 * ((3 - 5.25) / sigma) ** 2
    out = evaluate(pred, ds)
    assert out["ll"] == pytest.approx(by_hand, rel=1e-6)
    assert out["rmse"] == pytest.approx(2.25, rel=1e-6)  # |5.25 - 3| in the original units
    # a split file naming a row outside the data is refused, naming the file
    (tmp_path / "kin8nm" / "index_test_0.txt").write_text("7\n")
    with pytest.raises(ValueError, match="index_test_0.txt"):
        datasets.load("kin8nm", split=0, data_dir=tmp_path)


def test_smoke_run_of_the_command_on_one_split_of_two_datasets(tmp_path):
    out = tmp_path / "uci.json"
    data = bench_uci.main(["--quick", "--datasets", "boston,energy", "--methods", "mean-field", "--splits", "1",
                           "--json", str(out), "--out", str(tmp_path / "reports")])
    assert out.exists()
    for name in ("boston", "energy"):
        entry = data["results"][name]["mean-field"]
        assert entry["status"] == "ok" and entry["splits"] == 1 and entry["quick"]
        assert math.isfinite(entry["ll"][0]) and entry["rmse"][0] > 0
        assert entry["per_split"][0]["split"] == 0 and entry["per_split"][0]["ll"] == pytest.approx(entry["ll"][0])
    # a second run merges into the file instead of replacing it
    bench_uci.main(["--quick", "--datasets", "boston", "--methods", "ensemble", "--splits", "1",
                    "--json", str(out), "--out", str(tmp_path / "reports")])
    merged = bench_uci.load(str(out))["results"]
    assert set(merged["boston"]) == {"mean-field", "ensemble"} and "mean-field" in merged["energy"]
    table = bench_uci.render(bench_uci.load(str(out)))
    assert table.startswith(bench_uci.BEGIN) and "| mean-field VI (quick) | 1 |" in table
    assert "**Concrete**: not run yet" in table


def test_render_marks_the_best_row_and_the_family_bars():
    data = {"schema": 1, "results": {"energy": {
        "mean-field": {"status": "ok", "ll": [-0.9, 0.05], "rmse": [0.5, 0.02], "fit_seconds": 10.0, "splits": 20,
                       "seconds": 300.0, "git_commit": "abc"},
        "mc-dropout": {"status": "ok", "ll": [-1.3, 0.05], "rmse": [0.9, 0.02], "fit_seconds": 12.0, "splits": 20,
                       "seconds": 400.0, "git_commit": "abc"},
    }}}
    table = bench_uci.render(data)
    assert "best pyrobdl −0.900 ✓" in table  # above DVI's -1.01
    assert "| mean-field VI | 20 | **−0.900 ± 0.050** | 0.50 ± 0.02 | 10.0 | −1.03 ✓ |" in table
    assert "| MC dropout | 20 | −1.300 ± 0.050 | 0.90 ± 0.02 | 12.0 | −1.21 ✗ |" in table
    assert "Wall time of the runs recorded: 12 min (Energy 12 min)" in table


def test_readme_equals_the_rendering_of_the_committed_json():
    if not os.path.exists(bench_uci.DEFAULT_JSON):
        pytest.skip("benchmarks/results/uci.json does not exist yet: run `python benchmarks/bench_uci.py --all --render`")
    diff = bench_uci.check()
    assert not diff, "README.md's UCI table differs from benchmarks/results/uci.json; run " \
                     "`python benchmarks/bench_uci.py --render`:\n" + "\n".join(diff[:60])

"""Tests for pyrobdl.datasets: UCI split files, toys, digits OOD variants, CSV."""
from __future__ import annotations

import fnmatch
import math
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from pyrobdl import datasets

SHARED_UCI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "uci"
PACKAGED = {"boston": "bostonHousing", "concrete": "concrete", "energy": "energy"}


def _package_dir(folder: str):
    return resources.files("pyrobdl.datasets").joinpath("data", "uci", folder)


def _ints(res) -> np.ndarray:
    return np.loadtxt(res.open("r"), dtype=np.int64, ndmin=1)


# ---------------------------------------------------------------- UCI


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_uci_split_files_match_loaded_sizes_and_rows(name):
    folder = _package_dir(PACKAGED[name])
    data = np.loadtxt(folder.joinpath("data.txt").open("r"))
    target = int(_ints(folder.joinpath("index_target.txt"))[0])
    n_splits = int(_ints(folder.joinpath("n_splits.txt"))[0])
    assert n_splits == datasets.num_splits(name) == 20
    for k in range(n_splits):
        train = _ints(folder.joinpath(f"index_train_{k}.txt"))
        test = _ints(folder.joinpath(f"index_test_{k}.txt"))
        assert np.intersect1d(train, test).size == 0
        assert len(train) + len(test) == len(data)
        ds = datasets.load(name, split=k)
        assert (ds.n_train, ds.n_test) == (len(train), len(test))
        assert ds.y_train.shape == (len(train),) and ds.y_train.dtype == torch.float32
        # the rows are the ones the index files name, in their order
        np.testing.assert_allclose(ds.y_test_original.double().numpy(), data[test, target], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(ds.y_train_original.double().numpy(), data[train, target], rtol=1e-5, atol=1e-4)


def test_boston_split0_sizes_and_aliases():
    ds = datasets.load("boston")
    assert (ds.n_train, ds.n_test, ds.input_dim) == (455, 51, 13)
    assert ds.task == "regression" and ds.split == 0
    alias = datasets.load("bostonHousing")
    assert torch.equal(alias.x_train, ds.x_train)
    assert datasets.resolve_name("Boston_Housing") == "boston"
    assert datasets.resolve_name("power-plant") == "power"
    assert datasets.resolve_name("protein-tertiary-structure") == "protein"
    assert datasets.resolve_name("naval-propulsion-plant") == "naval"


def test_energy_uses_heating_load_column():
    ds = datasets.load("energy", normalize=False)
    assert ds.meta["index_target"] == 8 and ds.target_name == "heating_load"
    assert (ds.n_train, ds.n_test, ds.input_dim) == (691, 77, 8)


def test_normalisation_uses_training_statistics():
    ds = datasets.load("concrete", split=3)
    raw = datasets.load("concrete", split=3, normalize=False)
    assert ds.normalized and not raw.normalized
    x = ds.x_train.double()
    assert x.mean(0).abs().max() < 1e-5
    assert (x.std(0, unbiased=False) - 1).abs().max() < 1e-4
    assert abs(ds.y_train.double().mean()) < 1e-5
    assert abs(ds.y_train.double().std(unbiased=False) - 1) < 1e-4
    # the statistics are the training split's, and test data uses them too
    assert ds.y_mean == pytest.approx(raw.y_train.double().mean().item(), rel=1e-6)
    assert ds.y_std == pytest.approx(raw.y_train.double().std(unbiased=False).item(), rel=1e-5)
    torch.testing.assert_close(ds.unnormalize_x(ds.x_test), raw.x_test, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(ds.y_test_original, raw.y_test, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ds.normalize_x(raw.x_test), ds.x_test, rtol=1e-4, atol=1e-5)
    assert raw.y_mean == 0.0 and raw.y_std == 1.0 and raw.log_likelihood_offset == 0.0


def test_log_likelihood_offset_converts_to_original_units():
    ds = datasets.load("boston", split=1)
    assert ds.log_likelihood_offset == pytest.approx(-math.log(ds.y_std))
    mean = torch.zeros(ds.n_test, dtype=torch.float64)
    std = torch.full((ds.n_test,), 0.5, dtype=torch.float64)
    ll_norm = torch.distributions.Normal(mean, std).log_prob(ds.y_test.double())
    ll_orig = torch.distributions.Normal(ds.unnormalize_mean(mean), ds.unnormalize_std(std)).log_prob(
        ds.y_test_original.double())
    torch.testing.assert_close(ll_norm + ds.log_likelihood_offset, ll_orig, rtol=1e-5, atol=1e-4)
    assert ds.unnormalize_var(4.0) == pytest.approx(4.0 * ds.y_std**2)


def test_constant_feature_gets_unit_std(tmp_path):
    rows = "\n".join(f"{i},{3.3},{0.1 * i}" for i in range(20))
    (tmp_path / "c.csv").write_text("a,const,y\n" + rows + "\n")
    ds = datasets.load_csv(tmp_path / "c.csv", target="y")
    assert ds.x_std[1].item() == 1.0
    assert torch.all(ds.x_train[:, 1] == 0)


def test_big_uci_needs_data_dir():
    with pytest.raises(ValueError, match="data_dir"):
        datasets.load("kin8nm")
    with pytest.raises(ValueError, match="kin8nm"):
        datasets.load("kin8nm", data_dir="/nonexistent-dir")
    infos = {i.name: i for i in datasets.list_datasets()}
    assert infos["kin8nm"].needs_data_dir and not infos["boston"].needs_data_dir


@pytest.mark.skipif(not (SHARED_UCI / "kin8nm" / "data.txt").is_file(), reason="shared UCI data not present")
def test_big_uci_from_data_dir():
    ds = datasets.load("kin8nm", data_dir=SHARED_UCI, split=19)
    train = np.loadtxt(SHARED_UCI / "kin8nm" / "index_train_19.txt", dtype=np.int64)
    test = np.loadtxt(SHARED_UCI / "kin8nm" / "index_test_19.txt", dtype=np.int64)
    assert (ds.n_train, ds.n_test, ds.input_dim) == (len(train), len(test), 8)
    assert np.intersect1d(train, test).size == 0
    assert datasets.num_splits("protein", data_dir=SHARED_UCI) == 5
    with pytest.raises(ValueError, match=r"0\.\.4"):
        datasets.load("protein", data_dir=SHARED_UCI, split=5)
    # a packaged one also loads from the directory, identically
    assert torch.equal(datasets.load("boston", data_dir=SHARED_UCI).x_test, datasets.load("boston").x_test)
    assert not {i.name: i for i in datasets.list_datasets(SHARED_UCI)}["kin8nm"].needs_data_dir


def test_split_out_of_range_errors():
    with pytest.raises(ValueError, match=r"split 20 is out of range for boston: it has 20 splits \(0\.\.19\)"):
        datasets.load("boston", split=20)
    with pytest.raises(ValueError, match="out of range"):
        datasets.load("energy", split=-1)
    with pytest.raises(ValueError, match="20 splits"):
        datasets.check_splits("concrete", 21)
    assert datasets.check_splits("concrete", 3) == [0, 1, 2]
    assert datasets.check_splits("toy-regression", [0, 5]) == [0, 5]
    with pytest.raises(ValueError, match="out of range"):
        datasets.load("digits", split=20)


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError) as info:
        datasets.load("mnist-fancy")
    msg = str(info.value)
    assert "\n" not in msg
    for name in ("toy-regression", "sinusoid", "boston", "concrete", "energy", "kin8nm", "digits"):
        assert name in msg
    with pytest.raises(ValueError, match="did you mean 'concrete'"):
        datasets.load("concret")
    with pytest.raises(ValueError, match="unexpected option"):
        datasets.load("boston", n_train=3)


def test_published_numbers_and_listing():
    assert datasets.PUBLISHED["boston"]["mc-dropout"] == {"rmse": (2.97, 0.19), "ll": (-2.46, 0.06)}
    assert datasets.PUBLISHED["energy"]["ensemble"]["ll"] == (-1.38, 0.22)
    assert datasets.PUBLISHED["concrete"]["mc-dropout-10x"]["rmse"] == (4.81, 0.14)
    assert set(datasets.PUBLISHED) == {"boston", "concrete", "energy", "kin8nm", "naval", "power", "protein"}
    infos = {i.name: i for i in datasets.list_datasets()}
    assert {"toy-regression", "sinusoid", "boston", "protein", "digits", "digits-0-4", "digits-rotated"} <= set(infos)
    assert (infos["boston"].n, infos["boston"].d, infos["boston"].task) == (506, 13, "regression")
    assert (infos["protein"].num_splits, infos["digits"].task) == (5, "classification")
    assert infos["digits"].num_classes == 10 and infos["digits-0-4"].num_classes == 5
    table = datasets.format_table()
    assert "boston" in table and "needs --data-dir" in table


def test_package_data_matches_setup_cfg_pattern():
    root = resources.files("pyrobdl")
    for folder in PACKAGED.values():
        rel = f"datasets/data/uci/{folder}/data.txt"
        assert root.joinpath(*rel.split("/")).is_file()
        assert fnmatch.fnmatch(rel, "datasets/data/*/*/*.txt")


# ---------------------------------------------------------------- toys


def test_toy_regression_deterministic_and_ranges():
    a = datasets.load("toy-regression", seed=3)
    b = datasets.load("toy-regression", seed=3)
    c = datasets.load("toy-regression", seed=4)
    d = datasets.load("toy-regression", seed=3, split=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train) and not torch.equal(a.x_train, d.x_train)
    assert a.train_range == (-7.0, 7.0)
    assert a.x_train.shape == (500, 1) and a.y_train.shape == (500,)
    assert a.x_train.min() >= -7 and a.x_train.max() <= 7
    assert a.x_test.min() == pytest.approx(-10) and a.x_test.max() == pytest.approx(10)
    assert torch.all(a.x_ood.abs() >= 7) and torch.all(a.x_ood.abs() <= 10)
    assert not a.normalized and a.y_std == 1.0
    # heteroscedastic noise, exposed at the test points
    torch.testing.assert_close(a.test_noise_std, (0.3 + 0.3 * a.x_test[:, 0].abs() / 7).float())
    resid = a.y_train - a.x_train[:, 0] * torch.sin(a.x_train[:, 0])
    z = resid / a.noise_std(a.x_train[:, 0])
    assert 0.85 < z.std().item() < 1.15
    assert a.in_train_range(a.x_test).float().mean().item() == pytest.approx(0.7, abs=0.01)


def test_toy_normalize_option_and_sinusoid():
    raw = datasets.load("toy-regression")
    ds = datasets.load("toy-regression", normalize=True)
    assert ds.normalized and abs(ds.x_train.mean().item()) < 1e-5
    torch.testing.assert_close(ds.unnormalize_x(ds.x_test), raw.x_test, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ds.unnormalize_std(ds.test_noise_std), raw.test_noise_std, rtol=1e-5, atol=1e-6)
    assert torch.equal(ds.in_train_range(ds.x_test), raw.in_train_range(raw.x_test))
    s = datasets.load("sinusoid", n_train=100)
    assert s.train_range == (-8.0, 8.0) and s.n_train == 100
    assert s.x_train.abs().max() <= 8 and s.x_test.abs().max() > 8
    assert torch.equal(datasets.load("sinusoid", n_train=100).y_train, s.y_train)


# ---------------------------------------------------------------- digits


def test_digits_basic_split():
    ds = datasets.load("digits")
    assert ds.task == "classification" and ds.num_classes == 10 and ds.x_ood is None
    assert ds.n_train + ds.n_test == 1797 and ds.input_dim == 64
    assert ds.y_train.dtype == torch.int64 and ds.output_dim == 10
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    counts = torch.bincount(ds.y_test, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # stratified ~20% of ~180 per class
    assert torch.equal(datasets.load("digits").x_train, ds.x_train)
    assert not torch.equal(datasets.load("digits", seed=1).x_train, ds.x_train)


def test_digits_class_ood_variant_disjoint():
    ds = datasets.load("digits-0-4")
    assert ds.num_classes == 5 and ds.class_labels == [0, 1, 2, 3, 4]
    assert set(ds.y_train.tolist()) == set(range(5)) and set(ds.y_test.tolist()) <= set(range(5))
    full = datasets.load("digits")
    # OOD images are exactly the test images of classes 5..9
    ood_rows = {tuple(r) for r in full.x_test[full.y_test >= 5].tolist()}
    assert {tuple(r) for r in ds.x_ood.tolist()} == ood_rows
    in_rows = {tuple(r) for r in torch.cat([ds.x_train, ds.x_test]).tolist()}
    ood_train = {tuple(r) for r in full.x_train[full.y_train >= 5].tolist()}
    assert not (in_rows & ood_rows) and not (in_rows & ood_train)
    same = datasets.load("digits-ood-5-9")
    assert torch.equal(same.x_train, ds.x_train) and torch.equal(same.x_ood, ds.x_ood)
    other = datasets.load("digits-5-9")
    assert other.class_labels == [5, 6, 7, 8, 9] and set(other.y_train.tolist()) == set(range(5))
    assert torch.equal(datasets.load("digits", ood_classes=[5, 6, 7, 8, 9]).x_ood, ds.x_ood)


def test_digits_rotated_and_noisy():
    rot = datasets.load("digits-rotated")
    assert rot.x_ood.shape == rot.x_test.shape and torch.equal(rot.y_ood, rot.y_test)
    back = torch.rot90(rot.x_ood.reshape(-1, 8, 8), k=-1, dims=(1, 2)).reshape(-1, 64)
    assert torch.equal(back, rot.x_test)
    noisy = datasets.load("digits-corrupted", corruption_std=0.3)
    assert noisy.name == "digits-noisy"
    assert 0.0 <= noisy.x_ood.min() and noisy.x_ood.max() <= 1.0
    assert not torch.equal(noisy.x_ood, noisy.x_test)
    with pytest.raises(ValueError, match="rotation"):
        datasets.load("digits-rotated", rotation=45)


# ---------------------------------------------------------------- CSV


def _write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_good_case(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["id,a,b,label,y"]
    for i in range(50):
        a, b = rng.normal(), rng.normal()
        lines.append(f"row{i},{a:.6f},{b:.6f},{'cat' if i % 2 else 'dog'},{2 * a - b + 10:.6f}")
    path = _write(tmp_path, "\n".join(lines) + "\n")
    ds = datasets.load_csv(path, target="y", features=["a", "b"], seed=1)
    assert (ds.n_train, ds.n_test, ds.input_dim) == (45, 5, 2)
    assert ds.feature_names == ["a", "b"] and ds.target_name == "y" and ds.name == "data"
    assert abs(ds.x_train.mean().item()) < 1e-5 and abs(ds.y_train.mean().item()) < 1e-5
    again = datasets.load("csv", path=path, target="y", features=["a", "b"], seed=1)
    assert torch.equal(again.x_test, ds.x_test)
    other = datasets.load_csv(path, target="y", features=["a", "b"], seed=2)
    assert not torch.equal(other.x_test, ds.x_test)
    # the split is a partition of the rows
    all_y = sorted(torch.cat([ds.y_train_original, ds.y_test_original]).tolist())
    assert all_y == pytest.approx(sorted(float(l.split(",")[-1]) for l in lines[1:]), abs=1e-4)
    cls = datasets.load_csv(path, target="label", features=["a", "b"], task="classification")
    assert cls.num_classes == 2 and cls.meta["class_names"] == ["cat", "dog"] and cls.y_train.dtype == torch.int64
    semi = _write(tmp_path, "a;y\n1;2\n3;4\n5;6\n", "semi.csv")
    assert datasets.load_csv(semi, target="y", test_fraction=0.34).n_test == 1


def test_csv_missing_value_names_row_and_column(tmp_path):
    path = _write(tmp_path, "x1,x2,y\n1,2,3\n4,,6\n7,8,9\n")
    with pytest.raises(ValueError, match=r"missing value in column 'x2' at row 2 \(line 3"):
        datasets.load_csv(path, target="y")
    path = _write(tmp_path, "x1,x2,y\n1,2,3\n4,5,NA\n7,8,9\n", "na.csv")
    with pytest.raises(ValueError, match="missing value in column 'y' at row 2"):
        datasets.load_csv(path, target="y")
    # an unused column may have gaps
    assert datasets.load_csv(_write(tmp_path, "x1,x2,y\n1,,3\n4,,6\n7,,9\n", "gap.csv"),
                             target="y", features=["x1"]).n_train == 2


def test_csv_non_numeric_value(tmp_path):
    path = _write(tmp_path, "x1,x2,y\n1,2,3\n4,5,6\n7,eight,9\n")
    with pytest.raises(ValueError) as info:
        datasets.load_csv(path, target="y")
    msg = str(info.value)
    assert "non-numeric value 'eight' in column 'x2' at row 3" in msg and "\n" not in msg


def test_csv_missing_target_column(tmp_path):
    path = _write(tmp_path, "x1,x2,y\n1,2,3\n4,5,6\n")
    with pytest.raises(ValueError, match="target column 'price' not found in data.csv; columns: x1, x2, y"):
        datasets.load_csv(path, target="price")
    with pytest.raises(ValueError, match="feature column 'x9' not found"):
        datasets.load_csv(path, target="y", features=["x9"])
    with pytest.raises(ValueError, match="path= and target="):
        datasets.load("csv", path=path)
    with pytest.raises(ValueError, match="not found"):
        datasets.load_csv(tmp_path / "nope.csv", target="y")


# ---------------------------------------------------------------- devices


def test_to_device_copies():
    ds = datasets.load("toy-regression", n_train=10, n_test=10, n_ood=0)
    moved = ds.to("cpu")
    assert moved is not ds and torch.equal(moved.x_train, ds.x_train) and moved.x_ood is None
    assert moved.device.type == "cpu"


@pytest.mark.cuda
def test_to_cuda():
    ds = datasets.load("boston").to("cuda")
    assert ds.x_train.is_cuda and ds.y_test.is_cuda and ds.x_std.is_cuda
    assert ds.unnormalize_x(ds.x_test).is_cuda


def test_csv_classification_refuses_a_continuous_target(tmp_path):
    """A float target read as classes used to make one class per row (accuracy 0, exit 0)."""
    path = _write(tmp_path, "a,y\n" + "".join(f"{i},{0.37 * i:.2f}\n" for i in range(60)), "float.csv")
    with pytest.raises(ValueError, match=r"column 'y' holds non-integer numbers \(e.g. 0.37\).*task='regression'"):
        datasets.load_csv(path, target="y", task="classification")
    ints = _write(tmp_path, "a,y\n" + "".join(f"{i},{i % 3}.0\n" for i in range(30)), "ints.csv")
    assert datasets.load_csv(ints, target="y", task="classification").num_classes == 3  # "2.0" is a label

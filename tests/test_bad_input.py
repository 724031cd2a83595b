"""Every bad input named in the core issue raises a clear ValueError/TypeError."""
import numpy as np
import pytest
import torch
from torch import nn

import pyrobdl
from pyrobdl import BayesianNetwork, inference, likelihoods


def reg_model(out=1):
    return BayesianNetwork(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, out)))


X = torch.randn(10, 2)
Y = torch.randn(10)
FIT = dict(num_steps=2, progress=False)


def test_length_mismatch():
    with pytest.raises(ValueError, match="x has 10 rows but y has 9"):
        pyrobdl.fit(reg_model(), X, Y[:9], **FIT)


@pytest.mark.parametrize("bad", ["x", "y"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_inf(bad, value):
    x, y = X.clone(), Y.clone()
    if bad == "x":
        x[3, 0] = value
    else:
        y[3] = value
    with pytest.raises(ValueError, match=f"{bad} contains 1 NaN or inf"):
        pyrobdl.fit(reg_model(), x, y, **FIT)


def test_classification_labels():
    model = BayesianNetwork(nn.Sequential(nn.Linear(2, 3)), likelihood=likelihoods.Categorical())
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        pyrobdl.fit(model, X, torch.tensor([0, 1, 2, 3, 0, 1, 2, 0, 1, 2]), **FIT)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        pyrobdl.fit(model, X, -torch.ones(10, dtype=torch.long), **FIT)
    with pytest.raises(TypeError, match="integer class labels"):
        pyrobdl.fit(model, X, torch.zeros(10), **FIT)
    with pytest.raises(ValueError, match="Bernoulli targets must be 0 or 1"):
        pyrobdl.fit(BayesianNetwork(nn.Linear(2, 1), likelihood=likelihoods.Bernoulli()), X, torch.full((10,), 2), **FIT)


def test_output_width():
    het = BayesianNetwork(nn.Linear(2, 3), likelihood=likelihoods.HeteroscedasticGaussian())
    with pytest.raises(ValueError, match="2\\*d network outputs"):
        pyrobdl.fit(het, X, Y, **FIT)
    het1 = BayesianNetwork(nn.Linear(2, 1), likelihood=likelihoods.HeteroscedasticGaussian())
    with pytest.raises(ValueError, match="2\\*d network outputs"):
        pyrobdl.fit(het1, X, Y, **FIT)
    with pytest.raises(ValueError, match="give the network's last layer 1 output"):
        pyrobdl.fit(reg_model(out=3), X, Y, **FIT)
    with pytest.raises(ValueError, match="at least 2 outputs"):
        pyrobdl.fit(BayesianNetwork(nn.Linear(2, 1), likelihood=likelihoods.Categorical()), X, torch.zeros(10, dtype=torch.long), **FIT)


def test_num_samples():
    post = pyrobdl.fit(reg_model(), X, Y, **FIT)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        post.predict(X, num_samples=0)
    with pytest.raises(TypeError, match="num_samples must be an integer"):
        post.predict(X, num_samples=2.5)


def test_unknown_method_lists_known():
    with pytest.raises(ValueError, match="unknown method 'mcmc'.*mean-field"):
        pyrobdl.fit(reg_model(), X, Y, method="mcmc")
    with pytest.raises(TypeError, match="invalid option for method 'mean-field'"):
        pyrobdl.fit(reg_model(), X, Y, method="mean-field", nonsense=1)


def test_settings_validated():
    for kw, exc in [({"num_steps": 0}, ValueError), ({"lr": -1.0}, ValueError), ({"kl": "exact"}, ValueError),
                    ({"estimator": "magic"}, ValueError), ({"num_particles": 0}, ValueError)]:
        with pytest.raises(exc):
            inference.MeanField(**kw)
    with pytest.raises(TypeError, match="net must be a torch.nn.Module"):
        BayesianNetwork("not a net")
    with pytest.raises(TypeError, match="prior must be"):
        BayesianNetwork(nn.Linear(1, 1), prior=1.0)
    with pytest.raises(TypeError, match="x must be a torch.Tensor or a numpy array"):
        pyrobdl.fit(reg_model(), "abc", Y, **FIT)
    with pytest.raises(ValueError, match="x is empty"):
        pyrobdl.fit(reg_model(), X[:0], Y[:0], **FIT)


def _mlp3():
    return BayesianNetwork(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1)))


@pytest.mark.parametrize("x, match", [
    (torch.randn(40), r"cannot take x of shape \(40,\).*\(N, d\) for a first nn.Linear"),
    (torch.randn(40, 4), r"cannot take x of shape \(40, 4\)"),
    (torch.randn(40, 5, 3), r"returns outputs of shape \(N, 5, 1\).*nn.Flatten"),
])
def test_fit_input_shape_errors_name_the_shape_before_torch_sees_it(x, match):
    with pytest.raises(ValueError, match=match):
        pyrobdl.fit(_mlp3(), x, torch.randn(40), method="mean-field", num_steps=2, progress=False)


@pytest.mark.parametrize("method", ["mean-field", "mc-dropout", "ensemble"])
def test_predict_checks_the_input_shape_it_was_fitted_on(method, tmp_path):
    x = torch.randn(40, 3)
    post = pyrobdl.fit(_mlp3(), x, x.sum(-1), method=method, num_steps=2, progress=False)
    assert post.model.input_shape == (3,)
    for bad in (torch.randn(5, 4), torch.randn(3), torch.randn(2, 5, 3)):
        with pytest.raises(ValueError, match=r"x has shape .* fitted on inputs of shape \(N, 3\)"):
            post.predict(bad, num_samples=2)
    assert post.predict(torch.randn(5, 3), num_samples=2).mean.shape == (5,)
    post.save(tmp_path / "p.pt")  # the recorded shape travels with the file
    back = pyrobdl.load(tmp_path / "p.pt")
    with pytest.raises(ValueError, match=r"fitted on inputs of shape \(N, 3\)"):
        back.predict(torch.randn(5, 4), num_samples=2)


def test_one_feature_hint():
    x = torch.randn(30, 1)
    model = BayesianNetwork(nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1)))
    post = pyrobdl.fit(model, x, x[:, 0], method="mean-field", num_steps=2, progress=False)
    with pytest.raises(ValueError, match=r"unsqueeze\(-1\) for one feature"):
        post.predict(torch.randn(7), num_samples=2)


@pytest.mark.parametrize("x, y, error, match", [
    (torch.randn(10, 3, dtype=torch.complex64), torch.randn(10), TypeError, "x must be real-valued"),
    (np.ones((10, 3), dtype=complex), torch.randn(10), TypeError, "x must hold real numbers.*complex"),
    (np.array([[1, "a", 2]] * 10, dtype=object), torch.randn(10), TypeError, "x must hold real numbers, got an array of dtype object"),
    (torch.randn(10, 3), ["a"] * 10, TypeError, "y must hold real numbers"),
])
def test_non_numeric_inputs_name_the_argument(x, y, error, match):
    with pytest.raises(error, match=match):
        pyrobdl.fit(_mlp3(), x, y, method="mean-field", num_steps=2, progress=False)


def test_prediction_objects_validate_their_contents():
    from pyrobdl.prediction import ClassificationPrediction, RegressionPrediction

    with pytest.raises(ValueError, match="loc has NaN"):
        RegressionPrediction(torch.tensor([[float("nan"), 0.0]]), torch.ones(1, 2))
    with pytest.raises(ValueError, match="scale has negative values"):
        RegressionPrediction(torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]))
    with pytest.raises(ValueError, match="sum to 1"):
        ClassificationPrediction(torch.tensor([[[0.9, 0.9]]]))
    with pytest.raises(ValueError, match="sum to 1"):
        ClassificationPrediction(torch.tensor([[[float("nan"), 1.0]]]))
    # float16 softmax rows sum to 1 only within its precision: accepted
    ClassificationPrediction(torch.softmax(torch.randn(4, 5, 10), -1).half())
    RegressionPrediction(torch.zeros(1, 2), torch.zeros(1, 2))  # a zero noise std is allowed


def test_labels_of_another_shape_are_not_reshaped():
    import pyrobdl.metrics as M

    probs = [[0.9, 0.1]] * 4
    with pytest.raises(ValueError, match=r"labels has shape \(2, 2\) but the predictions are for points of shape \(4,\)"):
        M.expected_calibration_error(probs, [[0, 1], [1, 0]])
    assert M.expected_calibration_error(probs, [[0], [1], [1], [0]]) == M.expected_calibration_error(probs, [0, 1, 1, 0])


def test_predict_refuses_a_sample_count_that_cannot_fit_in_memory():
    """10^9 samples of a 41-weight net at 40 inputs is ~450 GiB: refused with the estimate
    before anything is allocated (it used to ask the allocator for it)."""
    x = torch.randn(40, 3)
    post = pyrobdl.fit(_mlp3(), x, x.sum(-1), method="mean-field", num_steps=2, progress=False)
    with pytest.raises(ValueError, match=r"num_samples=1000000000 needs about [\d,.]+ GiB .* use fewer samples"):
        post.predict(x, num_samples=10**9)
    assert post.predict(x, num_samples=10).mean.shape == (40,)


def test_a_diverging_low_rank_fit_is_the_same_clear_error_as_other_divergences():
    """lr=100 on raw targets of scale 1e6 used to end in torch's linalg.cholesky error."""
    torch.manual_seed(0)
    x = torch.randn(100, 3) * 1e3
    with pytest.raises(FloatingPointError, match=r"(became nan|no longer positive definite).*lower lr \(now 100.0\).*standardise"):
        pyrobdl.fit(_mlp3(), x, x.sum(-1) * 1e3, method="low-rank", num_steps=300, lr=100.0, progress=False, seed=0)


@pytest.mark.parametrize("x_scale, y_scale, match", [
    (1e6, 1.0, "an input feature has std"),
    (1.0, 1e6, "the targets have std"),
    (1.0, 1e-4, "the targets have std"),
])
def test_data_far_from_unit_scale_warns(x_scale, y_scale, match):
    """x and y scaled by 1e6 used to give a finite loss and a constant predictor with no word."""
    torch.manual_seed(0)
    x = torch.randn(60, 3)
    y = (x.sum(-1) + 0.1 * torch.randn(60)) * y_scale
    with pytest.warns(UserWarning, match=match + ".*standardised data"):
        pyrobdl.fit(_mlp3(), x * x_scale, y, method="mean-field", num_steps=5, progress=False)


def test_unit_scale_data_does_not_warn_about_scale():
    import warnings

    x = torch.randn(60, 3) * 3.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pyrobdl.fit(_mlp3(), x, x.sum(-1), method="mean-field", num_steps=5, progress=False)
    assert not any("standardised data" in str(w.message) for w in caught)


# ----------------------------------------------------------------------------- later DataLoader batches
def _loader(x, y, batch_size=5):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)


@pytest.mark.parametrize("method", ["mean-field", "mc-dropout", "ensemble"])
@pytest.mark.parametrize(
    "case",
    ["nan-x", "nan-y", "label-range", "bernoulli-5"],
)
def test_a_bad_later_dataloader_batch_is_named(method, case):
    """Only the third batch (rows 10-14) is bad: the first batch validates, the error must name
    the batch rather than blame the learning rate or fail inside torch."""
    x, y = torch.randn(20, 2), torch.randn(20)
    if case == "nan-x":
        x[12, 1] = float("nan")
        model, match = reg_model(), r"DataLoader batch 3 of epoch 1: x contains 1 NaN"
    elif case == "nan-y":
        y[12] = float("nan")
        model, match = reg_model(), r"DataLoader batch 3 of epoch 1: y contains 1 NaN"
    elif case == "label-range":
        y = torch.arange(20) % 3
        y[12] = 7
        model = BayesianNetwork(nn.Sequential(nn.Linear(2, 3)), likelihood=likelihoods.Categorical())
        match = r"DataLoader batch 3 of epoch 1: class labels must lie in \[0, 3\)"
    else:
        y = (torch.arange(20) % 2).float()
        y[12] = 5.0
        model = BayesianNetwork(nn.Sequential(nn.Linear(2, 1)), likelihood=likelihoods.Bernoulli())
        match = r"DataLoader batch 3 of epoch 1: Bernoulli targets must be 0 or 1"
    opts = dict(num_steps=8, progress=False)
    if method == "ensemble":
        opts = dict(epochs=2, progress=False)
    with pytest.raises((ValueError, TypeError), match=match):
        pyrobdl.fit(model, _loader(x, y), method=method, **opts)


@pytest.mark.filterwarnings("ignore:the fitted SVIPosterior's learned noise")  # 8 steps: undertrained on purpose
def test_good_later_dataloader_batches_train_as_before():
    x, y = torch.randn(20, 2), torch.randn(20, 1)  # (N, 1) targets, reshaped like the first batch's
    post = pyrobdl.fit(reg_model(), _loader(x, y), num_steps=8, progress=False)
    assert torch.isfinite(post.predict(x).mean).all()

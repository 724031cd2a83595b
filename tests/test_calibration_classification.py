"""Classification recalibration (pyrobdl.calibration.classification): temperature and vector
scaling recover known miscalibration, APS/RAPS sets have the conformal coverage, bad input is
refused, state round-trips, and the public recalibrate() path works end to end.

Every random draw uses a torch.Generator with a fixed seed, so each test is deterministic; the
tolerances are still the ones the sample sizes justify (stated at each check), so a test fails
on a real error rather than on an unlucky seed."""
import math

import pytest
import torch
from torch import nn

import pyrobdl
from pyrobdl.calibration import APS, RAPS, ConformalClassificationPrediction, TemperatureScaling, VectorScaling, recalibrate
from pyrobdl.metrics import expected_calibration_error
from pyrobdl.metrics._common import float64_prediction
from pyrobdl.prediction import ClassificationPrediction, RegressionPrediction


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one intra-op thread is faster and does not stall on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def logit_data(n, C, *, scale, seed, true_temperature=1.0, S=1, sample_noise=0.0):
    """Model probs softmax(z + noise_s) for S samples; labels from the mixture of
    softmax((z + noise_s) / true_temperature), i.e. a model whose calibration map is known."""
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(n, C, generator=g, dtype=torch.float64)
    zs = z + sample_noise * torch.randn(S, n, C, generator=g, dtype=torch.float64)
    truth = torch.softmax(zs / true_temperature, -1).mean(0)
    y = torch.multinomial(truth, 1, generator=g)[:, 0]
    return torch.softmax(zs, -1), y


def nll(pred, y):
    return float(-pred.log_prob(y).mean())


# ----------------------------------------------------------------------------- temperature
@pytest.mark.parametrize("S, noise", [(1, 0.0), (8, 0.5)])
def test_temperature_recovers_a_known_temperature(S, noise):
    n, T0 = 20000, 2.0
    probs, y = logit_data(n, 5, scale=3.0, seed=1, true_temperature=T0, S=S, sample_noise=noise)
    ts = TemperatureScaling(apply_to="samples").fit(ClassificationPrediction(probs), y)
    # The MLE of u = log T has standard error 1 / sqrt(n I(u)); n I is the curvature of the
    # summed NLL at u-hat (observed Fisher information), computed here independently.
    u = torch.tensor(math.log(ts.temperature), dtype=torch.float64, requires_grad=True)
    lp = torch.log_softmax(probs.log() / u.exp(), -1).gather(-1, y.expand(S, n)[..., None]).squeeze(-1)
    total = -(torch.logsumexp(lp, 0) - math.log(S)).sum()
    (grad,) = torch.autograd.grad(total, u, create_graph=True)
    (curv,) = torch.autograd.grad(grad, u)
    grad = grad.detach()
    se = 1.0 / math.sqrt(float(curv))
    assert abs(float(grad)) < 1e-3 * math.sqrt(float(curv))   # u-hat is a stationary point
    assert 0.005 < se < 0.05                                   # n = 20000 pins T to ~1-2%
    assert abs(math.log(ts.temperature) - math.log(T0)) < 4 * se


def test_temperature_lowers_held_out_ece_and_keeps_the_argmax():
    probs, y = logit_data(6000, 4, scale=3.0, seed=2, true_temperature=2.5)
    cal, test = ClassificationPrediction(probs[:, :3000].float()), ClassificationPrediction(probs[:, 3000:].float())
    ts = TemperatureScaling().fit(cal, y[:3000])
    after = ts.transform(test)
    assert type(after) is ClassificationPrediction and after.probs.dtype == torch.float32
    assert torch.equal(after.predicted, test.predicted)            # S = 1: argmax unchanged
    before_ece = expected_calibration_error(test, y[3000:])
    after_ece = expected_calibration_error(after, y[3000:])
    # The model is overconfident by T = 2.5 (ECE ~ 0.21); after scaling, ECE is the sampling
    # noise of 3000 test points in 15 bins (~ 0.02-0.03), so a halving is far from either side.
    assert before_ece > 0.1 and after_ece < before_ece / 2
    assert nll(after, y[3000:]) < nll(test, y[3000:])


def test_temperature_moves_the_entropy_split_per_sample():
    probs, _ = logit_data(200, 6, scale=2.0, seed=3, S=4, sample_noise=1.0)
    pred = ClassificationPrediction(probs)
    ts = TemperatureScaling(apply_to="samples")
    ts.set_state({"temperature": 3.0, "apply_to_samples": 1.0})
    hot = ts.transform(pred)
    ts.set_state({"temperature": 1.0 / 3.0, "apply_to_samples": 1.0})
    cold = ts.transform(pred)
    # each sample is tempered: the entropy of every p_s is increasing in T, so is their mean
    assert (cold.expected_entropy < pred.expected_entropy).all()
    assert (pred.expected_entropy < hot.expected_entropy).all()
    torch.testing.assert_close(hot.probs_samples, torch.softmax(probs.log() / 3.0, -1))
    # flattened samples agree more: less mutual information on average
    assert hot.mutual_information.mean() < pred.mutual_information.mean()


def test_mean_temperature_keeps_the_argmax_and_the_disagreement():
    """apply_to="mean" (the default) tempers the predictive exactly, never changes the predicted
    class even with S > 1, and keeps each sample's deviation from the mean where it fits."""
    probs, y = logit_data(3000, 5, scale=2.0, seed=5, true_temperature=0.5, S=8, sample_noise=0.7)
    pred = ClassificationPrediction(probs)
    ts = TemperatureScaling().fit(pred, y)
    out = ts.transform(pred)
    want = torch.softmax(pred.probs.log() / ts.temperature, -1)
    torch.testing.assert_close(out.probs, want, atol=1e-8, rtol=0)
    assert torch.equal(out.predicted, pred.predicted) and ts.temperature < 1.0   # underconfident: sharpen
    # the samples are tilted by one factor per point and class: log p'_s - log p_s is the same
    # for every sample up to each sample's normaliser, so their disagreement survives
    d = out.probs_samples.log() - probs.log()
    d = d - d[..., :1]
    torch.testing.assert_close(d, d[:1].expand_as(d), atol=1e-6, rtol=0)
    assert out.mutual_information.mean() > 0.3 * pred.mutual_information.mean()
    # the temperature that fits the mean is not the per-sample one, and both beat doing nothing
    per_sample = TemperatureScaling(apply_to="samples").fit(pred, y)
    assert abs(per_sample.temperature - ts.temperature) > 0.01
    assert nll(out, y) < nll(pred, y) and nll(per_sample.transform(pred), y) < nll(pred, y)
    with pytest.raises(ValueError, match="apply_to must be 'mean'"):
        TemperatureScaling(apply_to="logits")


def test_temperature_handles_zero_probabilities():
    probs = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]])
    ts = TemperatureScaling().fit(ClassificationPrediction(probs), torch.tensor([0, 0, 1, 2]))
    out = ts.transform(ClassificationPrediction(probs))
    assert math.isfinite(ts.temperature) and torch.isfinite(out.probs_samples).all()


# ----------------------------------------------------------------------------- vector
def vector_data(n, seed, w0, b0):
    g = torch.Generator().manual_seed(seed)
    z = 3.0 * torch.randn(n, w0.shape[0], generator=g, dtype=torch.float64)
    lp = torch.log_softmax(z, -1)
    y = torch.multinomial(torch.softmax(w0 * lp + b0, -1), 1, generator=g)[:, 0]
    return torch.softmax(z, -1)[None], y


W0 = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
B0 = torch.tensor([0.3, -0.2, 0.1, -0.2], dtype=torch.float64)   # sums to 0 (the reported gauge)


def test_vector_scaling_recovers_known_weights_and_bias():
    probs, y = vector_data(20000, 4, W0, B0)
    vs = VectorScaling().fit(ClassificationPrediction(probs), y)  # S = 1: the mean is the sample
    assert abs(float(vs.bias.sum())) < 1e-10
    # Standard errors from the inverse observed information of the summed NLL in (w, b); its
    # pseudo-inverse drops the direction b + c (softmax ignores it), i.e. it is the covariance
    # of the centred b. 8 parameters at 4 SE each: a false alarm has probability < 1e-3.
    lp = probs[0].log()

    def total(theta):
        w, b = theta[:4], theta[4:]
        return -torch.log_softmax(w * lp + b, -1).gather(-1, y[:, None]).sum()

    theta = torch.cat([vs.weight, vs.bias])
    cov = torch.linalg.pinv(torch.autograd.functional.hessian(total, theta))
    se = cov.diagonal().clamp_min(0).sqrt()
    assert (se < 0.1).all()
    assert ((theta - torch.cat([W0, B0])).abs() < 4 * se).all(), (theta, se)


def test_vector_scaling_beats_temperature_on_per_class_miscalibration():
    probs, y = vector_data(8000, 5, W0, B0)
    cal, test = ClassificationPrediction(probs[:, :4000]), ClassificationPrediction(probs[:, 4000:])
    vec = VectorScaling().fit(cal, y[:4000]).transform(test)
    tmp = TemperatureScaling().fit(cal, y[:4000]).transform(test)
    # The truth is in vector scaling's family but not in temperature's (per-class w differ by
    # 4x). The held-out NLL gap (~0.17 nats) must exceed 4 standard errors of the mean of the
    # paired per-point differences over the 4000 test points.
    diff = vec.log_prob(y[4000:]) - tmp.log_prob(y[4000:])   # > 0: vector better
    assert diff.mean() > 4 * diff.std() / math.sqrt(4000), (diff.mean(), diff.std())


def test_vector_scaling_checks_classes_and_warns_on_a_missing_class():
    probs, y = vector_data(300, 6, W0, B0)
    y = torch.where(y == 3, 0, y)
    with pytest.warns(UserWarning, match=r"classes \[3\] never occur"):
        vs = VectorScaling(max_iter=50).fit(ClassificationPrediction(probs), y)
    with pytest.raises(ValueError, match="fitted on 4 classes but the prediction has 3"):
        vs.transform(ClassificationPrediction(torch.full((1, 2, 3), 1 / 3)))


# ----------------------------------------------------------------------------- conformal sets
def coverage_runs(make, level, *, repeats, n_cal, n_test, C=10, seed=10):
    """Mean test coverage and set size over fresh calibration/test draws of a model that is
    overconfident (labels from softmax(z / 1.5), model probs softmax(z))."""
    covs, sizes, n_q = [], [], None
    for r in range(repeats):
        probs, y = logit_data(n_cal + n_test, C, scale=2.0, seed=seed + r, true_temperature=1.5)
        rc = make(level).fit(ClassificationPrediction(probs[:, :n_cal]), y[:n_cal])
        sets = rc.transform(ClassificationPrediction(probs[:, n_cal:])).prediction_sets()
        covs.append(sets.gather(-1, y[n_cal:, None]).double().mean())
        sizes.append(sets.sum(-1).double().mean())
        n_q = rc.calibration_scores.shape[0]
    covs = torch.stack(covs)
    return float(covs.mean()), float(covs.std() / math.sqrt(repeats)), float(torch.stack(sizes).mean()), n_q


@pytest.mark.parametrize("level", [0.9, 0.8])
@pytest.mark.parametrize("make", [
    lambda level: APS(level=level),
    lambda level: RAPS(level=level),
    lambda level: RAPS(level=level, lam=0.1, k_reg=2),
    lambda level: APS(level=level, randomized=True, seed=3),
], ids=["aps", "raps-auto", "raps-fixed", "aps-randomized"])
def test_conformal_coverage_within_the_split_conformal_bounds(make, level):
    mean, se, size, n_q = coverage_runs(make, level, repeats=200, n_cal=200, n_test=300)
    # For continuous scores E[coverage] lies in [level, level + 1/(n_q+1)] (n_q: the scores
    # behind q-hat). The mean over 200 independent repeats is off by < 4 standard errors
    # (here SE ~ 0.0015, so the window is widened by ~0.006).
    assert level - 4 * se <= mean <= level + 1 / (n_q + 1) + 4 * se, (mean, se, n_q)
    assert 1 < size < 10                                     # informative sets: not all 10 classes


def test_raps_sets_smaller_than_aps_on_many_classes():
    """The RAPS paper's setting: many classes, label usually among the top few, an
    overconfident model whose small tail probabilities make APS sets long."""
    diffs = []
    for r in range(40):
        # truth softmax(z) with z ~ N(0, 25): the label is usually among the top 3-5 classes;
        # the model softmax(z / 0.3) is overconfident
        probs, y = logit_data(1000, 100, scale=5.0 / 0.3, seed=100 + r, true_temperature=1 / 0.3)
        cal, test = ClassificationPrediction(probs[:, :500]), ClassificationPrediction(probs[:, 500:])
        size = [rc.fit(cal, y[:500]).transform(test).prediction_sets().sum(-1).double().mean()
                for rc in (APS(), RAPS())]
        diffs.append(size[0] - size[1])
    d = torch.stack(diffs)
    # paired over 40 problems: RAPS is smaller on average by > 3 standard errors of the mean
    assert d.mean() > 3 * d.std() / math.sqrt(len(d)), d


def test_raps_with_k_reg_at_least_C_is_aps():
    probs, y = logit_data(300, 6, scale=2.0, seed=20)
    cal, test = ClassificationPrediction(probs[:, :200]), ClassificationPrediction(probs[:, 200:])
    aps = APS().fit(cal, y[:200]).transform(test)
    raps = RAPS(lam=0.5, k_reg=6).fit(cal, y[:200]).transform(test)
    assert torch.equal(aps.prediction_sets(), raps.prediction_sets())
    # and a penalty that bites changes them
    assert not torch.equal(aps.prediction_sets(), RAPS(lam=0.5, k_reg=1).fit(cal, y[:200]).transform(test).prediction_sets())


def test_raps_auto_follows_the_paper_rule():
    probs, y = logit_data(400, 20, scale=2.0, seed=21)
    raps = RAPS(level=0.9, seed=5).fit(ClassificationPrediction(probs), y)
    assert raps.calibration_scores.shape == (280,)           # 30% of 400 points tune
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(5))[:120]
    p = probs[0, perm]
    ranks = (p > p.gather(-1, y[perm, None])).sum(-1).sort().values + 1
    assert raps.k_reg == int(ranks[math.ceil(0.9 * 119)])
    assert raps.lam in (0.001, 0.01, 0.1, 0.2, 0.5)
    fixed = RAPS(level=0.9, lam=raps.lam, k_reg=raps.k_reg).fit(ClassificationPrediction(probs), y)
    assert fixed.calibration_scores.shape == (400,)          # numbers: every point for q-hat


def test_prediction_sets_at_other_levels_and_their_limits():
    probs, y = logit_data(150, 5, scale=2.0, seed=22)
    pred = APS(level=0.9).fit(ClassificationPrediction(probs[:, :50]), y[:50]).transform(ClassificationPrediction(probs[:, 50:]))
    assert isinstance(pred, ConformalClassificationPrediction)
    s90, s50, s95 = pred.prediction_sets(), pred.prediction_sets(0.5), pred.prediction_sets(0.95)
    assert torch.equal(s90, pred.prediction_sets(0.9))
    assert (s50 <= s90).all() and (s90 <= s95).all() and s50.sum() < s95.sum()   # nested in level
    assert s50.any(-1).all()                                                      # never empty
    q = pred.calibration_scores[math.ceil(51 * 0.5) - 1]
    assert q == pred.calibration_scores.sort().values[25]
    with pytest.raises(ValueError, match="needs at least 99 calibration scores"):
        pred.prediction_sets(0.99)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        pred.prediction_sets(1.0)


def test_too_small_calibration_sets_name_the_minimum():
    probs, y = logit_data(30, 4, scale=2.0, seed=23)
    cal = ClassificationPrediction(probs[:, :10])
    with pytest.raises(ValueError, match="at least 19"):
        APS(level=0.95).fit(cal, y[:10])
    with pytest.raises(ValueError, match="pass at least 13 calibration points"):
        RAPS(level=0.9).fit(cal, y[:10])        # 30% tune, the other 70% need >= 9 points
    with pytest.raises(ValueError, match="pass at least 13 calibration points"):
        RAPS(level=0.9).fit(ClassificationPrediction(probs[:, :12]), y[:12])   # 4 tune, 8 left
    assert RAPS(level=0.9).fit(ClassificationPrediction(probs[:, :13]), y[:13]).calibration_scores.shape == (9,)
    RAPS(level=0.9, lam=0.1, k_reg=1).fit(cal, y[:10])   # numbers: all 10 points count


def test_bad_input_is_refused():
    probs, y = logit_data(40, 3, scale=2.0, seed=24)
    pred = ClassificationPrediction(probs)
    for cls in (TemperatureScaling, VectorScaling, APS, RAPS):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
            cls().fit(pred, torch.full((40,), 3))
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            cls(level=1.5)
        reg = RegressionPrediction(torch.zeros(1, 40), torch.ones(1, 40))
        with pytest.raises(TypeError, match="is for classification"):
            cls().fit(reg, torch.zeros(40))
        with pytest.raises(TypeError, match="maps classification predictions"):
            cls().fit(pred, y).transform(reg)
        with pytest.raises(RuntimeError, match="not fitted"):
            cls().transform(pred)
    with pytest.raises(TypeError, match="k_reg must be an integer"):
        RAPS(k_reg=1.5)
    with pytest.raises(ValueError, match="lam must be >= 0"):
        RAPS(lam=-0.1)
    with pytest.raises(ValueError, match="tune_fraction must lie in"):
        RAPS(tune_fraction=1.0)
    with pytest.raises(TypeError, match="randomized must be True or False"):
        APS(randomized=1)
    with pytest.raises(ValueError, match="T_min < T_max"):
        TemperatureScaling(bounds=(2.0, 1.0))
    with pytest.raises(ValueError, match="fitted on 3 classes"):
        APS().fit(pred, y).transform(ClassificationPrediction(torch.full((1, 2, 4), 0.25)))


def test_conformal_prediction_survives_float64_copy_device_moves_and_event_dims():
    probs, y = logit_data(300, 5, scale=2.0, seed=25)
    pred = RAPS(level=0.8, randomized=True).fit(ClassificationPrediction(probs[:, :200].float()), y[:200]).transform(
        ClassificationPrediction(probs[:, 200:].float()))
    sets = pred.prediction_sets()
    assert torch.equal(float64_prediction(pred).prediction_sets(), sets)   # metrics' float64 copy
    assert torch.equal(pred.to("cpu").prediction_sets(), sets)
    assert torch.equal(pred.prediction_sets(), sets)                      # seeded: reproducible
    assert 0.6 < pyrobdl.metrics.accuracy(pred, y[200:]) < 1.0            # metrics read it as usual
    # an event dimension: (S, N, 2, C) probabilities with (N, 2) labels
    ev = probs[:, :300].reshape(1, 150, 2, 5)
    out = APS(level=0.8).fit(ClassificationPrediction(ev[:, :100]), y[:200].reshape(100, 2)).transform(
        ClassificationPrediction(ev[:, 100:]))
    assert out.prediction_sets().shape == (50, 2, 5)


@pytest.mark.parametrize("cls, options", [
    (TemperatureScaling, {}), (VectorScaling, {}), (APS, {"randomized": True}), (RAPS, {}),
])
def test_state_round_trips_through_torch_save(cls, options, tmp_path):
    probs, y = logit_data(200, 4, scale=2.0, seed=26)
    cal, test = ClassificationPrediction(probs[:, :150]), ClassificationPrediction(probs[:, 150:])
    fitted = cls(level=0.8, **options).fit(cal, y[:150])
    torch.save(fitted.get_state(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert all(isinstance(v, (float, torch.Tensor)) for v in state.values()), state
    loaded = cls()
    loaded.set_state(state)
    a, b = fitted.transform(test), loaded.transform(test)
    torch.testing.assert_close(a.probs_samples, b.probs_samples)
    assert torch.equal(a.prediction_sets(), b.prediction_sets()) and loaded.level == 0.8


# ----------------------------------------------------------------------------- end to end
def test_recalibrate_a_fitted_classifier_end_to_end():
    g = torch.Generator().manual_seed(30)
    x = torch.randn(600, 2, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 3))
    model = pyrobdl.BayesianNetwork(net, likelihood=pyrobdl.likelihoods.Categorical())
    # a one-member ensemble is a MAP-style point fit: S = 1, so temperature keeps the argmax
    post = pyrobdl.fit(model, x[:300], y[:300], method="ensemble", size=1, num_steps=300, progress=False, seed=0)
    raw = post.predict(x[450:])
    cal = recalibrate(post, x[300:450], y[300:450], method="temperature")
    out = cal.predict(x[450:])
    assert type(out) is ClassificationPrediction and out.num_samples == raw.num_samples == 1
    assert pyrobdl.metrics.accuracy(out, y[450:]) == pyrobdl.metrics.accuracy(raw, y[450:]) > 0.7
    assert cal.recalibrator.temperature != 1.0
    conf = recalibrate(post, x[300:450], y[300:450], method="aps", level=0.8).predict(x[450:])
    assert isinstance(conf, ConformalClassificationPrediction) and conf.level == 0.8
    torch.testing.assert_close(conf.probs, raw.probs)
    sets = conf.prediction_sets()
    assert sets.shape == (150, 3) and sets.gather(-1, y[450:, None]).float().mean() > 0.7


# ----------------------------------------------------------------------------- other libraries
def test_aps_scores_quantile_and_sets_match_mapie():
    pytest.importorskip("mapie")
    from mapie.conformity_scores.sets.aps import APSConformityScore
    from mapie.utils import _compute_classification_quantile
    import numpy as np

    probs, y = logit_data(700, 6, scale=2.0, seed=40)
    cal_p, test_p = probs[0, :200].numpy(), probs[0, 200:].numpy()
    aps = APS(level=0.9).fit(ClassificationPrediction(probs[:, :200]), y[:200])
    cum, rank = APSConformityScore.get_true_label_cumsum_proba(y[:200].numpy(), cal_p, np.arange(6))
    ours = np.where(rank == 1, 0.0, cum[:, 0])        # ours scores the top class 0 (always in)
    np.testing.assert_allclose(aps.calibration_scores.numpy(), np.sort(ours), rtol=0, atol=1e-12)
    qhat = _compute_classification_quantile(aps.calibration_scores.numpy(), np.array([0.1]))[0]
    assert qhat == aps.calibration_scores[math.ceil(201 * 0.9) - 1]
    score = APSConformityScore()
    score.quantiles_ = np.array([qhat])
    mapie_sets = score.get_prediction_sets(test_p[:, :, None], None, np.array([0.1]), "prefit", include_last_label=False)[:, :, 0]
    # MAPIE's include_last_label=False keeps the classes with cumulated mass <= q-hat, and
    # at least the top one: our rule
    sets = aps.transform(ClassificationPrediction(probs[:, 200:])).prediction_sets().numpy()
    np.testing.assert_array_equal(sets, mapie_sets)
    assert 1 < sets.sum(-1).mean() < 6

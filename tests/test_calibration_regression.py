"""Regression recalibration (pyrobdl.calibration.regression): variance scaling, isotonic CDF
recalibration, split conformal and CQR; their prediction objects, the metrics on them, bad
input, saving their state and the public recalibrate() path end to end.

Predictions are built directly as RegressionPrediction(loc, scale) from synthetic
heteroscedastic data (fast); every random quantity comes from a torch.Generator with a fixed
seed, so each test is deterministic and each tolerance below is a few standard errors of the
quantity at that sample size."""
import io
import math

import numpy as np
import pytest
import torch
from torch import nn

import pyrobdl
from pyrobdl.calibration import (
    ConformalizedQuantileRegression,
    ConformalizedQuantileRegressionPrediction,
    ConformalRegression,
    ConformalRegressionPrediction,
    IsotonicCalibration,
    IsotonicRegressionPrediction,
    VarianceScaling,
    min_calibration_size,
    recalibrate,
)
from pyrobdl.calibration.regression import isotonic_knots
from pyrobdl.prediction import mixture_quantile_batch, ndtr
from pyrobdl.metrics import interval_coverage, mean_interval_width, miscalibration_area, nll, rmse, sharpness
from pyrobdl.prediction import ClassificationPrediction, RegressionPrediction, mixture_quantile

REGRESSION = [VarianceScaling, IsotonicCalibration, ConformalRegression, ConformalizedQuantileRegression]
ONE_TARGET = [IsotonicCalibration, ConformalRegression, ConformalizedQuantileRegression]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one intra-op thread is faster and does not stall on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def heteroscedastic(n, g, *, S=4, miscal=0.5, dtype=torch.float32):
    """Targets y = sin(2x) + sd(x) eps, sd(x) = 0.1 + 0.3|x|, and a model whose S components
    scatter around the truth by 0.3 sd (epistemic) with noise std miscal * 0.8 sd (aleatoric):
    its total std is sqrt(0.09 + 0.64 miscal^2) sd, i.e. 0.44 sd for miscal = 0.5 (too narrow)
    and 1.63 sd for miscal = 2 (too wide)."""
    x = torch.rand(n, generator=g, dtype=torch.float64) * 4 - 2
    mu, sd = torch.sin(2 * x), 0.1 + 0.3 * x.abs()
    loc = mu + 0.3 * sd * torch.randn(S, n, generator=g, dtype=torch.float64)
    scale = (miscal * 0.8 * sd).expand(S, n)
    y = mu + sd * torch.randn(n, generator=g, dtype=torch.float64)
    return RegressionPrediction(loc.to(dtype), scale.to(dtype).contiguous()), y.to(dtype)


def inside(pred, y, level):
    lo, hi = pred.interval(level)
    return ((y >= lo) & (y <= hi)).double().mean().item()


# ----------------------------------------------------------------------------- split conformal coverage
@pytest.mark.parametrize("method", [ConformalRegression, ConformalizedQuantileRegression])
@pytest.mark.parametrize("alpha, n, miscal", [(0.1, 99, 0.5), (0.2, 52, 2.0)])
def test_split_conformal_coverage(method, alpha, n, miscal):
    """Mean coverage over R fresh calibration/test draws lies in [1-a, 1-a+1/(n+1)] up to 4 se,
    and at its exact expectation k/(n+1), k = ceil((n+1)(1-a)), up to 4 se.

    Given the calibration set, coverage C ~ Beta(k, n+1-k) (exchangeable data, continuous
    scores), and the empirical coverage on m test points adds binomial noise, so one repeat's
    variance is Var C + E[C(1-C)]/m and the mean of R repeats has se = sqrt(that / R): 0.0012
    for a = 0.1 and 0.0019 for a = 0.2 here (R = 1000, m = 200). An off-by-one rank moves the
    expectation by 1/(n+1) (0.010 and 0.019), i.e. by more than 8 se. The uncalibrated model
    covers 0.57 (miscal 0.5) or 0.99 (miscal 2), far outside."""
    g = torch.Generator().manual_seed(1)
    level, m, R = 1.0 - alpha, 200, 1000
    cover, raw = [], []
    for _ in range(R):
        pc, yc = heteroscedastic(n, g, miscal=miscal)
        pt, yt = heteroscedastic(m, g, miscal=miscal)
        pred = method(level=level).fit(pc, yc).transform(pt)
        cover.append(pred.covers(yt).double().mean().item())
        raw.append(pt.covers(yt, level).double().mean().item())
    k = math.ceil((n + 1) * level)
    ec, var_c = k / (n + 1), k * (n + 1 - k) / ((n + 1) ** 2 * (n + 2))
    se = math.sqrt((var_c + (ec - var_c - ec * ec) / m) / R)
    mean = float(np.mean(cover))
    assert level - 4 * se <= mean <= level + 1 / (n + 1) + 4 * se, (mean, se)
    assert abs(mean - ec) <= 4 * se, (mean, ec, se)
    assert abs(float(np.mean(raw)) - level) > 0.05  # the model itself is miscalibrated


# ----------------------------------------------------------------------------- conformal intervals
def test_conformal_interval_any_level_and_metrics_agree():
    g = torch.Generator().manual_seed(2)
    pc, yc = heteroscedastic(199, g)
    pt, yt = heteroscedastic(2000, g)
    recal = ConformalRegression(level=0.9).fit(pc, yc)
    pred = recal.transform(pt)
    assert isinstance(pred, ConformalRegressionPrediction) and pred.level == 0.9
    # the score quantile at another level, computed independently with numpy
    mu, sd = pc.mean.double().numpy(), pc.std.double().numpy()
    scores = np.sort(np.abs(yc.double().numpy() - mu) / sd)
    q80 = scores[math.ceil(200 * 0.8) - 1]
    assert pred.score_quantile(0.8) == pytest.approx(q80, rel=1e-6) == recal.score_quantile(0.8)
    assert pred.score_quantile() == recal.score_quantile() == pytest.approx(scores[math.ceil(200 * 0.9) - 1], rel=1e-6)
    lo, hi = pred.interval(0.8)
    torch.testing.assert_close(hi, pt.mean + float(q80) * pt.std, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lo, pt.mean - float(q80) * pt.std, rtol=1e-5, atol=1e-6)
    # default level = the fitted one; the metrics go through the prediction's own intervals
    for level in (0.9, 0.8, 0.5):
        lo, hi = pred.interval(level)
        assert interval_coverage(pred, yt, level=level) == pytest.approx(inside(pred, yt, level), abs=1e-12)
        assert mean_interval_width(pred, level=level) == pytest.approx(float((hi - lo).double().mean()), rel=1e-6)
        # conditional coverage given 199 calibration points has sd <= sqrt(p(1-p)/200) <= 0.036,
        # plus 0.011 from the 2000 test points: 0.16 is > 4 sd (the model alone covers ~0.57 at 0.9)
        assert abs(interval_coverage(pred, yt, level=level) - level) < 0.16
    torch.testing.assert_close(pred.interval()[1], pred.interval(0.9)[1])
    # quantile gives the interval ends, monotone in q; mean/std/log_prob stay the model's
    torch.testing.assert_close(pred.quantile(0.1), pred.interval(0.8)[0])
    torch.testing.assert_close(pred.quantile(0.9), pred.interval(0.8)[1])
    torch.testing.assert_close(pred.quantile(0.5), pt.mean)
    qs = pred.quantile(torch.tensor([0.05, 0.2, 0.5, 0.8, 0.95]))
    assert qs.shape == (5, 2000) and bool((qs.diff(dim=0) >= 0).all())
    torch.testing.assert_close(pred.std, pt.std)
    torch.testing.assert_close(pred.epistemic_variance, pt.epistemic_variance)
    torch.testing.assert_close(pred.log_prob(yt), pt.log_prob(yt))
    # a level whose rank exceeds n: the error names the minimum calibration size
    with pytest.raises(ValueError, match=f"at least {min_calibration_size(0.999)} calibration points"):
        pred.interval(0.999)
    with pytest.raises(ValueError, match="at least 999"):
        recal.score_quantile(0.999)


def test_cqr_intervals_and_fitted_level_only():
    g = torch.Generator().manual_seed(3)
    pc, yc = heteroscedastic(300, g, miscal=2.0)
    pt, yt = heteroscedastic(1000, g, miscal=2.0)
    recal = ConformalizedQuantileRegression(level=0.8).fit(pc, yc)
    q_lo, q_hi = pc.quantile(0.1).double(), pc.quantile(0.9).double()
    y = yc.double()
    scores = torch.maximum(q_lo - y, y - q_hi).sort().values
    assert recal.correction == pytest.approx(float(scores[math.ceil(301 * 0.8) - 1]), rel=1e-5)
    assert recal.correction < 0  # too wide a model: CQR shrinks its intervals
    pred = recal.transform(pt)
    lo, hi = pred.interval()
    torch.testing.assert_close(lo, pt.quantile(0.1) - recal.correction)
    torch.testing.assert_close(hi, pt.quantile(0.9) + recal.correction)
    assert interval_coverage(pred, yt, level=0.8) == pytest.approx(inside(pred, yt, 0.8), abs=1e-12)
    assert mean_interval_width(pred, level=0.8) == pytest.approx(float((hi - lo).double().mean()), rel=1e-6)
    torch.testing.assert_close(pred.quantile(0.9), hi)
    with pytest.raises(ValueError, match="recalibrate"):
        pred.interval(0.9)
    with pytest.raises(ValueError, match="recalibrate"):
        interval_coverage(pred, yt, level=0.9)
    with pytest.raises(ValueError, match="quantile"):
        pred.quantile(0.3)
    # a correction below -(q_hi - q_lo)/2 collapses crossing ends to their midpoint (width 0)
    tight = ConformalizedQuantileRegressionPrediction(pt.loc_samples, pt.scale_samples, correction=-1e3, level=0.8)
    lo, hi = tight.interval()
    assert torch.equal(lo, hi) and not bool(tight.covers(yt).any())


# ----------------------------------------------------------------------------- variance scaling
def test_variance_scaling_recovers_factor_and_keeps_split():
    """Targets drawn from the model's mixture with every deviation from its mean times c0 = 2.5.

    For S = 1 the MLE has sd(log c) = 1/sqrt(2n) (Fisher information 2 per point); for this
    mixture a simulation over 100 seeds gave sd 0.008 < 1/sqrt(2n) = 0.011 at n = 4000, so
    4/sqrt(2n) = 0.045 is more than 4 sd."""
    g = torch.Generator().manual_seed(4)
    S, n, c0 = 5, 4000, 2.5
    x = torch.rand(n, generator=g) * 4 - 2
    sd = 0.1 + 0.3 * x.abs()
    loc = torch.sin(2 * x) + 0.8 * sd * torch.randn(S, n, generator=g)
    scale = (0.6 * torch.rand(S, n, generator=g) + 0.2) * sd
    pred = RegressionPrediction(loc, scale)
    s = torch.randint(S, (1, n), generator=g)
    mean = loc.mean(0)
    y = mean + c0 * (loc.gather(0, s)[0] - mean) + c0 * scale.gather(0, s)[0] * torch.randn(n, generator=g)
    vs = VarianceScaling().fit(pred, y)
    assert abs(math.log(vs.factor / c0)) < 4 / math.sqrt(2 * n)
    out = vs.transform(pred)
    assert type(out) is RegressionPrediction and out.loc_samples.dtype == torch.float32
    torch.testing.assert_close(out.mean, pred.mean)
    torch.testing.assert_close(out.variance, vs.factor ** 2 * pred.variance)
    torch.testing.assert_close(out.epistemic_variance / out.aleatoric_variance,
                               pred.epistemic_variance / pred.aleatoric_variance)
    assert nll(out, y) < nll(pred, y) - 0.5
    # S = 1: the NLL minimiser has the closed form c^2 = mean(z^2) (Brent locates a minimum
    # from function values to ~sqrt(machine eps) = 1.5e-8 relative in log c)
    one = RegressionPrediction(loc[:1], scale[:1])
    z2 = ((y.double() - loc[0].double()) / scale[0].double()).pow(2).mean()
    assert VarianceScaling().fit(one, y).factor == pytest.approx(math.sqrt(float(z2)), rel=1e-6)
    # multi-output predictions (event shape (2,)) too: with S = 1, c^2 = mean of z^2 over all elements
    two = RegressionPrediction(loc[:2].T[None], scale[:2].T[None])
    yy = torch.stack([y, 0.5 * y], -1)
    z2 = ((yy.double() - loc[:2].T.double()) / scale[:2].T.double()).pow(2).mean()
    assert VarianceScaling().fit(two, yy).factor == pytest.approx(math.sqrt(float(z2)), rel=1e-6)
    with pytest.warns(UserWarning, match="bounds"):
        VarianceScaling(bounds=(0.1, 1.0)).fit(pred, y)


# ----------------------------------------------------------------------------- isotonic
def test_isotonic_improves_heldout_calibration_and_metrics_agree():
    """Calibration area on 2000 held-out points: the model's (std 0.44 of the truth) is ~0.2;
    after the fit on 1000 points what remains is the ECDF's noise, O(1/sqrt(n)) ~ 0.03."""
    g = torch.Generator().manual_seed(5)
    pc, yc = heteroscedastic(1000, g)
    pt, yt = heteroscedastic(2000, g)
    iso = IsotonicCalibration().fit(pc, yc)
    pred = iso.transform(pt)
    assert isinstance(pred, IsotonicRegressionPrediction) and pred.loc_samples.dtype == torch.float32
    before, after = miscalibration_area(pt, yt), miscalibration_area(pred, yt)
    assert before > 0.15 and after < 0.05, (before, after)
    for level in (0.9, 0.5):
        lo, hi = pred.interval(level)
        cov = interval_coverage(pred, yt, level=level)
        assert cov == pytest.approx(inside(pred, yt, level), abs=1e-12)
        assert abs(cov - level) < 0.06  # held-out: binomial sd 0.011 + the map's noise ~0.015
        width = mean_interval_width(pred, level=level)
        assert width == pytest.approx(float((hi - lo).double().mean()), rel=1e-6)
        assert width > 1.5 * mean_interval_width(pt, level=level)  # the model's were too narrow
    # other metrics run on the float32 prediction through their float64 copies
    assert math.isfinite(nll(pred, yt)) and nll(pred, yt) < nll(pt, yt)
    assert math.isfinite(rmse(pred, yt)) and sharpness(pred) > sharpness(pt)
    assert pred.to("cpu").mean.shape == (2000,)


def test_isotonic_knots_are_the_isotonic_fit():
    """For n <= max_knots every distinct PIT is a knot, at sklearn's isotonic fit of the empirical
    frequencies, mixed with eps = 1/(n+1) of the identity; ties share one knot."""
    from sklearn.isotonic import IsotonicRegression

    g = torch.Generator().manual_seed(6)
    u = torch.rand(60, generator=g, dtype=torch.float64)
    u[10:13] = u[3]  # a tie
    kx, ky = isotonic_knots(u, 100)
    freq = (u[:, None] >= u[None, :]).double().mean(1)  # #{j: u_j <= u_i} / n
    fit = IsotonicRegression(out_of_bounds="clip").fit(u.numpy(), freq.numpy())
    eps = 1 / 61
    assert kx.numel() == 57 + 2 and float(kx[0]) == 0 and float(kx[-1]) == 1
    np.testing.assert_allclose(((ky - eps * kx) / (1 - eps))[1:-1].numpy(), fit.predict(kx[1:-1].numpy()), atol=1e-12)
    assert bool((ky.diff() > 0).all())
    # with more distinct PITs than max_knots: max_knots of them, spread in rank
    kx, ky = isotonic_knots(torch.rand(1000, generator=g, dtype=torch.float64), 50)
    assert kx.numel() == 52 and bool((kx.diff() > 0).all() & (ky.diff() > 0).all())


def test_isotonic_distribution_is_consistent():
    g = torch.Generator().manual_seed(7)
    pc, yc = heteroscedastic(500, g)
    pt, _ = heteroscedastic(3, g, dtype=torch.float64)
    pred = IsotonicCalibration(max_knots=60).fit(pc, yc).transform(pt)
    # cdf and quantile are inverse to each other, tails included
    q = torch.tensor([1e-6, 1e-3, 0.05, 0.3, 0.5, 0.7, 0.95, 0.999, 1 - 1e-6], dtype=torch.float64)
    x = pred.quantile(q)
    back = torch.stack([pred.cdf(row) for row in x])
    torch.testing.assert_close(back, q[:, None].expand(-1, 3), rtol=1e-8, atol=1e-12)
    y = pt.mean + torch.tensor([-0.7, 0.1, 1.3], dtype=torch.float64)
    torch.testing.assert_close(pred.quantile(float(pred.cdf(y)[0]))[0], y[0], rtol=1e-9, atol=1e-9)
    # the density of one point on a fine grid: integrates to 1 and gives the exact moments. It
    # jumps where R' does, at the knot quantiles Q_k, so the grid has nodes Q_k -+ 1e-9 std there;
    # elsewhere it is smooth and the trapezoid rule with h = 1.5e-4 std errs by O(h^2) ~ 1e-8
    j = 0
    sd_j = float(pt.std[j])
    qk = mixture_quantile_batch(pt.loc_samples[:, j:j + 1], pt.scale_samples[:, j:j + 1], pred.knots_pit[1:-1, None])[:, 0]
    ys = torch.linspace(float(pt.mean[j]) - 15 * sd_j, float(pt.mean[j]) + 15 * sd_j, 200_001, dtype=torch.float64)
    ys = torch.cat([ys, qk - 1e-9 * sd_j, qk + 1e-9 * sd_j]).sort().values
    one = IsotonicRegressionPrediction(pt.loc_samples[:, j:j + 1].expand(-1, ys.numel()),
                                       pt.scale_samples[:, j:j + 1].expand(-1, ys.numel()),
                                       knots_pit=pred.knots_pit, knots_prob=pred.knots_prob)
    dens = one.log_prob(ys).exp()
    assert float(torch.trapezoid(dens, ys)) == pytest.approx(1.0, abs=1e-6)
    m = float(torch.trapezoid(dens * ys, ys))
    v = float(torch.trapezoid(dens * (ys - m) ** 2, ys))
    assert float(pred.mean[j]) == pytest.approx(m, abs=1e-6 * sd_j)
    assert float(pred.variance[j]) == pytest.approx(v, rel=1e-6)
    # inverse-CDF draws: mean and variance within 5 Monte Carlo standard errors (M = 200000)
    M = 200_000
    d = pred.sample(M, generator=torch.Generator().manual_seed(8))
    assert d.shape == (M, 3)
    se_mean = d.std(0) / math.sqrt(M)
    assert bool(((d.mean(0) - pred.mean).abs() < 5 * se_mean).all())
    c = d - d.mean(0)
    se_var = torch.sqrt(((c ** 4).mean(0) - (c ** 2).mean(0) ** 2) / M)
    assert bool(((c.pow(2).mean(0) - pred.variance).abs() < 5 * se_var).all())
    # the variance change is shared by the two sources in the model's ratio
    torch.testing.assert_close(pred.epistemic_variance + pred.aleatoric_variance, pred.variance)
    torch.testing.assert_close(pred.epistemic_variance / pred.aleatoric_variance,
                               pt.epistemic_variance / pt.aleatoric_variance)
    assert bool((pred.variance > 2 * pt.variance).all())  # the model was too narrow


def test_tail_numerics():
    """The normal CDF and the batched quantile stay accurate where torch.special.ndtr and an
    absolute probability tolerance are not; in the bulk they agree with mixture_quantile."""
    z = torch.tensor([-38.0, -20.0, -10.0, -5.0, 0.0, 3.0], dtype=torch.float64)
    exact = torch.tensor([0.5 * math.erfc(-v / math.sqrt(2)) for v in z.tolist()], dtype=torch.float64)
    # relative condition number of Phi at z is ~z^2, so rounding z costs up to z^2 eps ~ 4e-14 at z = -20
    torch.testing.assert_close(ndtr(z), exact, rtol=1e-12, atol=0)
    g = torch.Generator().manual_seed(9)
    loc = 0.3 * torch.randn(7, 50, generator=g, dtype=torch.float64)
    scale = torch.rand(7, 50, generator=g, dtype=torch.float64) + 0.5
    for p in (0.02, 0.5, 0.97):
        got = mixture_quantile_batch(loc, scale, torch.full((1, 50), p, dtype=torch.float64))[0]
        torch.testing.assert_close(got, mixture_quantile(loc, scale, p), rtol=1e-10, atol=1e-10)
    p = torch.tensor([1e-15, 1e-8, 1 - 1e-8, 1 - 1e-15], dtype=torch.float64)[:, None].expand(-1, 50).contiguous()
    x = mixture_quantile_batch(loc, scale, p)
    lower = ndtr((x[:, None] - loc) / scale).mean(1)
    upper = ndtr(-(x[:, None] - loc) / scale).mean(1)
    rel = torch.where(p > 0.5, (upper - (1 - p)) / (1 - p), (lower - p) / p).abs()
    assert float(rel.max()) < 1e-8


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("cls", REGRESSION)
def test_follows_the_device(cls, device):
    """Fitted on and applied to predictions on ``device``: every output lives there and agrees
    with the CPU fit (float32 summaries: 1e-4 relative)."""
    g = torch.Generator().manual_seed(17)
    pc, yc = heteroscedastic(100, g)
    pt, yt = heteroscedastic(30, g)
    ref = cls(level=0.8).fit(pc, yc).transform(pt)
    pred = cls(level=0.8).fit(pc.to(device), yc.to(device)).transform(pt.to(device))
    assert type(pred) is type(ref)
    outputs = [*pred.interval(0.8), pred.mean, pred.variance, pred.epistemic_variance,
               pred.aleatoric_variance, pred.log_prob(yt.to(device)), pred.cdf(yt.to(device))]
    expected = [*ref.interval(0.8), ref.mean, ref.variance, ref.epistemic_variance,
                ref.aleatoric_variance, ref.log_prob(yt), ref.cdf(yt)]
    for got, want in zip(outputs, expected):
        assert got.device.type == device
        torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-5)
    assert pred.covers(yt.to(device), 0.8).device.type == device
    assert pred.sample(3).device.type == device
    torch.testing.assert_close(pred.cpu().interval(0.8)[1], ref.interval(0.8)[1], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- state, bad input
@pytest.mark.parametrize("cls", REGRESSION)
def test_state_round_trip(cls):
    g = torch.Generator().manual_seed(10)
    pc, yc = heteroscedastic(100, g)
    pt, _ = heteroscedastic(20, g)
    recal = cls(level=0.8).fit(pc, yc)
    buf = io.BytesIO()
    torch.save(recal.get_state(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert all(isinstance(v, (float, torch.Tensor)) for v in state.values())
    other = cls()
    other.set_state(state)
    assert other.level == 0.8 and other.num_calibration == 100
    a, b = recal.transform(pt), other.transform(pt)
    torch.testing.assert_close(a.interval(0.8), b.interval(0.8))
    torch.testing.assert_close(a.mean, b.mean)
    with pytest.raises(RuntimeError, match="not fitted"):
        cls().transform(pt)


@pytest.mark.parametrize("cls", [ConformalRegression, ConformalizedQuantileRegression])
def test_too_small_calibration_set(cls):
    g = torch.Generator().manual_seed(11)
    pc, yc = heteroscedastic(10, g)
    with pytest.raises(ValueError, match="at least 19"):
        cls(level=0.95).fit(pc, yc)
    cls(level=0.9).fit(pc, yc)  # 10 >= 9 is enough for 0.9


@pytest.mark.parametrize("cls", REGRESSION)
def test_bad_level_and_targets(cls):
    g = torch.Generator().manual_seed(12)
    pc, yc = heteroscedastic(50, g)
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="level"):
            cls(level=bad)
    for bad in (True, "0.9", None):
        with pytest.raises(TypeError, match="level"):
            cls(level=bad)
    y_nan = yc.clone()
    y_nan[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        cls().fit(pc, y_nan)
    with pytest.raises(ValueError, match="one target per predicted point"):
        cls().fit(pc, yc[:-1])
    probs = ClassificationPrediction(torch.full((2, 50, 3), 1 / 3))
    with pytest.raises(TypeError, match="regression"):
        cls().fit(probs, torch.zeros(50, dtype=torch.long))
    recal = cls(level=0.8).fit(pc, yc)
    with pytest.raises(TypeError, match="regression"):
        recal.transform(probs)
    pred = recal.transform(pc)
    if type(pred) is not RegressionPrediction:  # variance scaling returns a plain prediction
        with pytest.raises(TypeError, match="already recalibrated"):
            recal.transform(pred)
        with pytest.raises(ValueError, match="level"):
            pred.interval(1.5)
        with pytest.raises(TypeError, match="level"):
            pred.interval(True)


@pytest.mark.parametrize("cls", ONE_TARGET)
def test_one_target_per_point_only(cls):
    g = torch.Generator().manual_seed(13)
    pc, yc = heteroscedastic(50, g)
    two = RegressionPrediction(torch.stack([pc.loc_samples] * 2, -1), torch.stack([pc.scale_samples] * 2, -1))
    with pytest.raises(ValueError, match="one target per point"):
        cls().fit(two, torch.stack([yc, yc], -1))
    # event shape (1,) is one target per point
    one = RegressionPrediction(pc.loc_samples[..., None], pc.scale_samples[..., None])
    pred = cls(level=0.8).fit(one, yc).transform(one)
    assert pred.interval(0.8)[0].shape == (50, 1) and pred.log_prob(yc).shape == (50,)


def test_other_bad_input():
    g = torch.Generator().manual_seed(14)
    pc, yc = heteroscedastic(50, g)
    zero = RegressionPrediction(torch.zeros(1, 50), torch.zeros(1, 50))
    with pytest.raises(ValueError, match="std is 0"):
        ConformalRegression().fit(zero, yc)
    with pytest.raises(ValueError, match="noise stds > 0"):
        IsotonicCalibration().fit(zero, yc)
    with pytest.raises(ValueError, match="c_min < c_max"):
        VarianceScaling(bounds=(2.0, 1.0))
    with pytest.raises(TypeError, match="max_knots"):
        IsotonicCalibration(max_knots=2.5)
    with pytest.raises(ValueError, match="max_knots"):
        IsotonicCalibration(max_knots=1)
    with pytest.raises(ValueError, match="knots"):
        IsotonicRegressionPrediction(pc.loc_samples, pc.scale_samples, knots_pit=[0.0, 0.6, 0.5, 1.0],
                                     knots_prob=[0.0, 0.2, 0.3, 1.0])
    pred = IsotonicCalibration().fit(pc, yc).transform(pc)
    with pytest.raises(ValueError, match="between 0 and 1"):
        pred.quantile(1.0)

    class Stub:
        def predict(self, x, num_samples=None):
            return RegressionPrediction(pc.loc_samples[:, : len(x)], pc.scale_samples[:, : len(x)])

    with pytest.raises(ValueError, match="rows"):
        recalibrate(Stub(), torch.zeros(50, 1), yc[:40], method="conformal")
    with pytest.raises(ValueError, match="level"):
        recalibrate(Stub(), torch.zeros(50, 1), yc, method="conformal", level=1.2)
    with pytest.raises(TypeError, match="level"):
        recalibrate(Stub(), torch.zeros(50, 1), yc, method="cqr", level="0.9")


# ----------------------------------------------------------------------------- public API end to end
@pytest.mark.filterwarnings("ignore:the fitted .*:UserWarning")
def test_recalibrate_a_fitted_network_end_to_end():
    """A short mean-field fit leaves the noise too small (the model's 90% intervals cover ~0.45);
    conformal recalibration on 500 points covers 0.9 of 2000 new ones up to conditional coverage
    sd sqrt(0.09/500) = 0.013 and test sd sqrt(0.09/2000) = 0.007: 0.06 is > 4 sd."""
    g = torch.Generator().manual_seed(15)

    def data(n):
        x = torch.rand(n, 1, generator=g) * 4 - 2
        return x, torch.sin(2 * x[:, 0]) + (0.1 + 0.3 * x[:, 0].abs()) * torch.randn(n, generator=g)

    (x, y), (x_cal, y_cal), (x_test, y_test) = data(200), data(500), data(2000)
    net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))
    post = pyrobdl.fit(pyrobdl.BayesianNetwork(net), x, y, method="mean-field", num_steps=200, progress=False, seed=0)
    raw = post.predict(x_test, num_samples=32)
    assert interval_coverage(raw, y_test, level=0.9) < 0.75
    kinds = {"conformal": ConformalRegressionPrediction, "cqr": ConformalizedQuantileRegressionPrediction,
             "isotonic": IsotonicRegressionPrediction, "variance": RegressionPrediction}
    for method, kind in kinds.items():
        cal = recalibrate(post, x_cal, y_cal, method=method, level=0.9, num_samples=32)
        pred = cal.predict(x_test, num_samples=32)
        assert isinstance(pred, kind) and cal.recalibrator.num_calibration == 500
        cov = interval_coverage(pred, y_test, level=0.9)
        if method in ("conformal", "cqr"):
            assert abs(cov - 0.9) < 0.06, (method, cov)
        else:  # no finite-sample guarantee, but far better than the model's
            assert abs(cov - 0.9) < 0.1, (method, cov)


# ----------------------------------------------------------------------------- MAPIE (optional)
def test_conformal_matches_mapie():
    """On the normalised problem (y / sigma*, mu* / sigma*) MAPIE's split conformal with absolute
    scores is our normalised-score conformal: the same quantiles and intervals."""
    pytest.importorskip("mapie")
    import warnings

    from mapie.regression import SplitConformalRegressor
    from sklearn.base import BaseEstimator, RegressorMixin

    class Identity(RegressorMixin, BaseEstimator):
        def fit(self, X, y=None):
            self.fitted_ = True
            return self

        def predict(self, X):
            return np.asarray(X)[:, 0]

    g = torch.Generator().manual_seed(16)
    pc, yc = heteroscedastic(57, g, dtype=torch.float64)
    pt, _ = heteroscedastic(30, g, dtype=torch.float64)
    levels = [0.9, 0.8, 0.5]
    pred = ConformalRegression(level=0.9).fit(pc, yc).transform(pt)
    mu, sd = pc.mean.numpy(), pc.std.numpy()
    mt, st = pt.mean.numpy(), pt.std.numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mapie = SplitConformalRegressor(Identity().fit(None), confidence_level=levels, prefit=True)
        mapie.conformalize((mu / sd)[:, None], yc.numpy() / sd)
        _, iv = mapie.predict_interval((mt / st)[:, None])
    for j, level in enumerate(levels):
        lo, hi = pred.interval(level)
        np.testing.assert_allclose(iv[:, 1, j] - mt / st, pred.score_quantile(level), rtol=1e-10)
        np.testing.assert_allclose(iv[:, 0, j] * st, lo.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(iv[:, 1, j] * st, hi.numpy(), rtol=1e-10, atol=1e-12)


def test_crps_scores_an_isotonic_prediction_by_its_own_distribution():
    """CRPS of a recalibrated CDF must differ from the uncalibrated model's and match the
    draws estimate of the recalibrated distribution (2,000 draws per point: the Monte Carlo error
    of a mean over 300 points is far below the 5% tolerance)."""
    g = torch.Generator().manual_seed(0)
    y = 2.0 * torch.randn(600, generator=g)

    def narrow(n):  # a 4x too narrow Gaussian
        return RegressionPrediction(torch.zeros(1, n), torch.full((1, n), 0.5))

    pred = IsotonicCalibration().fit(narrow(300), y[:300]).transform(narrow(300))
    before = pyrobdl.metrics.crps(narrow(300), y[300:])
    after = pyrobdl.metrics.crps(pred, y[300:], num_draws=2000)
    draws = pred.sample(2000, generator=torch.Generator().manual_seed(1))
    direct = pyrobdl.metrics.crps_ensemble(draws, y[300:], fair=True)
    assert after < before
    assert abs(after - direct) < 0.05 * direct


def test_calibration_curve_of_a_conformal_prediction_uses_its_intervals():
    """A conformal prediction keeps the model's CDF but not its intervals: the calibration
    curve and the miscalibration area must follow covers(); CQR gives one level only (NaN area)."""
    g = torch.Generator().manual_seed(7)
    y = 2.0 * torch.randn(1200, generator=g)

    def narrow(n):  # 2x too narrow
        return RegressionPrediction(torch.zeros(1, n), torch.ones(1, n))

    conf = ConformalRegression(level=0.9).fit(narrow(600), y[:600]).transform(narrow(600))
    curve = pyrobdl.metrics.calibration_curve(conf, y[600:], levels=[0.0, 0.5, 0.9, 1.0])
    for p, obs in zip(curve.expected[1:3], curve.observed[1:3]):
        assert obs == pytest.approx(float(conf.covers(y[600:], float(p)).double().mean()))
    # 600 test points: the binomial sd of a coverage is ~0.012, so 0.05 is > 4 sd
    assert abs(curve.observed[2] - 0.9) < 0.05
    before = pyrobdl.metrics.miscalibration_area(narrow(600), y[600:])
    after = pyrobdl.metrics.miscalibration_area(conf, y[600:])
    assert after < before / 3
    cqr = ConformalizedQuantileRegression(level=0.9).fit(narrow(600), y[:600]).transform(narrow(600))
    assert math.isnan(pyrobdl.metrics.miscalibration_area(cqr, y[600:]))

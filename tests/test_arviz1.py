"""The arviz >= 1 code path of pyrobdl.diagnostics (xarray.DataTree export, arviz-stats
R-hat/ESS/LOO, arviz-plots plot helpers).

arviz 1.x needs Python >= 3.12, so in the main (Python 3.11, arviz 0.2x) environment this
module is skipped. Run it in an environment with arviz >= 1, e.g.::

    /tmp/py312/bin/python -m pytest tests/test_arviz1.py -q

The checks are those of ``benchmarks/check_arviz1.py`` (which also runs with arviz 0.x).
"""
import os
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version

import pytest


def _arviz_version() -> str:
    try:
        return version("arviz")
    except PackageNotFoundError:
        return "not installed"


ARVIZ_VERSION = _arviz_version()
ARVIZ_MAJOR = int(ARVIZ_VERSION.split(".")[0]) if ARVIZ_VERSION[:1].isdigit() else -1

pytestmark = [
    pytest.mark.skipif(
        ARVIZ_MAJOR < 1,
        reason=f"arviz {ARVIZ_VERSION} is installed; these tests cover the arviz >= 1 path (Python >= 3.12), "
        "run them with e.g. /tmp/py312/bin/python -m pytest tests/test_arviz1.py",
    ),
    pytest.mark.slow,  # two small fits, a few seconds
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import numpy as np  # noqa: E402

from pyrobdl import diagnostics  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import check_arviz1 as checks  # noqa: E402

METHODS = ["mean-field", "nuts"]


@pytest.fixture(scope="module")
def fitted():
    # fit() runs warn_if_problematic after NUTS sampling, i.e. summary -> rhat_ess with arviz >= 1
    posts, x, y = checks.fit_both(seed=0)
    return posts, x, y


def test_arviz_is_1x():
    import arviz as az

    assert checks.arviz_major() >= 1 and az.__version__ == ARVIZ_VERSION


def test_rhat_ess_match_arviz0_reference():
    checks.check_rhat_ess_reference()


@pytest.mark.parametrize("method", METHODS)
def test_to_arviz_returns_datatree_with_groups(fitted, method):
    posts, x, y = fitted
    checks.check_to_arviz(posts[method], x, y, method)
    idata = posts[method].to_arviz(x, y)  # the Posterior method goes through the same export
    assert type(idata).__name__ == "DataTree"
    assert set(diagnostics.to_arviz(posts[method], num_samples=10).children) >= {"posterior"}


@pytest.mark.parametrize("method", METHODS)
def test_summary_and_function_space_diagnostics(fitted, method):
    posts, x, y = fitted
    checks.check_summary(posts[method], x, y, method)


@pytest.mark.parametrize("method", METHODS)
def test_arviz_functions_on_export_agree_with_rhat_ess(fitted, method):
    posts, x, y = fitted
    checks.check_az_on_export(posts[method], x, y, method)


@pytest.mark.parametrize("method", METHODS)
def test_loo(fitted, method):
    posts, x, y = fitted
    checks.check_loo(posts[method], x, y, method)


@pytest.mark.parametrize("method", METHODS)
def test_plot_helpers_return_axes_and_save(fitted, method, tmp_path):
    posts, x, y = fitted
    checks.check_plots(posts[method], x, y, method, str(tmp_path))
    assert len(list(tmp_path.glob("*.png"))) == (6 if method == "nuts" else 5)


def test_plot_forest_says_r_hat_and_ess_columns_are_not_drawn(fitted):
    import matplotlib.pyplot as plt

    posts, x, y = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with pytest.warns(UserWarning, match="r_hat and ess columns are not drawn"):
            axes = diagnostics.plot_forest(posts["nuts"], var_names=["sigma"], r_hat=True, ess=True)
    assert isinstance(np.ravel(axes)[0], matplotlib.axes.Axes)
    plt.close("all")

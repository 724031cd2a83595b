"""Every tutorial runs top to bottom in smoke mode (CI=1), and writes its figures.

A tutorial is a promise that the code on the page works: each one runs here in
a subprocess with the tiny settings its ``smoke_test`` switch selects. A file in
``tutorials/`` that is not listed in ``TUTORIALS`` (or a listed one that is
missing) fails the suite, so no tutorial goes untested.
"""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIAL_DIR = os.path.join(ROOT, "tutorials")

TUTORIALS = [
    "01_regression_uncertainty.py",
    "02_pyro_model.py",
    "03_comparing_inference.py",
    "04_hmc_diagnostics.py",
    "05_classification_ood.py",
    "06_aleatoric.py",
    "07_bayesian_last_layer.py",
    "08_gpu.py",
    "09_calibration.py",
    "10_posthoc_laplace_swag.py",
]

#: smoke runs take a few seconds each; this only guards against hangs
TIMEOUT = 300


def _tutorial_files():
    return sorted(f for f in os.listdir(TUTORIAL_DIR) if f.endswith(".py") and not f.startswith("_"))


def _figure_names(source: str):
    return re.findall(r"""savefig\(\s*[\w.\[\]]+\s*,\s*["']([\w.-]+)["']""", source)


def test_every_tutorial_is_listed():
    on_disk = _tutorial_files()
    assert sorted(TUTORIALS) == on_disk, (
        f"tutorials/ and TUTORIALS differ: not listed {sorted(set(on_disk) - set(TUTORIALS))}, "
        f"listed but missing {sorted(set(TUTORIALS) - set(on_disk))}; add new tutorials to TUTORIALS"
    )


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_structure(name):
    """Each tutorial is a jupytext percent-format notebook that starts with the
    smoke-test switch, writes figures where it is told, and never calls plt.show() bare."""
    source = open(os.path.join(TUTORIAL_DIR, name), encoding="utf-8").read()
    assert "# %% [markdown]" in source and "\n# %%\n" in source, "use jupytext percent cells (# %% / # %% [markdown])"
    first_code = source.split("\n# %%\n", 1)[1]
    assert 'smoke_test = "CI" in os.environ' in first_code.split("\n# %%", 1)[0], (
        "the first code cell must set smoke_test = \"CI\" in os.environ ..."
    )
    assert "PYROBDL_TUTORIAL_OUT" in source
    assert _figure_names(source), "a tutorial saves at least one figure with savefig(fig, NAME)"
    for line in source.splitlines():
        if "plt.show()" in line:
            assert line.startswith("        plt.show()"), "plt.show() only inside savefig, guarded by smoke_test"
    jupytext = pytest.importorskip("jupytext")
    nb = jupytext.read(os.path.join(TUTORIAL_DIR, name), fmt="py:percent")
    kinds = {c.cell_type for c in nb.cells}
    assert kinds == {"markdown", "code"}
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.lstrip().startswith("# Tutorial")


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_runs_in_smoke_mode(name, tmp_path):
    env = dict(os.environ)
    env.update(
        CI="1",
        MPLBACKEND="Agg",
        PYROBDL_TUTORIAL_OUT=str(tmp_path),
        # tiny networks run fastest on one thread, and the machine's cores are shared
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    path = os.path.join(TUTORIAL_DIR, name)
    out = subprocess.run(
        [sys.executable, path], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert out.returncode == 0, f"{name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
    expected = _figure_names(open(path, encoding="utf-8").read())
    for fig in expected:
        png = tmp_path / (fig if fig.endswith(".png") else fig + ".png")
        assert png.exists() and png.stat().st_size > 1000, f"{name} did not write {png.name}"

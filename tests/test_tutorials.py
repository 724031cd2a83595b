"""Every tutorial runs top to bottom in smoke mode (CI=1 shrinks it)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUT = os.path.join(ROOT, "tutorials")

TUTORIALS = [
    "01_regression_uncertainty.py",
    "02_pyro_model.py",
    "05_classification_ood.py",
    "06_aleatoric.py",
]


def test_every_tutorial_is_listed():
    found = sorted(f for f in os.listdir(TUT) if f.endswith(".py") and not f.startswith("_"))
    assert found == sorted(TUTORIALS), "add new tutorials to TUTORIALS (and remove deleted ones)"


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_runs_in_smoke_mode(name, tmp_path):
    env = dict(os.environ, CI="1", MPLBACKEND="Agg", PYROBDL_TUTORIAL_OUT=str(tmp_path))
    out = subprocess.run([sys.executable, os.path.join(TUT, name)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

"""The documentation builds with warnings as errors, its examples run, and every
tutorial has a page.

* ``sphinx-build -W --keep-going -b html docs <tmp>``: a malformed docstring
  anywhere in ``pyrobdl/`` (autodoc renders them all) or a broken reference in
  ``docs/`` fails here. Skipped when Sphinx is not installed (``pip install -e ".[docs]"``).
* ``python -m pytest --doctest-modules pyrobdl``: the ``>>>`` examples in the
  docstrings.
* The complete script of ``docs/getting_started.rst`` runs.
* ``docs/which_method.rst`` quotes the README's *Performance* section (the one
  place measured numbers are kept) and that section stays convertible.
"""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


def _env():
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("jupytext")
    out = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), DOCS, str(tmp_path / "html")],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, f"sphinx-build -W failed:\n{out.stdout[-3000:]}\n{out.stderr[-8000:]}"
    html = tmp_path / "html"
    defaults = (html / "defaults.html").read_text(encoding="utf-8")
    assert "How the defaults were chosen" in defaults and "-2.431 ± 0.051" in defaults
    for page in ["index", "getting_started", "which_method", "metrics", "defaults", "api", "tutorials"]:
        assert (html / f"{page}.html").exists(), page
    api = (html / "api.html").read_text(encoding="utf-8")
    for name in ["pyrobdl.network.BayesianNetwork", "pyrobdl.inference.svi.MeanField", "pyrobdl.metrics.ood_auroc",
                 "pyrobdl.plots.reliability_diagram", "pyrobdl.priors.Normal", "pyrobdl.likelihoods.Gaussian",
                 "pyrobdl.compare.compare", "pyrobdl.compare.profiles.TOY_OPTIONS",
                 "pyrobdl.compare.report.write_report"]:
        assert f'id="{name}"' in api, f"{name} is missing from the API reference"
    tutorial_dir = os.path.join(ROOT, "tutorials")
    for script in sorted(os.listdir(tutorial_dir)):
        if script.endswith(".py") and not script.startswith("_"):
            page = html / "tutorials" / script.replace(".py", ".html")
            assert page.exists(), f"no docs page for tutorials/{script}"
            text = page.read_text(encoding="utf-8")
            assert "highlight-python" in text, f"the page for {script} shows no code"


def test_every_tutorial_has_a_docs_page():
    tutorial_dir = os.path.join(ROOT, "tutorials")
    for script in sorted(os.listdir(tutorial_dir)):
        if script.endswith(".py") and not script.startswith("_"):
            stub = os.path.join(DOCS, "tutorials", script.replace(".py", ".rst"))
            assert os.path.exists(stub), f"add docs/tutorials/{script.replace('.py', '.rst')} (one line: .. tutorial::)"
            assert f"../../tutorials/{script}" in open(stub, encoding="utf-8").read()


def test_tutorial_markdown_converts():
    """Every markdown cell of every tutorial is in the subset the docs converter handles."""
    jupytext = pytest.importorskip("jupytext")
    pytest.importorskip("docutils")
    sys.path.insert(0, os.path.join(DOCS, "_ext"))
    try:
        from pyrobdl_docs import markdown_to_rst
    finally:
        sys.path.pop(0)
    tutorial_dir = os.path.join(ROOT, "tutorials")
    for script in sorted(os.listdir(tutorial_dir)):
        if script.endswith(".py") and not script.startswith("_"):
            nb = jupytext.read(os.path.join(tutorial_dir, script), fmt="py:percent")
            for cell in nb.cells:
                if cell.cell_type == "markdown":
                    markdown_to_rst(cell.source)


def _docs_ext():
    sys.path.insert(0, os.path.join(DOCS, "_ext"))
    try:
        import pyrobdl_docs
    finally:
        sys.path.pop(0)
    return pyrobdl_docs


def test_which_method_quotes_readme_numbers():
    """The measured numbers on "Which method should I use?" are the README's,
    rendered at build time, so the two cannot disagree."""
    pytest.importorskip("docutils")
    ext = _docs_ext()
    page = open(os.path.join(DOCS, "which_method.rst"), encoding="utf-8").read()
    assert ".. readme-section:: Performance" in page
    assert "TBD" not in page, "which_method.rst still has placeholder numbers"
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    rst = ext.markdown_to_rst(ext.markdown_section(readme, "Performance"))
    assert rst.count(".. list-table::") >= 2, "README's Performance section lost its tables"
    assert "UCI regression quality" in "\n".join(rst)


def test_markdown_tables_convert():
    pytest.importorskip("docutils")
    ext = _docs_ext()
    rst = ext.markdown_to_rst("| a | b |\n| --- | ---: |\n| `x` | |\n")
    assert rst[:3] == [".. list-table::", "   :header-rows: 1", ""]
    assert rst[3:7] == ["   * - a", "     - b", "   * - ``x``", "     -"]
    for bad in ["| a | b |\n| x | y |\n", "| a | b |\n| --- | --- |\n| x |\n"]:
        with pytest.raises(ext.MarkdownError):
            ext.markdown_to_rst(bad)


def test_docstring_examples_run():
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--doctest-modules", "pyrobdl"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, f"doctests failed:\n{out.stdout[-6000:]}\n{out.stderr[-3000:]}"


def test_getting_started_script_runs(tmp_path):
    """The first python block of getting_started.rst is a complete script; the
    later blocks continue it. Run them all, in order, as one script."""
    text = open(os.path.join(DOCS, "getting_started.rst"), encoding="utf-8").read()
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:   .*\n|\n)+)", text)
    assert blocks, "getting_started.rst has no python code blocks"
    script = "\n".join("\n".join(line[3:] for line in block.splitlines()) for block in blocks)
    path = tmp_path / "getting_started.py"
    path.write_text(script, encoding="utf-8")
    out = subprocess.run([sys.executable, str(path)], cwd=str(tmp_path), env=_env(), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, f"getting_started.rst's code failed:\n{out.stderr[-4000:]}"
    assert (tmp_path / "bands.png").exists() and (tmp_path / "posterior.pt").exists()

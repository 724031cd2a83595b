"""Sphinx configuration for pyrobdl.

Build with ``make -C docs html`` (``sphinx-build -W --keep-going -b html . _build/html``):
warnings are errors. Nothing is fetched from the network (no intersphinx
mappings) and no tutorial is executed: tutorial pages are rendered from the
jupytext scripts in ``tutorials/`` by ``_ext/pyrobdl_docs.py``, with the
figures the scripts saved to ``tutorials/_figures/`` (``make -C docs figures``
runs them).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(HERE, "_ext"))
import pyrobdl  # noqa: E402

project = "pyrobdl"
author = "the pyrobdl developers"
copyright = "pyrobdl developers, MIT license"
version = release = pyrobdl.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    "pyrobdl_docs",
]

# No intersphinx: the docs build must not touch the network.
intersphinx_mapping = {}

autosummary_generate = False  # no generated stub files; tables link to the automodule entries
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# "Attributes:" sections as :ivar: fields, so an attribute that is also a documented
# property is not described twice (duplicate-object warnings under -W).
napoleon_use_ivar = True
nitpicky = False
mathjax3_config = {"tex": {"macros": {}}}
# MathJax is loaded by the reader's browser from the default CDN; nothing is fetched at build time.

templates_path = []
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "requirements.txt"]
source_suffix = {".rst": "restructuredtext"}
master_doc = root_doc = "index"
pygments_style = "sphinx"
html_theme = "alabaster"
html_theme_options = {"description": "Bayesian deep learning on Pyro", "fixed_sidebar": True, "page_width": "1200px", "sidebar_width": "240px"}
html_static_path = []
html_title = f"pyrobdl {release}"

doctest_global_setup = """
import torch, numpy as np, pyro
import pyrobdl
from pyrobdl import BayesianNetwork, priors, likelihoods, inference, metrics
"""

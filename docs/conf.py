"""Sphinx configuration of skvae's documentation: ``sphinx-build -W -b html docs docs/_build/html``."""

import sys
from pathlib import Path

import skvae

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from beta_sweep import draw_beta_sweep

project = "skvae"
author = "the skvae developers"
copyright = f"2026, {author}"
release = version = skvae.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
]
autosummary_generate = True
templates_path = ["_templates"]  # classes: skvae's own members, not those from scikit-learn or torch
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
# Every parameter documented and every documented one real; Returns where something is returned.
# (tests/test_docs.py checks that each public name is listed in api.rst and has an Example.)
numpydoc_validation_checks = {"PR01", "PR02", "PR03", "GL08", "RT01"}
numpydoc_validation_exclude = {
    r"\.__init__$", r"\.forward$", r"\.backward$", r"\.set_.*_request$",
    # a data source's implementations of the methods its base class documents (RowData, the sparse row sources)
    r"\.(InMemoryRows|BackedRows)\.(take|astype|shard|source|value_blocks)$",
    r"\.(ShiftedSparseRowSource|BackedSparseRowSource)\.csr$",
}

intersphinx_mapping = {}
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = ["_static"]
html_theme_options = {
    "description": "Neural embeddings of single-cell data as scikit-learn estimators",
    "page_width": "1180px",  # room for the study's table and the code blocks at a laptop's width
    "body_max_width": "none",  # else the text column stays at 800px whatever the page width
}
html_css_files = ["skvae.css"]

# The user guide's figure of what beta does is drawn at each build, from the current code.
draw_beta_sweep(HERE / "_static" / "beta_sweep.png")

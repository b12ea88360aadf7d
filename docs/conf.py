"""Sphinx configuration: the reference built from the docstrings, beside the Markdown pages.

Build: ``sphinx-build -W --keep-going -b html docs build/docs`` (``pip install -e '.[docs]'``).
"""

from __future__ import annotations

import otcl

project = "otcl"
author = "otcl contributors"
release = version = otcl.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# docstrings: Google style ("Args:", "Returns:") in reStructuredText with :math:
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_default_options = {"members": True, "show-inheritance": True, "member-order": "bysource"}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autoclass_content = "both"
napoleon_use_ivar = True  # "Attributes:" as fields (dataclass fields are also members)
# the sections of a pipeline's declaration (otcl.pipelines.spec.Pipeline)
napoleon_custom_sections = [("Required", "params_style"), ("Optional", "params_style")]

myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]

html_theme = "furo"
html_title = f"otcl {release}"
